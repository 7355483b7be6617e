"""Class labels for a model's metadata: read from a labels file, or checked when given as a list.

Example:
    >>> from tfedge.converters.labels import check_labels
    >>> check_labels(["0", "1"])
    ['0', '1']
"""

from __future__ import annotations

import os

from tfedge.core.errors import InputFileError, missing_file

__all__ = ["read_labels_file", "check_labels"]


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """Read a label file: one label per line, in class-id order.

    Trailing whitespace (``\\r`` included) is stripped from each line and blank lines are dropped.

    Args:
        path: a UTF-8 text file.

    Returns:
        The labels, in file order.

    Raises:
        InputFileError: the file is missing, unreadable, not UTF-8 text, or holds no label.

    Example:
        >>> from tfedge.converters.labels import read_labels_file
        >>> read_labels_file("labels.txt")  # doctest: +SKIP
        ['cat', 'dog']
    """
    hint = "Give a UTF-8 text file with one class label per line, in class-id order."
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise missing_file("label file", path, hint) from None
    except IsADirectoryError:
        raise InputFileError(
            f"label file {str(path)!r} is a directory, not a file.", hint
        ) from None
    except OSError as e:
        raise InputFileError(f"cannot read label file {str(path)!r}: {e.strerror}.", hint) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputFileError(
            f"label file {str(path)!r} is not UTF-8 text (byte {e.start}: {raw[e.start : e.start + 1]!r}).",
            hint,
        ) from None
    labels = [line.rstrip() for line in text.splitlines()]
    labels = [label for label in labels if label]
    if not labels:
        raise InputFileError(
            f"label file {str(path)!r} holds no label ({len(raw)} bytes, no non-blank line).", hint
        )
    return labels


def check_labels(labels) -> list[str]:
    """Check labels given as a list: non-blank single-line strings, at least one.

    Raises:
        TypeError: a single string, or a label that is no string.
        ValueError: no label, or a blank or multi-line one.

    Example:
        >>> check_labels(("cat", "dog"))
        ['cat', 'dog']
    """
    if isinstance(labels, (str, bytes)):
        raise TypeError("labels must be a list of strings, not a single string.")
    labels = list(labels)
    if not labels:
        raise ValueError("labels is empty: give one label per output class.")
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise TypeError(f"label {i} is {type(label).__name__}, expected str.")
        if not label.strip() or "\n" in label or "\r" in label:
            raise ValueError(
                f"label {i} ({label!r}) must be a non-blank single line: labels.txt holds one per line."
            )
    return labels
