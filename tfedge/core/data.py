"""Data sets for calibration, evaluation and fine-tuning, from any of the forms a user has.

Accepted: an ``.npz`` file with ``x`` (inputs, float32, NHWC for images) and optional ``y``
(integer labels); a directory of images in one sub-folder per class (sorted folder names are the
class ids, as ``image_dataset_from_directory``); numpy arrays ``x`` or ``(x, y)``; a
``tf.data.Dataset`` yielding ``x`` or ``(x, y)``, batched or not.

Example:
    >>> data = load_data("digits.npz", input_shape=(16, 16, 1))  # doctest: +SKIP
    >>> data.x.shape, data.y.shape  # doctest: +SKIP
    ((397, 16, 16, 1), (397,))
"""

import glob
import os
from pathlib import Path

import numpy as np

from tfedge.core.data_checks import _checked, _where, check_labels
from tfedge.core.data_readers import _load_folder, _load_npz, _load_tf_dataset, split_element
from tfedge.core.dataset import DATA_HINT, Dataset, sharded
from tfedge.core.errors import DataError, missing_file

__all__ = [
    "Dataset",
    "load_data",
    "check_labels",
    "is_tfrecord",
    "DATA_HINT",
    "sharded",
    "split_element",
]


def load_data(
    source,
    *,
    input_shape=None,
    require_labels: bool = False,
    limit: int | None = None,
    name: str = "data",
    num_classes: int | None = None,
) -> Dataset:
    """Load a data set from a path, arrays or a ``tf.data.Dataset``, checked against the model.

    Args:
        source: ``.npz`` path, image folder, ``x``, ``(x, y)``, a dict with ``x``/``y``, a
            :class:`Dataset` or a ``tf.data.Dataset``.
        input_shape: the model's input shape without the batch axis (e.g. ``(16, 16, 1)``); images
            are resized to it, and ``x`` is checked against it.
        require_labels: raise when there is no ``y``.
        limit: keep at most this many samples.
        name: what to call the data in messages (``--calib``, ``--val``...).
        num_classes: the model's class count (its output width; 1 is a binary classifier with
            labels 0 and 1); labels outside ``0..num_classes - 1`` are refused.

    Returns:
        A :class:`Dataset` with float32 ``x``.

    Raises:
        InputFileError: missing or unreadable file.
        DataError: missing arrays, an empty set, a wrong dtype or shape, NaN or infinite
            inputs, labels that are not class ids or lie outside the model's classes; each
            names the data and the first bad sample's index.

    Example:
        >>> load_data((np.zeros((4, 8)), np.arange(4))).x.dtype
        dtype('float32')
    """
    if isinstance(source, Dataset):
        data = source
    elif hasattr(source, "batches") and hasattr(source, "as_tf_dataset"):  # a DataStream
        if require_labels and not source.has_labels:
            raise DataError(
                f"{_where(name, source.source)} has no labels (y)",
                "add integer labels (an .npz's y, class sub-folders, a TFRecord label feature)",
            )
        return source
    elif isinstance(source, (str, Path)) and is_tfrecord(source):
        raise DataError(
            f"{name} {source} is TFRecord shards, which are read as a stream",
            "open them with tfedge.core.streams.stream_data(...) (the command line does)",
        )
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise missing_file(name, path, DATA_HINT)
        data = _load_folder(path, input_shape, name) if path.is_dir() else _load_npz(path, name)
    elif isinstance(source, dict):
        if "x" not in source:
            raise DataError(
                f"{name} dict has keys {sorted(source)}; expected 'x' and 'y'", DATA_HINT
            )
        data = Dataset(np.asarray(source["x"]), _optional(source.get("y")), source=name)
    elif isinstance(source, tuple) and len(source) == 2:
        data = Dataset(np.asarray(source[0]), _optional(source[1]), source=name)
    elif isinstance(source, np.ndarray):
        data = Dataset(source, None, source=name)
    elif type(source).__module__.startswith("tensorflow") and hasattr(source, "element_spec"):
        data = _load_tf_dataset(source, input_shape, name, limit)
    else:
        raise DataError(f"{name} of type {type(source).__name__} is not a data set", DATA_HINT)
    data = _checked(data, input_shape, name)
    if num_classes is not None:
        check_labels(data, num_classes, name)
    if require_labels and data.y is None:
        raise DataError(
            f"{name} ({data.source}) has no labels (y)",
            "add the integer labels as array 'y' in the .npz, or use a class-per-folder image tree",
        )
    return data.take(limit)


def is_tfrecord(source) -> bool:
    """True for a TFRecord glob or file name (``'shards/*.tfrecord'``, ``'a.tfrecord#image=k'``).

    Example:
        >>> is_tfrecord("shards/train-*.tfrecord"), is_tfrecord("digits.npz")
        (True, False)
    """

    if not isinstance(source, (str, os.PathLike)):
        return False
    text = str(source).split("#", 1)[0]
    name = text.rsplit("/", 1)[-1].lower()
    if ".tfrecord" in name or name.endswith((".tfrec", ".record")):
        return True
    return glob.has_magic(text) and not Path(text).exists()


def _optional(y):
    return None if y is None else np.asarray(y)
