"""The errors tfedge raises for bad input: each says what was received, what was expected, and how to fix it.

The command line turns a :class:`TfedgeError` into one ``Error:`` line (plus a ``Hint:`` line) and
exit status 1.
"""

__all__ = [
    "TfedgeError",
    "InputFileError",
    "DataError",
    "ConversionError",
    "DeviceError",
    "OptimizationError",
    "first_line",
]


class TfedgeError(Exception):
    """Base class of tfedge's expected failures.

    Args:
        message: what went wrong, naming the value received and what was expected.
        hint: how to fix it (optional).
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

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
