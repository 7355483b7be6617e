"""Which kernels pruning touches and how sparse they are: structures, plans, exact sparsity.

The analysis under :func:`tfedge.models.pruning.prune` and :func:`tfedge.models.wrapping.wrap`:
:func:`parse_structure` reads an ``"M:N"`` pattern or a block, :func:`pruning_plan` says which
kernels are pruned and which stay dense (and why), :func:`layer_sparsity` and
:func:`weight_sparsity` measure a model, and :func:`enforce` sets tfmot-pruned kernels to the
sparsity asked exactly, whatever step its schedule stopped at.

Example:
    >>> from tfedge.models.sparsity import pruning_plan, weight_sparsity
    >>> pruning_plan(model)["dense"]  # doctest: +SKIP
    []
    >>> round(weight_sparsity(pruned_model), 2)  # doctest: +SKIP
    0.8
"""

import numpy as np

import tfedge.models.cloning as cloning
import tfedge.models.layers as layers
from tfedge.core.backend import tfmot
from tfedge.core.errors import OptimizationError
from tfedge.core.keras_internals import weight_names
from tfedge.core.serialization import tfmot_internal

__all__ = [
    "pruning_plan",
    "parse_structure",
    "weight_sparsity",
    "layer_sparsity",
    "enforce",
    "prunable_weights",
    "tfmot_eligible",
    "short_name",
    "DEFAULT_SKIP",
]

#: Prune every kernel tfmot can prune, each to the requested sparsity. (Leaving the first and
#: last layers dense and pruning the rest harder to make up for them gave a DS-CNN 90 % sparse
#: pointwise convolutions and a model that was neither at the asked sparsity per layer nor, once
#: the depthwise kernels were counted, overall.)
DEFAULT_SKIP = ()


def _sparsity_module():
    return tfmot().sparsity.keras


def _registry():
    return tfmot_internal("sparsity.keras.prune_registry").PruneRegistry


def prunable_weights(layer) -> list:
    """The weights tfmot would prune in ``layer`` (its kernels), or [] when it cannot.

    Example:
        >>> [w.name for w in prunable_weights(model.get_layer("fc1"))]  # doctest: +SKIP
        ['fc1/kernel:0']
    """
    mot = _sparsity_module()
    if isinstance(layer, mot.PrunableLayer):
        return list(layer.get_prunable_weights())
    registry = _registry()
    if not registry.supports(layer):
        return []
    try:
        names = weight_names(registry, layer)
    except KeyError:  # RNNs: prunable through their cells
        return [w for w in layer.trainable_weights if "kernel" in w.name]
    return [getattr(layer, name) for name in names if getattr(layer, name, None) is not None]


def parse_structure(structure):
    """``None`` → ``(None, None)``; ``"2:4"`` → ``((2, 4), None)``; ``(h, w)`` or ``"HxW"`` → ``(None, (h, w))``."""
    if structure is None:
        return None, None
    if isinstance(structure, str) and "x" in structure.lower():
        parts = structure.lower().split("x")
        if len(parts) == 2 and all(p.strip().isdigit() and int(p) >= 1 for p in parts):
            return None, (int(parts[0]), int(parts[1]))
        raise OptimizationError(
            f"structure {structure!r} is not a block 'HxW' of positive integers",
            "use a block such as '1x4' (zeros in whole 1x4 blocks) or an 'M:N' pattern such as '2:4'",
        )
    if isinstance(structure, str):
        parts = structure.split(":")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            m, n = (int(p) for p in parts)
            if 0 < m < n:
                return (m, n), None
        raise OptimizationError(
            f"structure {structure!r} is not an 'M:N' pattern with 0 < M < N",
            "use structure='2:4' (2 zeros in every 4 weights) or a block such as (1, 4)",
        )
    if (
        isinstance(structure, (tuple, list))
        and len(structure) == 2
        and all(isinstance(v, (int, np.integer)) and v >= 1 for v in structure)
    ):
        return None, (int(structure[0]), int(structure[1]))
    raise OptimizationError(
        f"structure {structure!r} is neither None, an 'M:N' string nor a (height, width) block",
        "use structure=None (any weights), '2:4', or a block such as (1, 4)",
    )


def tfmot_eligible(m_by_n, block):
    """A predicate ``layer -> bool``: tfmot can prune ``layer``'s kernels with this structure."""

    def check(layer) -> bool:
        weights = prunable_weights(layer)
        if not weights:
            return False
        for weight in weights:
            shape = [int(d) for d in weight.shape]
            if block is not None and len([d for d in shape if d != 1]) > 2:
                return False
            if m_by_n is not None and (len(shape) not in (2, 4) or shape[-2] % m_by_n[1]):
                return False
        return True

    return check


def _dense_reason(layer, m_by_n, block) -> str | None:
    """Why tfmot leaves ``layer``'s kernels dense under this structure (None: it can prune them)."""
    weights = prunable_weights(layer)
    kind = type(layer).__name__
    if not weights:
        if "Depthwise" in kind:
            return "tfmot does not prune depthwise kernels"
        return f"tfmot cannot prune a {kind}"
    for weight in weights:
        shape = [int(d) for d in weight.shape]
        if block is not None and len([d for d in shape if d != 1]) > 2:
            return f"a block needs a 2-D kernel, this one is {shape}"
        if m_by_n is not None and (len(shape) not in (2, 4) or shape[-2] % m_by_n[1]):
            return (
                f"{m_by_n[0]}:{m_by_n[1]} needs input channels divisible by {m_by_n[1]}, "
                f"this kernel has {shape[-2]}"
            )
    return None


def pruning_plan(model, structure=None, skip=DEFAULT_SKIP) -> dict:
    """Which kernels :func:`prune` prunes in ``model`` and which it leaves dense, and why.

    Every kernel tfmot can prune is pruned to the requested sparsity; the rest (depthwise
    kernels, a SeparableConv2D's depthwise half, kernels a structure does not fit, skipped
    layers) stay dense and are listed with the reason.

    Args:
        model: a tf_keras (or Keras 3) functional or Sequential model.
        structure: as in :func:`prune`.
        skip: as in :func:`prune`.

    Returns:
        ``{"pruned": [layer names], "dense": [{"layer", "weight", "reason"}], "kernels":
        [{"layer", "weight", "elements", "pruned"}] (every kernel, in model order),
        "pruned_weights": n, "kernel_weights": n}``; ``pruned_weights / kernel_weights`` is the
        share of all kernel weights the requested sparsity applies to.

    Example:
        >>> pruning_plan(build("ds_cnn"))["dense"][0]["reason"]  # doctest: +SKIP
        'tfmot does not prune depthwise kernels'
    """
    m_by_n, block = parse_structure(structure)
    flat = cloning.flatten_model(model)
    skipped = layers.skipped_layers(flat, skip)
    pruned, dense, kernels, pruned_weights, kernel_weights = [], [], [], 0, 0
    for layer in layers.kernel_layers(flat):
        reason = "skipped" if layer.name in skipped else _dense_reason(layer, m_by_n, block)
        targets = [] if reason else prunable_weights(layer)
        if layer.name not in skipped:
            targets = targets + _own_kernels(layer, m_by_n, block)
            if targets and reason and reason.startswith("tfmot does not prune depthwise"):
                reason = None
        for weight in layer.trainable_weights:
            if len(weight.shape) < 2:
                continue
            size = int(np.prod(weight.shape))
            kernel_weights += size
            hit = any(weight is t for t in targets)
            kernels.append(
                {"layer": layer.name, "weight": short_name(weight), "elements": size, "pruned": hit}
            )
            if hit:
                pruned_weights += size
                continue
            why = reason or f"tfmot prunes only the {', '.join(short_name(t) for t in targets)}"
            dense.append({"layer": layer.name, "weight": short_name(weight), "reason": why})
        if targets:
            pruned.append(layer.name)
    return {
        "pruned": pruned,
        "dense": dense,
        "kernels": kernels,
        "pruned_weights": pruned_weights,
        "kernel_weights": kernel_weights,
    }


def _own_kernels(layer, m_by_n=None, block=None) -> list:
    """The depthwise kernels of ``layer`` that tfmot leaves dense and tfedge prunes itself.

    An M:N pattern (along input channels) and a 2-D block do not apply to a depthwise kernel:
    with a structure those stay dense.
    """
    if m_by_n is not None or block is not None:
        return []
    theirs = {id(w) for w in prunable_weights(layer)}
    return [
        w
        for w in layer.trainable_weights
        if len(w.shape) == 4 and "depthwise_kernel" in w.name and id(w) not in theirs
    ]


def short_name(weight) -> str:
    """A weight's own name: ``"conv1/kernel:0"`` -> ``"kernel"``."""
    return weight.name.split("/")[-1].split(":")[0]


def layer_sparsity(model, names=None) -> dict:
    """The fraction of zeros of each prunable kernel (``"<layer>/<weight>"``) of the named layers.

    Example:
        >>> layer_sparsity(pruned, ["pw1"])  # doctest: +SKIP
        {'pw1/kernel': 0.75}
    """
    out = {}
    for layer in model.layers:
        if names is not None and layer.name not in names:
            continue
        inner = getattr(layer, "layer", layer)  # a pruning wrapper's layer
        for weight in prunable_weights(inner):
            values = weight.numpy()
            out[f"{inner.name}/{short_name(weight)}"] = float(np.mean(values == 0))
    return out


def enforce(model, names, target: float, m_by_n=None) -> int:
    """Zero the smallest weights a pruned kernel still needs to hold ``target`` (or M:N).

    tfmot's schedule normally gets there itself; this makes the result independent of when its
    last mask update ran. Returns the number of weights set to zero.

    Example:
        >>> enforce(stripped, ["conv2", "fc1"], 0.8)  # doctest: +SKIP
        3
    """
    changed = 0
    for name in names:
        for weight in prunable_weights(model.get_layer(name)):
            values = weight.numpy()
            if m_by_n is not None:
                m, n = m_by_n
                moved = np.moveaxis(values, -2, -1)
                groups = moved.reshape(-1, n)
                order = np.argsort(np.abs(groups), axis=1, kind="stable")
                cut = np.zeros_like(groups, dtype=bool)
                np.put_along_axis(cut, order[:, :m], True, axis=1)
                new = np.where(cut, 0, groups).reshape(moved.shape)
                new = np.moveaxis(new, -1, -2)
            else:
                flat = values.reshape(-1)
                want = int(round(target * flat.size))
                zeros = int(np.sum(flat == 0))
                if zeros >= want:
                    continue
                new = flat.copy()
                order = np.argsort(np.abs(flat), kind="stable")
                new[order[:want]] = 0
                new = new.reshape(values.shape)
            diff = int(np.sum((new == 0) & (values != 0)))
            if diff:
                weight.assign(new.astype(values.dtype))
                changed += diff
    return changed


def weight_sparsity(model, layers=None) -> float:
    """The fraction of zeros among the kernels (weights of rank >= 2) of the model or named layers.

    Biases are not counted, as in ``tfedge inspect``'s ``weight_sparsity``.

    Example:
        >>> round(weight_sparsity(pruned_model), 2)  # doctest: +SKIP
        0.8
    """
    weights = []
    for layer in model.layers:
        if layers is None or layer.name in layers:
            weights.extend(w for w in layer.trainable_weights if len(w.shape) >= 2)
    zeros = sum(int(np.sum(w.numpy() == 0)) for w in weights)
    total = sum(int(np.prod(w.shape)) for w in weights)
    return zeros / max(total, 1)
