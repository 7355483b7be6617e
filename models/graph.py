"""Functional-graph helpers for the stages that change a model's structure (filter pruning, factorization).

A tf_keras functional model is read as a list of :class:`GraphNode` (one per layer, in topological
order, with the tensors each one consumes), rewritten as a config (``model.get_config()``), and
rebuilt with :func:`rebuild`, which carries every weight over: changed layers take the arrays the
stage computed, the others keep theirs.

Example:
    >>> from tfedge.models.zoo import build
    >>> nodes = graph_nodes(build("resnet8"))
    >>> [n.name for n in nodes if n.class_name == "Add"]
    ['stack1_add', 'stack2_add', 'stack3_add']
"""

import copy
from dataclasses import dataclass, field

import numpy as np

from tfedge.core.backend import is_keras3_model, keras, keras2_safe_mode, tf
from tfedge.core.data import load_data
from tfedge.core.errors import OptimizationError, first_line
from tfedge.core.keras_internals import (
    inbound_nodes,
    is_graph_network,
    keras_history,
    network_nodes,
)

__all__ = [
    "GraphNode",
    "as_functional",
    "graph_nodes",
    "output_names",
    "rebuild",
    "stage_data",
    "fold_batch_norms",
]

FUNCTIONAL_HINT = (
    "build the model with the functional API (keras.Input -> layers -> keras.Model) or as a "
    "Sequential with an input shape"
)


@dataclass
class GraphNode:
    """One layer of a functional model, as the graph rewriting sees it.

    Attributes:
        name: the layer's name.
        layer: the layer object.
        class_name: the layer's class name (``Conv2D``, ``Add``...).
        inputs: the tensors the layer consumes, as ``(producer layer name, output index)``, in call
            order (including tensors passed as keyword arguments).
        input_shapes: the shapes of those tensors.
        output_shapes: the shapes of the layer's outputs.
        shared: True when the layer is called more than once in the model.
        consumers: names of the layers that consume this layer's outputs.
    """

    name: str
    layer: object
    class_name: str
    inputs: list = field(default_factory=list)
    input_shapes: list = field(default_factory=list)
    output_shapes: list = field(default_factory=list)
    shared: bool = False
    consumers: list = field(default_factory=list)


def as_functional(model) -> keras.Model:
    """Return ``model`` as a tf_keras functional model (a built Sequential is wrapped, sharing layers).

    Raises:
        OptimizationError: for a Keras 3 model, a subclassed model, or a Sequential without inputs.

    Example:
        >>> seq = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
        >>> as_functional(seq).layers[0].__class__.__name__
        'InputLayer'
    """

    if is_keras3_model(model):
        raise OptimizationError(
            f"model {model.name!r} is a Keras 3 model; this stage needs a tf_keras (Keras 2) model",
            "rebuild it first with tfedge.models.rebuild.to_keras2(model)",
        )
    if not isinstance(model, keras.Model):
        raise OptimizationError(
            f"expected a tf_keras model, got {type(model).__name__}",
            "load the model with tfedge.core.loading.load_model, or build it with tfedge.core.backend.keras",
        )
    if isinstance(model, keras.Sequential):
        if not model.inputs:
            raise OptimizationError(
                f"the Sequential model {model.name!r} has no defined input",
                "give its first layer an input_shape=..., or start it with keras.Input(shape)",
            )
        return keras.Model(model.inputs, model.outputs, name=model.name)
    if not is_graph_network(model):
        raise OptimizationError(
            f"model {model.name!r} ({type(model).__name__}) is a subclassed model: its graph "
            "cannot be read or rebuilt",
            FUNCTIONAL_HINT,
        )
    return model


def _history(tensor):
    layer, _, tensor_index = keras_history(tensor)
    return layer.name, tensor_index


def _shape(tensor) -> tuple:
    return tuple(None if d is None else int(d) for d in tensor.shape)


def graph_nodes(model) -> list[GraphNode]:
    """The layers of a functional model in topological order, with the tensors they consume.

    Args:
        model: a tf_keras functional (or built Sequential) model.

    Returns:
        One :class:`GraphNode` per layer, producers before consumers.

    Example:
        >>> from tfedge.models.zoo import build
        >>> graph_nodes(build("digits_cnn"))[1].inputs
        [('image', 0)]
    """
    model = as_functional(model)
    own_nodes = network_nodes(model)
    nodes = []
    by_name = {}
    for layer in model.layers:
        own = [
            node
            for index, node in enumerate(inbound_nodes(layer))
            if f"{layer.name}_ib-{index}" in own_nodes
        ]
        node = GraphNode(layer.name, layer, type(layer).__name__, shared=len(own) > 1)
        if own:
            first = own[0]
            if not isinstance(layer, keras.layers.InputLayer):
                for tensor in first.keras_inputs:
                    node.inputs.append(_history(tensor))
                    node.input_shapes.append(_shape(tensor))
            node.output_shapes = [_shape(t) for t in tf.nest.flatten(first.outputs)]
        nodes.append(node)
        by_name[layer.name] = node
    for node in nodes:
        for producer, _ in node.inputs:
            if producer in by_name and node.name not in by_name[producer].consumers:
                by_name[producer].consumers.append(node.name)
    return nodes


def output_names(model) -> set[str]:
    """Names of the layers whose outputs are the model's outputs."""
    return {keras_history(tensor)[0].name for tensor in as_functional(model).outputs}


def rebuild(model, config: dict, weights: dict, name: str | None = None) -> keras.Model:
    """Build a functional model from a (rewritten) config and carry the weights over.

    Args:
        model: the original model; layers absent from ``weights`` take their weights from the layer
            of the same name in it.
        config: the functional config (``model.get_config()``, rewritten).
        weights: ``{layer name: list of arrays}`` for the layers whose weights changed or are new.
        name: the new model's name (default: the original's).

    Returns:
        The new tf_keras functional model, weights set.

    Raises:
        OptimizationError: when a layer's new weights do not fit its rebuilt shape.
    """
    config = copy.deepcopy(config)
    for layer_config in config["layers"]:
        layer_config.pop("build_config", None)
    if name:
        config["name"] = name
    # The model is already in memory (nothing untrusted is read): its Lambda layers may be rebuilt.
    try:
        with keras2_safe_mode(False):
            new = keras.Model.from_config(config)
    except (ValueError, TypeError) as exc:
        raise OptimizationError(
            f"cannot rebuild model {model.name!r} from its config: {first_line(exc)}",
            "custom layers must be registered (keras.utils.register_keras_serializable) and "
            "implement get_config so that the model can be rebuilt",
        ) from exc
    old_layers = {layer.name: layer for layer in model.layers}
    for layer in new.layers:
        arrays = weights.get(layer.name)
        if arrays is None:
            if layer.name not in old_layers:
                continue
            arrays = old_layers[layer.name].get_weights()
        if not arrays and not layer.weights:
            continue
        try:
            layer.set_weights([np.asarray(a) for a in arrays])
        except ValueError as exc:
            raise OptimizationError(
                f"cannot carry the weights of layer {layer.name!r} ({type(layer).__name__}) over "
                f"to the rebuilt model: {first_line(exc)}",
                "this is a bug in the graph rewriting; please report it with the model summary",
            ) from exc
    return new


def stage_data(data, model, name: str):
    """Load a stage's ``train`` / ``val`` data (any form :func:`tfedge.core.data.load_data` takes), with labels."""

    if data is None:
        return None
    shape = tuple(model.inputs[0].shape[1:]) if getattr(model, "inputs", None) else None
    return load_data(data, input_shape=shape, require_labels=True, name=name)


FOLDABLE = {
    "Conv2D": 3,
    "DepthwiseConv2D": None,
    "Dense": -1,
    "SeparableConv2D": 3,
    "Conv2DTranspose": 2,
}


def _replace_refs(value, old: str, new: str):
    """Point every ``[old, node, tensor, ...]`` reference of a config at ``new``."""
    if isinstance(value, dict):
        return {k: _replace_refs(v, old, new) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if len(value) >= 3 and value[0] == old and isinstance(value[1], int):
            return type(value)([new, *value[1:]])
        return type(value)(_replace_refs(v, old, new) for v in value)
    return value


def fold_batch_norms(model) -> keras.Model:
    """Merge every BatchNormalization into the convolution or Dense right before it.

    A BN folds when it normalizes the channel axis and its input comes from a Conv2D,
    DepthwiseConv2D, SeparableConv2D, Conv2DTranspose or Dense with a linear activation, used by
    nothing else: the layer's kernel is scaled by ``gamma / sqrt(var + eps)`` per output channel and
    its bias becomes ``(bias - mean) * scale + beta``. The outputs do not change (up to float
    rounding); the int8 graph loses the BN's MUL/ADD ops when a training wrapper (QAT) would keep
    them. Other BNs are left as they are.

    Args:
        model: a tf_keras functional or Sequential model.

    Returns:
        A new model without the folded BNs (the model itself when there is nothing to fold).

    Example:
        >>> from tfedge.models.zoo import build
        >>> folded = fold_batch_norms(build("resnet8"))
        >>> [l for l in folded.layers if "BatchNormalization" in type(l).__name__]
        []
    """
    functional = as_functional(model)
    nodes = graph_nodes(functional)
    by_name = {n.name: n for n in nodes}
    config = functional.get_config()
    entries = {entry["config"]["name"]: entry for entry in config["layers"]}
    weights = {}
    folded = []
    for node in nodes:
        if node.class_name != "BatchNormalization" or node.shared or len(node.inputs) != 1:
            continue
        bn = node.layer
        rank = len(node.input_shapes[0])
        axis = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
        if [a % rank for a in axis] != [rank - 1]:
            continue
        producer = by_name.get(node.inputs[0][0])
        if (
            producer is None
            or producer.class_name not in FOLDABLE
            or producer.shared
            or producer.consumers != [node.name]
            or producer.name in folded
            or getattr(producer.layer, "activation", None) is not keras.activations.linear
        ):
            continue
        params = {w.name.split("/")[-1].split(":")[0]: w.numpy() for w in bn.weights}
        channels = params["moving_mean"].shape[0]
        gamma = params.get("gamma", np.ones(channels, np.float32))
        beta = params.get("beta", np.zeros(channels, np.float32))
        scale = gamma / np.sqrt(params["moving_variance"] + bn.epsilon)
        shift = beta - params["moving_mean"] * scale
        layer = producer.layer
        arrays = layer.get_weights()
        kind = producer.class_name
        if kind == "SeparableConv2D":
            kernels, bias = arrays[:2], arrays[2] if layer.use_bias else np.zeros(channels)
            kernels = [kernels[0], kernels[1] * scale]
        elif kind == "DepthwiseConv2D":
            kernel = arrays[0]
            bias = arrays[1] if layer.use_bias else np.zeros(channels)
            kernels = [kernel * scale.reshape(kernel.shape[2], kernel.shape[3])]
        else:
            kernel = arrays[0]
            bias = arrays[1] if layer.use_bias else np.zeros(channels)
            axis = FOLDABLE[kind]
            shape = [1] * kernel.ndim
            shape[axis] = channels
            kernels = [kernel * scale.reshape(shape)]
        weights[producer.name] = [k.astype(np.float32) for k in kernels] + [
            (bias * scale + shift).astype(np.float32)
        ]
        entries[producer.name]["config"]["use_bias"] = True
        config["layers"].remove(entries[node.name])
        config = _replace_refs(config, node.name, producer.name)
        entries = {entry["config"]["name"]: entry for entry in config["layers"]}
        folded.append(producer.name)
    if not folded:
        return functional
    return rebuild(functional, config, weights)
