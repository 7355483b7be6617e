"""What :func:`tfedge.models.wrapping.finalize` records on the model it returns: :func:`requested`.

The record says what :func:`~tfedge.models.wrapping.wrap` was asked (sparsity, structure,
clusters, QAT) and which kernels it pruned and clustered, for
:func:`tfedge.reports.compression.check_finalized` to compare with the converted file.

Example:
    >>> requested(models.finalize(m))["sparsity"]  # doctest: +SKIP
    0.8
"""

import json

import numpy as np

from tfedge.core.errors import OptimizationError
from tfedge.models.sparsity import short_name
from tfedge.models.tfmot_wrappers import pruned_variables

__all__ = ["requested", "attach", "asked_kernels"]

# finalize's record of what was asked, as JSON text: Keras tracks a dict or list attribute
# (wrapping it in its own containers), never a string.
_REQUESTED = "_tfedge_requested"


def attach(final, state, asked: tuple) -> None:
    """Put the record of ``state`` (with ``asked`` from :func:`asked_kernels`) on ``final``."""
    setattr(final, _REQUESTED, json.dumps(_record(final, state, *asked)))


def asked_kernels(model, state) -> tuple[set, set]:
    """The ``(layer, weight)`` keys of the kernels ``model`` prunes and clusters, tfmot's included.

    A tfmot-clustered layer is keyed ``(layer, None)``: its kernels (never a depthwise one) are
    its wrapper's centroids until it is stripped.
    """
    pruned = {(k.layer, k.weight) for k in state.projection.kernels if k.prune}
    clustered = {(k.layer, k.weight) for k in state.projection.kernels if k.cluster}
    for layer in model.layers:
        inner = getattr(layer, "layer", None)
        if inner is None:
            continue
        if state.tfmot_pruned and inner.name in state.tfmot_pruned:
            pruned.update((inner.name, short_name(w)) for w in pruned_variables(layer))
        if state.tfmot_clustered:
            clustered.add((inner.name, None))
    return pruned, clustered


def _record(final, state, pruned: set, clustered: set) -> dict:
    """:func:`requested`'s record of ``final``: its kernels in model order, each asked or not."""
    options = state.options
    if options["m_by_n"] is not None:
        structure = f"{options['m_by_n'][0]}:{options['m_by_n'][1]}"
    elif options["block"] is not None:
        structure = f"{options['block'][0]}x{options['block'][1]}"
    else:
        structure = None
    kernels, dense, unclustered, clustered_layers = [], [], [], []
    for layer in final.layers:
        inner = getattr(layer, "layer", layer)
        for weight in layer.trainable_weights:
            if len(weight.shape) < 2:
                continue
            key = (inner.name, short_name(weight))
            shared = options["cluster"] is not None and (
                key in clustered or ((key[0], None) in clustered and "depthwise" not in key[1])
            )
            kernels.append(
                {
                    "layer": key[0],
                    "weight": key[1],
                    "elements": int(np.prod(weight.shape)),
                    "pruned": key in pruned,
                    "clustered": shared,
                }
            )
            if options["prune"] is not None and key not in pruned:
                dense.append({"layer": key[0], "weight": key[1], "reason": "not pruned by wrap"})
            if options["cluster"] is None:
                continue
            if shared:
                if key[0] not in clustered_layers:
                    clustered_layers.append(key[0])
            else:
                reason = "not clustered by wrap (skipped, or no more weights than clusters)"
                unclustered.append({"layer": key[0], "weight": key[1], "reason": reason})
    pruned_weights = sum(k["elements"] for k in kernels if k["pruned"])
    return {
        "sparsity": None if options["prune"] is None else float(options["prune"]),
        "structure": structure,
        "clusters": options["cluster"],
        "qat": bool(state.qat),
        "plans": {
            "kernels": kernels,
            "dense": dense,
            "pruned_weights": pruned_weights,
            "kernel_weights": sum(k["elements"] for k in kernels),
            "clustered": clustered_layers,
            "unclustered": unclustered,
        },
    }


def requested(model) -> dict:
    """What :func:`wrap` was asked for the model :func:`finalize` returned, and what it touched.

    The record lives on the model object: it does not survive a ``.keras`` (or SavedModel) save
    and load, which keep only Keras' own config. It is JSON: save it beside the model
    (``json.dump(requested(final), f)``) and pass it back to
    :func:`tfedge.reports.compression.check_finalized` in place of the model.

    Returns:
        ``{"sparsity", "structure", "clusters", "qat", "plans": {"kernels": [{"layer", "weight",
        "elements", "pruned", "clustered"}], "dense", "pruned_weights", "kernel_weights", "clustered",
        "unclustered"}}``: the request as :func:`tfedge.reports.compression.requested_after`
        writes it, plus the plans :func:`tfedge.reports.compression.compression_entry` reads.

    Raises:
        OptimizationError: the model was not returned by :func:`finalize`.

    Example:
        >>> final = finalize(wrap(model, prune=0.8))  # doctest: +SKIP
        >>> requested(final)["sparsity"]  # doctest: +SKIP
        0.8
    """
    text = getattr(model, _REQUESTED, None)
    if not isinstance(text, str):
        raise OptimizationError(
            f"model {getattr(model, 'name', model)!r} carries no record of models.finalize",
            "pass the model models.finalize returned (a saved and loaded model has lost it:"
            " pass the json.dump of models.requested(final) instead)",
        )
    return json.loads(text)
