"""YAML a user hands tfedge (recipes, target profiles), read with bounds.

A recipe or a profile is a few lines. The reader refuses a file over a size bound, refuses YAML
aliases (``*name``: a few lines of nested aliases expand to gigabytes when anything walks or
prints the result), and reports a parse error as one line with its line and column.

Example:
    >>> read_yaml("recipe.yaml", "recipe", OptimizationError)  # doctest: +SKIP
    {'stages': [{'name': 'qat'}]}
"""

from pathlib import Path

import yaml

from tfedge.core.errors import TfedgeError, yaml_problem

__all__ = ["read_yaml", "MAX_YAML_BYTES"]

MAX_YAML_BYTES = 64 * 1024


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with aliases refused where they are read."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"an alias (*{str(event.anchor)[:40]}) is not accepted; write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def read_yaml(path, what: str, error: type[TfedgeError], hint: str | None = None):
    """Parse a small YAML file a user wrote, or raise ``error`` with one line saying why.

    Args:
        path: the file.
        what: what to call it in messages (``"recipe"``, ``"target profile"``).
        error: the :class:`~tfedge.core.errors.TfedgeError` subclass to raise.
        hint: the hint of every error (what a valid file looks like).

    Returns:
        The parsed document (``None`` for an empty file).

    Raises:
        error: the file is missing, a folder, over :data:`MAX_YAML_BYTES`, not UTF-8 text, not
            valid YAML, or uses aliases.

    Example:
        >>> from tfedge.core.errors import OptimizationError
        >>> read_yaml("missing.yaml", "recipe", OptimizationError)
        Traceback (most recent call last):
        ...
        tfedge.core.errors.OptimizationError: recipe not found: missing.yaml
    """
    path = Path(path)
    if not path.is_file():
        kind = "is a folder, not a file" if path.is_dir() else None
        raise error(f"{what} {path} {kind}" if kind else f"{what} not found: {path}", hint)
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise error(
            f"{what} {path} is {size:,} bytes; a {what} is a few lines "
            f"(at most {MAX_YAML_BYTES:,} bytes are read)",
            hint,
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {path} is not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x})",
            hint,
        ) from None
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {yaml_problem(exc)}", hint) from None
    except RecursionError:
        raise error(f"{what} {path} nests too deeply to be a {what}", hint) from None
