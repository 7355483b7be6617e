"""The :class:`DataStream`: a data set read in checked batches, never held whole."""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
import math
from pathlib import Path

import numpy as np

from tfedge.core.data import DATA_HINT, Dataset, _checked, check_labels, sharded
from tfedge.core.errors import DataError
from tfedge.core.streams.npz import write_npz
from tfedge.core.streams.readers import BATCH_BYTES, DEFAULT_BATCH, SAMPLE_BUFFER_FACTOR


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

    def __init__(self, reader, *, input_shape=None, name="data", num_classes=None, batch_size=None):
        self._reader = reader
        self._wanted_shape = None if input_shape is None else tuple(input_shape)
        self.name = name
        self.num_classes = num_classes
        self.batch_size = int(batch_size or DEFAULT_BATCH)
        self.source = reader.source
        self.class_names = reader.class_names
        first = next(self.batches(min(self.batch_size, 64)), None)
        if first is None:
            raise DataError(f"{name} ({self.source}) is empty: no samples", DATA_HINT)
        self.input_shape = tuple(first[0].shape[1:])
        self.has_labels = first[1] is not None
        if batch_size is None:  # large samples: fewer a batch, so a read holds tens of MB
            per_sample = 4 * max(1, math.prod(self.input_shape))
            self.batch_size = max(1, min(DEFAULT_BATCH, BATCH_BYTES // per_sample))

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

    def picked(self, select: np.ndarray):
        """Yield the checked batches, in order, with only the samples ``select`` marks.

        Args:
            select: one bool per sample of the stream.

        Example:
            >>> mask = np.arange(len(stream)) % 4 == 0  # doctest: +SKIP
            >>> sum(len(x) for x, _ in stream.picked(mask)) == mask.sum()  # doctest: +SKIP
            True
        """
        start = 0
        for x, y in self.batches():
            keep = select[start : start + len(x)]
            start += len(x)
            if keep.any():
                yield x[keep], (None if y is None else y[keep])

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
        self,
        batch_size: int = 32,
        *,
        shuffle: bool = False,
        seed: int = 0,
        prefetch: bool = True,
        workers: int = 1,
    ):
        """A ``tf.data.Dataset`` of checked ``(x, y)`` batches (``x`` alone without labels).

        With ``shuffle``, every pass is in a new seeded order: a permutation of the whole set for
        random-access forms (npz, image folders, arrays); for TFRecord shards a shuffled file
        order and a shuffle buffer of :data:`SHUFFLE_RECORDS` serialized records (decoded after
        it, so the buffer costs a few KB a record); a ``tf.data`` pipeline or a compressed
        ``.npz`` is read in its own order (shuffle a pipeline yourself).

        TFRecord shards and image folders come from a ``tf.data`` pipeline over their file
        list, decoded in the graph by ``tf.data``'s parallel map (as fast as a hand-written
        pipeline: no Python per batch). Their labels are checked in the graph; the samples'
        shapes are the model's by the decoding. A bad record or label then fails inside
        ``fit`` as a TensorFlow error: :meth:`locate_error` turns it into the ``DataError``
        naming the file or record. With ``workers`` above 1 (a MultiWorkerMirroredStrategy),
        each worker reads a share of that file list (FILE auto-sharding: every ``workers``-th
        file; at least as many files as workers). Other forms (``.npz``, arrays, a ``tf.data``
        pipeline), or fewer files than workers: the checked batches of :meth:`batches`, of
        which each worker keeps every ``workers``-th (DATA auto-sharding: all read, each
        trains on its share).

        Example:
            >>> model.fit(stream.as_tf_dataset(32, shuffle=True), epochs=1)  # doctest: +SKIP
        """
        from tfedge.core.backend import tf

        files = getattr(self._reader, "files", ())
        if hasattr(self._reader, "file_dataset") and len(files) >= workers:
            dataset = self._reader.file_dataset(batch_size, shuffle=shuffle, seed=seed)
            if dataset is not None:
                dataset = self._labels_checked(dataset)
                if workers > 1:
                    dataset = sharded(dataset, workers, by_file=True)
                return dataset.prefetch(tf.data.AUTOTUNE) if prefetch else dataset

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
        dataset = sharded(dataset, workers)
        return dataset.prefetch(tf.data.AUTOTUNE) if prefetch else dataset

    def _labels_checked(self, dataset):
        """``dataset`` (batches) with its labels asserted to be class ids of the model."""
        if not self.has_labels or self.num_classes is None:
            return dataset
        from tfedge.core.backend import tf

        classes = max(int(self.num_classes), 2)

        def check(x, y):
            valid = tf.reduce_all((y >= 0) & (y < classes))
            with tf.control_dependencies(
                [tf.debugging.Assert(valid, [f"{self.name}: a label is not a class id"])]
            ):
                return x, tf.identity(y)

        return dataset.map(check)

    def locate_error(self, error: Exception) -> Exception:
        """The ``DataError`` naming the bad sample behind a TensorFlow ``error`` of the graph
        pipeline, or ``error`` itself when every sample is good (the error is not the data's).

        It reads the set once more through the checked batches, which name the file, record or
        index of the first bad sample or label.

        Example:
            >>> try:  # doctest: +SKIP
            ...     model.fit(stream.as_tf_dataset(32))
            ... except tf.errors.InvalidArgumentError as exc:
            ...     raise stream.locate_error(exc) from None
        """
        try:
            for _ in self.batches():
                pass
        except DataError as found:
            return found
        return error

    def save(self, path) -> Path:
        """Write the set as an uncompressed ``.npz`` (``x`` float32, ``y``), batch by batch.

        The archive can be memory-mapped by its readers.

        Example:
            >>> stream.save("val.npz")  # doctest: +SKIP
        """
        return write_npz(path, self.batches(), len(self), self.input_shape)


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
