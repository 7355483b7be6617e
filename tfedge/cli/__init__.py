"""The ``tfedge`` command line (click): it parses the options, calls a workflow and prints.

:func:`main` is a plain function that returns the exit status, so it can be tested in-process;
:func:`run` is the console script. Expected failures (:class:`~tfedge.core.errors.TfedgeError`, bad
options) print one ``Error:`` line, a ``Hint:`` where one helps, and exit with status 1; ``--debug``
anywhere on the line shows the traceback and TensorFlow's own logs instead.

The commands sit by concern: ``conversion`` (convert, inspect), ``measuring`` (bench, compare,
report), ``compression`` (optimize, analyze, demo); ``options`` holds what they share and
``entry`` the group, :func:`main` and the ``Error:`` line.

Example:
    >>> main(["inspect", "model.tflite", "--json"])  # doctest: +SKIP
    0
"""

from tfedge.cli.entry import cli, main, os_error, print_error, run

# The name the tests and older callers use.
_print_error = print_error

__all__ = ["main", "run", "cli", "os_error", "print_error"]
