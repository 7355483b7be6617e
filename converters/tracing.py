"""From a Keras model (or SavedModel, or path) to the batch-1 function TFLite's converter takes.

The model is resolved (a path is loaded), its input specs fixed to batch 1 (unknown non-batch
dimensions are refused), recurrent layers unrolled for the integer modes, and the forward pass
traced to one concrete function; a loop left in it is refused for the integer modes.

Example:
    >>> from tfedge.converters.tracing import input_shape_of
    >>> input_shape_of(keras_model)  # doctest: +SKIP
    (16, 16, 1)
"""

# TensorFlow loads inside the functions that use it: `tfedge --help` and `tfedge inspect` import
# this module through tfedge.converters.tflite (0.15 s, against 4.5 s with TensorFlow).
from tfedge.core.errors import ConversionError, first_line
from tfedge.core.loading import LoadedModel, load_model

__all__ = ["input_shape_of"]


def input_shape_of(model) -> tuple:
    """The model's (first) input shape without the batch axis, e.g. ``(16, 16, 1)``.

    Works for tf_keras and Keras 3 models and for objects from ``tf.saved_model.load``.
    """
    specs = _input_specs(model)
    return tuple(specs[0].shape[1:])


def _rnn_layers(model):
    from tfedge.core.backend import keras, keras3

    bases = (keras.layers.RNN, keras3.layers.RNN)
    found = []
    for layer in getattr(model, "layers", []):
        inner = layer
        if type(layer).__name__ == "Bidirectional":  # tf_keras: .layer; Keras 3: .forward_layer
            inner = getattr(layer, "forward_layer", None) or getattr(layer, "layer", None)
        if isinstance(inner, bases) and not inner.unroll:
            found.append(layer)
        elif hasattr(layer, "layers"):
            found += _rnn_layers(layer)
    return found


def _unrolled(model):
    """A copy of ``model`` whose recurrent layers are unrolled (same weights).

    TFLite's int8 quantizer cannot handle the WHILE loop a recurrent layer becomes (TensorFlow's
    converter crashes on it); with the sequence length fixed, an unrolled LSTM converts to plain
    fully-int8 operators.
    """
    layers = _rnn_layers(model)
    if not layers:
        return model
    from tfedge.core.backend import is_keras3_model, keras, keras3

    api = keras3 if is_keras3_model(model) else keras

    def unroll(layer):
        config = layer.get_config()
        if "unroll" in config:
            config["unroll"] = True
        for key in ("layer", "backward_layer"):
            if isinstance(config.get(key), dict) and "unroll" in config[key].get("config", {}):
                config[key]["config"]["unroll"] = True
        return layer.__class__.from_config(config)

    try:
        copy = api.models.clone_model(model, clone_function=unroll)
        copy.set_weights(model.get_weights())
    except Exception:
        return model  # _refuse_loops names the layers below
    return copy


def _refuse_loops(concrete, mode):
    loops = [op for op in concrete.graph.get_operations() if op.type in ("While", "StatelessWhile")]
    if loops:
        names = sorted({op.name.split("/")[0] for op in loops})
        raise ConversionError(
            f"cannot convert to {mode}: the model has loops (WHILE, from {', '.join(names)}) that "
            "TFLite's integer quantizer cannot handle",
            "give recurrent layers unroll=True (fixed sequence length) for a fully-int8 model, or "
            "use --mode dynamic (int8 weights, float activations)",
        )


def _resolve(model):
    """Return the callable model from a model, LoadedModel or path."""

    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        import tfedge.models.fake_quant  # noqa: F401 (Keras 3 QAT files name its layers)

        model = load_model(model)
    if isinstance(model, LoadedModel):
        model = model.model
    return model


def _input_specs(model, input_shape=None):
    from tfedge.core.backend import tf

    inputs = getattr(model, "inputs", None)
    if inputs:
        shapes = [tuple(t.shape) for t in inputs]
        dtypes = [getattr(t.dtype, "name", t.dtype) for t in inputs]
    elif hasattr(model, "signatures") and "serving_default" in getattr(model, "signatures", {}):
        signature = model.signatures["serving_default"]
        spec = signature.structured_input_signature[1]
        names = sorted(spec)
        shapes = [tuple(spec[n].shape.as_list()) for n in names]
        dtypes = [spec[n].dtype for n in names]
    else:
        raise ConversionError(
            f"cannot tell the input shape of {type(model).__name__}: it has no defined inputs "
            "(a subclassed model that was never called, or a SavedModel without a serving signature)",
            "build the model on an Input, e.g. keras.Input(shape=(16, 16, 1)), or call it once on data",
        )
    specs = []
    for index, (shape, dtype) in enumerate(zip(shapes, dtypes, strict=True)):
        dims = list(shape[1:])
        if input_shape is not None and index == 0:
            dims = list(input_shape)
        if any(d is None for d in dims):
            raise ConversionError(
                f"input {index} has shape {list(shape)}: dimensions other than the batch are unknown",
                "fix them with input_shape=(H, W, C) (Python) or rebuild the model on a fixed Input",
            )
        specs.append(tf.TensorSpec([1, *[int(d) for d in dims]], dtype, name=f"input_{index}"))
    return specs


def _concrete_function(model, specs):
    """Trace the model with batch 1, so the converter sees static shapes everywhere."""
    from tfedge.core.backend import tf

    signatures = getattr(model, "signatures", None)
    if not hasattr(model, "inputs") and signatures and "serving_default" in signatures:
        signature = signatures["serving_default"]
        names = sorted(signature.structured_input_signature[1])

        @tf.function
        def serve(*tensors):
            return signature(**dict(zip(names, tensors, strict=True)))

        return serve.get_concrete_function(*specs)

    @tf.function
    def forward(*tensors):
        inputs = tensors[0] if len(tensors) == 1 else list(tensors)
        return model(inputs, training=False)

    try:
        return forward.get_concrete_function(*specs)
    except Exception as exc:
        raise ConversionError(
            f"the model cannot be traced with batch 1 and inputs {[s.shape.as_list() for s in specs]}: "
            f"{first_line(exc, 400)}",
            "check the model runs on one sample: model(x[:1])",
        ) from exc
