"""The checks every data set and every streamed batch pass: numbers, finite, the model's shape, class ids.

Each failure names the data, the first bad sample's index (and its file where known) and the fix.

Example:
    >>> from tfedge.core.data_checks import check_labels
    >>> check_labels(Dataset(np.zeros((2, 4)), np.array([0, 1])), 10)  # doctest: +SKIP
"""

import numpy as np

from tfedge.core.dataset import DATA_HINT, Dataset
from tfedge.core.errors import DataError

__all__ = ["check_labels"]


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
