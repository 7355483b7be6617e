"""Quantization-aware training (QAT) for the models people have, and its collaborative variants.

``quantize_aware`` is :func:`tfedge.models.wrapping.wrap` with ``qat=True``: it flattens nested
models, annotates every layer tfmot's 8-bit scheme can quantize
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

import tfedge.models.training as training
import tfedge.models.wrapping as wrapping
from tfedge.models.rebuild import to_keras2
from tfedge.models.tfmot_qat import (
    PRESERVE,
    annotatable_layers,
    calibrate_ranges,
    check_preserve,
    float_layers,
)

__all__ = [
    "quantize_aware",
    "annotatable_layers",
    "float_layers",
    "calibrate_ranges",
    "PRESERVE",
    "FINE_TUNE",
    "DEFAULT_STEPS",
]

DEFAULT_STEPS = 300
#: How :func:`quantize_aware` fine-tunes by default: QAT wants a small learning rate.
FINE_TUNE = training.FineTune(learning_rate=2e-4)


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
    check_preserve(preserve)
    training.check_data(train, "training")
    epochs = settings.epochs
    if epochs is None:
        epochs = training.epochs_for(train, DEFAULT_STEPS, settings.batch_size, minimum=2)
    with training.strategy_scope(settings.strategy):
        wrapped = wrapping.wrap(
            to_keras2(model),  # tfmot's QAT is tf_keras'
            qat=True,
            skip=skip,
            preserve=preserve,
            calib=train.x,
        )
        training.check_data(train, "training", wrapped)
        training.fit(
            wrapped,
            train,
            val,
            **settings.fit_options(epochs=epochs),
            keep_initial=True,
            callbacks=wrapping.callbacks(wrapped),
            desc="quantization-aware training",
        )
        return wrapping.finalize(wrapped)
