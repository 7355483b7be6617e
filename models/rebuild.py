"""Rebuild a Keras 3 model as a tf_keras (Keras 2) functional model: same layers, same weights.

tfmot's training wrappers (pruning, QAT, clustering) need Keras 2, while TensorFlow 2.21 saves Keras 3
files. :func:`to_keras2` walks the Keras 3 functional graph, recreates every layer from its class
name and config (adapting the keys that differ: dtype policy dicts, ``batch_shape``, the
``module``/``registered_name`` serialization of initializers, regularizers and constraints, renamed
arguments), calls it on the rebuilt tensors, copies the weights, and checks that both models give the
same outputs on a random input. Nested functional or Sequential models are rebuilt recursively (they
stay nested). Post-training int8 does not need this: ``tfedge convert`` takes Keras 3 models as they
are.

Example:
    >>> from tfedge.core.loading import load_model
    >>> loaded = load_model("keras3_model.keras")  # doctest: +SKIP
    >>> model = to_keras2(loaded.model)  # doctest: +SKIP
    >>> type(model).__module__.startswith("tf_keras")  # doctest: +SKIP
    True
"""

import inspect

import numpy as np

from tfedge.core.backend import is_keras2_model, is_keras3_model, keras, keras3
from tfedge.core.errors import OptimizationError, first_line
from tfedge.core.keras_internals import (
    has_node_graph,
    keras_history,
    nodes_by_depth,
    sequential_functional,
)
from tfedge.core.loading import LoadedModel, load_model

__all__ = ["to_keras2", "VERIFY_TOLERANCE"]

VERIFY_TOLERANCE = 1e-5
SUBCLASSED_HINT = (
    "rebuild it as a functional model (keras.Input -> layers -> keras.Model) or a Sequential; or "
    "convert it directly for post-training int8 with `tfedge convert MODEL --calib DATA`, which "
    "takes Keras 3 models as they are"
)
LAYER_HINT = (
    "replace the layer by standard Keras layers (available in both Keras 2 and 3), or convert the "
    "model directly for post-training int8 with `tfedge convert`, which needs no rebuilding"
)
# Arguments of the base Layer that every tf_keras layer accepts through **kwargs.
BASE_KWARGS = {
    "input_dim",
    "input_shape",
    "batch_input_shape",
    "batch_size",
    "weights",
    "activity_regularizer",
    "autocast",
    "implementation",
    "trainable",
    "dtype",
    "dynamic",
    "name",
}
# (class name, Keras 3 key) -> tf_keras key
RENAMED = {
    ("LeakyReLU", "negative_slope"): "alpha",
    ("*", "batch_shape"): "batch_input_shape",
}
OBJECT_KINDS = {
    "_initializer": "initializers",
    "_regularizer": "regularizers",
    "_constraint": "constraints",
}


def _accepted(cls) -> set:
    """Every keyword the tf_keras class's __init__ chain accepts."""
    names = set(BASE_KWARGS)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            names |= set(inspect.signature(init).parameters) - {"self", "args", "kwargs"}
        except (TypeError, ValueError):
            continue
        if klass is keras.layers.Layer:
            break
    return names


def _trivial(value) -> bool:
    return value is None or value is False or value == {} or value == [] or value == ()


def _dtype(value):
    if isinstance(value, dict):
        config = value.get("config") or {}
        return config.get("name", "float32")
    return value


def _adapt_object(value, kind: str, where: str):
    """A Keras 3 serialized initializer / regularizer / constraint as a tf_keras legacy config."""
    if not isinstance(value, dict) or "class_name" not in value:
        return value
    module = getattr(keras, kind)
    class_name = value["class_name"]
    cls = getattr(module, class_name, None)
    config = dict(value.get("config") or {})
    if cls is None:
        raise OptimizationError(
            f"{where}: tf_keras has no {kind[:-1]} {class_name!r}",
            LAYER_HINT,
        )
    try:
        names = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    except (TypeError, ValueError):
        names = set(config)
    kept = {}
    for key, item in config.items():
        if key in names:
            kept[key] = item
        elif not _trivial(item):
            raise OptimizationError(
                f"{where}: {kind[:-1]} {class_name} has option {key}={item!r}, which tf_keras lacks",
                LAYER_HINT,
            )
    return {"class_name": class_name, "config": kept}


def _adapt_config(layer, cls) -> dict:
    """The Keras 3 layer's config, made acceptable to the tf_keras class ``cls``."""
    class_name = type(layer).__name__
    where = f"layer {layer.name!r} ({class_name})"
    accepted = _accepted(cls)
    config = {}
    for key, value in layer.get_config().items():
        key = RENAMED.get((class_name, key), RENAMED.get(("*", key), key))
        if key == "dtype":
            value = _dtype(value)
        else:
            for suffix, kind in OBJECT_KINDS.items():
                if key.endswith(suffix):
                    value = _adapt_object(value, kind, where)
        if key not in accepted:
            if _trivial(value):
                continue
            raise OptimizationError(
                f"{where} has option {key}={value!r}, which the tf_keras {class_name} lacks",
                LAYER_HINT,
            )
        config[key] = value
    return config


def _short_name(weight) -> str:
    name = getattr(weight, "path", None) or weight.name
    return name.split("/")[-1].split(":")[0]


def _copy_weights(source, target, where: str) -> None:
    """Set ``target``'s weights from ``source``'s: by variable name when names match, else in order."""
    values = source.get_weights()
    if not values and not target.weights:
        return
    source_names = [_short_name(w) for w in source.weights]
    target_names = [_short_name(w) for w in target.weights]
    if (
        sorted(source_names) == sorted(target_names)
        and len(set(source_names)) == len(source_names)
        and source_names != target_names
    ):
        by_name = dict(zip(source_names, values, strict=True))
        values = [by_name[name] for name in target_names]
    try:
        target.set_weights(values)
    except ValueError as exc:
        raise OptimizationError(
            f"{where}: its Keras 3 weights {[tuple(v.shape) for v in values]} do not fit the "
            f"tf_keras layer's {[tuple(w.shape) for w in target.weights]}",
            LAYER_HINT,
        ) from exc


def _is_functional(model) -> bool:
    return any(klass.__name__ == "Functional" for klass in type(model).__mro__)


def _check_functional(model):
    """The Keras 3 functional graph of ``model`` (a Sequential's inner functional)."""
    if isinstance(model, keras3.Sequential):
        functional = sequential_functional(model)
        if functional is None:
            raise OptimizationError(
                f"the Keras 3 Sequential model {model.name!r} has no defined input, so it cannot "
                "be rebuilt",
                "start it with keras.Input(shape=...) or build it with model.build(input_shape)",
            )
        return functional
    if not _is_functional(model) or not has_node_graph(model):
        raise OptimizationError(
            f"model {model.name!r} ({type(model).__name__}) is a subclassed Keras 3 model: it has "
            "no layer graph that tf_keras could rebuild",
            SUBCLASSED_HINT,
        )
    return model


def _convert_layer(layer):
    class_name = type(layer).__name__
    where = f"layer {layer.name!r} ({class_name})"
    if isinstance(layer, keras3.Model):
        return _rebuild_model(layer, verify=False)
    if not isinstance(layer, keras3.layers.Layer):
        raise OptimizationError(
            f"operation {layer.name!r} ({class_name}) is a keras.ops call, not a layer; tf_keras "
            "cannot rebuild it",
            "use the equivalent layer (keras.layers.Add, Activation, Reshape...) in the model, or "
            + LAYER_HINT.split(", or ")[1],
        )
    if class_name in ("Lambda", "TFSMLayer"):
        raise OptimizationError(
            f"{where} wraps Python code that tf_keras cannot rebuild from Keras 3", LAYER_HINT
        )
    cls = getattr(keras.layers, class_name, None)
    if cls is None or not isinstance(cls, type):
        raise OptimizationError(f"{where}: tf_keras has no layer class {class_name}", LAYER_HINT)
    config = _adapt_config(layer, cls)
    try:
        return cls.from_config(config)
    except Exception as exc:
        raise OptimizationError(
            f"{where} cannot be recreated in tf_keras: {first_line(exc)}",
            LAYER_HINT,
        ) from exc


def _rebuild_model(model, verify: bool):
    functional = _check_functional(model)
    tensors = {}
    new_inputs = []
    for tensor in functional.inputs:
        layer = keras_history(tensor)[0]
        shape = tuple(tensor.shape)
        new = keras.Input(
            shape=shape[1:],
            dtype=str(getattr(tensor, "dtype", "float32")),
            name=getattr(layer, "name", None),
        )
        tensors[id(tensor)] = new
        new_inputs.append(new)
    rebuilt = {}
    by_depth = nodes_by_depth(functional)
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            operation = node.operation
            if operation is None or node.is_input:
                continue
            if any(id(t) not in tensors for t in node.input_tensors):
                continue
            key = id(operation)
            if key not in rebuilt:
                rebuilt[key] = (_convert_layer(operation), operation)
            new_layer, _ = rebuilt[key]
            args, kwargs = node.arguments.fill_in(tensors)
            outputs = new_layer(*args, **kwargs)
            flat = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            for old, new in zip(node.outputs, flat, strict=True):
                tensors[id(old)] = new
    for new_layer, old_layer in rebuilt.values():
        if not isinstance(old_layer, keras3.Model):
            _copy_weights(
                old_layer, new_layer, f"layer {old_layer.name!r} ({type(old_layer).__name__})"
            )
    outputs = [tensors[id(t)] for t in functional.outputs]
    new_model = keras.Model(
        new_inputs if len(new_inputs) > 1 else new_inputs[0],
        outputs if len(outputs) > 1 else outputs[0],
        name=model.name,
    )
    if verify:
        _verify(model, new_model)
    return new_model


def _verify(original, rebuilt, tolerance: float = VERIFY_TOLERANCE) -> None:
    rng = np.random.default_rng(0)
    feeds = []
    for tensor in rebuilt.inputs:
        shape = [2] + [d if d is not None else 8 for d in tensor.shape[1:]]
        if tensor.dtype.is_integer:
            feeds.append(rng.integers(0, 2, size=shape).astype(tensor.dtype.as_numpy_dtype))
        else:
            feeds.append(rng.random(shape, dtype=np.float32))
    args = feeds if len(feeds) > 1 else feeds[0]
    expected = [np.asarray(o) for o in _as_list(original(args, training=False))]
    got = [np.asarray(o) for o in _as_list(rebuilt(args, training=False))]
    for index, (a, b) in enumerate(zip(expected, got, strict=True)):
        scale = max(1.0, float(np.abs(a).max()) if a.size else 1.0)
        diff = float(np.abs(a - b).max()) if a.size else 0.0
        if diff > tolerance * scale:
            raise OptimizationError(
                f"the tf_keras rebuild of {original.name!r} differs from the Keras 3 model on output "
                f"{index} by {diff:.3g} (tolerance {tolerance * scale:.3g})",
                "a layer behaves differently in Keras 2 and 3; convert the Keras 3 model "
                "directly with `tfedge convert` for post-training int8",
            )


def _as_list(value):
    if isinstance(value, dict):
        return [value[k] for k in sorted(value)]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def to_keras2(model, *, verify: bool = True) -> keras.Model:
    """Rebuild a Keras 3 functional or Sequential model as a tf_keras functional model.

    Args:
        model: a Keras 3 model, a :class:`tfedge.core.loading.LoadedModel`, or a path to a model file.
            A tf_keras model is returned as it is.
        verify: compare both models' outputs on a random input (within 1e-5, relative to the
            output's magnitude) and raise when they differ.

    Returns:
        A tf_keras functional model with the same layers (names, configs) and weights.

    Raises:
        OptimizationError: for a subclassed model, a layer tf_keras cannot recreate (named with its
            class), or outputs that differ.

    Example:
        >>> inputs = keras3.Input((4,))
        >>> k3 = keras3.Model(inputs, keras3.layers.Dense(2)(inputs))
        >>> is_keras2_model(to_keras2(k3))
        True
    """

    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = load_model(model)
    if isinstance(model, LoadedModel):
        if not model.is_keras:
            raise OptimizationError(
                f"{model.path} is a SavedModel without its Keras model, so it cannot be rebuilt "
                "or fine-tuned",
                "pass the .keras/.h5 file the SavedModel was exported from; plain SavedModels "
                "can only be converted",
            )
        model = model.model
    if is_keras2_model(model):
        return model
    if not is_keras3_model(model):
        raise OptimizationError(
            f"expected a Keras model, got {type(model).__name__}",
            "pass a Keras 3 model, or a .keras / .h5 file",
        )
    return _rebuild_model(model, verify)
