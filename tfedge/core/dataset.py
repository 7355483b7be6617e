"""A data set held in memory: inputs ``x``, optional integer labels ``y``, read in batches.

:func:`tfedge.core.data.load_data` makes one from whatever form the user has; a
:class:`~tfedge.core.streams.DataStream` reads the same way without holding the set whole.

Example:
    >>> from tfedge.core.dataset import Dataset
    >>> [len(x) for x, _ in Dataset(np.zeros((5, 2))).batches(2)]  # doctest: +SKIP
    [2, 2, 1]
"""

# TensorFlow loads inside the functions that use it: `tfedge --help` and `tfedge inspect` import
# this module through tfedge.core.data (0.15 s, against 4.5 s with TensorFlow).
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfedge.core.files import atomic_file

__all__ = ["Dataset", "sharded", "DATA_HINT"]

DATA_HINT = (
    "pass an .npz with arrays x (inputs) and y (labels), e.g. numpy.savez('d.npz', x=x, y=y), "
    "or a folder of images with one sub-folder per class"
)


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
