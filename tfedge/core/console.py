"""Terminal helpers: progress bars that stay visible while TensorFlow's noise is hidden.

TensorFlow's C++ side writes straight to file descriptor 2. :func:`quiet` sends that descriptor to
a temporary file while TensorFlow works (the text is kept for error messages), and
:func:`progress` draws on a copy of the real terminal taken before any redirection.

Example:
    >>> from tfedge.core.console import progress, quiet
    >>> with quiet():
    ...     for _ in progress(range(3), desc="calibrating"):
    ...         pass
"""

import contextlib
import os
import sys
import tempfile

from tqdm import tqdm

__all__ = ["debugging", "quiet", "progress", "echo"]

_terminal = None


def debugging() -> bool:
    """True when ``--debug`` (or ``TFEDGE_DEBUG=1``) asks for tracebacks and TensorFlow's own logs."""
    return os.environ.get("TFEDGE_DEBUG", "") not in ("", "0")


def _terminal_stream():
    global _terminal
    if _terminal is None:
        try:
            _terminal = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
        except (OSError, ValueError, AttributeError):
            _terminal = sys.stderr
    return _terminal


class Captured:
    """What TensorFlow wrote to stderr inside a :func:`quiet` block (``text``)."""

    def __init__(self):
        self.text = ""


@contextlib.contextmanager
def quiet():
    """Redirect file descriptor 2 to a temporary file for the duration of the block.

    Yields:
        A :class:`Captured` whose ``text`` holds what was written, once the block ends.
    """
    captured = Captured()
    _terminal_stream()
    if debugging():
        yield captured
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):
        yield captured
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            captured.text = tmp.read().decode("utf-8", errors="replace")


def progress(iterable=None, **kwargs):
    """A tqdm progress bar on the real terminal (hidden when stderr is not a terminal and not forced).

    Args:
        iterable: what to iterate over.
        **kwargs: passed to ``tqdm`` (``desc``, ``total``, ``unit``...).
    """
    stream = _terminal_stream()
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("disable", None)  # None: off when the stream is not a tty
    return tqdm(iterable, file=stream, **kwargs)


def echo(message: str = "", err: bool = False) -> None:
    """Print a line to stdout (or to the real stderr with ``err=True``)."""
    stream = _terminal_stream() if err else sys.stdout
    print(message, file=stream, flush=True)
