"""Files a command writes: never over one of its inputs, always whole.

Two rules hold for every command. An output path that resolves to one of the command's inputs
(through symbolic links, hard links and relative paths alike), or that lies inside an input
folder (an image folder, a SavedModel), is refused before any work with one error naming both.
And every output is written to a temporary name in its own folder and renamed over the target,
so a reader never sees half a file and a failed write leaves the old file as it was. Written
files get the mode a plain ``open()`` would give them (``0o666`` less the umask: ``0o644`` under
the usual umask), whoever writes them.

Example:
    >>> refuse_overwrite({"-o": "model.keras"}, {"MODEL": "model.keras"})  # doctest: +SKIP
    Traceback (most recent call last):
    tfedge.core.errors.InputFileError: -o model.keras is the input MODEL (model.keras): ...
"""

import glob
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from tfedge.core.errors import InputFileError

__all__ = [
    "refuse_overwrite",
    "atomic_file",
    "atomic_path",
    "save_atomically",
    "write_atomically",
    "inputs_of",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Like :func:`atomic_file`, for writers that take a path, not a handle (Keras' ``model.save``
    needs its ``.keras`` suffix): a temporary name beside ``path`` with the same suffix, renamed
    over ``path`` when the block ends without an error (removed when it raises), with the same
    file mode (``0o666`` less the umask; a folder written there keeps its own modes).

    Example:
        >>> with atomic_path("cache/stage.keras") as tmp:  # doctest: +SKIP
        ...     model.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.is_file():
            tmp.unlink()


def save_atomically(thing, path) -> Path:
    """``thing.save`` (a Keras model, a Dataset) to a temporary name beside ``path``, then renamed:
    a reader never sees half a file, and a failed save leaves nothing behind.

    Example:
        >>> save_atomically(model, "cache/stage.keras")  # doctest: +SKIP
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        thing.save(tmp)
    return path


@contextmanager
def atomic_file(path) -> Iterator[BinaryIO]:
    """The one way tfedge writes a file: a binary handle on a temporary file beside ``path``,
    renamed over ``path`` when the block ends without an error (removed when it raises).

    The file gets the mode a plain ``open()`` would give it (``0o666`` less the umask); its
    folder is created when missing. For streamed writers (``numpy.savez``, ``zipfile``) that
    need a handle; :func:`write_atomically` writes bytes or text through it.

    Example:
        >>> with atomic_file("out/data.npz") as handle:  # doctest: +SKIP
        ...     numpy.savez(handle, x=x)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomically(path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Args:
        path: the file to write; its folder is created when missing.
        data: bytes, or text (written as UTF-8).

    Returns:
        The path written.

    Example:
        >>> write_atomically("out/report.json", '{"results": []}')  # doctest: +SKIP
        PosixPath('out/report.json')
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    with atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def inputs_of(value) -> list[str]:
    """The paths a command-line value names: none, one path, a list, or a glob's matches.

    Example:
        >>> inputs_of(None), inputs_of("a.npz"), inputs_of(["a.tflite", "b.tflite"])
        ([], ['a.npz'], ['a.tflite', 'b.tflite'])
    """
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        text = str(value)
        if glob.has_magic(text):
            return sorted(glob.glob(text)) or [text]
        return [text]
    if isinstance(value, Iterable):
        return [path for item in value for path in inputs_of(item)]
    return []


def _real(path) -> str:
    return os.path.realpath(os.path.expanduser(str(path)))


def _same(a: str, b: str) -> bool:
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _inside(path: str, folder: str) -> bool:
    real, base = _real(path), _real(folder)
    return Path(base).is_dir() and os.path.commonpath([real, base]) == base


def refuse_overwrite(
    outputs: Mapping[str, object],
    inputs: Mapping[str, object],
    folders: Mapping[str, object] | None = None,
) -> None:
    """Refuse, before any work, an output that would write over an input or over another output.

    Args:
        outputs: option -> the path it writes (``{"-o": "m.tflite", "--json": None}``); a value
            may be a list of paths (the files an output folder will hold).
        inputs: option -> the path(s) it reads (a path, a list or a glob).
        folders: option -> folders whose contents the command rewrites (checkpoints, caches):
            no input may lie inside one.

    Raises:
        InputFileError: naming the output, the input it resolves to, and another name to use.

    Example:
        >>> refuse_overwrite({"--json": "a.json"}, {"RESULTS": ["a.json"]})  # doctest: +SKIP
        Traceback (most recent call last):
        tfedge.core.errors.InputFileError: --json a.json is the input RESULTS (a.json): ...
    """
    written = [(flag, path) for flag, value in outputs.items() for path in inputs_of(value)]
    read = [(name, path) for name, value in inputs.items() for path in inputs_of(value)]
    for flag, path in written:
        _check_writable(flag, path)
    for flag, path in written:
        for name, source in read:
            if _same(path, source):
                raise InputFileError(
                    f"{flag} {path} is the input {name} ({source}): writing it would destroy "
                    "the input",
                    f"give {flag} another path, e.g. {_suggest(path)}",
                )
            if _inside(path, source):
                raise InputFileError(
                    f"{flag} {path} lies inside the input folder {name} ({source}): writing "
                    "there would change the input",
                    f"give {flag} a path outside {source}",
                )
    for flag, value in (folders or {}).items():
        for folder in inputs_of(value):
            for name, source in read:
                if _inside(source, folder) or _same(source, folder):
                    raise InputFileError(
                        f"the input {name} ({source}) lies in {folder}, which {flag} rewrites",
                        f"move the input out of {folder}, or give {flag} another folder",
                    )
    for index, (flag, path) in enumerate(written):
        for other_flag, other in written[index + 1 :]:
            if _same(path, other):
                raise InputFileError(
                    f"{flag} and {other_flag} both name {path}: one would overwrite the other",
                    "give each output its own path",
                )


def _check_writable(flag: str, path: str) -> None:
    """An output must be a file path whose nearest existing folder can be written."""
    target = Path(path)
    if target.is_dir():
        raise InputFileError(
            f"{flag} {path} is a folder; expected a file to write",
            f"give a file name, e.g. {flag} {path.rstrip('/')}/NAME",
        )
    for parent in target.parents:
        if not parent.exists():
            continue
        if not parent.is_dir():
            raise InputFileError(
                f"{flag} {path}: {parent} is a file, not a folder", f"fix the path of {flag}"
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputFileError(
                f"{flag} {path}: the folder {parent} is not writable",
                "check its permissions (ls -ld), or write somewhere you may",
            )
        break


def _suggest(path: str) -> str:
    stem = Path(path)
    return str(stem.with_name(f"{stem.stem}.out{stem.suffix}"))
