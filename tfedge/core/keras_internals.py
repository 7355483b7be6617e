"""Every private Keras and tfmot name tfedge relies on, each behind one function.

Keras has no public API for walking a functional model's graph node by node (which layer made a
tensor, the nodes at each depth, how often a tensor is read), for renaming a built layer, or for
the variables a layer owns itself; tfmot has none for a wrapper's quantizers. The functions below are the only places that touch those names, and
``tests/test_keras_internals.py`` calls each on real models so that an upgrade which renames one
fails there, by name, rather than deep inside a stage.

Names used: tf_keras ``KerasTensor._keras_history`` (Keras 3: ``.operation`` for ``.layer``),
``Layer._inbound_nodes``, ``Functional._network_nodes``, ``._is_graph_network``,
``._nodes_by_depth``, ``._tensor_usage_count``, ``._input_layers``, Keras 3
``Sequential._functional``, ``Layer._name``, ``Layer._trainable_weights`` /
``._non_trainable_weights``; tfmot ``QuantizeWrapper._weight_vars`` / ``._quantize_activations`` / ``._output_quantizers``
and a registry's ``._weight_names``. (tf_keras's ``SafeModeScope`` is behind
``tfedge.core.backend.keras2_safe_mode``; the device-side runner reads LiteRT's
``Interpreter._get_ops_details`` for per-operator timing, the only listing LiteRT has.)

Example:
    >>> layer, node_index, tensor_index = keras_history(model.outputs[0])  # doctest: +SKIP
"""

__all__ = [
    "keras_history",
    "inbound_nodes",
    "network_nodes",
    "is_graph_network",
    "nodes_by_depth",
    "has_node_graph",
    "tensor_usage_count",
    "input_layers",
    "sequential_functional",
    "rename_layer",
    "own_variables",
    "weight_names",
    "quantize_wrapper_parts",
    "OUTPUT_QUANTIZERS",
]


def keras_history(tensor) -> tuple:
    """``(layer, node_index, tensor_index)`` of the layer call that made a symbolic tensor.

    Works for tf_keras (``history.layer``) and Keras 3 (``history.operation``).

    Example:
        >>> keras_history(model.outputs[0])[0].name  # doctest: +SKIP
        'logits'
    """
    history = tensor._keras_history
    layer = getattr(history, "layer", None) or getattr(history, "operation", None)
    return layer, int(history.node_index), int(history.tensor_index)


def inbound_nodes(layer) -> list:
    """The nodes (calls) of a layer, in the order they were made.

    Example:
        >>> len(inbound_nodes(model.layers[1]))  # doctest: +SKIP
        1
    """
    return list(layer._inbound_nodes)


def network_nodes(model) -> set:
    """The keys ``"<layer>_ib-<index>"`` of the nodes that belong to a tf_keras functional model.

    Example:
        >>> "conv1_ib-0" in network_nodes(model)  # doctest: +SKIP
        True
    """
    return set(getattr(model, "_network_nodes", set()))


def is_graph_network(model) -> bool:
    """Whether a tf_keras model is a graph (functional or built Sequential), not subclassed.

    Example:
        >>> is_graph_network(model)  # doctest: +SKIP
        True
    """
    return bool(getattr(model, "_is_graph_network", False))


def nodes_by_depth(model) -> dict:
    """``{depth: [node, ...]}`` of a functional model (the deepest depth are its inputs).

    Example:
        >>> max(nodes_by_depth(model))  # doctest: +SKIP
        7
    """
    return model._nodes_by_depth


def has_node_graph(model) -> bool:
    """Whether a model has a layer graph by depth (functional), not only a ``call`` (subclassed).

    Example:
        >>> has_node_graph(model)  # doctest: +SKIP
        True
    """
    return hasattr(model, "_nodes_by_depth")


def tensor_usage_count(model) -> dict:
    """``{str(id(tensor)): count}``: how many layer calls read each tensor of a tf_keras model.

    Example:
        >>> tensor_usage_count(model)[str(id(model.inputs[0]))]  # doctest: +SKIP
        1
    """
    return model._tensor_usage_count


def input_layers(model):
    """The InputLayer objects of a tf_keras functional model, or ``None``.

    Example:
        >>> [layer.name for layer in input_layers(model)]  # doctest: +SKIP
        ['image']
    """
    return getattr(model, "_input_layers", None)


def sequential_functional(model):
    """The functional model a built Keras 3 Sequential holds, or ``None``.

    Example:
        >>> sequential_functional(keras3_sequential).outputs  # doctest: +SKIP
    """
    return getattr(model, "_functional", None)


def rename_layer(layer, name: str) -> None:
    """Rename a built layer or model (Keras has no public setter for ``name``).

    Example:
        >>> rename_layer(student, "digits_cnn_student")  # doctest: +SKIP
    """
    layer._name = name


def own_variables(layer) -> list:
    """A layer's own trainable then non-trainable variables (its sub-layers' not included).

    Example:
        >>> [v.name for v in own_variables(dense)]  # doctest: +SKIP
        ['dense/kernel:0', 'dense/bias:0']
    """
    return [*layer._trainable_weights, *layer._non_trainable_weights]


def weight_names(registry, layer) -> list:
    """The weight attribute names a tfmot prunable/clusterable registry gives ``layer``.

    Example:
        >>> weight_names(PruneRegistry, conv)  # doctest: +SKIP
        ['kernel']
    """
    return list(registry._weight_names(layer))


#: The attribute of a tfmot ``QuantizeWrapper`` holding its output quantizers (set to swap them).
OUTPUT_QUANTIZERS = "_output_quantizers"


def quantize_wrapper_parts(layer) -> dict:
    """A tfmot ``QuantizeWrapper``'s quantizers: ``weights`` (``[(weight, quantizer, vars)]``),
    ``activations`` (its activation wrappers) and ``outputs`` (output quantizers, settable).

    Example:
        >>> quantize_wrapper_parts(wrapper)["weights"][0][0].name  # doctest: +SKIP
        'conv1/kernel:0'
    """
    return {
        "weights": list(getattr(layer, "_weight_vars", None) or []),
        "activations": list(getattr(layer, "_quantize_activations", None) or []),
        "outputs": getattr(layer, OUTPUT_QUANTIZERS, None),
    }
