"""Weight clustering that keeps accuracy: k-means++ centroids, a real fine-tune, distillation.

``cluster`` wraps the chosen layers with tfmot's ``cluster_weights`` (every weight of a kernel
takes one of ``clusters`` shared values), fine-tunes the centroids and the assignments (from a
teacher when one is given), keeps the best epoch and strips the wrappers. Clustered kernels have
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
import tfedge.models.training as training
from tfedge.core.backend import keras, tfmot
from tfedge.core.errors import OptimizationError, first_line
from tfedge.core.keras_internals import rename_layer, weight_names
from tfedge.core.serialization import tfmot_internal
from tfedge.models.projection import Kernel, Projection, projection_callback

__all__ = [
    "cluster",
    "clustering_plan",
    "unique_weight_values",
    "INITS",
    "DEFAULT_STEPS",
    "FINE_TUNE",
]

INITS = ("kmeans++", "linear", "density", "random")
DEFAULT_STEPS = 450
#: How :func:`cluster` fine-tunes by default.
FINE_TUNE = training.FineTune(learning_rate=5e-4)


def _clustering_module():
    return tfmot().clustering.keras


def _init(name: str):
    mot = _clustering_module()
    table = {
        "kmeans++": mot.CentroidInitialization.KMEANS_PLUS_PLUS,
        "linear": mot.CentroidInitialization.LINEAR,
        "density": mot.CentroidInitialization.DENSITY_BASED,
        "random": mot.CentroidInitialization.RANDOM,
    }
    if name not in table:
        raise OptimizationError(
            f"centroid initialization {name!r} is unknown; expected one of {', '.join(INITS)}",
            "'kmeans++' starts closest to the trained weights",
        )
    return table[name]


def _clusterable(clusters: int, preserve_sparsity: bool = False):
    registry = tfmot_internal("clustering.keras.clustering_registry").ClusteringRegistry

    def check(layer) -> bool:
        if isinstance(layer, _clustering_module().ClusterableLayer):
            return True
        if not registry.supports(layer):
            return False
        try:
            names = weight_names(registry, layer)
        except KeyError:
            return False
        weights = [getattr(layer, n, None) for n in names]
        weights = [w for w in weights if w is not None]
        # A kernel with fewer values than clusters gains nothing (tfmot refuses small convs too).
        # Preserving sparsity, only the non-zero values are clustered (k-means++ fails on fewer
        # than ``clusters``), and a kernel with that few already holds at most clusters + 1.
        return bool(weights) and all(_values(w, preserve_sparsity) > clusters for w in weights)

    return check


def _too_sparse(model, clusters: int, skip) -> list:
    """The layers not skipped that could be clustered but hold at most ``clusters`` non-zeros."""
    dense_check, sparse_check = _clusterable(clusters), _clusterable(clusters, True)
    skipped = layers.skipped_layers(model, skip)
    return [
        layer
        for layer in model.layers
        if layer.name not in skipped and dense_check(layer) and not sparse_check(layer)
    ]


def _values(weight, nonzero_only: bool) -> int:
    if not nonzero_only:
        return int(np.prod(weight.shape))
    return int(np.count_nonzero(keras.backend.get_value(weight)))


def _hold_unclustered_zeros(model, clustered) -> list:
    """A callback holding the zeros of every kernel outside ``clustered`` layers (or [])."""

    kernels = []
    for layer in model.layers:
        if layer.name in clustered or not layer.trainable:
            continue
        for weight in layer.trainable_weights:
            values = keras.backend.get_value(weight)
            if len(weight.shape) >= 2 and (values == 0).any():
                kernel = Kernel(layer.name, weight.name, weight, prune=False, cluster=False)
                kernel.set_mask((values != 0).astype(values.dtype))
                kernels.append(kernel)
    return [projection_callback(Projection(kernels))] if kernels else []


def clustering_plan(model, clusters: int = 16, skip=(), preserve_sparsity: bool = False) -> dict:
    """Which layers :func:`cluster` clusters in ``model`` and which kernels it leaves alone, and why.

    With ``preserve_sparsity`` only a kernel's non-zero values count (as :func:`cluster` does).

    Example:
        >>> clustering_plan(build("ds_cnn"), 16)["unclustered"][0]["reason"]  # doctest: +SKIP
        'tfmot does not cluster depthwise kernels'
    """
    flat = cloning.flatten_model(model)
    check = _clusterable(int(clusters), preserve_sparsity)
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
        elif "Depthwise" in kind:
            reason = "tfmot does not cluster depthwise kernels"
        else:
            values = "non-zero weights" if preserve_sparsity else "weights"
            reason = (
                f"a {kind} with at most {clusters} {values} per kernel, or one tfmot cannot cluster"
            )
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
    clusters = int(clusters)
    centroid_init = _init(init)
    training.check_data(train, "training")
    mot = _clustering_module()
    epochs = settings.epochs
    if epochs is None:
        epochs = training.epochs_for(train, DEFAULT_STEPS, settings.batch_size, minimum=3)

    with training.strategy_scope(settings.strategy):
        work = cloning.clone_model(cloning.flatten_model(model))
        training.check_data(train, "training", work)
        names = layers.select_layers(work, skip, eligible=_clusterable(clusters, preserve_sparsity))
        # Too sparse to cluster: held as they are, or the fine-tune would fill in their zeros.
        held = _too_sparse(work, clusters, skip) if preserve_sparsity else []
        for layer in held:
            layer.trainable = False
        if not names:
            raise OptimizationError(
                f"no layer of {work.name!r} can be clustered to {clusters} values "
                f"once {list(skip)} are skipped",
                "cluster a model with Conv/Dense layers larger than the number of clusters",
            )
        if settings.seed is not None:
            keras.utils.set_random_seed(settings.seed)

        def wrap(layer):
            if layer.name not in names:
                return layer
            return mot.cluster_weights(
                layer,
                number_of_clusters=clusters,
                cluster_centroids_init=centroid_init,
                preserve_sparsity=preserve_sparsity,
                cluster_per_channel=per_channel,
            )

        try:
            with cloning.trusted_cloning():
                wrapped = keras.models.clone_model(work, clone_function=wrap)
        except (ValueError, TypeError) as exc:
            raise OptimizationError(
                f"tfmot cannot cluster {work.name!r}: {first_line(exc)}",
                "skip the layer it names (skip=(..., 'NAME'))",
            ) from exc
        # Kernels tfmot does not cluster (depthwise ones) keep a pruned model's zeros too.
        callbacks = _hold_unclustered_zeros(work, names) if preserve_sparsity else []
        training.fit(
            wrapped,
            train,
            val,
            **settings.fit_options(epochs=epochs),
            callbacks=callbacks,
            desc=f"clustering to {clusters}",
        )
        with cloning.trusted_cloning():
            stripped = mot.strip_clustering(wrapped)
    for layer in held:
        layer.trainable = True
        stripped.get_layer(layer.name).trainable = True
    rename_layer(stripped, model.name)
    return stripped
