"""The ``tfedge`` group, :func:`main` (argv to exit status) and the one ``Error:`` line.

Expected failures (:class:`~tfedge.core.errors.TfedgeError`, bad options, operating-system errors)
print one ``Error:`` line, a ``Hint:`` where one helps, and exit with status 1; ``--debug``
anywhere on the line shows the traceback and TensorFlow's own logs instead.

Example:
    >>> main(["--version"])  # doctest: +SKIP
    0
"""

import errno
import os
import sys

import click

import tfedge.cli.compression as compression
import tfedge.cli.conversion as conversion
import tfedge.cli.measuring as measuring
from tfedge.core.errors import TfedgeError
from tfedge.version import __version__

__all__ = ["cli", "main", "run", "os_error", "print_error"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tfedge")
def cli():
    """tfedge: a Keras model to a small, fast, fully-int8 TFLite model, proven on its device.

    Add --debug anywhere to see tracebacks and TensorFlow's logs.
    """


for _command in (
    conversion.convert,
    conversion.inspect_command,
    measuring.bench,
    measuring.compare,
    measuring.report,
    compression.optimize,
    compression.analyze,
    compression.demo,
):
    cli.add_command(_command)


_OS_HINTS = {
    errno.EACCES: "check the permissions of the path (ls -l), or write somewhere you may",
    errno.EPERM: "check the permissions of the path (ls -l), or write somewhere you may",
    errno.EROFS: "the file system is read-only: write the output somewhere else",
    errno.ENOSPC: "the disk is full: free space (df -h) or write somewhere else",
    errno.EDQUOT: "the disk quota is used up: free space or write somewhere else",
    errno.EISDIR: "the path is a folder: give a file name inside it",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
    errno.ENOENT: "check the path: a folder on it does not exist",
    errno.ENAMETOOLONG: "use a shorter path",
}


def os_error(exc: OSError) -> tuple[str, str]:
    """The ``Error:`` line and hint for an operating-system error (permission, disk full...).

    Example:
        >>> os_error(PermissionError(13, "Permission denied", "/out/m.tflite"))[0]
        'cannot use /out/m.tflite: Permission denied'
    """
    where = exc.filename if exc.filename is not None else "a file"
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = _OS_HINTS.get(exc.errno, "check the path and run again with --debug if it looks right")
    return f"cannot use {str(where)[:300]}: {reason}", hint


def print_error(message: str, hint: str | None = None) -> None:
    # One line whatever the message quotes (a library's multi-line error, a file's contents),
    # and of a readable length.
    message = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    if len(message) > 1000:
        message = message[:1000] + " ..."
    click.echo(f"Error: {message}", err=True)
    if hint:
        click.echo(f"Hint: {hint}", err=True)


def main(argv=None) -> int:
    """Run the command line with ``argv`` and return the exit status (0 ok, 1 error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if debug:
        os.environ["TFEDGE_DEBUG"] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    try:
        status = cli.main(args=args, prog_name="tfedge", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return 0
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "tfedge"
        print_error(exc.format_message(), f"see '{command} --help'")
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        print_error("aborted")
        return 1
    except click.ClickException as exc:
        print_error(exc.format_message())
        return 1
    except TfedgeError as exc:
        if debug:
            raise
        flag = f"--{exc.option.replace('_', '-')}: " if getattr(exc, "option", None) else ""
        print_error(flag + exc.message, exc.hint)
        return 1
    except KeyboardInterrupt:
        print_error("interrupted")
        return 1
    except OSError as exc:
        if debug:
            raise
        print_error(*os_error(exc))
        return 1
    except Exception as exc:
        if debug:
            raise
        text = str(exc).strip().splitlines()
        print_error(
            f"unexpected failure: {type(exc).__name__}: {text[0][:300] if text else ''}",
            "run again with --debug for the traceback, and report it if the input looks right",
        )
        return 1
    return status if isinstance(status, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
