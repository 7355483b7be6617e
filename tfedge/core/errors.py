"""The errors tfedge raises for bad input: each says what was received, what was expected, and how to fix it.

The command line turns a :class:`TfedgeError` into one ``Error:`` line (plus a ``Hint:`` line) and
exit status 1.
"""

import re

__all__ = [
    "TfedgeError",
    "InputFileError",
    "DataError",
    "tf_message",
    "ConversionError",
    "DeviceError",
    "OptimizationError",
    "first_line",
    "yaml_problem",
    "missing_file",
    "shape_text",
]


class TfedgeError(Exception):
    """Base class of tfedge's expected failures.

    Messages are worded for Python callers and the command line alike; ``option`` names the
    argument at fault (its Python name, e.g. ``"io"``), and the command line puts the flag
    (``--io``) in front of the message.

    Args:
        message: what went wrong, naming the value received and what was expected.
        hint: how to fix it (optional).
        option: the keyword argument (and command-line option) the error is about (optional).
    """

    def __init__(self, message: str, hint: str | None = None, option: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.option = option

    def __str__(self) -> str:
        return self.message


class InputFileError(TfedgeError, ValueError):
    """A model or data file is missing, unreadable, corrupt or of the wrong kind."""


class DataError(TfedgeError, ValueError):
    """A data set has the wrong arrays, dtypes or shapes for the model."""


class ConversionError(TfedgeError, RuntimeError):
    """A model cannot be converted as asked (for example an operator that cannot be int8)."""


class DeviceError(TfedgeError, RuntimeError):
    """A device cannot be reached, or cannot run the model."""


class OptimizationError(TfedgeError, RuntimeError):
    """A compression stage cannot be applied to the model as given."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (at most ``limit`` characters).

    Library errors from TensorFlow or tfmot run over many lines; tfedge's one-line errors quote
    only their first.

    Example:
        >>> first_line(ValueError("\\nshapes differ\\n  at layer dense"))
        'shapes differ'
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__


def yaml_problem(exc: BaseException) -> str:
    """Where and what a YAML parse error is, on one line (PyYAML's own message spans five).

    Example:
        >>> import yaml
        >>> try:
        ...     yaml.safe_load("mode: [")
        ... except yaml.YAMLError as exc:
        ...     yaml_problem(exc)
        "line 1, column 8: expected the node content, but found '<stream end>'"
    """
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or first_line(exc, 200)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{str(problem)[:200]}"


def missing_file(what: str, path, hint: str | None = None) -> InputFileError:
    """The one wording of "a file the caller named is not there": ``{what} not found: {path}``.

    Example:
        >>> str(missing_file("model", "m.tflite"))
        'model not found: m.tflite'
    """
    return InputFileError(f"{what} not found: {path}", hint)


def shape_text(shape) -> str:
    """A tensor shape as plain integers, ``?`` for an unknown dimension: ``[1, 896, 16]``.

    Takes any sequence of dimensions (numpy integers, ``None`` or -1 for unknown), so messages
    never print numpy's ``np.int32(896)``.

    Example:
        >>> import numpy as np
        >>> shape_text(np.array([1, 896, 16], dtype=np.int32))
        '[1, 896, 16]'
        >>> shape_text((None, 28, 28, -1))
        '[?, 28, 28, ?]'
    """
    dims = ["?" if d is None or int(d) < 0 else str(int(d)) for d in shape]
    return "[" + ", ".join(dims) + "]"


def tf_message(exc: BaseException) -> str:
    """TensorFlow's message on one line, without its ``{{function_node ...}}``,
    ``[[{{node ...}}]]`` and ``[Op:...]`` internals (at most 200 characters).

    Example:
        >>> tf_message(ValueError("{{function_node __wrapped__DecodeImage}} bad JPEG [Op:DecodeImage] name:"))
        'bad JPEG'
    """

    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", first_line(exc, 600))
    text = re.sub(r"\s*\[\[\{\{node [^]]*\]\]", "", text)
    text = re.sub(r"\s*\[Op:[^]]*\](\s*name:\s*\S*)?", "", text)
    return text.strip()[:200]
