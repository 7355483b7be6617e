"""Data sets read as a stream of checked batches, in bounded memory, from any form a user has.

:func:`stream_data` opens the forms of :func:`tfedge.core.data.load_data` plus TFRecord shards, and
gives back an object every consumer reads the same way: ``batches()`` (float32 ``x``, int64 ``y``
or None, each batch checked as :func:`~tfedge.core.data.load_data` checks a whole set),
``sample(count)`` (calibration samples), ``as_tf_dataset()`` (a prefetched ``tf.data`` view for
fine-tunes), ``len()``, ``head(count)`` and ``save(path)`` (an ``.npz`` written batch by batch).

How each form is read:

- an ``.npz``: its arrays memory-mapped where the archive stores them uncompressed
  (``numpy.savez``); a compressed one (``numpy.savez_compressed``) is read member-wise in chunks;
- an image folder (one sub-folder per class): decoded per batch by ``tf.data`` and resized to the
  model's input (bilinear, raw 0-255 values, as :func:`~tfedge.core.data.load_data`);
- TFRecord shards, a glob such as ``'shards/*.tfrecord'``: ``tf.train.Example`` records with an
  encoded image in ``image/encoded`` and an integer label in ``image/class/label``; other feature
  names follow a ``#``: ``'shards/*.tfrecord#image=jpeg,label=class'`` (``label=`` with nothing
  after it reads no labels). A float feature (``float_list``) is taken as the raw input values;
- a ``tf.data.Dataset`` yielding ``x``, ``(x, y)`` or ``{"x": ..., "y": ...}``, batched or not;
- numpy arrays ``x`` or ``(x, y)``.

A set that holds at most :data:`IN_MEMORY_BYTES` as float32 is read whole into a
:class:`~tfedge.core.data.Dataset` (it has the same methods); a larger one streams.

Calibration samples (:meth:`DataStream.sample`): from an ``.npz`` (uncompressed), an image folder or
arrays, a seeded random choice over the whole set (the same samples whatever the batch size);
from TFRecord shards, a compressed ``.npz`` or a ``tf.data`` pipeline, which read in order only, a
seeded uniform choice among the first ``10 * count`` samples (reservoir sampling; TFRecord shards
are visited in a seeded random order).

Example:
    >>> stream = stream_data("shards/*.tfrecord", input_shape=(96, 96, 3))  # doctest: +SKIP
    >>> for x, y in stream.batches(64):  # doctest: +SKIP
    ...     pass
    >>> calib = stream.sample(300)  # an in-memory Dataset of 300 samples  # doctest: +SKIP
"""

import glob
import hashlib
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from tfedge.core.console import quiet
from tfedge.core.data import (
    DATA_HINT,
    Dataset,
    _checked,
    _where,
    check_labels,
    is_tfrecord,
    load_data,
)
from tfedge.core.errors import DataError, InputFileError, first_line, tf_message
from tfedge.core.files import atomic_file

__all__ = [
    "DataStream",
    "stream_data",
    "calibration_samples",
    "is_tfrecord",
    "IN_MEMORY_BYTES",
    "TFRECORD_FEATURES",
    "SAMPLE_BUFFER_FACTOR",
    "SHUFFLE_RECORDS",
    "write_npz",
]

#: Sets up to this size (as float32) are read whole; larger ones stream.
IN_MEMORY_BYTES = 64 * 2**20
#: The default feature names of TFRecord shards (``tf.train.Example``).
TFRECORD_FEATURES = {"image": "image/encoded", "label": "image/class/label"}
#: Sequential sources draw ``count`` calibration samples from the first ``factor * count``.
SAMPLE_BUFFER_FACTOR = 10
#: Shuffled passes over TFRecord shards draw from a buffer of this many (serialized) records.
SHUFFLE_RECORDS = 4096
DEFAULT_BATCH = 256
TFRECORD_HINT = (
    "TFRecord shards hold tf.train.Example records with an encoded image in 'image/encoded' and "
    "an int64 label in 'image/class/label'; name other features after '#': "
    "'shards/*.tfrecord#image=KEY,label=KEY'"
)


def stream_data(
    source,
    *,
    input_shape=None,
    require_labels: bool = False,
    name: str = "data",
    num_classes: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    in_memory_bytes: int | None = None,
):
    """Open a data set for reading in batches; small sets are read whole.

    Args:
        source: an ``.npz`` path, an image folder, a TFRecord glob, ``x``, ``(x, y)``, a dict
            with ``x``/``y``, a :class:`~tfedge.core.data.Dataset`, a :class:`DataStream` or a
            ``tf.data.Dataset``.
        input_shape: the model's input shape without the batch axis; images are resized to it
            and every batch is checked against it.
        require_labels: raise when there are no labels.
        name: what to call the data in messages (``--calib``, ``--train``...).
        num_classes: the model's class count; labels outside ``0..num_classes - 1`` are refused.
        batch_size: the batch size of the checks and of :meth:`DataStream.batches` by default.
        in_memory_bytes: read sets up to this size whole (default :data:`IN_MEMORY_BYTES`;
            0 always streams).

    Returns:
        A :class:`~tfedge.core.data.Dataset` (small sets) or a :class:`DataStream`; both have
        ``batches``, ``sample``, ``head``, ``as_tf_dataset``, ``save`` and ``len``.

    Raises:
        InputFileError: a missing or unreadable file, a glob that matches nothing.
        DataError: the checks of :func:`~tfedge.core.data.load_data`, run on the first batch here and
            on every later batch as it is read (naming the file or index of the first bad sample).

    Example:
        >>> len(stream_data((np.zeros((5, 3)), np.arange(5)), in_memory_bytes=0))
        5
    """
    limit = IN_MEMORY_BYTES if in_memory_bytes is None else int(in_memory_bytes)
    options = {"input_shape": input_shape, "name": name, "num_classes": num_classes}
    if isinstance(source, DataStream):
        return source
    if isinstance(source, Dataset) or (
        not isinstance(source, (str, os.PathLike))
        and not _is_tf_dataset(source)
        and not isinstance(source, (tuple, np.ndarray, dict))
    ):
        return load_data(source, require_labels=require_labels, **options)
    reader = _reader(source, input_shape, name)
    if reader is None or (reader.estimate_bytes() is not None and reader.estimate_bytes() <= limit):
        return load_data(source, require_labels=require_labels, **options)
    stream = DataStream(reader, batch_size=batch_size, **options)
    if reader.estimate_bytes() is None:  # TFRecord, tf.data: size known only by reading
        whole = stream._whole_if_under(limit)
        if whole is not None:
            stream = whole
    if require_labels and not stream.has_labels:
        raise DataError(
            f"{_where(name, stream.source)} has no labels (y)",
            "add the integer labels as array 'y' in the .npz, or use a class-per-folder image "
            "tree, or a label feature in the TFRecord shards",
        )
    return stream


def calibration_samples(
    source, count: int, *, input_shape=None, seed: int = 0, name: str = "calibration data"
) -> Dataset:
    """``count`` calibration samples of any data form, in memory (see the module for how chosen).

    Example:
        >>> len(calibration_samples(np.zeros((50, 4)), 10))
        10
    """
    data = stream_data(source, input_shape=input_shape, name=name)
    return data.sample(count, seed=seed)


def _is_tf_dataset(source) -> bool:
    return type(source).__module__.startswith("tensorflow") and hasattr(source, "element_spec")


def _reader(source, input_shape, name):
    """The reader of a large-capable form, or None where :func:`load_data` reads it anyway."""
    if _is_tf_dataset(source):
        return _TfDatasetReader(source, input_shape, name)
    if isinstance(source, tuple) and len(source) == 2:
        return _ArrayReader(np.asarray(source[0]), _optional(source[1]), name)
    if isinstance(source, np.ndarray):
        return _ArrayReader(source, None, name)
    if isinstance(source, dict):
        return None
    if is_tfrecord(source):
        return _TfRecordReader(str(source), input_shape, name)
    path = Path(source)
    if not path.exists():
        return None  # load_data names the missing file
    if path.is_dir():
        return _FolderReader(path, input_shape, name)
    return _npz_reader(path, name)


def _optional(y):
    return None if y is None else np.asarray(y)


class DataStream:
    """A data set read in checked batches; never held whole in memory.

    Made by :func:`stream_data`. ``x`` and ``y`` are lazy views for code that slices
    (``stream.x[:32]``, ``stream.x[index]``): only the samples asked for are read.

    Attributes:
        source: where the data comes from, for messages.
        name: what the data is called in messages.
        class_names: the class names of an image folder, else None.
        input_shape: the shape of one sample, as the batches have it.
        has_labels: whether the batches carry labels.
    """

    def __init__(
        self, reader, *, input_shape=None, name="data", num_classes=None, batch_size=DEFAULT_BATCH
    ):
        self._reader = reader
        self._wanted_shape = None if input_shape is None else tuple(input_shape)
        self.name = name
        self.num_classes = num_classes
        self.batch_size = int(batch_size)
        self.source = reader.source
        self.class_names = reader.class_names
        first = next(self.batches(min(self.batch_size, 64)), None)
        if first is None:
            raise DataError(f"{name} ({self.source}) is empty: no samples", DATA_HINT)
        self.input_shape = tuple(first[0].shape[1:])
        self.has_labels = first[1] is not None

    def __repr__(self) -> str:
        return f"DataStream({self.source!r}, input_shape={list(self.input_shape)})"

    def __len__(self) -> int:
        return int(self._reader.count())

    @property
    def x(self):
        return _LazyColumn(self, 0)

    @property
    def y(self):
        return _LazyColumn(self, 1) if self.has_labels else None

    def batches(
        self,
        batch_size: int | None = None,
        *,
        limit: int | None = None,
        order=None,
        shuffle: int | None = None,
    ):
        """Yield checked ``(x float32, y int64 or None)`` batches, in order (or ``order``'s).

        Args:
            batch_size: samples per batch (default: the stream's).
            limit: stop after this many samples.
            order: sample indexes to read, for random-access forms (npz, folders, arrays).
            shuffle: a seed: TFRecord shards are read through a seeded shuffle buffer of
                :data:`SHUFFLE_RECORDS` records (other sequential forms stay in order).

        Raises:
            DataError: on the first batch with a bad sample or label, naming it.
        """
        batch_size = int(batch_size or self.batch_size)
        seen = 0
        for x, y, ids in self._reader.raw(batch_size, order=order, shuffle=shuffle):
            if limit is not None and seen + len(x) > limit:
                x = x[: limit - seen]
                y = None if y is None else y[: limit - seen]
                ids = None if ids is None else ids[: limit - seen]
            if not len(x):
                break
            yield self._check(x, y, ids, seen)
            seen += len(x)
            if limit is not None and seen >= limit:
                break

    def _check(self, x, y, ids, seen):
        locate = self._reader.locate
        offset = seen if ids is None else 0
        if ids is not None:
            where = np.asarray(ids)

            def locate(i, where=where):
                return self._reader.locate(int(where[i]))

            index_of = where
        else:
            index_of = None
        batch = Dataset(x, y, None, self.source)
        checked = _checked(
            batch, self._wanted_shape, self.name, offset=offset, locate=locate, index_of=index_of
        )
        if self.num_classes is not None:
            check_labels(
                checked,
                self.num_classes,
                self.name,
                offset=offset,
                locate=locate,
                index_of=index_of,
            )
        return checked.x, checked.y

    def head(self, count: int) -> np.ndarray:
        """The first ``count`` inputs, float32.

        Example:
            >>> stream.head(32).shape  # doctest: +SKIP
            (32, 96, 96, 3)
        """
        parts = [x for x, _ in self.batches(min(self.batch_size, count), limit=count)]
        return np.concatenate(parts) if parts else np.zeros((0, *self.input_shape), np.float32)

    def sample(self, count: int | None, seed: int | None = 0) -> Dataset:
        """``count`` samples in memory: a seeded random choice (see the module for how).

        Example:
            >>> calib = stream.sample(300, seed=0)  # doctest: +SKIP
        """
        reader = self._reader
        if count is None:
            return self.read()
        if reader.random_access:
            total = len(self)
            if count >= total:
                return self.read()
            if seed is None:
                index = np.arange(count)
            else:
                index = np.sort(np.random.default_rng(seed).choice(total, count, replace=False))
            return self._collect(self.batches(order=index))
        rng = np.random.default_rng(0 if seed is None else seed)
        buffer = max(count, SAMPLE_BUFFER_FACTOR * count)
        kept_x, kept_y, seen = [], [], 0
        with reader.shuffled_files(rng):
            for x, y in self.batches(limit=buffer):
                for i in range(len(x)):
                    # Copies: a view would keep its whole batch alive.
                    if seen < count:
                        kept_x.append(x[i].copy())
                        kept_y.append(None if y is None else y[i])
                    else:
                        slot = int(rng.integers(0, seen + 1))
                        if slot < count:
                            kept_x[slot] = x[i].copy()
                            kept_y[slot] = None if y is None else y[i]
                    seen += 1
        y = None if not kept_y or kept_y[0] is None else np.asarray(kept_y, np.int64)
        return Dataset(np.stack(kept_x), y, self.class_names, self.source)

    def take(self, count: int | None, seed: int | None = None):
        """The first ``count`` samples (a seeded random choice with ``seed``) in memory."""
        if count is None:
            return self
        return (
            self.sample(count, seed=seed)
            if seed is not None
            else self._collect(self.batches(limit=count))
        )

    def read(self) -> Dataset:
        """The whole set in memory (for small sets only)."""
        return self._collect(self.batches())

    def _collect(self, batches) -> Dataset:
        xs, ys = [], []
        for x, y in batches:
            xs.append(x)
            ys.append(y)
        if not xs:
            raise DataError(f"{self.name} ({self.source}) is empty: no samples", DATA_HINT)
        y = None if ys[0] is None else np.concatenate(ys)
        return Dataset(np.concatenate(xs), y, self.class_names, self.source)

    def _whole_if_under(self, limit: int):
        if limit <= 0:
            return None
        per_sample = 4 * int(np.prod(self.input_shape)) + 8
        xs, ys, size = [], [], 0
        for x, y in self.batches():
            xs.append(x)
            ys.append(y)
            size += per_sample * len(x)
            if size > limit:
                return None
        y = None if ys[0] is None else np.concatenate(ys)
        return Dataset(np.concatenate(xs), y, self.class_names, self.source)

    def key(self) -> str:
        """A short content key: the files' names, sizes and times (not their bytes).

        Example:
            >>> len(stream.key())  # doctest: +SKIP
            16
        """
        return self._reader.key()

    def as_tf_dataset(
        self, batch_size: int = 32, *, shuffle: bool = False, seed: int = 0, prefetch: bool = True
    ):
        """A ``tf.data.Dataset`` of checked ``(x, y)`` batches (``x`` alone without labels).

        With ``shuffle``, every pass is in a new seeded order: a permutation of the whole set for
        random-access forms (npz, image folders, arrays); for TFRecord shards a shuffled file
        order and a shuffle buffer of :data:`SHUFFLE_RECORDS` serialized records (decoded after
        it, so the buffer costs a few KB a record); a ``tf.data`` pipeline or a compressed
        ``.npz`` is read in its own order (shuffle a pipeline yourself).

        Example:
            >>> model.fit(stream.as_tf_dataset(32, shuffle=True), epochs=1)  # doctest: +SKIP
        """
        from tfedge.core.backend import tf

        epoch = [0]
        random_access = self._reader.random_access

        def generate():
            rng = np.random.default_rng(seed + epoch[0])
            epoch[0] += 1
            if shuffle and random_access:
                yield from self.batches(batch_size, order=rng.permutation(len(self)))
                return
            if not shuffle:
                yield from self.batches(batch_size)
                return
            with self._reader.shuffled_files(rng):
                yield from self.batches(batch_size, shuffle=int(rng.integers(2**31)))

        x_spec = tf.TensorSpec((None, *self.input_shape), tf.float32)
        if self.has_labels:
            signature = (x_spec, tf.TensorSpec((None,), tf.int64))
            gen = generate
        else:
            signature = x_spec

            def gen():
                for x, _ in generate():
                    yield x

        dataset = tf.data.Dataset.from_generator(gen, output_signature=signature)
        count = self._reader.known_count()
        if count is not None:
            dataset = dataset.apply(
                tf.data.experimental.assert_cardinality(math.ceil(count / batch_size))
            )
        return dataset.prefetch(tf.data.AUTOTUNE) if prefetch else dataset

    def save(self, path) -> Path:
        """Write the set as an uncompressed ``.npz`` (``x`` float32, ``y``), batch by batch.

        The archive can be memory-mapped by its readers.

        Example:
            >>> stream.save("val.npz")  # doctest: +SKIP
        """
        return write_npz(path, self.batches(), len(self), self.input_shape)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _LazyColumn:
    """``stream.x`` / ``stream.y``: reads only the samples a slice or an index array asks for."""

    def __init__(self, stream: DataStream, column: int):
        self.stream = stream
        self.column = column

    def __len__(self):
        return len(self.stream)

    @property
    def shape(self):
        return (
            (len(self.stream), *self.stream.input_shape)
            if self.column == 0
            else (len(self.stream),)
        )

    @property
    def dtype(self):
        return np.dtype(np.float32 if self.column == 0 else np.int64)

    def __getitem__(self, key):
        stream = self.stream
        if isinstance(key, slice):
            start, stop, step = key.indices(len(stream))
            index = np.arange(start, stop, step)
        else:
            index = np.asarray(key)
            if index.ndim == 0:
                return self[index.reshape(1)][0]
        if stream._reader.random_access:
            order = np.argsort(index, kind="stable")
            parts = [b[self.column] for b in stream.batches(order=index[order])]
            values = np.concatenate(parts)
            result = np.empty_like(values)
            result[order] = values
            return result
        wanted = {int(i): n for n, i in enumerate(index)}
        out = [None] * len(index)
        position = 0
        for batch in stream.batches(limit=int(index.max()) + 1 if len(index) else 0):
            for i, value in enumerate(batch[self.column]):
                spot = wanted.get(position + i)
                if spot is not None:
                    out[spot] = value
            position += len(batch[0])
        return np.stack(out) if out else np.zeros((0,), self.dtype)

    def __array__(self, dtype=None, copy=None):
        values = self[:]
        return values if dtype is None else values.astype(dtype)


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


def _file_key(paths) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class _Reader:
    """What :class:`DataStream` needs of a form: raw batches, a count, where a sample lives."""

    source = "data"
    class_names = None
    random_access = False

    def estimate_bytes(self):
        return None

    def known_count(self):
        return self.count()

    def locate(self, index: int) -> str | None:
        return None

    def shuffled_files(self, rng):
        return _nothing()

    def key(self) -> str:
        return (
            _file_key([self.source])
            if os.path.exists(self.source)
            else hashlib.sha256(self.source.encode()).hexdigest()[:16]
        )


class _ArrayReader(_Reader):
    """Numpy arrays, or an ``.npz`` memory-mapped."""

    random_access = True

    def __init__(self, x, y, source, files=()):
        self.x, self.y, self.source, self.files = x, y, source, list(files)
        if y is not None and len(y) != len(x):
            raise DataError(
                f"{source} has {len(x)} inputs but {len(y)} labels",
                "x and y must be the same length",
            )

    def estimate_bytes(self):
        return 4 * int(np.prod(self.x.shape)) if self.x.ndim else 0

    def count(self):
        return len(self.x)

    def raw(self, batch_size, order=None, shuffle=None):
        y = self.y
        if order is None:
            for start in range(0, len(self.x), batch_size):
                part = slice(start, start + batch_size)
                yield self._read(part), None if y is None else y[part], None
            return
        order = np.asarray(order)
        for start in range(0, len(order), batch_size):
            ids = order[start : start + batch_size]
            yield self._read(ids), None if y is None else y[ids], ids

    def _read(self, index):
        """A copy of ``x[index]``; a memory-mapped file's pages are handed back once read (they
        would otherwise count in the process's resident memory until the kernel needs them)."""
        values = np.array(self.x[index])
        mapping = getattr(self.x, "_mmap", None)
        if mapping is not None and hasattr(mapping, "madvise"):
            import mmap

            mapping.madvise(mmap.MADV_DONTNEED)
        return values

    def key(self):
        if self.files:
            return _file_key(self.files)
        digest = hashlib.sha256()
        for start in range(0, len(self.x), 4096):
            digest.update(np.ascontiguousarray(self.x[start : start + 4096]).tobytes())
        if self.y is not None:
            digest.update(np.ascontiguousarray(self.y).tobytes())
        return digest.hexdigest()[:16]


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


class _FolderReader(_Reader):
    """An image folder: files listed once, decoded per batch by ``tf.data``."""

    random_access = True

    def __init__(self, path: Path, input_shape, name):
        # The listing and its errors are load_data's own (the same words whether read whole or not).
        import tfedge.core.data as data_module

        self.path = path
        self.source = str(path)
        self.name = name
        self.class_names, files = data_module._folder_files(path, name)
        self.files = np.array([str(f) for f, _ in files])
        self.labels = np.array([label for _, label in files], dtype=np.int64)
        self.height = self.width = None
        self.channels = 3
        if input_shape is not None and len(input_shape) == 3:
            self.height, self.width, self.channels = input_shape
            self.channels = self.channels or 3
        if self.height is None:
            first = self._decode_eager(self.files[0])
            self.height, self.width = int(first.shape[0]), int(first.shape[1])

    def estimate_bytes(self):
        return 4 * len(self.files) * self.height * self.width * self.channels

    def count(self):
        return len(self.files)

    def locate(self, index):
        return self.files[index]

    def key(self):
        return _file_key(self.files)

    def _decode_eager(self, file):
        from tfedge.core.backend import tf

        try:
            with quiet():  # libjpeg's own "Input file read error" line on stderr
                image = tf.io.decode_image(
                    tf.io.read_file(str(file)), channels=self.channels, expand_animations=False
                )
        except Exception as exc:
            raise InputFileError(
                f"cannot decode image {file}: {tf_message(exc)}", DATA_HINT
            ) from None
        if self.height is not None and (
            image.shape[0] != self.height or image.shape[1] != self.width
        ):
            image = tf.image.resize(image, (self.height, self.width), method="bilinear")
        return np.asarray(image, dtype=np.float32)

    def raw(self, batch_size, order=None, shuffle=None):
        from tfedge.core.backend import tf

        ids = np.arange(len(self.files)) if order is None else np.asarray(order)
        height, width, channels = self.height, self.width, self.channels

        def decode(file):
            image = tf.io.decode_image(
                tf.io.read_file(file), channels=channels, expand_animations=False
            )
            same = tf.logical_and(tf.shape(image)[0] == height, tf.shape(image)[1] == width)
            image = tf.cond(
                same,
                lambda: tf.cast(image, tf.float32),
                lambda: tf.image.resize(image, (height, width), method="bilinear"),
            )
            image.set_shape((height, width, channels))
            return image

        dataset = (
            tf.data.Dataset.from_tensor_slices(self.files[ids])
            .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size)
            .prefetch(2)
        )
        iterator = iter(dataset)
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            try:
                x = next(iterator).numpy()
            except (tf.errors.OpError, StopIteration):
                for index in chunk:  # the file tf.data stopped on, named by the eager decoder
                    self._decode_eager(self.files[index])
                raise InputFileError(
                    f"cannot decode the images {self.files[chunk[0]]} ...", DATA_HINT
                ) from None
            yield x, self.labels[chunk], chunk


class _TfRecordReader(_Reader):
    """TFRecord shards of ``tf.train.Example`` records, read in file order by ``tf.data``."""

    def __init__(self, spec: str, input_shape, name):
        pattern, _, options = spec.partition("#")
        self.features = dict(TFRECORD_FEATURES)
        for part in filter(None, options.split(",")):
            key, eq, value = part.partition("=")
            if not eq or key.strip() not in self.features:
                raise DataError(
                    f"{name} TFRecord option {part!r} is not image=KEY or label=KEY", TFRECORD_HINT
                )
            self.features[key.strip()] = value.strip() or None
        self.files = sorted(glob.glob(os.path.expanduser(pattern)))
        self.source = pattern
        self.name = name
        if not self.files:
            raise InputFileError(f"{name}: no TFRecord files match {pattern}", TFRECORD_HINT)
        self.order = list(self.files)
        self.counts = None
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self._inspect_first()

    def _inspect_first(self):
        from tfedge.core.backend import tf

        first = None
        for file in self.files:
            try:
                first = next(iter(tf.data.TFRecordDataset(file).take(1)), None)
            except tf.errors.OpError as exc:
                raise InputFileError(
                    f"cannot read TFRecord file {file}: {first_line(exc)}", TFRECORD_HINT
                ) from None
            if first is not None:
                self.first_file = file
                break
        if first is None:
            raise DataError(
                f"{self.name}: the TFRecord files {self.source} hold no records", TFRECORD_HINT
            )
        try:
            example = tf.train.Example.FromString(first.numpy())
        except Exception as exc:
            raise InputFileError(
                f"{self.first_file} record 0 is not a tf.train.Example: {str(exc)[:100]}",
                TFRECORD_HINT,
            ) from None
        found = example.features.feature
        image_key, label_key = self.features["image"], self.features["label"]
        if image_key not in found:
            raise DataError(
                f"{self.name} ({self.first_file}) record 0 has features {sorted(found)[:10]}; "
                f"expected the image in {image_key!r}",
                TFRECORD_HINT,
            )
        self.kind = found[image_key].WhichOneof("kind")
        if self.kind == "bytes_list":
            self.height = self.width = None
            self.channels = 3
            if self.input_shape is not None and len(self.input_shape) == 3:
                self.height, self.width, self.channels = self.input_shape
                self.channels = self.channels or 3
            if self.height is None:
                image = tf.io.decode_image(
                    found[image_key].bytes_list.value[0], channels=3, expand_animations=False
                )
                self.height, self.width = int(image.shape[0]), int(image.shape[1])
            self.sample_shape = (self.height, self.width, self.channels)
        else:
            values = getattr(found[image_key], self.kind).value
            shape = self.input_shape
            if shape is None or any(d is None for d in shape) or int(np.prod(shape)) != len(values):
                shape = (len(values),)
            self.sample_shape = tuple(shape)
        self.labelled = bool(label_key) and label_key in found
        if label_key and not self.labelled and label_key != TFRECORD_FEATURES["label"]:
            # A label feature the user named and the records lack: accuracy would silently vanish.
            raise DataError(
                f"{self.name} ({self.first_file}) record 0 has features {sorted(found)[:10]}; "
                f"expected the label in {label_key!r}",
                TFRECORD_HINT,
            )

    def estimate_bytes(self):
        return None

    def known_count(self):
        return None if self.counts is None else sum(self.counts.values())

    def count(self):
        if self.counts is None:
            from tfedge.core.backend import tf

            self.counts = {
                file: int(tf.data.TFRecordDataset(file).reduce(np.int64(0), lambda n, _: n + 1))
                for file in self.files
            }
        return sum(self.counts.values())

    def shuffled_files(self, rng):
        reader = self

        class _Order:
            def __enter__(self):
                reader.order = [reader.files[i] for i in rng.permutation(len(reader.files))]

            def __exit__(self, *exc):
                reader.order = list(reader.files)
                return False

        return _Order()

    def locate(self, index):
        self.count()
        for file in self.order:
            if index < self.counts[file]:
                return f"{file} record {index}"
            index -= self.counts[file]
        return None

    def key(self):
        return _file_key(self.files)

    def _parse(self):
        from tfedge.core.backend import tf

        image_key, label_key = self.features["image"], self.features["label"]
        spec = {}
        if self.kind == "bytes_list":
            spec[image_key] = tf.io.FixedLenFeature([], tf.string)
        else:
            dtype = tf.float32 if self.kind == "float_list" else tf.int64
            spec[image_key] = tf.io.FixedLenFeature([int(np.prod(self.sample_shape))], dtype)
        if self.labelled:
            spec[label_key] = tf.io.FixedLenFeature([], tf.int64)
        height, width, channels = (self.sample_shape + (None, None, None))[:3]
        shape = self.sample_shape

        def parse(record):
            features = tf.io.parse_single_example(record, spec)
            if self.kind == "bytes_list":
                image = tf.io.decode_image(
                    features[image_key], channels=channels, expand_animations=False
                )
                same = tf.logical_and(tf.shape(image)[0] == height, tf.shape(image)[1] == width)
                image = tf.cond(
                    same,
                    lambda: tf.cast(image, tf.float32),
                    lambda: tf.image.resize(image, (height, width), method="bilinear"),
                )
                image.set_shape(shape)
            else:
                image = tf.reshape(tf.cast(features[image_key], tf.float32), shape)
            if self.labelled:
                return image, features[label_key]
            return (image,)

        return parse

    def raw(self, batch_size, order=None, shuffle=None):
        from tfedge.core.backend import tf

        parse = self._parse()
        records = tf.data.TFRecordDataset(self.order)
        if shuffle is not None:  # the serialized records, a few KB each, numbered in file order
            records = records.enumerate().shuffle(SHUFFLE_RECORDS, seed=int(shuffle))

            def numbered(index, record):
                return (index, *parse(record))

            decoded = records.map(numbered, num_parallel_calls=tf.data.AUTOTUNE)
        else:
            decoded = records.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        iterator = iter(decoded.batch(batch_size).prefetch(2))
        position = 0
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except tf.errors.OpError as exc:
                start, count = (0, None) if shuffle is not None else (position, batch_size)
                raise self._bad_record(start, count, parse, exc) from None
            ids = None
            if shuffle is not None:
                ids, batch = batch[0].numpy(), batch[1:]
            x = batch[0].numpy()
            y = batch[1].numpy() if self.labelled else None
            yield x, y, ids
            position += len(x)

    def _bad_record(self, position, count, parse, exc):
        """The error for the first record from ``position`` (``count`` of them, None: all) that
        does not parse or decode."""
        from tfedge.core.backend import tf

        records = tf.data.TFRecordDataset(self.order).skip(position)
        if count is not None:
            records = records.take(count)
        for offset, record in enumerate(records):
            try:
                parse(record)
            except (tf.errors.OpError, ValueError) as inner:
                where = self.locate(position + offset)
                return DataError(
                    f"{self.name} ({self.source}) sample {position + offset} ({where}) cannot be read: "
                    f"{tf_message(inner)}",
                    TFRECORD_HINT,
                )
        return InputFileError(
            f"cannot read {self.name} ({self.source}): {tf_message(exc)}", TFRECORD_HINT
        )


class _TfDatasetReader(_Reader):
    """A user's ``tf.data.Dataset``, batched or not, read front to back."""

    def __init__(self, dataset, input_shape, name):
        from tfedge.core.backend import tf

        if int(dataset.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            raise DataError(
                f"{name} tf.data.Dataset is infinite (it repeats)",
                "pass one pass over the data: drop .repeat(), or add .take(N)",
            )
        self.dataset = dataset
        self.source = "tf.data.Dataset"
        self.rank = None if input_shape is None else len(input_shape)
        self.name = name
        self.counted = None

    def known_count(self):
        return self.counted

    def count(self):
        if self.counted is None:
            self.counted = sum(len(x) for x, _, _ in self.raw(DEFAULT_BATCH))
        return self.counted

    def key(self):
        digest = hashlib.sha256()
        for x, y, _ in self.raw(DEFAULT_BATCH):
            digest.update(np.ascontiguousarray(x).tobytes())
            if y is not None:
                digest.update(np.ascontiguousarray(y).tobytes())
        return digest.hexdigest()[:16]

    def raw(self, batch_size, order=None, shuffle=None):
        pending_x, pending_y = [], []
        for element in self.dataset.as_numpy_iterator():
            if isinstance(element, dict):
                x, y = element.get("x"), element.get("y")
            elif isinstance(element, (tuple, list)):
                x, y = element[0], (element[1] if len(element) > 1 else None)
            else:
                x, y = element, None
            x = np.asarray(x)
            batched = x.ndim > self.rank if self.rank is not None else x.ndim >= 2
            if batched:
                if pending_x:
                    yield _stack(pending_x, pending_y)
                    pending_x, pending_y = [], []
                yield x, None if y is None else np.asarray(y), None
                continue
            pending_x.append(x)
            pending_y.append(y)
            if len(pending_x) >= batch_size:
                yield _stack(pending_x, pending_y)
                pending_x, pending_y = [], []
        if pending_x:
            yield _stack(pending_x, pending_y)


def _stack(xs, ys):
    y = None if ys[0] is None else np.asarray(ys)
    return np.stack(xs), y, None
