"""Filter (channel) pruning that really shrinks the graph, for a measured int8 speed-up.

Each Conv2D / SeparableConv2D / Conv2DTranspose / Conv1D output filter (and, in a model without
convolutions, each hidden Dense unit) is ranked (L1 or L2 norm of its
weights, or a first-order Taylor estimate of the loss change), the lowest ``ratio`` are removed, and
the functional model is REBUILT with fewer channels: the kept weights are carried over, and every
layer downstream is made consistent:

* BatchNormalization and PReLU: their per-channel arrays are sliced.
* DepthwiseConv2D: its channels are sliced, so the removal flows through it to the next layer
  (``depth_multiplier`` > 1 included).
* Conv2D / SeparableConv2D / Conv2DTranspose / Dense: their input channels are sliced; a Dense after
  ``Flatten`` (or a 1-D ``Reshape``) loses the rows of the removed channels in the flattened
  ``H*W*C`` order.
* Pooling, global pooling, activations, dropout, padding, cropping, up-sampling, scalar Rescaling and
  a ``Reshape`` that keeps the channel axis pass the removal through.
* Residual ``Add`` (and Subtract / Multiply / Average / Maximum / Minimum): the tensors combined
  must keep the same channels, so their producers form one GROUP that is pruned identically, ranked
  by the group's summed score. ``Concatenate`` on the channel axis keeps each part's own pruning.
* Anything else that consumes a tensor (a nested model, a Lambda, LayerNormalization, a shared
  layer, a model output) freezes the channels of that tensor: its producers are left unpruned.

With BatchNormalization right after a convolution, the norm criteria rank the BN-folded filter
(``|gamma| / sqrt(var + eps)`` times the filter norm), since the BN rescales each channel.

Example:
    >>> from tfedge.core.digits import load_digits
    >>> from tfedge.models.zoo import build, train
    >>> data, test = load_digits()
    >>> model = train(build("resnet8"), data, epochs=5)  # doctest: +SKIP
    >>> small = prune_filters(model, data, test, ratio=0.5, epochs=5)  # doctest: +SKIP
    >>> small.count_params() < model.count_params() / 3  # doctest: +SKIP
    True
"""

import fnmatch
from dataclasses import dataclass, field

import numpy as np

import tfedge.models.training as training
from tfedge.core.backend import keras, tf
from tfedge.core.errors import OptimizationError
from tfedge.core.keras_internals import keras_history
from tfedge.models.graph import (
    as_functional,
    graph_nodes,
    output_names,
    rebuild,
    stage_data,
)

__all__ = ["CRITERIA", "FilterGroup", "PruningPlan", "filter_groups", "shrink", "prune_filters"]

CRITERIA = ("l1", "l2", "taylor")
DEFAULT_EPOCHS = 10

CONVOLUTIONS = ("Conv2D", "SeparableConv2D", "Conv2DTranspose", "Conv1D")
PRODUCERS = (*CONVOLUTIONS, "Dense")
PASS_THROUGH = {
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "ThresholdedReLU",
    "Dropout",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "MaxPooling2D",
    "AveragePooling2D",
    "UpSampling2D",
    "ZeroPadding2D",
    "Cropping2D",
    "SpatialDropout1D",
    "MaxPooling1D",
    "AveragePooling1D",
    "UpSampling1D",
    "ZeroPadding1D",
    "Cropping1D",
    "Identity",
}
GLOBAL_POOLS = {
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "GlobalAveragePooling1D",
    "GlobalMaxPooling1D",
}
MERGES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}
SLICED = {"BatchNormalization", "PReLU"}


@dataclass
class FilterGroup:
    """Output channels pruned together: one convolution's filters, or those tied by residual adds.

    Attributes:
        layers: the producing layers (several when an ``Add`` ties their outputs).
        filters: channels before pruning.
        prunable: False when something downstream needs all the channels (a model output, an
            unknown layer), or a layer of the group is in ``skip``.
        reason: why the group is not prunable.
        keep: the kept channel indices, once planned.
        scores: the per-channel scores, once planned.
    """

    layers: list
    filters: int
    prunable: bool = True
    reason: str = ""
    keep: np.ndarray | None = None
    scores: np.ndarray | None = None


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


class _Spaces:
    """Union-find over channel spaces: a space is one producer's output channels."""

    def __init__(self):
        self.parent, self.size, self.frozen, self.reason, self.producers = [], [], [], [], []

    def new(self, size, frozen=False, producer=None, reason=""):
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        self.frozen.append(frozen)
        self.reason.append(reason)
        self.producers.append([producer] if producer else [])
        return len(self.parent) - 1

    def find(self, i):
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        self.parent[b] = a
        self.frozen[a] = self.frozen[a] or self.frozen[b]
        self.reason[a] = self.reason[a] or self.reason[b]
        self.producers[a] += self.producers[b]

    def freeze(self, i, reason):
        root = self.find(i)
        if not self.frozen[root]:
            self.frozen[root] = True
            self.reason[root] = reason


@dataclass
class _Spec:
    """Where a tensor's last-axis channels come from: ``segments`` of (space, expand).

    ``kind`` is ``chan`` (last axis = channels) or ``flat`` (a flattened ``spatial`` x channels).
    ``expand`` is the depthwise multiplier: space channel ``c`` is tensor channels
    ``c*expand .. c*expand + expand - 1``.
    """

    kind: str
    segments: tuple
    spatial: int = 1


class _Analysis:
    def __init__(self, model, skip, frozen_layers=(), dense=None):
        self.model = as_functional(model)
        self.nodes = graph_nodes(self.model)
        if dense is None:  # an MLP's hidden units are its filters; a CNN keeps its Dense layers
            dense = not any(node.class_name in CONVOLUTIONS for node in self.nodes)
        self.dense = bool(dense)
        self.by_name = {n.name: n for n in self.nodes}
        self.spaces = _Spaces()
        self.specs = {}
        self.node_inputs = {}
        self.producer_space = {}
        self.skip = tuple(skip or ())
        self.outputs = output_names(self.model)
        for node in self.nodes:
            self._visit(node)
        for tensor in self.model.outputs:
            layer, _, tensor_index = keras_history(tensor)
            self._freeze(self.specs.get((layer.name, tensor_index)), "model output")

    # -- helpers -------------------------------------------------------------------------------
    def _fixed(self, shape, reason="not prunable"):
        if not shape or shape[-1] is None:
            return None
        return _Spec("chan", ((self.spaces.new(shape[-1], True, reason=reason), 1),))

    def _freeze(self, spec, reason):
        if spec is None:
            return
        for space, _ in spec.segments:
            self.spaces.freeze(space, reason)

    def _opaque(self, node, ins, reason):
        for spec in ins:
            self._freeze(spec, reason)
        for index, shape in enumerate(node.output_shapes):
            self.specs[(node.name, index)] = self._fixed(shape, reason)

    def _same_structure(self, a, b):
        if a is None or b is None or a.kind != b.kind or a.spatial != b.spatial:
            return False
        if len(a.segments) != len(b.segments):
            return False
        return all(
            self.spaces.size[sa] == self.spaces.size[sb] and ea == eb
            for (sa, ea), (sb, eb) in zip(a.segments, b.segments, strict=True)
        )

    def skipped(self, name):
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.skip)

    # -- the rules -----------------------------------------------------------------------------
    def _visit(self, node):
        ins = [self.specs.get(key) for key in node.inputs]
        self.node_inputs[node.name] = ins
        layer, cls = node.layer, node.class_name
        out_shape = node.output_shapes[0] if node.output_shapes else None
        if cls == "InputLayer":
            self.specs[(node.name, 0)] = self._fixed(out_shape, "model input")
            return
        if node.shared:
            return self._opaque(node, ins, f"shared layer {node.name}")
        if len(node.output_shapes) != 1:
            return self._opaque(node, ins, f"{cls} {node.name}")
        data_format = getattr(layer, "data_format", "channels_last")
        if data_format != "channels_last":
            return self._opaque(node, ins, f"{node.name} is channels_first")
        spec = ins[0] if len(ins) == 1 else None
        key = (node.name, 0)

        if (
            (cls in CONVOLUTIONS or (cls == "Dense" and self.dense))
            and len(ins) == 1
            and getattr(layer, "groups", 1) == 1
        ):
            if spec is not None and spec.kind != "chan" and cls != "Dense":
                self._freeze(spec, f"{cls} {node.name} after a flattened tensor")
            reason = ""
            filters = _filters(layer)
            if node.name in self.outputs:
                reason = "model output"
            elif self.skipped(node.name):
                reason = "skipped"
            elif filters < 2:
                reason = "one filter"
            space = self.spaces.new(filters, bool(reason), node.name, reason)
            self.producer_space[node.name] = space
            self.specs[key] = _Spec("chan", ((space, 1),))
        elif cls == "Dense" and len(ins) == 1:
            self.specs[key] = self._fixed(out_shape)
        elif cls == "DepthwiseConv2D" and len(ins) == 1:
            if spec is None or spec.kind != "chan":
                return self._opaque(node, ins, f"{node.name}")
            m = int(layer.depth_multiplier)
            self.specs[key] = _Spec("chan", tuple((s, e * m) for s, e in spec.segments))
        elif cls == "BatchNormalization" and len(ins) == 1:
            axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
            rank = len(node.input_shapes[0])
            if [a % rank for a in axis] != [rank - 1]:
                return self._opaque(node, ins, f"{node.name} normalizes another axis")
            self.specs[key] = spec
        elif cls == "PReLU" and len(ins) == 1:
            self.specs[key] = spec
        elif cls in PASS_THROUGH and len(ins) == 1:
            self.specs[key] = spec
        elif cls == "Rescaling" and len(ins) == 1:
            if np.ndim(layer.scale) or np.ndim(layer.offset):
                return self._opaque(node, ins, f"per-channel Rescaling {node.name}")
            self.specs[key] = spec
        elif cls in GLOBAL_POOLS and len(ins) == 1:
            if spec is not None and spec.kind != "chan":
                return self._opaque(node, ins, node.name)
            self.specs[key] = spec
        elif cls == "Flatten" and len(ins) == 1:
            if spec is None or spec.kind == "flat":
                self.specs[key] = spec if spec is not None else self._fixed(out_shape)
            else:
                spatial = int(np.prod(node.input_shapes[0][1:-1]))
                self.specs[key] = _Spec("flat", spec.segments, spatial)
        elif cls == "Reshape" and len(ins) == 1:
            target = tuple(layer.target_shape)
            in_shape = node.input_shapes[0]
            if spec is None:
                self.specs[key] = self._fixed(out_shape)
            elif spec.kind == "chan" and len(target) > 1 and target[-1] == in_shape[-1]:
                self.specs[key] = spec
            elif len(target) == 1 and spec.kind == "chan":
                self.specs[key] = _Spec("flat", spec.segments, int(np.prod(in_shape[1:-1])))
            elif len(target) == 1:
                self.specs[key] = spec
            else:
                return self._opaque(node, ins, f"Reshape {node.name} moves the channels")
        elif cls in MERGES and len(ins) >= 2:
            first = ins[0]
            if not all(self._same_structure(first, other) for other in ins[1:]):
                return self._opaque(node, ins, f"{cls} {node.name} of mismatched tensors")
            for other in ins[1:]:
                for (a, _), (b, _) in zip(first.segments, other.segments, strict=True):
                    self.spaces.union(a, b)
            self.specs[key] = first
        elif cls == "Concatenate" and len(ins) >= 2:
            rank = len(node.input_shapes[0])
            if layer.axis % rank != rank - 1:
                return self._opaque(node, ins, f"{node.name} concatenates another axis")
            parts = [
                s if s is not None else self._fixed(shape)
                for s, shape in zip(ins, node.input_shapes, strict=True)
            ]
            if any(p is None or p.kind != "chan" for p in parts):
                return self._opaque(node, ins, node.name)
            self.specs[key] = _Spec("chan", tuple(seg for p in parts for seg in p.segments))
        else:
            self._opaque(node, ins, f"{cls} {node.name}")

    # -- after planning ------------------------------------------------------------------------
    def indices(self, spec, keep):
        """The kept indices of a tensor's last axis, given ``keep[root space]``."""
        parts, offset = [], 0
        for space, expand in spec.segments:
            root = self.spaces.find(space)
            size = self.spaces.size[space]
            kept = keep.get(root, np.arange(size))
            parts.append(offset + (kept[:, None] * expand + np.arange(expand)).reshape(-1))
            offset += size * expand
        index = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if spec.kind == "flat":
            index = (np.arange(spec.spatial)[:, None] * offset + index[None, :]).reshape(-1)
        return index.astype(np.int64)

    def total(self, spec):
        channels = sum(self.spaces.size[s] * e for s, e in spec.segments)
        return channels * (spec.spatial if spec.kind == "flat" else 1)

    def groups(self):
        roots = {}
        for name, space in self.producer_space.items():
            roots.setdefault(self.spaces.find(space), []).append(name)
        groups = []
        for root, layers in roots.items():
            frozen = self.spaces.frozen[root]
            group = FilterGroup(
                layers=layers,
                filters=self.spaces.size[root],
                prunable=not frozen,
                reason=self.spaces.reason[root] if frozen else "",
            )
            group.root = root
            groups.append(group)
        return groups


def filter_groups(model, skip=(), dense=None) -> list[FilterGroup]:
    """The model's filter groups: which convolutions' outputs are pruned together, and which can't be.

    Args:
        model: a tf_keras functional or Sequential model.
        skip: layer names (or glob patterns, ``stack1_*``) whose filters must all stay.
        dense: prune hidden Dense layers' units too (None: only in a model without convolutions).

    Returns:
        One :class:`FilterGroup` per set of tied producers, in graph order.

    Example:
        >>> from tfedge.models.zoo import build
        >>> [g.layers for g in filter_groups(build("resnet8")) if len(g.layers) > 1][0]
        ['conv1', 'stack1_conv2']
    """
    return _Analysis(model, skip, dense=dense).groups()


def _bn_after(analysis, name):
    node = analysis.by_name[name]
    if len(node.consumers) != 1:
        return None
    consumer = analysis.by_name[node.consumers[0]]
    if consumer.class_name == "BatchNormalization" and consumer.name in analysis.node_inputs:
        spec = analysis.node_inputs[consumer.name][0]
        if spec is not None and spec.segments == ((analysis.producer_space[name], 1),):
            return consumer.layer
    return None


def _bn_scale(bn):
    params = {w.name.split("/")[-1].split(":")[0]: w.numpy() for w in bn.weights}
    gamma = np.abs(params["gamma"]) if "gamma" in params else 1.0
    return gamma / np.sqrt(params["moving_variance"] + bn.epsilon)


def _filters(layer) -> int:
    return int(layer.units if type(layer).__name__ == "Dense" else layer.filters)


def _out_axis(layer):
    """The output-channel axis of a producer's main kernel."""
    return {"Conv2DTranspose": 2, "Conv1D": 2, "Dense": 1}.get(type(layer).__name__, 3)


def _main_kernel(layer):
    if type(layer).__name__ == "SeparableConv2D":
        return layer.pointwise_kernel.numpy()
    return layer.kernel.numpy()


def _norm_scores(analysis, name, order):
    layer = analysis.by_name[name].layer
    kernel = _main_kernel(layer)
    axis = _out_axis(layer)
    moved = np.moveaxis(kernel, axis, -1).reshape(-1, kernel.shape[axis])
    scores = np.abs(moved).sum(0) if order == 1 else np.sqrt((moved**2).sum(0))
    bn = _bn_after(analysis, name)
    if bn is not None:
        scores = scores * _bn_scale(bn)
    return scores


def _taylor_scores(analysis, names, data, batches, batch_size):
    """|sum over the gate layer's parameters of p * dL/dp| per channel, averaged over batches.

    The gate layer is the BatchNormalization right after the convolution (``gamma * dgamma +
    beta * dbeta``) or the convolution itself (``kernel * dkernel + bias * dbias``): for a layer
    linear in its per-channel parameters, this sum is ``sum(activation * gradient)`` over the
    channel's feature map, Molchanov et al.'s first-order Taylor criterion.
    """
    if data is None:
        raise OptimizationError(
            "criterion 'taylor' needs training data to compute gradients, and train is None",
            "pass train data, or use criterion='l1'",
        )
    model = analysis.model
    gates = {}
    for name in names:
        gates[name] = _bn_after(analysis, name) or analysis.by_name[name].layer
    variables = []
    for layer in gates.values():
        variables += [w for w in layer.trainable_weights]
    variables = list({id(v): v for v in variables}.values())
    from_logits = not training.outputs_probabilities(model, data.x)
    if training.is_binary(model):
        loss_fn = keras.losses.BinaryCrossentropy(from_logits=from_logits, reduction="sum")
    else:
        loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=from_logits, reduction="sum"
        )
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.x))
    totals = {name: 0.0 for name in names}
    count = 0
    for b in range(batches):
        index = order[b * batch_size : (b + 1) * batch_size]
        if len(index) == 0:
            break
        x = tf.constant(data.x[index])
        y = tf.constant(data.y[index])
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=False))
        grads = dict(zip([id(v) for v in variables], tape.gradient(loss, variables), strict=True))
        for name, layer in gates.items():
            contribution = 0.0
            for weight in layer.trainable_weights:
                grad = grads.get(id(weight))
                if grad is None:
                    continue
                product = (weight * grad).numpy()
                short = weight.name.split("/")[-1].split(":")[0]
                if product.ndim == 1:
                    contribution = contribution + product
                else:
                    axis = _out_axis(layer) if short != "depthwise_kernel" else None
                    if axis is None:
                        continue
                    if short == "pointwise_kernel":
                        axis = 3
                    moved = np.moveaxis(product, axis, -1)
                    contribution = contribution + moved.reshape(-1, moved.shape[-1]).sum(0)
            totals[name] = totals[name] + np.abs(contribution)
        count += 1
    return {name: totals[name] / max(count, 1) for name in names}


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
    analysis = _Analysis(model, skip, dense=dense)
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
        taylor = _taylor_scores(analysis, names, data, taylor_batches, batch_size)
    keep = {}
    for group in prunable:
        if criterion == "taylor":
            scores = sum(taylor[name] for name in group.layers)
        else:
            order = 1 if criterion == "l1" else 2
            scores = sum(_norm_scores(analysis, name, order) for name in group.layers)
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
                len(out_index) if out_index is not None else _filters(layer)
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


def prune_filters(
    model,
    train,
    val=None,
    *,
    settings: training.FineTune = training.FineTune(temperature=1.0, alpha=0.5),
    ratio=0.5,
    criterion: str = "l1",
    skip=(),
    min_filters: int = 1,
    round_to: int = 1,
    taylor_batches: int = 8,
    dense: bool | None = None,
    **fine_tune,
) -> keras.Model:
    """Filter pruning stage: rank, remove and rebuild (:func:`shrink`), then fine-tune.

    Args:
        model: a tf_keras functional or Sequential model (trained).
        train: labelled training data (a :class:`tfedge.core.data.Dataset`, ``(x, y)``, an ``.npz``...).
        val: labelled validation data; the best fine-tuning epoch on it is kept (optional).
        settings: how it fine-tunes (:class:`~tfedge.models.training.FineTune`): ``epochs``
            (None: 10; 0 skips fine-tuning), ``batch_size`` (also Taylor's), the ``teacher``
            to distil from (typically the unpruned model), the strategy. Its ``temperature`` is
            1, lower than the other stages' 4: a freshly shrunk model starts far from its
            teacher, and a teacher that is not very confident gives near-uniform targets at
            T=4 that bring it back slowly (a Keras 3 residual CNN: 79 % after 10 epochs at T=4,
            93 % at T=2, 97 % at T=1).
        ratio: fraction of filters removed per group (or ``{layer glob: fraction}``).
        criterion: ``l1``, ``l2`` or ``taylor``.
        skip: layer names / glob patterns left unpruned.
        min_filters: the fewest filters a group keeps.
        round_to: round kept filter counts to a multiple of this.
        taylor_batches: batches the Taylor criterion looks at.
        dense: also remove hidden Dense units (None: only in a model without convolutions).
        **fine_tune: fields of ``settings`` as keywords (``epochs=3``, ``teacher=model``): they
            replace those fields.

    Returns:
        The smaller tf_keras model, fine-tuned, ready for :func:`tfedge.converters.convert`.

    Example:
        >>> small = prune_filters(model, train, val, ratio=0.5, teacher=model)  # doctest: +SKIP
    """
    settings = training.with_keywords(settings, fine_tune, "prune_filters")
    functional = as_functional(model)
    strategy = training.resolve_strategy(settings.strategy)
    train = stage_data(train, functional, "train")
    val = stage_data(val, functional, "val")
    with training.strategy_scope(strategy):
        result, _ = shrink(
            functional,
            ratio,
            criterion,
            data=train,
            skip=skip,
            min_filters=min_filters,
            round_to=round_to,
            taylor_batches=taylor_batches,
            batch_size=settings.batch_size,
            dense=dense,
        )
    epochs = DEFAULT_EPOCHS if settings.epochs is None else int(settings.epochs)
    return training.fine_tune_rebuilt(
        result,
        train,
        val,
        **settings.fit_options(epochs=epochs, strategy=strategy),
        desc="fine-tuning pruned filters",
    )
