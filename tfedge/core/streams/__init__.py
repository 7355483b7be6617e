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

import os
from pathlib import Path

import numpy as np

from tfedge.core.data import Dataset, _where, is_tfrecord, load_data
from tfedge.core.errors import DataError
from tfedge.core.streams.folder import _FolderReader
from tfedge.core.streams.npz import _npz_reader, write_npz
from tfedge.core.streams.readers import (
    BATCH_BYTES,
    DEFAULT_BATCH,
    SAMPLE_BUFFER_FACTOR,
    SHUFFLE_RECORDS,
    _ArrayReader,
    _TfDatasetReader,
)
from tfedge.core.streams.stream import DataStream
from tfedge.core.streams.tfrecord import TFRECORD_FEATURES, _TfRecordReader

__all__ = [
    "DataStream",
    "stream_data",
    "calibration_samples",
    "is_tfrecord",
    "IN_MEMORY_BYTES",
    "TFRECORD_FEATURES",
    "SAMPLE_BUFFER_FACTOR",
    "SHUFFLE_RECORDS",
    "DEFAULT_BATCH",
    "BATCH_BYTES",
    "write_npz",
]

#: Sets up to this size (as float32) are read whole; larger ones stream.
IN_MEMORY_BYTES = 64 * 2**20


def stream_data(
    source,
    *,
    input_shape=None,
    require_labels: bool = False,
    name: str = "data",
    num_classes: int | None = None,
    batch_size: int | None = None,
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
        batch_size: the batch size of the checks and of :meth:`DataStream.batches` by default
            (None: :data:`DEFAULT_BATCH` samples, fewer where they would hold over
            :data:`BATCH_BYTES` as float32).
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
