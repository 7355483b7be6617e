"""Quantization-aware training (QAT) for the models people have, and its collaborative variants.

``quantize_aware`` flattens nested models, annotates every layer tfmot's 8-bit scheme can quantize
(and only those: ``Rescaling``, a ``BatchNormalization`` that follows no conv, custom layers... stay
float during QAT), applies the scheme and fine-tunes with fake quantization, from a teacher when
one is given. The returned quantize-annotated model converts with
``tfedge.converters.convert(model, calib=train)`` to a fully-int8 ``.tflite`` with int8 input and
output: the layers QAT left float get their int8 ranges from the calibration data.

``preserve`` keeps an earlier stage's structure through QAT (collaborative optimization):
``"sparsity"`` (PQAT: pruned zeros stay zero), ``"clusters"`` (CQAT: clustered kernels keep their
shared values) or ``"sparsity+clusters"`` (PCQAT). Every kernel is held by
:class:`~tfedge.models.structure.HoldStructure`, wrapped by QAT or left float, BatchNorm folded or
not; the zeros and the number of distinct values per channel reach the int8 model exactly.

Example:
    >>> from tfedge.models.qat import quantize_aware
    >>> qat_model = quantize_aware(model, train, val, teacher=model)  # doctest: +SKIP
    >>> blob = tfedge.converters.convert(qat_model, calib=train)  # doctest: +SKIP
"""

import numpy as np

import tfedge.models.cloning as cloning
import tfedge.models.layers as layers
import tfedge.models.training as training
from tfedge.core.backend import keras, tf, tfmot
from tfedge.core.errors import OptimizationError, first_line
from tfedge.core.keras_internals import OUTPUT_QUANTIZERS, quantize_wrapper_parts, rename_layer
from tfedge.core.serialization import patch_tfmot_saving
from tfedge.models.graph import fold_batch_norms
from tfedge.models.structure import HoldStructure

__all__ = [
    "quantize_aware",
    "annotatable_layers",
    "float_layers",
    "calibrate_ranges",
    "PRESERVE",
    "FINE_TUNE",
    "DEFAULT_STEPS",
]

PRESERVE = (None, "sparsity", "clusters", "sparsity+clusters")
DEFAULT_STEPS = 300
#: How :func:`quantize_aware` fine-tunes by default: QAT wants a small learning rate.
FINE_TUNE = training.FineTune(learning_rate=2e-4)


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


def _quantize(model, names, scheme):
    """Apply QAT to as many of ``names`` as tfmot accepts; return (model, names quantized)."""
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


def quantize_aware(
    model,
    train,
    val,
    *,
    settings: training.FineTune = FINE_TUNE,
    preserve: str | None = None,
    skip=(),
    **fine_tune,
):
    """Fine-tune a trained model with fake int8 quantization; return the QAT model to convert.

    Args:
        model: a trained tf_keras functional or Sequential model (nested models are flattened);
            for ``preserve``, the stripped output of the pruning or clustering stage.
        train: training :class:`~tfedge.core.data.Dataset` with labels.
        val: validation :class:`~tfedge.core.data.Dataset`; the best epoch on it is kept.
        settings: how it fine-tunes (:class:`~tfedge.models.training.FineTune`, default
            :data:`FINE_TUNE`; ``epochs`` None: about 300 optimizer steps).
        preserve: None, ``"sparsity"`` (PQAT), ``"clusters"`` (CQAT) or
            ``"sparsity+clusters"`` (PCQAT).
        skip: layers to leave float during QAT (names, type names or classes; ``"first"`` /
            ``"last"`` name the first and last layers with weights). The converter still makes
            them int8 from calibration data.
        **fine_tune: fields of ``settings`` as keywords (``epochs=2``, ``teacher=model``): they
            replace those fields.

    Returns:
        The quantize-annotated tf_keras model (tfmot's ``QuantizeWrapperV2`` layers): save it with
        ``model.save("qat.keras")``, load it with :func:`tfedge.core.loading.load_model`, convert it
        with :func:`tfedge.converters.convert`. :func:`float_layers` lists the layers QAT left
        float.

    Raises:
        OptimizationError: for a bad ``preserve``, or a model tfmot cannot quantize at all.

    Example:
        >>> qat_model = quantize_aware(model, train, val, teacher=model)  # doctest: +SKIP
        >>> blob = convert(qat_model, calib=train)  # doctest: +SKIP
    """
    settings = training.with_keywords(settings, fine_tune, "quantize_aware")
    scheme = _scheme(preserve)
    patch_tfmot_saving()
    training.check_data(train, "training")
    epochs = settings.epochs
    if epochs is None:
        epochs = training.epochs_for(train, DEFAULT_STEPS, settings.batch_size, minimum=2)
    with training.strategy_scope(settings.strategy):
        # tfmot keeps a BatchNorm it cannot fuse as its own int8 MUL/ADD; folded beforehand, the
        # QAT graph has the same operators as post-training int8.
        work = fold_batch_norms(cloning.clone_model(cloning.flatten_model(model)))
        training.check_data(train, "training", work)
        names = annotatable_layers(work, preserve, skip)
        if not names:
            raise OptimizationError(
                f"tfmot's 8-bit scheme supports none of the layers of {work.name!r} "
                f"({', '.join(type(layer).__name__ for layer in work.layers)})",
                "convert the float model with post-training int8 (tfedge convert --mode int8)",
            )
        quantized, names = _quantize(work, names, scheme)
        calibrate_ranges(quantized, train.x)
        # Zeros and shared values are read from the kernels as QAT starts (BatchNorms folded),
        # held after every step, and put back exactly once training ends.
        hold = HoldStructure(
            quantized,
            zeros=preserve is not None and "sparsity" in preserve,
            clusters=preserve is not None and "clusters" in preserve,
        )
        callbacks = [hold] if hold.held else []
        training.fit(
            quantized,
            train,
            val,
            **settings.fit_options(epochs=epochs),
            keep_initial=True,
            callbacks=callbacks,
            desc="quantization-aware training",
        )
        hold.project()
    rename_layer(quantized, model.name)
    return quantized


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
