"""What the command modules share: repeated options, number lists, profile files.

Example:
    >>> split_values(["a,b", "c"])
    ['a', 'b', 'c']
"""

from pathlib import Path

import click

__all__ = ["split_values", "floats", "target_file"]


def split_values(values) -> list[str]:
    """Options that may be repeated or comma-separated: ``--keep-float a,b --keep-float c``.

    Example:
        >>> split_values(["conv1, conv2", "dense"])
        ['conv1', 'conv2', 'dense']
    """
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def floats(text, option):
    """A comma-separated number list (``--mean 127.5`` or ``--std 1,1,1``); None stays None.

    Raises:
        click.BadParameter: when a part is not a number (one ``Error:`` line naming ``option``).

    Example:
        >>> floats("0,127.5", "--mean")
        [0.0, 127.5]
    """
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a number list, e.g. 127.5 or 0,0,0", param_hint=option
        ) from None


def target_file(value):
    """A ``--target`` that names a profile file (not a built-in profile name), else None.

    Example:
        >>> target_file("edgetpu") is None
        True
    """
    return value if value and Path(value).is_file() else None
