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

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
import glob
import hashlib
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfedge.core.console import quiet
from tfedge.core.errors import DataError, InputFileError, missing_file, tf_message
from tfedge.core.files import atomic_file

__all__ = ["Dataset", "load_data", "check_labels", "is_tfrecord", "DATA_HINT"]

DATA_HINT = (
    "pass an .npz with arrays x (inputs) and y (labels), e.g. numpy.savez('d.npz', x=x, y=y), "
    "or a folder of images with one sub-folder per class"
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


@dataclass
class Dataset:
    """Inputs ``x`` (float32, first axis = samples), optional integer labels ``y``.

    Attributes:
        x: the inputs.
        y: the labels (int64), or None.
        class_names: the class names of an image folder, else None.
        source: where the data came from, for messages.
    """

    x: np.ndarray
    y: np.ndarray | None = None
    class_names: list[str] | None = None
    source: str = "data"
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.x))

    def take(self, count: int | None, seed: int | None = None) -> "Dataset":
        """The first ``count`` samples (a seeded random choice when ``seed`` is given)."""
        if count is None or count >= len(self):
            return self
        if seed is None:
            index = np.arange(count)
        else:
            index = np.sort(np.random.default_rng(seed).choice(len(self), count, replace=False))
        y = None if self.y is None else self.y[index]
        return Dataset(self.x[index], y, self.class_names, self.source)

    @property
    def has_labels(self) -> bool:
        return self.y is not None

    @property
    def input_shape(self) -> tuple:
        return tuple(np.shape(self.x)[1:])

    def batches(self, batch_size: int = 256, *, limit: int | None = None, order=None):
        """Yield ``(x, y)`` batches (y None without labels), as a stream does.

        Example:
            >>> [len(x) for x, _ in Dataset(np.zeros((5, 2))).batches(2)]
            [2, 2, 1]
        """
        index = np.arange(len(self) if limit is None else min(limit, len(self)))
        if order is not None:
            index = np.asarray(order)
        contiguous = order is None
        for start in range(0, len(index), batch_size):
            part = (
                slice(start, start + batch_size)
                if contiguous
                else index[start : start + batch_size]
            )
            yield self.x[part], None if self.y is None else self.y[part]

    def sample(self, count: int | None, seed: int | None = 0) -> "Dataset":
        """``count`` samples, a seeded random choice (what calibration uses)."""
        return self.take(count, seed=seed)

    def head(self, count: int) -> np.ndarray:
        """The first ``count`` inputs."""
        return self.x[:count]

    def key(self) -> str:
        """A short digest of the contents (for checkpoints that belong to this data)."""

        digest = hashlib.sha256(np.ascontiguousarray(self.x).tobytes())
        if self.y is not None:
            digest.update(np.ascontiguousarray(self.y).tobytes())
        return digest.hexdigest()[:16]

    def as_tf_dataset(
        self,
        batch_size: int = 32,
        *,
        shuffle: bool = False,
        seed: int = 0,
        prefetch: bool = True,
        workers: int = 1,
    ):
        """A batched ``tf.data.Dataset`` of ``(x, y)`` (``x`` alone without labels).

        With ``workers`` above 1 (a MultiWorkerMirroredStrategy), each worker keeps every
        ``workers``-th batch (``tf.data`` DATA auto-sharding: the data is not in files).

        Example:
            >>> Dataset(np.zeros((4, 2)), np.arange(4)).as_tf_dataset(2).cardinality()  # doctest: +SKIP
        """
        from tfedge.core.backend import tf

        tensors = self.x if self.y is None else (self.x, self.y)
        dataset = tf.data.Dataset.from_tensor_slices(tensors)
        if shuffle:
            dataset = dataset.shuffle(len(self), seed=seed, reshuffle_each_iteration=True)
        dataset = sharded(dataset.batch(batch_size), workers)
        return dataset.prefetch(tf.data.AUTOTUNE) if prefetch else dataset

    def save(self, path) -> Path:
        """Write the data as an ``.npz`` (``x`` and, when known, ``y``)."""
        path = Path(path)
        arrays = {"x": self.x}
        if self.y is not None:
            arrays["y"] = self.y
        with atomic_file(path) as handle:  # exactly ``path``: savez adds .npz only to a name
            np.savez(handle, **arrays)
        return path


def sharded(dataset, workers: int, by_file: bool = False):
    """``dataset`` with how the workers of a MultiWorkerMirroredStrategy split it (1: as it is).

    ``by_file``: each worker reads its own files (``tf.data`` FILE auto-sharding; the pipeline
    must start from a file list); else each keeps every ``workers``-th batch (DATA).

    Example:
        >>> sharded(dataset, 2, by_file=True)  # doctest: +SKIP
    """
    if workers <= 1:
        return dataset
    from tfedge.core.backend import tf

    policy = tf.data.experimental.AutoShardPolicy
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = policy.FILE if by_file else policy.DATA
    return dataset.with_options(options)


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


def _load_npz(path: Path, name: str) -> Dataset:
    if not zipfile.is_zipfile(path):
        raise InputFileError(
            f"{name} file {path} is not an .npz archive (numpy.savez writes a zip)", DATA_HINT
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = list(npz.files)
            if "x" not in files:
                raise DataError(
                    f"{name} file {path} has arrays {files}; expected 'x' (inputs) and optional 'y'",
                    DATA_HINT,
                )
            x = npz["x"]
            y = npz["y"] if "y" in files else None
    except DataError:
        raise
    except Exception as exc:
        raise InputFileError(f"cannot read {name} file {path}: {exc}", DATA_HINT) from exc
    return Dataset(x, y, source=str(path))


def _index(i: int, offset: int = 0, locate=None, index_of=None) -> str:
    """A sample's index in the whole set (and, where known, the file or record it comes from)."""
    index = int(index_of[i]) if index_of is not None else offset + int(i)
    where = locate(i) if locate is not None and index_of is not None else None
    if locate is not None and index_of is None:
        where = locate(index)
    return f"{index} ({where})" if where else str(index)


def _checked(
    data: Dataset, input_shape, name: str, *, offset: int = 0, locate=None, index_of=None
) -> Dataset:
    """Check and convert one set or one batch; ``offset``/``index_of`` give the indexes in messages."""
    x = np.asarray(data.x)
    if (
        x.dtype == object
        or np.issubdtype(x.dtype, np.complexfloating)
        or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool)
    ):
        raise DataError(f"{name} x has dtype {x.dtype}; expected numbers (float32)", DATA_HINT)
    if x.ndim < 1 or len(x) == 0:
        raise DataError(f"{name} x is empty (shape {list(x.shape)})", DATA_HINT)
    x = x.astype(np.float32, copy=False)
    _check_finite(x, name, data.source, offset=offset, locate=locate, index_of=index_of)
    if input_shape is not None:
        want = tuple(input_shape)
        got = tuple(x.shape[1:])
        if not _compatible(got, want):
            if len(got) + 1 == len(want) and want[-1] == 1 and _compatible(got + (1,), want):
                x = x[..., np.newaxis]
            else:
                raise DataError(
                    f"{name} ({data.source}) samples have shape {list(got)} but the model expects "
                    f"{[d if d is not None else 'any' for d in want]}",
                    "give x the model's input shape, [N, "
                    + ", ".join(str(d) if d is not None else "?" for d in want)
                    + "]",
                )
    y = data.y
    if y is not None:
        y = np.asarray(y)
        if len(y) != len(x):
            raise DataError(
                f"{name} has {len(x)} inputs but {len(y)} labels", "x and y must be the same length"
            )
        if y.ndim > 1 and y.shape[-1] > 1:
            y = y.reshape(len(y), -1).argmax(axis=1)
        if not np.issubdtype(y.dtype, np.number) and y.dtype != bool:
            raise DataError(f"{name} y has dtype {y.dtype}; expected integer class ids", DATA_HINT)
        y = y.reshape(len(y))
        if not np.issubdtype(y.dtype, np.integer) and y.dtype != bool:
            bad = ~np.isfinite(y) | (y != np.round(y)) if len(y) else np.zeros(0, bool)
            if bad.any():
                index = int(np.argmax(bad))
                at = _index(index, offset, locate, index_of)
                raise DataError(
                    f"{_where(name, data.source)} label {at} is {_short(y[index])}, not a class id",
                    "labels are integer class ids 0..N-1 (one per sample), e.g. y=np.array([3, 0, 7])",
                )
        y = y.astype(np.int64)
        if len(y) and y.min() < 0:
            index = int(np.argmax(y < 0))
            at = _index(index, offset, locate, index_of)
            raise DataError(
                f"{_where(name, data.source)} label {at} is {int(y[index])}; class ids start at 0",
                "labels are integer class ids 0..N-1 (the index of the model's output)",
            )
    return Dataset(x, y, data.class_names, data.source)


def _where(name: str, source: str) -> str:
    return name if source in (name, "data") else f"{name} ({source})"


def _short(value) -> str:
    return str(value)[:40]


def _check_finite(
    x: np.ndarray, name: str, source: str, *, offset: int = 0, locate=None, index_of=None
) -> None:
    """Refuse NaN or infinite inputs (the quantizer and the accuracy would read them silently).

    The check runs sample by sample in chunks, so a large set costs no second copy.
    """
    flat = x.reshape(len(x), -1) if x.ndim > 1 else x.reshape(len(x), 1)
    for start in range(0, len(flat), 4096):
        finite = np.isfinite(flat[start : start + 4096]).all(axis=1)
        if not finite.all():
            index = start + int(np.argmin(finite))
            value = "NaN" if np.isnan(flat[index]).any() else "infinite"
            at = _index(index, offset, locate, index_of)
            raise DataError(
                f"{_where(name, source)} sample {at} holds {value} values",
                "clean the inputs (e.g. numpy.nan_to_num) or drop those samples",
            )


def check_labels(
    data: Dataset,
    num_classes: int,
    name: str = "data",
    *,
    offset: int = 0,
    locate=None,
    index_of=None,
) -> None:
    """Refuse labels the model cannot predict: accuracy would silently read 0 % for them.

    Args:
        data: a loaded data set (no labels: nothing to check).
        num_classes: the model's output width; 1 is a binary classifier (labels 0 and 1).
        name: what to call the data in messages.
        offset: the index of the first sample (for one batch of a stream).
        locate: ``index -> str``, the file or record a sample comes from (for messages).
        index_of: the sample indexes of a batch read out of order (instead of ``offset``).

    Raises:
        DataError: naming the first label outside ``0..classes - 1`` and its index.

    Example:
        >>> check_labels(Dataset(np.zeros((2, 4)), np.array([0, 12])), 10, "--data")
        Traceback (most recent call last):
        ...
        tfedge.core.errors.DataError: --data label 1 is 12 but the model has 10 classes (0..9)
    """
    if data.y is None or not len(data.y):
        return
    classes = max(int(num_classes), 2)
    kind = "a one-output binary classifier: " if int(num_classes) == 1 else ""
    bad = (data.y < 0) | (data.y >= classes)
    if bad.any():
        index = int(np.argmax(bad))
        at = _index(index, offset, locate, index_of)
        raise DataError(
            f"{_where(name, data.source)} label {at} is {int(data.y[index])} but the model has "
            f"{classes} classes ({kind}0..{classes - 1})",
            f"give labels 0..{classes - 1} (the index of the model's output), or use the model "
            "the data is labelled for",
        )


def _compatible(got: tuple, want: tuple) -> bool:
    return len(got) == len(want) and all(
        w is None or g == w for g, w in zip(got, want, strict=True)
    )


def _folder_files(path: Path, name: str):
    """The class names and the ``(file, label)`` pairs of a class-per-folder image tree."""
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"{name} folder {path} has no class sub-folders",
            "arrange images as FOLDER/<class name>/<image>.png (one sub-folder per class)",
        )
    files = [
        (f, label)
        for label, cls in enumerate(classes)
        for f in sorted((path / cls).rglob("*"))
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DataError(
            f"{name} folder {path} has class folders {classes[:5]} but no images in them",
            f"supported image types: {', '.join(sorted(IMAGE_SUFFIXES))}",
        )
    return classes, files


def _load_folder(path: Path, input_shape, name: str) -> Dataset:
    classes, files = _folder_files(path, name)
    from tfedge.core.backend import tf

    height = width = None
    channels = 3
    if input_shape is not None and len(input_shape) == 3:
        height, width, channels = input_shape
        channels = channels or 3
    images = []
    for file, _ in files:
        try:
            with quiet():  # libjpeg's own "Input file read error" line on stderr
                image = tf.io.decode_image(
                    tf.io.read_file(str(file)), channels=channels, expand_animations=False
                )
        except Exception as exc:
            raise InputFileError(
                f"cannot decode image {file}: {tf_message(exc)}", DATA_HINT
            ) from None
        if height is None:
            height, width = int(image.shape[0]), int(image.shape[1])
        if image.shape[0] != height or image.shape[1] != width:
            image = tf.image.resize(image, (height, width), method="bilinear")
        images.append(np.asarray(image, dtype=np.float32))
    x = np.stack(images)
    y = np.array([label for _, label in files], dtype=np.int64)
    return Dataset(x, y, classes, str(path))


def split_element(element):
    """``(x as an array, y or None)`` of one ``tf.data`` element: ``x``, ``(x, y)`` or a dict.

    Example:
        >>> split_element({"x": [1.0, 2.0], "y": 1})
        (array([1., 2.]), 1)
    """
    if isinstance(element, dict):
        x, y = element.get("x"), element.get("y")
    elif isinstance(element, (tuple, list)):
        x, y = element[0], (element[1] if len(element) > 1 else None)
    else:
        x, y = element, None
    return np.asarray(x), y


def _load_tf_dataset(dataset, input_shape, name: str, limit: int | None) -> Dataset:
    xs, ys = [], []
    count = 0
    rank = None if input_shape is None else len(input_shape)
    for element in dataset:
        x, y = split_element(element)
        batched = x.ndim > rank if rank is not None else x.ndim >= 2
        if not batched:
            x = x[np.newaxis]
            y = None if y is None else np.asarray(y)[np.newaxis]
        xs.append(x)
        if y is not None:
            ys.append(np.asarray(y))
        count += len(x)
        if limit is not None and count >= limit:
            break
    if not xs:
        raise DataError(f"{name} tf.data.Dataset is empty", DATA_HINT)
    y = np.concatenate(ys) if ys and len(ys) == len(xs) else None
    return Dataset(np.concatenate(xs), y, source="tf.data.Dataset")
