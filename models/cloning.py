"""Copy a Keras model with its weights, and flatten nested sub-models into one functional model.

tfmot's wrappers see only a model's top-level layers, and clone the model as they wrap it: the
stages flatten first and clone inside :func:`trusted_cloning`.

Example:
    >>> from tfedge.models.cloning import clone_model, flatten_model
    >>> flat = flatten_model(model)  # doctest: +SKIP
    >>> copy = clone_model(flat)  # doctest: +SKIP
"""

import contextlib

from tfedge.core.backend import keras, tf
from tfedge.core.errors import OptimizationError, first_line
from tfedge.core.keras_internals import (
    input_layers,
    is_graph_network,
    nodes_by_depth,
    rename_layer,
    tensor_usage_count,
)
from tfedge.models.rebuild import to_keras2

__all__ = ["clone_model", "frozen_copy", "trusted_cloning", "flatten_model"]


def trusted_cloning():
    """A context in which in-memory models with ``Lambda`` layers can be cloned.

    Keras refuses to rebuild a ``Lambda`` from its config outside this scope (a guard against
    untrusted files); cloning the user's own in-memory model is safe.

    Example:
        >>> with trusted_cloning():
        ...     copy = keras.models.clone_model(model_with_a_lambda)  # doctest: +SKIP
    """
    scope = getattr(getattr(getattr(keras, "src", None), "saving", None), "serialization_lib", None)
    scope = getattr(scope, "SafeModeScope", None)
    return contextlib.nullcontext() if scope is None else scope(False)


def clone_model(model, clone_function=None) -> keras.Model:
    """A copy of a functional or Sequential model with its own layers and the same weights.

    Example:
        >>> copy = clone_model(model)  # doctest: +SKIP
    """
    try:
        with trusted_cloning():
            copy = keras.models.clone_model(model, clone_function=clone_function)
    except Exception as exc:
        raise OptimizationError(
            f"cannot copy the model {model.name!r} ({type(model).__name__}): {first_line(exc)}",
            "build the model with the functional or Sequential API, and register custom layers "
            "(keras.utils.register_keras_serializable) so they can be cloned",
        ) from exc
    if clone_function is None:
        copy.set_weights(model.get_weights())
    return copy


def frozen_copy(model) -> keras.Model:
    """A non-trainable copy of ``model`` with its weights: the teacher the fine-tunes distil from.

    Example:
        >>> teacher = frozen_copy(model)  # doctest: +SKIP
        >>> teacher.trainable
        False
    """
    copy = clone_model(model)
    copy.trainable = False
    return copy


def _is_graph_model(layer) -> bool:
    return isinstance(layer, keras.Model) and (
        isinstance(layer, keras.Sequential) or is_graph_network(layer)
    )


def flatten_model(model) -> keras.Model:
    """Inline nested functional/Sequential sub-models: one flat functional model, same weights.

    tfmot's wrappers see only the top-level layers; a model built from sub-models (a backbone
    plus a head, a Sequential block) is flattened first, so every inner layer can be wrapped. The
    inner layers keep their names, prefixed by their sub-model's name where names would clash.

    A Keras 3 model is first rebuilt as tf_keras (:func:`tfedge.models.rebuild.to_keras2`).

    Raises:
        OptimizationError: for a subclassed model (no graph to read).

    Example:
        >>> flat = flatten_model(keras.Sequential([backbone, head]))  # doctest: +SKIP
        >>> [layer.name for layer in flat.layers]  # doctest: +SKIP
    """
    model = to_keras2(model)
    if not _is_graph_model(model):
        raise OptimizationError(
            f"the model {model.name!r} is a subclassed {type(model).__name__}: its layers cannot be "
            "read as a graph, so they cannot be wrapped for pruning, clustering or QAT",
            "rebuild it with the functional API (keras.Model(inputs, outputs)) or as a Sequential",
        )
    if not model.built or not model.inputs:
        raise OptimizationError(
            f"the model {model.name!r} has no inputs yet (built: {model.built})",
            "give it an Input, e.g. keras.Input(shape=(16, 16, 1)), or call model.build(shape)",
        )
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if not nested and not isinstance(model, keras.Sequential):
        return model
    for layer in nested:
        if not _is_graph_model(layer):
            raise OptimizationError(
                f"the sub-model {layer.name!r} of {model.name!r} is a subclassed "
                f"{type(layer).__name__}, which cannot be flattened",
                "rebuild the sub-model with the functional API or as a Sequential",
            )
    private = clone_model(model)
    used = {layer.name for layer in _all_layers(private) if not isinstance(layer, keras.Model)}
    seen = set()
    for layer in _all_layers(private):
        if isinstance(layer, keras.Model):
            continue
        if layer.name in seen:
            new = f"{_owner_name(private, layer)}_{layer.name}"
            while new in used or new in seen:
                new += "_"
            rename_layer(layer, new)
        seen.add(layer.name)
    inputs = [
        keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=_input_name(private, i))
        for i, tensor in enumerate(private.inputs)
    ]
    outputs = _call_graph(private, inputs)
    flat = keras.Model(
        inputs[0] if len(inputs) == 1 else inputs,
        outputs[0] if len(outputs) == 1 else outputs,
        name=model.name,
    )
    # A last copy gives every layer a single inbound node, which tfmot's wrappers expect.
    return clone_model(flat)


def _input_name(model, index: int) -> str:
    layers = input_layers(model)
    if layers and index < len(layers):
        return layers[index].name
    return f"input_{index}"


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _owner_name(model, target) -> str:
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            if any(inner is target for inner in layer.layers):
                return layer.name
            name = _owner_name(layer, target)
            if name:
                return name
    return ""


def _call_graph(model, inputs):
    """Re-run a functional model's graph layer by layer on new tensors, inlining sub-models."""
    usage = tensor_usage_count(model)
    tensors = {}
    for x, y in zip(model.inputs, inputs):
        key = str(id(x))
        tensors[key] = [y] * max(1, usage[key])
    by_depth = nodes_by_depth(model)
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.is_input:
                continue
            if any(key not in tensors for key in node.flat_input_ids):
                continue
            args, kwargs = node.map_arguments(tensors)
            layer = node.layer
            if _is_graph_model(layer):
                flat_inputs = tf.nest.flatten((args, kwargs))
                outputs = _call_graph(layer, flat_inputs[: len(layer.inputs)])
            else:
                outputs = tf.nest.flatten(layer(*args, **kwargs))
            for key, y in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
                tensors[key] = [y] * max(1, usage.get(key, 1))
    results = []
    for x in model.outputs:
        key = str(id(x))
        results.append(tensors[key].pop())
    return results
