"""tfmot's 8-bit quantization-aware training for tf_keras models, under :func:`tfedge.models.wrapping.wrap`.

Which layers tfmot's scheme can quantize (:func:`annotatable_layers`), applying it to as many of
them as tfmot accepts (the others stay float), starting its ranges from data
(:func:`calibrate_ranges`) and naming the layers it left float (:func:`float_layers`).

Example:
    >>> annotatable_layers(model)  # doctest: +SKIP
    ['conv1', 'pool1', 'conv2', 'pool2', 'flatten', 'fc1', 'logits']
"""

import numpy as np

import tfedge.models.cloning as cloning
import tfedge.models.layers as layers
from tfedge.core.backend import keras, tf, tfmot
from tfedge.core.errors import OptimizationError, first_line
from tfedge.core.keras_internals import OUTPUT_QUANTIZERS, quantize_wrapper_parts

__all__ = [
    "annotatable_layers",
    "quantize",
    "float_layers",
    "calibrate_ranges",
    "check_preserve",
    "PRESERVE",
]

PRESERVE = (None, "sparsity", "clusters", "sparsity+clusters")


def check_preserve(preserve) -> None:
    """Raise unless ``preserve`` is one of :data:`PRESERVE` (or ``"clusters+sparsity"``)."""
    _scheme(preserve)


def _scheme(preserve):
    """tfmot's default 8-bit scheme, for every ``preserve``: :class:`HoldStructure` keeps the
    structure (tfmot's collaborative schemes miss the convolutions its layout transforms give
    a no-op weight config, i.e. most convolutions followed by an activation)."""
    if preserve not in PRESERVE and preserve != "clusters+sparsity":
        raise OptimizationError(
            f"preserve={preserve!r} is unknown; expected None, 'sparsity', 'clusters' or "
            "'sparsity+clusters'",
            "'sparsity' after pruning (PQAT), 'clusters' after clustering (CQAT), both after "
            "pruning then clustering (PCQAT)",
        )
    return tfmot().quantization.keras.default_8bit.Default8BitQuantizeScheme()


def annotatable_layers(model, preserve=None, skip=()) -> list[str]:
    """Names of the layers tfmot's 8-bit QAT scheme can quantize in a flat model, minus ``skip``.

    Example:
        >>> annotatable_layers(model)  # doctest: +SKIP
        ['conv1', 'pool1', 'conv2', 'pool2', 'flatten', 'fc1', 'logits']
    """
    registry = _scheme(preserve).get_quantize_registry()
    skipped = layers.skipped_layers(model, skip)
    names = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer.name in skipped:
            continue
        try:
            if registry.supports(layer):
                names.append(layer.name)
        except Exception:  # a registry that cannot even look at the layer: leave it float
            continue
    return names


def _apply(model, names, scheme):
    """Annotate ``names`` and apply the scheme; raise tfmot's error as is."""
    mot = tfmot().quantization.keras

    def annotate(layer):
        if layer.name in names:
            return mot.quantize_annotate_layer(layer)
        return layer

    with cloning.trusted_cloning(), mot.quantize_scope():
        annotated = keras.models.clone_model(model, clone_function=annotate)
        return mot.quantize_apply(annotated, scheme)


def quantize(model, names, scheme=None):
    """Apply QAT to as many of ``names`` as tfmot accepts; return (model, names quantized).

    Example:
        >>> quantized, names = quantize(model, annotatable_layers(model))  # doctest: +SKIP
    """
    scheme = scheme or _scheme(None)
    try:
        return _apply(model, names, scheme), list(names)
    except Exception as first:
        error = first
    # Find the layers tfmot chokes on, one at a time, and leave them float.
    accepted = []
    for name in names:
        try:
            _apply(model, [name], scheme)
            accepted.append(name)
        except Exception:
            continue
    if accepted:
        try:
            return _apply(model, accepted, scheme), accepted
        except Exception as exc:
            error = exc
    raise OptimizationError(
        f"tfmot cannot apply quantization-aware training to {model.name!r}: {first_line(error)}",
        "convert the float model with post-training int8 instead (tfedge convert --mode int8), "
        "or skip the layers named above (skip=('NAME', ...))",
    ) from error


_RANGE_QUANTIZERS = ("MovingAverageQuantizer", "AllValuesQuantizer")


class _RangeRecorder:
    """Stands in for an activation quantizer while calibrating: passes the float tensor through
    and remembers the widest range it saw (with 0 inside, as tfmot's quantizers keep it)."""

    def __init__(self, quantizer, seen: dict):
        self.quantizer = quantizer
        self.seen = seen

    def __call__(self, inputs, training, weights, **kwargs):

        low = min(float(tf.reduce_min(inputs)), 0.0)
        high = max(float(tf.reduce_max(inputs)), 0.0)
        key = id(weights["min_var"])
        if key in self.seen:
            _, _, old_low, old_high = self.seen[key]
            low, high = min(low, old_low), max(high, old_high)
        self.seen[key] = (weights["min_var"], weights["max_var"], low, high)
        return inputs

    def __getattr__(self, name):
        return getattr(self.quantizer, name)


def _swap_activation_quantizers(model, seen: dict) -> list:
    """Put recorders in place of the activation quantizers; return how to put them back."""
    undo = []

    def is_range(quantizer) -> bool:
        return type(quantizer).__name__ in _RANGE_QUANTIZERS

    for layer in model.layers:
        parts = quantize_wrapper_parts(layer)
        for activation in parts["activations"]:
            if is_range(getattr(activation, "quantizer", None)):
                undo.append((activation, "quantizer", activation.quantizer))
                activation.quantizer = _RangeRecorder(activation.quantizer, seen)
        outputs = parts["outputs"]
        if outputs and any(is_range(q) for q in outputs):
            undo.append((layer, OUTPUT_QUANTIZERS, outputs))
            setattr(
                layer,
                OUTPUT_QUANTIZERS,
                [_RangeRecorder(q, seen) if is_range(q) else q for q in outputs],
            )
        if is_range(getattr(layer, "quantizer", None)):  # QuantizeLayer
            undo.append((layer, "quantizer", layer.quantizer))
            layer.quantizer = _RangeRecorder(layer.quantizer, seen)
    return undo


def calibrate_ranges(model, x, batch_size: int = 64, samples: int = 512) -> int:
    """Set a QAT model's quantization ranges from its weights and from ``x`` before fine-tuning.

    tfmot starts the input range at [0, 0], every activation range at [-6, 6] (then moved by a
    moving average with decay 0.999) and the weight ranges at [-6, 6] until a training step: a
    short fine-tune ends with ranges still near [-6, 6], wasting half the int8 levels of a ReLU
    output, and the model converts with less accuracy than post-training int8. Starting from the
    observed min/max (what post-training calibration uses) gives QAT a fair start.

    Args:
        model: a QAT model from tfmot's ``quantize_apply``.
        x: representative inputs.
        batch_size: the calibration batch size.
        samples: how many inputs to use at most.

    Returns:
        The number of activation ranges set.

    Example:
        >>> calibrate_ranges(qat_model, train.x)  # doctest: +SKIP
        6
    """
    for layer in model.layers:
        for weight, quantizer, variables in quantize_wrapper_parts(layer)["weights"]:
            quantizer(weight, True, weights=variables)  # LastValue: the weights' exact range
    seen = {}
    undo = _swap_activation_quantizers(model, seen)
    try:
        data = np.asarray(x[:samples], dtype=np.float32)
        for start in range(0, len(data), batch_size):
            model(data[start : start + batch_size], training=False)
    finally:
        for owner, attribute, value in undo:
            setattr(owner, attribute, value)
    for min_var, max_var, low, high in seen.values():
        if high - low <= 0:
            continue
        min_var.assign(np.full(min_var.shape, low, dtype=np.float32))
        max_var.assign(np.full(max_var.shape, high, dtype=np.float32))
    return len(seen)


def float_layers(model) -> list[str]:
    """Names of the layers a QAT model leaves float: no fake quantization of their weights.

    These are the layers tfmot cannot annotate (or that were skipped); a layer wrapped only to
    quantize its output (tfmot's ``OutputOnlyConfig``, before an annotated layer) counts too.
    The converter still quantizes them to int8 from its calibration data.

    Example:
        >>> float_layers(quantize_aware(model_with_rescaling, train, val))  # doctest: +SKIP
        ['rescaling']
    """
    wrapper = tfmot().quantization.keras.QuantizeWrapperV2
    names = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or type(layer).__name__ == "QuantizeLayer":
            continue
        if isinstance(layer, wrapper):
            if type(layer.quantize_config).__name__ == "OutputOnlyConfig":
                names.append(layer.layer.name)
            continue
        names.append(layer.name)
    return names
