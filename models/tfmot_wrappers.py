"""tfmot's wrappers under :func:`tfedge.models.wrapping.wrap` for tf_keras models.

tfmot's ``prune_low_magnitude`` (with its polynomial or constant schedule, an ``M:N`` pattern or
a block) and ``cluster_weights`` (k-means++ or another centroid start, per channel, zeros kept),
applied to the layers tfmot supports, minus those skipped. :mod:`tfedge.models.wrapping` drives
them and strips them; the kernels they leave alone are tfedge's own projections.

Example:
    >>> wrapped, names, schedule = prune_layers(model, (), {"prune": 0.8, ...})  # doctest: +SKIP
"""

import numpy as np

import tfedge.models.cloning as cloning
import tfedge.models.layers as layer_choice
from tfedge.core.backend import keras, tfmot
from tfedge.core.errors import OptimizationError, first_line
from tfedge.core.keras_internals import weight_names
from tfedge.core.serialization import tfmot_internal
from tfedge.models.sparsity import tfmot_eligible

__all__ = [
    "prune_layers",
    "cluster_layers",
    "pruned_variables",
    "clusterable",
    "too_sparse",
    "centroid_init",
    "INITS",
]

INITS = ("kmeans++", "linear", "density", "random")


def centroid_init(name: str):
    """tfmot's centroid initialization for ``name`` (one of :data:`INITS`)."""
    mot = tfmot().clustering.keras
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


def _values(weight, nonzero_only: bool) -> int:
    if not nonzero_only:
        return int(np.prod(weight.shape))
    return int(np.count_nonzero(keras.backend.get_value(weight)))


def clusterable(clusters: int, preserve_sparsity: bool = False):
    """A predicate ``layer -> bool``: tfmot can cluster the layer to ``clusters`` values.

    Example:
        >>> clusterable(16)(model.get_layer("fc1"))  # doctest: +SKIP
        True
    """
    registry = tfmot_internal("clustering.keras.clustering_registry").ClusteringRegistry

    def check(layer) -> bool:
        if isinstance(layer, tfmot().clustering.keras.ClusterableLayer):
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


def too_sparse(model, clusters: int, skip) -> list[str]:
    """The layers not skipped that could be clustered but hold at most ``clusters`` non-zeros."""
    dense_check, sparse_check = clusterable(clusters), clusterable(clusters, True)
    skipped = layer_choice.skipped_layers(model, skip)
    return [
        layer.name
        for layer in model.layers
        if layer.name not in skipped and dense_check(layer) and not sparse_check(layer)
    ]


def tfmot_schedule(options):
    """tfmot's schedule object; its steps are set (again) when training begins."""
    mot = tfmot().sparsity.keras
    if options["schedule"] == "constant" or options["m_by_n"] is not None:
        return mot.ConstantSparsity(options["prune"], begin_step=0, frequency=1)
    return mot.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=options["prune"], begin_step=0, end_step=1000
    )


def pruned_variables(wrapper) -> list:
    """The variables tfmot's pruning wrapper prunes (kept out of tfedge's own masks)."""
    return [weight for weight, _, _ in wrapper.pruning_vars]


def prune_layers(work, skip, options):
    """Wrap every layer tfmot can prune with ``prune_low_magnitude``; return the model, the
    wrapped layers' names and the schedule (``work``, [], None when none can be)."""
    mot = tfmot().sparsity.keras
    m_by_n, block = options["m_by_n"], options["block"]
    eligible = tfmot_eligible(m_by_n, block)
    skipped = layer_choice.skipped_layers(work, skip)
    names = [layer.name for layer in work.layers if layer.name not in skipped and eligible(layer)]
    schedule = tfmot_schedule(options)
    params = {"pruning_schedule": schedule}
    if m_by_n is not None:
        params["sparsity_m_by_n"] = m_by_n
    if block is not None:
        params["block_size"] = block
    if not names:
        return work, [], None

    def wrap_layer(layer):
        return mot.prune_low_magnitude(layer, **params) if layer.name in names else layer

    try:
        with cloning.trusted_cloning():
            wrapped = keras.models.clone_model(work, clone_function=wrap_layer)
    except ValueError as exc:
        raise OptimizationError(
            f"tfmot cannot prune {work.name!r}: {first_line(exc)}",
            "skip the layer it names (skip=[..., 'NAME'])",
        ) from exc
    return wrapped, names, schedule


def cluster_layers(
    work, skip, clusters, init="kmeans++", preserve_sparsity=False, per_channel=False
):
    """Wrap every layer tfmot can cluster with ``cluster_weights``; return the model, the wrapped
    layers' names and the variables its wrappers hold (tfedge's projection leaves them alone)."""
    mot = tfmot().clustering.keras
    start = centroid_init(init)
    check = clusterable(clusters, preserve_sparsity)
    skipped = layer_choice.skipped_layers(work, skip)
    names = [layer.name for layer in work.layers if layer.name not in skipped and check(layer)]
    if not names:
        raise OptimizationError(
            f"no layer of {work.name!r} can be clustered to {clusters} values"
            + (f" once {list(skip)} are skipped" if skip else ""),
            "cluster a model with Conv/Dense layers larger than the number of clusters",
        )

    def wrap_layer(layer):
        if layer.name not in names:
            return layer
        return mot.cluster_weights(
            layer,
            number_of_clusters=clusters,
            cluster_centroids_init=start,
            preserve_sparsity=preserve_sparsity,
            cluster_per_channel=per_channel,
        )

    try:
        with cloning.trusted_cloning():
            wrapped = keras.models.clone_model(work, clone_function=wrap_layer)
    except (ValueError, TypeError) as exc:
        raise OptimizationError(
            f"tfmot cannot cluster {work.name!r}: {first_line(exc)}",
            "skip the layer it names (skip=[..., 'NAME'])",
        ) from exc
    # tfmot's wrappers hold the clustered kernels (and the depthwise kernels it leaves alone):
    # tfedge's projection keeps its hands off all of them.
    exclude = [
        w
        for layer in wrapped.layers
        if getattr(layer, "layer", None) is not None
        for w in layer.weights
    ]
    return wrapped, names, exclude
