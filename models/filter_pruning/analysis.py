"""The graph analysis of filter pruning: which output channels are coupled, and which must stay.

A union-find over channel spaces (one per producing layer) follows every tensor's channels through
the graph: layers that pass channels through keep the producer's space, a residual ``Add`` ties
the spaces it combines into one :class:`FilterGroup`, and any layer that needs all the channels
freezes them.
"""

import fnmatch
from dataclasses import dataclass

import numpy as np

from tfedge.core.keras_internals import keras_history
from tfedge.models.graph import as_functional, graph_nodes, output_names

__all__ = ["FilterGroup", "Analysis", "filter_groups", "filter_count"]

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


class Analysis:
    """The channel spaces of a functional model and the spec of every tensor's last axis.

    Example:
        >>> from tfedge.models.zoo import build
        >>> len(Analysis(build("ds_cnn"), skip=()).groups()) > 1
        True
    """

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
            filters = filter_count(layer)
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
    return Analysis(model, skip, dense=dense).groups()


def filter_count(layer) -> int:
    """A producer's output channels: a Dense layer's units, a convolution's filters.

    Example:
        >>> from tfedge.models.zoo import build
        >>> filter_count(build("ds_cnn").get_layer("pw1"))
        64
    """
    return int(layer.units if type(layer).__name__ == "Dense" else layer.filters)
