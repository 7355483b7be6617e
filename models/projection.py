"""Pruning and clustering as projections of the kernels, for any Keras (tf_keras or Keras 3).

After every optimizer step a pruned kernel is multiplied by its magnitude mask (recomputed on the
schedule: polynomial or constant sparsity, an M:N pattern or zero blocks), and a clustered kernel
is set to its clusters' means (every weight keeps the cluster k-means gave it when clustering
began; the shared values themselves keep training). Nothing wraps the layers, so a Keras 3 model
stays a plain Keras 3 model, and any kernel can be pruned, depthwise kernels included (tfmot
leaves them dense).

:class:`Projection` holds the kernels and the schedule; :mod:`tfedge.models.wrapping` drives it
from a callback or from ``models.step(model)`` in a custom training loop.

Example:
    >>> plan = Projection(model, prune=0.8, cluster=16)  # doctest: +SKIP
    >>> plan.begin(total_steps=900)  # doctest: +SKIP
    >>> plan.after_step()  # after each optimizer step  # doctest: +SKIP
"""

import numpy as np

from tfedge.core.backend import keras, keras3, tf
from tfedge.core.errors import OptimizationError

__all__ = [
    "Projection",
    "Kernel",
    "magnitude_mask",
    "kmeans_1d",
    "polynomial_sparsity",
    "projection_callback",
    "size_tfmot_schedule",
]


def polynomial_sparsity(step: int, end: int, target: float, power: int = 3) -> float:
    """tfmot's polynomial decay: 0 at step 0, ``target`` from step ``end`` on.

    Example:
        >>> round(polynomial_sparsity(50, 100, 0.8), 6)
        0.7
    """
    if end <= 0 or step >= end:
        return float(target)
    return float(target * (1.0 - (1.0 - step / end) ** power))


def magnitude_mask(values: np.ndarray, sparsity: float, m_by_n=None, block=None) -> np.ndarray:
    """A 0/1 mask keeping the largest weights of ``values``.

    Args:
        values: a kernel.
        sparsity: the fraction of zeros (ignored with ``m_by_n``).
        m_by_n: ``(m, n)``: ``m`` zeros in every ``n`` consecutive input channels (axis -2).
        block: ``(h, w)``: zeros in whole blocks of a 2-D kernel.

    Example:
        >>> magnitude_mask(np.array([[1.0, -3.0], [0.5, 2.0]]), 0.5).tolist()
        [[0.0, 1.0], [0.0, 1.0]]
    """
    magnitude = np.abs(values)
    if m_by_n is not None:
        m, n = m_by_n
        moved = np.moveaxis(magnitude, -2, -1)
        groups = moved.reshape(-1, n)
        order = np.argsort(groups, axis=1, kind="stable")
        keep = np.ones_like(groups)
        np.put_along_axis(keep, order[:, :m], 0.0, axis=1)
        return np.moveaxis(keep.reshape(moved.shape), -1, -2).astype(values.dtype)
    if block is not None:
        h, w = block
        rows, cols = values.shape
        padded = np.zeros((-(-rows // h) * h, -(-cols // w) * w), values.dtype)
        padded[:rows, :cols] = magnitude
        pooled = padded.reshape(padded.shape[0] // h, h, padded.shape[1] // w, w).mean(axis=(1, 3))
        keep = magnitude_mask(pooled, sparsity)
        full = np.repeat(np.repeat(keep, h, axis=0), w, axis=1)[:rows, :cols]
        return full.astype(values.dtype)
    flat = magnitude.reshape(-1)
    cut = int(round(sparsity * flat.size))
    keep = np.ones(flat.size, values.dtype)
    if cut:
        keep[np.argsort(flat, kind="stable")[:cut]] = 0
    return keep.reshape(values.shape)


def kmeans_1d(values: np.ndarray, clusters: int, iterations: int = 20) -> np.ndarray:
    """1-D k-means of ``values`` (quantile start, Lloyd steps); return each value's cluster id.

    Example:
        >>> kmeans_1d(np.array([0.0, 0.1, 5.0, 5.1]), 2).tolist()
        [0, 0, 1, 1]
    """
    values = np.asarray(values, np.float64).reshape(-1)
    centroids = np.unique(np.quantile(values, (np.arange(clusters) + 0.5) / clusters))
    for _ in range(iterations):
        ids = np.abs(values[:, None] - centroids[None, :]).argmin(axis=1)
        sums = np.bincount(ids, weights=values, minlength=centroids.size)
        counts = np.bincount(ids, minlength=centroids.size)
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.allclose(moved, centroids):
            break
        centroids = moved
    ids = np.abs(values[:, None] - centroids[None, :]).argmin(axis=1)
    _, dense_ids = np.unique(ids, return_inverse=True)
    return dense_ids.reshape(-1)


class Kernel:
    """One kernel under projection: its variable, its mask and its clusters."""

    def __init__(self, layer: str, weight: str, variable, prune: bool, cluster: bool):
        self.layer = layer
        self.weight = weight
        self.variable = variable
        self.prune = prune
        self.cluster = cluster
        self.mask = None
        self.groups = None
        self.count = 0

    @property
    def name(self) -> str:
        return f"{self.layer}/{self.weight}"

    def values(self) -> np.ndarray:
        return np.asarray(self.variable.numpy())

    def set_mask(self, mask: np.ndarray):
        self.mask = tf.constant(mask)

    def start_clusters(self, clusters: int):
        """Give every weight a cluster (the zeros of a pruned kernel are one of the ``clusters``).

        A pruned kernel's non-zero weights share ``clusters - 1`` values, so that the kernel holds
        at most ``clusters`` distinct values with its zero, as tfmot's sparsity-preserving
        clustering does.
        """
        values = self.values().reshape(-1)
        ids = np.zeros(values.size, np.int64)
        nonzero = values != 0 if self.mask is not None else np.ones(values.size, bool)
        shared = clusters - 1 if self.mask is not None else clusters
        if nonzero.sum() <= shared:
            return
        ids[nonzero] = kmeans_1d(values[nonzero], shared) + 1
        _, ids = np.unique(ids, return_inverse=True)
        self.groups = tf.constant(ids.reshape(-1).astype(np.int32))
        self.count = int(ids.max()) + 1

    def project(self):
        value = tf.convert_to_tensor(self.variable)
        if self.groups is not None:
            flat = tf.reshape(value, [-1])
            means = tf.math.unsorted_segment_mean(flat, self.groups, self.count)
            value = tf.reshape(tf.gather(means, self.groups), value.shape)
        if self.mask is not None:
            value = value * tf.cast(self.mask, value.dtype)
        self.variable.assign(value)


class Projection:
    """The kernels of a model to prune and/or cluster, and the schedule that drives them.

    Args:
        kernels: the :class:`Kernel` objects.
        prune: the final sparsity, or None.
        m_by_n: an ``(m, n)`` pattern (its sparsity is ``m / n``), or None.
        block: a ``(h, w)`` block for 2-D kernels, or None.
        cluster: the number of shared values per kernel, or None.
        schedule: ``"polynomial"`` or ``"constant"``.
        ramp: the fraction of the training steps the polynomial ramp takes.
        steps: the training steps in all (None: read from ``fit`` when training begins).
        frequency: steps between mask updates on the ramp (None: about 20 updates over it).

    Example:
        >>> plan = Projection(kernels, prune=0.8, cluster=None)  # doctest: +SKIP
    """

    def __init__(
        self,
        kernels,
        *,
        prune=None,
        m_by_n=None,
        block=None,
        cluster=None,
        schedule="polynomial",
        ramp=0.5,
        steps=None,
        frequency=None,
    ):
        self.kernels = list(kernels)
        self.target = m_by_n[0] / m_by_n[1] if m_by_n is not None else prune
        self.m_by_n = m_by_n
        self.block = block
        self.clusters = cluster
        self.schedule = schedule
        self.ramp = ramp
        self.steps = steps
        self.frequency = frequency
        self.step = 0
        self.clustering = False
        self.started = False

    @property
    def pruned(self) -> list:
        return [k for k in self.kernels if k.prune]

    @property
    def clustered(self) -> list:
        return [k for k in self.kernels if k.cluster]

    def _ramp_end(self) -> int:
        if self.target is None or self.schedule == "constant" or self.m_by_n is not None:
            return 0
        return max(1, int(round(self.ramp * (self.steps or 1))))

    def _frequency(self) -> int:
        if not self._ramp_end():
            return self.frequency or 1
        return self.frequency or max(1, self._ramp_end() // 20)

    def begin(self, total_steps=None):
        """Start (or continue) training: ``total_steps`` sizes the polynomial ramp."""
        if self.started:
            return
        if self.steps is None:
            self.steps = total_steps
        if self.steps is None and self._needs_steps():
            raise OptimizationError(
                "the polynomial pruning schedule needs the number of training steps, and this "
                "training loop did not say how many it runs",
                "pass steps=N to models.wrap(...) (N optimizer steps in all), or use "
                "schedule='constant'",
            )
        self.started = True
        self._update_masks()
        self._maybe_cluster()
        self.project()

    def _needs_steps(self) -> bool:
        return self.target is not None and self.schedule == "polynomial" and self.m_by_n is None

    def sparsity_now(self) -> float:
        if self.target is None:
            return 0.0
        end = self._ramp_end()
        if not end:
            return float(self.target)
        due = min(self.step, end) // self._frequency() * self._frequency()
        return polynomial_sparsity(due if self.step < end else end, end, self.target)

    def _update_masks(self):
        if self.target is None or self.clustering:
            return
        sparsity = self.sparsity_now()
        for kernel in self.pruned:
            if sparsity <= 0 and self.m_by_n is None:
                continue
            kernel.set_mask(magnitude_mask(kernel.values(), sparsity, self.m_by_n, self.block))

    def _maybe_cluster(self):
        if not self.clusters or self.clustering or self.step < self._ramp_end():
            return
        self._update_masks()  # the final mask, before the clusters are drawn
        self.project()
        for kernel in self.clustered:
            kernel.start_clusters(self.clusters)
        self.clustering = True

    def after_step(self):
        """Call once after every optimizer step: masks on the schedule, then the projection."""
        if not self.started:
            self.begin()
        self.step += 1
        end = self._ramp_end()
        if end and self.step <= end and self.step % self._frequency() == 0:
            self._update_masks()
        self._maybe_cluster()
        self.project()

    def project(self):
        for kernel in self.kernels:
            kernel.project()

    def finish(self):
        """End training: the final sparsity and the clusters exactly, whatever step it stopped at."""
        if self.target is not None and not self.clustering:
            self.step = max(self.step, self._ramp_end())
            self._update_masks()
            self.project()
        if self.clusters and not self.clustering:
            for kernel in self.clustered:
                kernel.start_clusters(self.clusters)
            self.clustering = True
        self.project()


def size_tfmot_schedule(schedule, projection) -> None:
    """Give tfmot's schedule the same ramp and update frequency as tfedge's own masks."""
    if schedule is None:
        return
    end, frequency = projection._ramp_end(), projection._frequency()
    schedule.frequency = frequency
    if hasattr(schedule, "end_step") and end:
        schedule.end_step = max(frequency, end // frequency * frequency)


def _callback_class(base):
    class CompressionStep(base):
        """Drives tfedge's masks and clusters (and tfmot's schedule) from ``fit``."""

        def __init__(self, projection, tfmot_schedule=None):
            super().__init__()
            self.projection = projection
            self.tfmot_schedule = tfmot_schedule

        def on_train_begin(self, logs=None):
            projection = self.projection
            total = None
            params = getattr(self, "params", None) or {}
            if params.get("steps") and params.get("epochs"):
                total = int(params["steps"]) * int(params["epochs"])
            if not projection.started:
                if projection.steps is None:
                    projection.steps = total
                size_tfmot_schedule(self.tfmot_schedule, projection)
            projection.begin(total)

        def on_train_batch_end(self, batch, logs=None):
            self.projection.after_step()

    return CompressionStep


_CALLBACKS = {}


def projection_callback(projection, keras3_api: bool = False, tfmot_schedule=None):
    """A ``fit`` callback that drives ``projection`` (tfedge's masks and clusters).

    Example:
        >>> fit(model, x, callbacks=[projection_callback(Projection(kernels, prune=0.8))])  # doctest: +SKIP
    """

    base = keras3.callbacks.Callback if keras3_api else keras.callbacks.Callback
    if base not in _CALLBACKS:
        _CALLBACKS[base] = _callback_class(base)
    return _CALLBACKS[base](projection, tfmot_schedule)
