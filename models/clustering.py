"""Weight clustering that keeps accuracy: k-means++ centroids, a real fine-tune, distillation.

``cluster`` is :func:`tfedge.models.wrapping.wrap` with ``cluster`` (tfmot's ``cluster_weights``
underneath: every weight of a kernel takes one of ``clusters`` shared values; the depthwise
kernels tfmot leaves are clustered by tfedge's own projection), then fine-tunes the centroids and the assignments (from a
teacher when one is given), keeps the best epoch and finalizes (the wrappers stripped). Clustered kernels have
few distinct values, so the int8 ``.tflite`` compresses well; with ``preserve_sparsity=True`` the
zeros of a pruned model stay zero.

Example:
    >>> from tfedge.models.clustering import cluster
    >>> clustered = cluster(model, train, val, clusters=16, teacher=model)  # doctest: +SKIP
    >>> blob = tfedge.converters.convert(clustered, calib=train)  # doctest: +SKIP
"""

import numpy as np

import tfedge.models.cloning as cloning
import tfedge.models.layers as layers
import tfedge.models.tfmot_wrappers as tfmot_wrappers
import tfedge.models.training as training
import tfedge.models.wrapping as wrapping
from tfedge.core.backend import keras
from tfedge.core.errors import OptimizationError
from tfedge.models.rebuild import to_keras2
from tfedge.models.tfmot_wrappers import INITS, clusterable

__all__ = [
    "cluster",
    "clustering_plan",
    "unique_weight_values",
    "INITS",
    "DEFAULT_STEPS",
    "FINE_TUNE",
]

DEFAULT_STEPS = 450
#: How :func:`cluster` fine-tunes by default.
FINE_TUNE = training.FineTune(learning_rate=5e-4)


def clustering_plan(model, clusters: int = 16, skip=(), preserve_sparsity: bool = False) -> dict:
    """Which layers :func:`cluster` clusters in ``model`` and which kernels it leaves alone, and why.

    tfmot clusters the layers it supports; the kernels it leaves (depthwise ones) are clustered
    by tfedge's own projection when they have more weights than ``clusters``. With
    ``preserve_sparsity`` only a kernel's non-zero values count (as :func:`cluster` does).

    Example:
        >>> clustering_plan(build("ds_cnn"), 16, skip=("first",))["unclustered"][0]["reason"]  # doctest: +SKIP
        'skipped'
    """
    flat = cloning.flatten_model(model)
    check = clusterable(int(clusters), preserve_sparsity)
    too_sparse = tfmot_wrappers.too_sparse(flat, int(clusters), skip) if preserve_sparsity else []
    skipped = layers.skipped_layers(flat, skip)
    clustered, unclustered = [], []
    for layer in layers.kernel_layers(flat):
        kind = type(layer).__name__
        if layer.name in skipped:
            reason = "skipped"
        elif check(layer):
            clustered.append(layer.name)
            if kind.startswith("SeparableConv"):
                reason = "tfmot clusters only the pointwise kernel"
                unclustered.append(
                    {"layer": layer.name, "weight": "depthwise_kernel", "reason": reason}
                )
            continue
        elif layer.name in too_sparse:
            reason = f"a {kind} with at most {clusters} non-zero weights per kernel"
        elif any(
            len(w.shape) >= 2 and int(np.prod(w.shape)) > clusters for w in layer.trainable_weights
        ):
            clustered.append(layer.name)  # tfedge's own clusters: tfmot leaves it (depthwise)
            continue
        else:
            reason = f"a {kind} with at most {clusters} weights per kernel"
        unclustered.append({"layer": layer.name, "weight": None, "reason": reason})
    return {"clustered": clustered, "unclustered": unclustered}


def unique_weight_values(model, layers=None) -> dict:
    """The number of distinct values in each kernel (``"<layer>/kernel"``) of the model.

    Args:
        model: a tf_keras model (stripped of clustering wrappers).
        layers: layer names to look at (None: all).

    Example:
        >>> max(unique_weight_values(clustered).values()) <= 16  # doctest: +SKIP
        True
    """
    counts = {}
    for layer in model.layers:
        if layers is not None and layer.name not in layers:
            continue
        for weight in layer.trainable_weights:
            if len(weight.shape) >= 2:
                short = weight.name.split("/")[-1].split(":")[0]
                counts[f"{layer.name}/{short}"] = int(np.unique(weight.numpy()).size)
    return counts


def cluster(
    model,
    train,
    val,
    *,
    settings: training.FineTune = FINE_TUNE,
    clusters: int = 16,
    preserve_sparsity: bool = False,
    init: str = "kmeans++",
    per_channel: bool = False,
    skip=(),
    **fine_tune,
):
    """Cluster a trained model's kernels to ``clusters`` values, fine-tune, return it stripped.

    Args:
        model: a trained tf_keras functional or Sequential model (nested models are flattened).
        train: training :class:`~tfedge.core.data.Dataset` with labels.
        val: validation :class:`~tfedge.core.data.Dataset`; the best epoch on it is kept.
        settings: how it fine-tunes (:class:`~tfedge.models.training.FineTune`, default
            :data:`FINE_TUNE`; ``epochs`` None: about 450 optimizer steps; ``seed`` also seeds
            k-means++).
        clusters: the number of distinct values per kernel (2-256).
        preserve_sparsity: keep zero weights zero (for a pruned model).
        init: centroid initialization: ``"kmeans++"``, ``"linear"``, ``"density"``, ``"random"``.
        per_channel: cluster each output channel of a Conv2D separately (``clusters`` per
            channel: more accurate with per-channel int8 quantization, compresses less).
        skip: layers left unclustered: ``"first"``, ``"last"``, names, type names or classes.
            Kernels with no more values than ``clusters`` (non-zero values, when preserving
            sparsity) are always left alone: they hold few enough distinct values already.
        **fine_tune: fields of ``settings`` as keywords (``epochs=3``, ``teacher=model``): they
            replace those fields.

    Returns:
        The clustered model with the wrappers stripped, ready for ``tfedge.converters.convert``.

    Raises:
        OptimizationError: for bad arguments, or when no layer can be clustered.

    Example:
        >>> clustered = cluster(model, train, val, clusters=16, teacher=model)  # doctest: +SKIP
        >>> max(unique_weight_values(clustered).values())  # doctest: +SKIP
        16
    """
    if not isinstance(clusters, (int, np.integer)) or not 2 <= int(clusters) <= 256:
        raise OptimizationError(
            f"clusters {clusters!r} must be an integer from 2 to 256",
            "use 16 (4-bit weights) or 32; int8 cannot hold more than 256 values",
        )
    settings = training.with_keywords(settings, fine_tune, "cluster")
    training.check_data(train, "training")
    epochs = settings.epochs
    if epochs is None:
        epochs = training.epochs_for(train, DEFAULT_STEPS, settings.batch_size, minimum=3)

    with training.strategy_scope(settings.strategy):
        if settings.seed is not None:
            keras.utils.set_random_seed(settings.seed)  # k-means++ draws its first centroids
        wrapped = wrapping.wrap(
            to_keras2(model),  # the fine-tune is tf_keras' (tfmot underneath)
            cluster=int(clusters),
            skip=skip,
            preserve="sparsity" if preserve_sparsity else None,
            cluster_init=init,
            per_channel=per_channel,
        )
        training.check_data(train, "training", wrapped)
        training.fit(
            wrapped,
            train,
            val,
            **settings.fit_options(epochs=epochs),
            callbacks=wrapping.callbacks(wrapped),
            desc=f"clustering to {clusters}",
        )
        return wrapping.finalize(wrapped)
