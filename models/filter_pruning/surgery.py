"""The surgery of filter pruning: remove the lowest-ranked filters and rebuild the model smaller.

The kept weights are carried over, and every layer downstream of a pruned producer has its input
channels (or per-channel arrays) sliced to match.
"""

import fnmatch
from dataclasses import dataclass, field

import numpy as np

from tfedge.core.backend import keras
from tfedge.core.errors import OptimizationError
from tfedge.models.filter_pruning.analysis import Analysis, filter_count
from tfedge.models.filter_pruning.scoring import CRITERIA, norm_scores, taylor_scores
from tfedge.models.graph import rebuild, stage_data

__all__ = ["PruningPlan", "shrink"]


@dataclass
class PruningPlan:
    """What :func:`shrink` did: the groups, and the parameter counts before and after."""

    groups: list = field(default_factory=list)
    criterion: str = "l1"
    ratio: float = 0.5
    params_before: int = 0
    params_after: int = 0

    def summary(self) -> str:
        """One line per group: layers, channels kept / before."""
        lines = []
        for group in self.groups:
            kept = group.filters if group.keep is None else len(group.keep)
            state = f"{kept}/{group.filters}" if group.prunable else f"kept all ({group.reason})"
            lines.append(f"{'+'.join(group.layers)}: {state}")
        return "\n".join(lines)


def _ratio_for(ratio, layers):
    if isinstance(ratio, dict):
        values = []
        for layer in layers:
            for pattern, value in ratio.items():
                if fnmatch.fnmatchcase(layer, pattern):
                    values.append(float(value))
                    break
        return min(values) if values else 0.0
    return float(ratio)


def _check_ratio(value):
    if not 0.0 <= float(value) < 1.0:
        raise OptimizationError(
            f"filter pruning ratio {value!r} is out of range; expected a fraction in [0, 1)",
            "ratio=0.5 removes half of each convolution's filters",
        )


def shrink(
    model,
    ratio=0.5,
    criterion: str = "l1",
    *,
    data=None,
    skip=(),
    min_filters: int = 1,
    round_to: int = 1,
    taylor_batches: int = 8,
    batch_size: int = 32,
    dense: bool | None = None,
) -> tuple[keras.Model, PruningPlan]:
    """Remove the lowest-ranked filters and rebuild the model smaller (no fine-tuning).

    Args:
        model: a tf_keras functional or Sequential model.
        ratio: the fraction of filters to remove from each group, or ``{layer glob: fraction}``
            (a group takes the smallest fraction of its layers; unmatched layers keep all).
        criterion: ``l1`` / ``l2`` (norm of each BN-folded filter) or ``taylor`` (first-order
            Taylor estimate over ``taylor_batches`` batches of ``data``).
        data: labelled data for ``taylor`` (a :class:`tfedge.core.data.Dataset` or any accepted form).
        skip: layer names or glob patterns whose filters all stay.
        min_filters: never keep fewer filters than this in a group.
        round_to: round the kept count to a multiple of this (e.g. 8 or 16 for SIMD-friendly
            channel counts); never more than the filters there are.
        taylor_batches: batches used by the Taylor criterion.
        batch_size: their size.
        dense: also remove hidden Dense layers' units (None: only when the model has no
            convolution, so that an MLP is pruned by its units and a CNN keeps its Dense layers).

    Returns:
        ``(new_model, plan)``: the rebuilt model, weights carried over, and a :class:`PruningPlan`.

    Raises:
        OptimizationError: unknown criterion, ratio out of range, or nothing prunable.

    Example:
        >>> from tfedge.models.zoo import build
        >>> small, plan = shrink(build("ds_cnn"), ratio=0.5)
        >>> small.get_layer("pw1").filters
        32
    """
    if criterion not in CRITERIA:
        raise OptimizationError(
            f"unknown filter pruning criterion {criterion!r}; expected one of {', '.join(CRITERIA)}",
            "l1 ranks filters by weight magnitude; taylor by |activation x gradient| on train data",
        )
    if isinstance(ratio, dict):
        for value in ratio.values():
            _check_ratio(value)
    else:
        _check_ratio(ratio)
    analysis = Analysis(model, skip, dense=dense)
    groups = analysis.groups()
    if not groups:
        raise OptimizationError(
            f"model {analysis.model.name!r} has no Conv1D, Conv2D, SeparableConv2D or "
            "Conv2DTranspose layer whose filters could be pruned (nor a hidden Dense layer)",
            "filter pruning shrinks convolutions and an MLP's hidden layers; otherwise use "
            "factorize or prune",
        )
    prunable = [g for g in groups if g.prunable and _ratio_for(ratio, g.layers) > 0]
    if criterion == "taylor" and prunable:
        if data is not None:
            data = stage_data(data, analysis.model, "train")
        names = [name for g in prunable for name in g.layers]
        taylor = taylor_scores(analysis, names, data, taylor_batches, batch_size)
    keep = {}
    for group in prunable:
        if criterion == "taylor":
            scores = sum(taylor[name] for name in group.layers)
        else:
            order = 1 if criterion == "l1" else 2
            scores = sum(norm_scores(analysis, name, order) for name in group.layers)
        n = group.filters
        count = int(round(n * (1.0 - _ratio_for(ratio, group.layers))))
        if round_to and round_to > 1:
            count = int(round(count / round_to)) * round_to or round_to
        count = min(n, max(int(min_filters), count, 1))
        group.scores = np.asarray(scores, np.float64)
        if count >= n:
            continue
        kept = np.sort(np.argsort(-group.scores, kind="stable")[:count])
        group.keep = kept
        keep[group.root] = kept
    new = _rebuild(analysis, keep)
    plan = PruningPlan(
        groups=groups,
        criterion=criterion,
        ratio=ratio,
        params_before=int(analysis.model.count_params()),
        params_after=int(new.count_params()),
    )
    return new, plan


def _take(array, index, axis):
    return np.take(np.asarray(array), index, axis=axis)


def _rebuild(analysis, keep) -> keras.Model:
    config = analysis.model.get_config()
    layer_configs = {entry["config"]["name"]: entry["config"] for entry in config["layers"]}
    weights = {}
    for node in analysis.nodes:
        layer, cls = node.layer, node.class_name
        ins = analysis.node_inputs.get(node.name) or []
        spec = ins[0] if len(ins) == 1 else None
        in_index = None
        if spec is not None and analysis.total(spec) == (node.input_shapes[0][-1] or -1):
            candidate = analysis.indices(spec, keep)
            if len(candidate) < analysis.total(spec):
                in_index = candidate
        out_index = None
        if node.name in analysis.producer_space:
            root = analysis.spaces.find(analysis.producer_space[node.name])
            out_index = keep.get(root)
        if in_index is None and out_index is None:
            continue
        arrays = layer.get_weights()
        if node.name in analysis.producer_space:
            key = "units" if cls == "Dense" else "filters"
            layer_configs[node.name][key] = (
                len(out_index) if out_index is not None else filter_count(layer)
            )
            weights[node.name] = _producer_weights(layer, cls, arrays, in_index, out_index)
        elif cls == "Dense" and in_index is not None:
            weights[node.name] = [_take(arrays[0], in_index, 0)] + arrays[1:]
        elif cls == "DepthwiseConv2D" and in_index is not None:
            m = int(layer.depth_multiplier)
            # in_index lists the kept input channels; the bias follows the outputs (c * m + j).
            out = (in_index[:, None] * m + np.arange(m)).reshape(-1)
            new = [_take(arrays[0], in_index, 2)]
            if layer.use_bias:
                new.append(_take(arrays[1], out, 0))
            weights[node.name] = new
        elif cls in ("BatchNormalization",) and in_index is not None:
            weights[node.name] = [_take(a, in_index, 0) for a in arrays]
        elif cls == "PReLU" and in_index is not None:
            alpha = arrays[0]
            if alpha.shape[-1] > 1:
                weights[node.name] = [_take(alpha, in_index, alpha.ndim - 1)]
        elif cls == "Reshape" and in_index is not None and spec.kind == "chan":
            target = list(layer_configs[node.name]["target_shape"])
            if len(target) > 1:
                target[-1] = len(in_index)
                layer_configs[node.name]["target_shape"] = tuple(target)
    return rebuild(analysis.model, config, weights)


def _producer_weights(layer, cls, arrays, in_index, out_index):
    if cls in ("Conv2D", "Conv1D", "Dense"):
        kernel = arrays[0]
        if in_index is not None:
            kernel = _take(kernel, in_index, kernel.ndim - 2)
        if out_index is not None:
            kernel = _take(kernel, out_index, kernel.ndim - 1)
        rest = arrays[1:]
        if out_index is not None and rest:
            rest = [_take(rest[0], out_index, 0)]
        return [kernel] + rest
    if cls == "Conv2DTranspose":
        kernel = arrays[0]
        if in_index is not None:
            kernel = _take(kernel, in_index, 3)
        if out_index is not None:
            kernel = _take(kernel, out_index, 2)
        rest = arrays[1:]
        if out_index is not None and rest:
            rest = [_take(rest[0], out_index, 0)]
        return [kernel] + rest
    # SeparableConv2D: depthwise (kh, kw, in, m), pointwise (1, 1, in*m, out), bias (out,)
    depthwise, pointwise = arrays[0], arrays[1]
    rest = arrays[2:]
    if in_index is not None:
        m = int(layer.depth_multiplier)
        depthwise = _take(depthwise, in_index, 2)
        pointwise = _take(pointwise, (in_index[:, None] * m + np.arange(m)).reshape(-1), 2)
    if out_index is not None:
        pointwise = _take(pointwise, out_index, 3)
        if rest:
            rest = [_take(rest[0], out_index, 0)]
    return [depthwise, pointwise] + rest
