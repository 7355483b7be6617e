"""What a :class:`~tfedge.core.streams.stream.DataStream` reads through: the reader protocol,
numpy arrays (an ``.npz`` memory-mapped among them) and a user's ``tf.data.Dataset``."""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
import hashlib
import os

import numpy as np

from tfedge.core.data import split_element
from tfedge.core.errors import DataError

#: Sequential sources draw ``count`` calibration samples from the first ``factor * count``.
SAMPLE_BUFFER_FACTOR = 10
#: Shuffled passes over TFRecord shards draw from a buffer of this many (serialized) records.
SHUFFLE_RECORDS = 4096
#: The batch of a stream's reads and checks: at most this many samples...
DEFAULT_BATCH = 256
#: ...and at most this many bytes as float32 (55 samples of 224x224x3), so that a read holds a few
#: tens of MB whatever the input size.
BATCH_BYTES = 32 * 2**20


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def decode_resized(encoded, height: int, width: int, channels: int):
    """In a ``tf.data`` map: decode an encoded image to float32 ``(height, width, channels)``.

    Resized (bilinear) only where its size differs; raw 0-255 values, as
    :func:`~tfedge.core.data.load_data` reads an image.

    Example:
        >>> folder.map(lambda f: decode_resized(tf.io.read_file(f), 96, 96, 3))  # doctest: +SKIP
    """
    from tfedge.core.backend import tf

    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    same = tf.logical_and(tf.shape(image)[0] == height, tf.shape(image)[1] == width)
    image = tf.cond(
        same,
        lambda: tf.cast(image, tf.float32),
        lambda: tf.image.resize(image, (height, width), method="bilinear"),
    )
    image.set_shape((height, width, channels))
    return image


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
            x, y = split_element(element)
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
