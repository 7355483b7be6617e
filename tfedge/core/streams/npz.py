"""``.npz`` archives: written batch by batch, memory-mapped where stored, read in chunks where
compressed."""

import zipfile
from pathlib import Path

import numpy as np

from tfedge.core.errors import DataError
from tfedge.core.files import atomic_file
from tfedge.core.streams.readers import _ArrayReader, _Reader


def write_npz(path, batches, count: int, sample_shape) -> Path:
    """Write ``(x, y)`` batches to an uncompressed ``.npz``, holding one batch at a time.

    ``x`` is written as it arrives; the labels (8 bytes a sample) are kept and written after it.

    Example:
        >>> write_npz("d.npz", [(np.zeros((2, 3), np.float32), np.arange(2))], 2, (3,))  # doctest: +SKIP
    """
    path = Path(path)
    labels = []
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
        "fortran_order": False,
        "shape": (int(count), *sample_shape),
    }
    written = 0
    with (
        atomic_file(path) as handle,
        zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive,
    ):
        with archive.open("x.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_2_0(member, header)
            for x, y in batches:
                member.write(np.ascontiguousarray(x, dtype="<f4").tobytes())
                written += len(x)
                if y is not None:
                    labels.append(np.asarray(y, np.int64))
        if written != count:
            raise DataError(f"wrote {written} samples to {path} but expected {count}")
        if labels:
            with archive.open("y.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.concatenate(labels), allow_pickle=False)
    return path


def _read_header(member, version):
    """``(shape, fortran_order, dtype)`` of the ``.npy`` header ``member`` is positioned at."""
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    return np.lib.format.read_array_header_2_0(member)


def _npz_members(path: Path):
    """``{name: (info, dtype, shape, fortran, data_offset or None)}`` of an ``.npz``'s ``.npy`` members."""
    members = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                shape, fortran, dtype = _read_header(member, version)
                header_bytes = member.tell() if hasattr(member, "tell") else None
            offset = None
            if info.compress_type == zipfile.ZIP_STORED and header_bytes is not None:
                raw.seek(info.header_offset)
                local = raw.read(30)
                name_len = int.from_bytes(local[26:28], "little")
                extra_len = int.from_bytes(local[28:30], "little")
                offset = info.header_offset + 30 + name_len + extra_len + header_bytes
            members[info.filename[:-4]] = (info, dtype, shape, fortran, offset)
    return members


def _npz_reader(path: Path, name: str):
    """An ``.npz`` memory-mapped (stored members) or read member-wise; None: let load_data read it."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        members = _npz_members(path)
    except Exception:
        return None  # load_data says what is wrong with the file
    if "x" not in members:
        return None
    _, dtype, shape, fortran, offset = members["x"]
    if dtype.hasobject or not shape or 4 * int(np.prod(shape)) <= 0:
        return None
    y = None
    if "y" in members:
        with np.load(path, allow_pickle=False) as npz:
            y = np.asarray(npz["y"])
    if offset is not None and not fortran:
        x = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))
        return _ArrayReader(x, y, str(path), files=[path])
    return _NpzChunkReader(path, members["x"], y)


class _NpzChunkReader(_Reader):
    """A compressed ``.npz``: ``x`` decompressed in chunks, front to back."""

    def __init__(self, path, member, y):
        self.path = path
        self.source = str(path)
        self.info, self.dtype, self.shape, self.fortran, _ = member
        self.y = y
        if self.fortran:
            raise DataError(
                f"{path} stores x in Fortran order; save it with numpy.savez(path, x=numpy.ascontiguousarray(x))"
            )

    def estimate_bytes(self):
        return 4 * int(np.prod(self.shape))

    def count(self):
        return int(self.shape[0])

    def raw(self, batch_size, order=None, shuffle=None):
        per = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as archive, archive.open(self.info) as member:
            version = np.lib.format.read_magic(member)
            _read_header(member, version)
            start = 0
            while start < self.shape[0]:
                count = min(batch_size, self.shape[0] - start)
                data = member.read(per * count)
                x = np.frombuffer(data, self.dtype).reshape((count, *self.shape[1:]))
                y = None if self.y is None else self.y[start : start + count]
                yield x, y, None
                start += count
