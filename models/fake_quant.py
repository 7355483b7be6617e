"""Quantization-aware training for Keras 3 models, kept Keras 3: fake-quantized layers.

tfmot has no Keras 3 support. :func:`quantize_layers` clones a Keras 3 model with its Conv2D,
DepthwiseConv2D and Dense layers replaced by :class:`QuantConv2D`, :class:`QuantDepthwiseConv2D`
and :class:`QuantDense`: the same layers (same config, same weights) whose kernel goes through
TensorFlow's ``FakeQuantWithMinMaxVars`` ops while training and inference run (symmetric int8,
per output channel for convolutions, per tensor for Dense, as TFLite's int8 kernels quantize
them) and whose output goes through a fake quantizer whose range is learned as a moving average
of the batches' ranges. TFLite's converter reads those ops as the int8 parameters, so the int8
file computes what training saw. The classes are registered Keras serializables (package
``tfedge``): a model saved as ``.keras`` loads back with ``keras.saving.load_model``.

Example:
    >>> qat = quantize_layers(keras3_model)  # doctest: +SKIP
    >>> qat.compile("adam", "sparse_categorical_crossentropy"); qat.fit(x, y)  # doctest: +SKIP
"""

import numpy as np

from tfedge.core.backend import keras3, tf
from tfedge.core.errors import OptimizationError, first_line
from tfedge.models.graph import _replace_refs

__all__ = [
    "kernel_bound",
    "QuantConv2D",
    "QuantDepthwiseConv2D",
    "QuantDense",
    "QUANT_CLASSES",
    "quantize_layers",
    "fake_quant_kernel",
    "EMA_DECAY",
]

#: Activations whose int8 output TFLite quantizes with a fixed scale (softmax: 1/256).
_FIXED_RANGE = ("softmax", "sigmoid", "tanh", "log_softmax")
#: The moving average of the activation ranges (tfmot's 0.999 barely moves in a short fine-tune).
EMA_DECAY = 0.99


def kernel_bound(kernel, per_channel: bool, depthwise: bool = False):
    """The symmetric range (max |w|, per output channel or per tensor) of a kernel.

    Example:
        >>> kernel_bound(tf.constant([[0.5, -2.0], [1.0, 1.0]]), per_channel=True).numpy().tolist()
        [1.0, 2.0]
    """
    kernel = tf.convert_to_tensor(kernel)
    if depthwise:  # (h, w, in, multiplier): TFLite's channels are in * multiplier
        kernel = tf.reshape(kernel, [-1, kernel.shape[2] * kernel.shape[3]])
    if not per_channel:
        return tf.maximum(tf.reduce_max(tf.abs(kernel)), 1e-8)
    axes = list(range(kernel.shape.rank - 1))
    return tf.maximum(tf.reduce_max(tf.abs(kernel), axis=axes), 1e-8)


def fake_quant_kernel(kernel, bound, per_channel: bool, depthwise: bool = False):
    """Symmetric int8 fake quantization of a kernel in ``[-bound, bound]`` (zero stays zero).

    Example:
        >>> k = tf.constant([[0.0, 1.0], [0.5, -1.0]])
        >>> fake_quant_kernel(k, kernel_bound(k, False), per_channel=False)  # doctest: +SKIP
    """
    kernel = tf.convert_to_tensor(kernel)
    shape = kernel.shape
    if depthwise:
        kernel = tf.reshape(kernel, [shape[0], shape[1], 1, shape[2] * shape[3]])
    bound = tf.convert_to_tensor(bound)
    if per_channel:
        out = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            kernel, -bound, bound, num_bits=8, narrow_range=True
        )
    else:
        out = tf.quantization.fake_quant_with_min_max_vars(
            kernel, -bound, bound, num_bits=8, narrow_range=True
        )
    return tf.reshape(out, shape) if depthwise else out


class _FakeQuant:
    """The learned ranges and the fake quantizers a Keras 3 layer twin adds.

    The ranges are variables, as in tfmot: training sets them (the kernel's range at every step,
    the output's as a moving average), inference reads them, and TFLite's converter takes the
    frozen values as the int8 scales.
    """

    per_channel = True
    depthwise = False

    def _build_ranges(self):
        channels = self._kernel_variable().shape[-1]
        if self.depthwise:
            channels = self._kernel_variable().shape[-2] * channels
        self.kernel_bound = self.add_weight(
            name="kernel_bound",
            shape=(channels,) if self.per_channel else (),
            initializer="ones",
            trainable=False,
        )
        self.output_min = self.add_weight(
            name="output_min", shape=(), initializer="zeros", trainable=False
        )
        self.output_max = self.add_weight(
            name="output_max", shape=(), initializer="zeros", trainable=False
        )
        self.output_seen = self.add_weight(
            name="output_seen", shape=(), initializer="zeros", trainable=False
        )
        self.update_kernel_range()

    def _kernel_variable(self):
        return self._kernel if hasattr(self, "_kernel") else self.kernel

    def update_kernel_range(self):
        """Set the kernel's range from its values now (after the weights changed outside training)."""
        self.kernel_bound.assign(
            kernel_bound(self._kernel_variable(), self.per_channel, self.depthwise)
        )

    def _ranges(self) -> list:
        return [self.kernel_bound, self.output_min, self.output_max, self.output_seen]

    def _save_ranges(self, store):
        # Conv2D and Dense save only their kernel and bias: the ranges follow them.
        start = 1 + int(self.bias is not None)
        for index, variable in enumerate(self._ranges()):
            store[str(start + index)] = variable

    def _load_ranges(self, store):
        start = 1 + int(self.bias is not None)
        for index, variable in enumerate(self._ranges()):
            variable.assign(store[str(start + index)])

    def _quantize_kernel(self, kernel, training):
        if training:
            self.kernel_bound.assign(
                tf.stop_gradient(kernel_bound(kernel, self.per_channel, self.depthwise))
            )
        return fake_quant_kernel(kernel, self.kernel_bound, self.per_channel, self.depthwise)

    def _quantize_output(self, outputs, training):
        if getattr(self.activation, "__name__", "") in _FIXED_RANGE:
            return outputs  # TFLite gives these outputs a fixed int8 scale of its own
        if training:
            seen = tf.convert_to_tensor(self.output_seen)
            low, high = tf.convert_to_tensor(self.output_min), tf.convert_to_tensor(self.output_max)
            batch_low = tf.minimum(tf.reduce_min(tf.stop_gradient(outputs)), 0.0)
            batch_high = tf.maximum(tf.reduce_max(tf.stop_gradient(outputs)), 1e-6)
            low = seen * (EMA_DECAY * low + (1 - EMA_DECAY) * batch_low) + (1 - seen) * batch_low
            high = (
                seen * (EMA_DECAY * high + (1 - EMA_DECAY) * batch_high) + (1 - seen) * batch_high
            )
            self.output_min.assign(low)
            self.output_max.assign(high)
            self.output_seen.assign(1.0)
        # No op between the variables and the fake quantizer: the converter reads them as the
        # int8 range. (Before the first training step the range is empty and outputs are 0.)
        return tf.quantization.fake_quant_with_min_max_vars(
            outputs, self.output_min, self.output_max, num_bits=8
        )


@keras3.saving.register_keras_serializable(package="tfedge")
class QuantConv2D(_FakeQuant, keras3.layers.Conv2D):
    """A Conv2D whose kernel (per output channel) and output are int8 fake-quantized."""

    _training = None

    def save_own_variables(self, store):
        super().save_own_variables(store)
        self._save_ranges(store)

    def load_own_variables(self, store):
        super().load_own_variables(store)
        self._load_ranges(store)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_ranges()

    @property
    def kernel(self):
        kernel = super().kernel
        if self._training is None:
            return kernel
        return self._quantize_kernel(kernel, self._training)

    def call(self, inputs, training=None):
        self._training = bool(training)
        try:
            outputs = super().call(inputs)
        finally:
            self._training = None
        return self._quantize_output(outputs, training)


@keras3.saving.register_keras_serializable(package="tfedge")
class QuantDense(_FakeQuant, keras3.layers.Dense):
    """A Dense whose kernel (per tensor, as TFLite's FULLY_CONNECTED) and output are fake-quantized."""

    per_channel = False
    _training = None

    def save_own_variables(self, store):
        super().save_own_variables(store)
        self._save_ranges(store)

    def load_own_variables(self, store):
        super().load_own_variables(store)
        self._load_ranges(store)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_ranges()

    @property
    def kernel(self):
        kernel = super().kernel
        if self._training is None:
            return kernel
        return self._quantize_kernel(kernel, self._training)

    def call(self, inputs, training=None):
        self._training = bool(training)
        try:
            outputs = super().call(inputs, training=training)
        finally:
            self._training = None
        return self._quantize_output(outputs, training)


@keras3.saving.register_keras_serializable(package="tfedge")
class QuantDepthwiseConv2D(_FakeQuant, keras3.layers.DepthwiseConv2D):
    """A DepthwiseConv2D whose kernel (per channel) and output are int8 fake-quantized."""

    depthwise = True

    def build(self, input_shape):
        super().build(input_shape)
        self._build_ranges()

    def call(self, inputs, training=None):
        ops = keras3.ops
        channels = inputs.shape[-1] if self.data_format == "channels_last" else inputs.shape[1]
        outputs = ops.depthwise_conv(
            inputs,
            self._quantize_kernel(self.kernel, bool(training)),
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        if self.use_bias:
            if self.data_format == "channels_last":
                bias_shape = (1,) * (self.rank + 1) + (self.depth_multiplier * channels,)
            else:
                bias_shape = (1, self.depth_multiplier * channels) + (1,) * self.rank
            outputs = ops.add(outputs, ops.reshape(self.bias, bias_shape))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return self._quantize_output(outputs, training)


#: Keras 3 layer class name -> its fake-quantized twin.
QUANT_CLASSES = {
    "Conv2D": QuantConv2D,
    "DepthwiseConv2D": QuantDepthwiseConv2D,
    "Dense": QuantDense,
}
_QUANT_NAMES = {cls.__name__ for cls in QUANT_CLASSES.values()}


def quantize_layers(model, skip=()):
    """Clone a Keras 3 model with fake-quantized twins of its Conv2D, DepthwiseConv2D and Dense.

    Args:
        model: a built Keras 3 functional or Sequential model.
        skip: names of layers to leave float (the converter still makes them int8 from its
            calibration data).

    Returns:
        The new model, with the weights of ``model``.

    Raises:
        OptimizationError: for a layer with a kernel this cannot fake-quantize (its name and
            type, and to skip it), or a model Keras cannot clone.

    Example:
        >>> qat = quantize_layers(model, skip=("logits",))  # doctest: +SKIP
    """
    skip = set(skip)
    for layer in model.layers:
        kind = type(layer).__name__
        has_kernel = any(len(w.shape) >= 2 for w in layer.trainable_weights)
        if (
            has_kernel
            and layer.name not in skip
            and kind not in QUANT_CLASSES
            and kind not in _QUANT_NAMES
        ):
            raise OptimizationError(
                f"layer {layer.name!r} ({kind}) cannot be quantization-aware trained as a Keras 3 "
                f"layer: tfedge fake-quantizes {', '.join(QUANT_CLASSES)} only",
                f"leave it float during QAT with skip=[{layer.name!r}] (the converter still makes "
                "it int8 from calibration data), or replace it with one of those layers",
            )

    def clone(layer):
        twin = QUANT_CLASSES.get(type(layer).__name__)
        if twin is None or layer.name in skip:
            return layer.__class__.from_config(layer.get_config())
        return twin.from_config(layer.get_config())

    try:
        quantized = keras3.models.clone_model(model, clone_function=clone)
    except Exception as exc:  # Keras says why it cannot clone (a subclassed model, ...)
        raise OptimizationError(
            f"Keras 3 cannot clone {model.name!r} ({type(model).__name__}) to add fake "
            f"quantization: {first_line(exc)}",
            "build the model as a functional or Sequential model of standard layers",
        ) from exc
    copy_weights(model, quantized)
    return quantized


def copy_weights(source, target):
    """Copy each layer's weights from ``source`` into the same-named layer of ``target``.

    A fake-quantized twin has its own weights after the original ones (its output range): those
    keep their initial values.

    Example:
        >>> copy_weights(model, clone)  # doctest: +SKIP
    """
    for layer in source.layers:
        old = layer.get_weights()
        if not old:
            continue
        new_layer = target.get_layer(layer.name)
        new = new_layer.get_weights()
        new_layer.set_weights(old + new[len(old) :])


_FOLDABLE = ("Conv2D", "DepthwiseConv2D", "Dense")


def _references(value, name: str) -> int:
    """How many ``[name, node, tensor]`` references a functional config holds."""
    if isinstance(value, dict):
        return sum(_references(v, name) for v in value.values())
    if isinstance(value, (list, tuple)):
        if len(value) >= 3 and value[0] == name and isinstance(value[1], int):
            return 1
        return sum(_references(v, name) for v in value)
    return 0


def _inbound_name(entry):
    nodes = entry.get("inbound_nodes") or []
    if len(nodes) != 1:
        return None
    args = nodes[0].get("args") or []
    if len(args) != 1 or not isinstance(args[0], dict):
        return None
    history = (args[0].get("config") or {}).get("keras_history")
    return history[0] if history else None


def fold_batch_norms(model):
    """Merge every BatchNormalization of a Keras 3 model into the Conv2D, DepthwiseConv2D or
    Dense right before it (linear activation, used by nothing else), as TFLite's converter does.

    QAT then fake-quantizes the folded kernel, the one the int8 file holds, and the int8 graph
    has no BatchNorm MUL/ADD. Other BatchNorms are left as they are.

    Returns:
        A new Keras 3 model (``model`` itself when nothing folds).

    Example:
        >>> folded = fold_batch_norms(keras3_model)  # doctest: +SKIP
    """

    if isinstance(model, keras3.Sequential):
        model = keras3.Model(model.inputs, model.outputs, name=model.name)
    if not hasattr(model, "get_config") or "layers" not in (model.get_config() or {}):
        return model
    config = model.get_config()
    entries = {entry["name"]: entry for entry in config["layers"]}
    folds = {}
    for entry in list(config["layers"]):
        if entry["class_name"] != "BatchNormalization":
            continue
        producer = _inbound_name(entry)
        layer = model.get_layer(entry["name"])
        source = entries.get(producer)
        if source is None or source["class_name"] not in _FOLDABLE:
            continue
        activation = source["config"].get("activation")
        if activation not in ("linear", None) or _references(config, producer) != 1:
            continue
        rank = len(layer.input.shape)
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if [a % rank for a in axis] != [rank - 1]:
            continue
        folds[producer] = layer
        source["config"]["use_bias"] = True
        config["layers"].remove(entry)
        config = _replace_refs(config, entry["name"], producer)
        entries = {e["name"]: e for e in config["layers"]}
    if not folds:
        return model
    folded = keras3.Model.from_config(config)
    for layer in model.layers:
        if layer.name not in entries or not layer.get_weights():
            continue
        arrays = layer.get_weights()
        if layer.name in folds:
            bn = folds[layer.name]
            params = {w.path.split("/")[-1]: np.asarray(w.numpy()) for w in bn.weights}
            channels = params["moving_mean"].shape[0]
            gamma = params.get("gamma", np.ones(channels, np.float32))
            beta = params.get("beta", np.zeros(channels, np.float32))
            scale = gamma / np.sqrt(params["moving_variance"] + bn.epsilon)
            kernel = arrays[0]
            bias = arrays[1] if len(arrays) > 1 else np.zeros(channels, np.float32)
            if type(layer).__name__ == "DepthwiseConv2D":
                kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
            else:
                kernel = kernel * scale
            arrays = [kernel, (bias - params["moving_mean"]) * scale + beta]
        folded.get_layer(layer.name).set_weights(arrays)
    return folded
