"""Magnitude pruning that keeps accuracy: a schedule sized by the data, distillation, and a polish.

``prune`` is :func:`tfedge.models.wrapping.wrap` with ``prune`` (tfmot's ``prune_low_magnitude``
underneath), trained by :func:`tfedge.models.training.fit` with its callbacks: it ramps the sparsity up over
the first part of training (polynomial, or constant from the start), keeps fine-tuning at the final
sparsity (from a teacher when one is given), keeps the best epoch, finalizes (the wrappers stripped) and polishes
the stripped model with its zeros held in place. The returned model converts to a fully-int8
``.tflite`` whose zero weights stay zero, so it compresses well with gzip.

``sparsity`` is the fraction of zeros in every kernel (Conv, Dense, a SeparableConv2D's
pointwise kernel through tfmot; the depthwise kernels tfmot leaves dense through tfedge's own
masks on the same ramp, :mod:`tfedge.models.projection`), so it holds over the kernels together
and each one alone. Kernels a structure does not fit (depthwise ones with 2:4 or a block) and
layers skipped by name or type (``skip=("DepthwiseConv2D",)`` keeps depthwise kernels dense) are
not made up for by pruning the rest harder: :func:`pruning_plan` names them and says why. Only epochs at which
every pruned kernel holds the final sparsity compete for the best one, and the kernels are set to
it exactly (or to the M:N pattern) before the polish, whatever the schedule's step count did.

Example:
    >>> from tfedge.models.pruning import prune
    >>> sparse = prune(model, train, val, sparsity=0.8, teacher=model)  # doctest: +SKIP
    >>> blob = tfedge.converters.convert(sparse, calib=train)  # doctest: +SKIP
"""

import math

import tfedge.models.training as training
import tfedge.models.wrapping as wrapping
from tfedge.core.backend import keras, tf
from tfedge.core.errors import OptimizationError
from tfedge.models.rebuild import to_keras2
from tfedge.models.sparsity import (
    DEFAULT_SKIP,
    layer_sparsity,
    parse_structure,
    pruning_plan,
    weight_sparsity,
)

__all__ = [
    "prune",
    "pruning_plan",
    "parse_structure",
    "weight_sparsity",
    "layer_sparsity",
    "KeepZeros",
    "SCHEDULES",
    "DEFAULT_STEPS",
    "DEFAULT_SKIP",
    "FINE_TUNE",
]

SCHEDULES = wrapping.SCHEDULES
DEFAULT_STEPS = 900
#: How :func:`prune` fine-tunes by default. learning_rate 2e-3 rather than 1e-3: a BatchNorm
#: DS-CNN pruned to 75 % in 12 epochs kept 99.2 % (float 99.2 %) against 97.5 % at 1e-3; the
#: digits CNN at 80 % lost nothing either way. temperature 1, not Hinton's 4: a teacher that is
#: not very confident gives near-uniform targets at T=4 (a Keras 3 residual CNN pruned to 75 %:
#: 89 % at T=4, alpha=0.1; 96 % at T=1, alpha=0.5; float 96 %).
FINE_TUNE = training.FineTune(learning_rate=2e-3, temperature=1.0, alpha=0.5)


class KeepZeros(keras.callbacks.Callback):
    """Hold the zero weights of the given layers' kernels at zero while a stripped model trains.

    Args:
        model: the stripped, pruned model.
        names: the pruned layers' names.

    Example:
        >>> model.fit(x, y, callbacks=[KeepZeros(model, ["conv2", "fc1"])])  # doctest: +SKIP
    """

    def __init__(self, model, names):
        super().__init__()
        self.pairs = []
        for name in names:
            for weight in model.get_layer(name).trainable_weights:
                values = weight.numpy()
                if len(weight.shape) >= 2 and (values == 0).any():
                    mask = tf.constant((values != 0).astype(weight.dtype.as_numpy_dtype))
                    self.pairs.append((weight, mask))

    def on_train_batch_end(self, batch, logs=None):
        for weight, mask in self.pairs:
            weight.assign(weight * mask)

    def on_train_end(self, logs=None):
        self.on_train_batch_end(-1)


def prune(
    model,
    train,
    val,
    *,
    settings: training.FineTune = FINE_TUNE,
    sparsity: float = 0.8,
    schedule: str = "polynomial",
    structure=None,
    skip=DEFAULT_SKIP,
    ramp: float = 0.6,
    frequency: int | None = None,
    polish_epochs: int | None = None,
    **fine_tune,
):
    """Prune a trained model to ``sparsity`` and fine-tune it back; return the stripped model.

    Args:
        model: a trained tf_keras functional or Sequential model (nested models are flattened).
        train: training :class:`~tfedge.core.data.Dataset` with labels.
        val: validation :class:`~tfedge.core.data.Dataset`; the best epoch at full sparsity is kept.
        settings: how it fine-tunes (:class:`~tfedge.models.training.FineTune`, default
            :data:`FINE_TUNE`): ``epochs`` with the pruning wrappers (None: about 900 optimizer
            steps; the schedule's steps are counted with ``batch_size``), the teacher to distill
            from, the strategy.
        sparsity: the fraction of zeros (0 < sparsity < 1) in each pruned kernel.
        schedule: ``"polynomial"`` (0 to ``sparsity`` over the first ``ramp`` of the steps, then
            held) or ``"constant"`` (``sparsity`` from the first step).
        structure: None (any weight), ``"2:4"`` (2 zeros in every 4 consecutive input channels,
            50 %, ``sparsity`` is then ignored) or a block ``(height, width)`` for 2-D kernels.
        skip: layers left dense: ``"first"`` / ``"last"`` (the first and last layers with a
            kernel), names, type names or classes. By default none: every kernel tfmot can
            prune is pruned.
        ramp: the fraction of the steps over which the polynomial schedule ramps up.
        frequency: steps between mask updates (None: about 20 updates over the ramp).
        polish_epochs: epochs of fine-tuning after stripping, zeros held (None: a third of
            ``epochs``; 0 to skip), at a tenth of the learning rate.
        **fine_tune: fields of ``settings`` as keywords (``epochs=4``, ``teacher=model``): they
            replace those fields.

    Returns:
        The pruned model with the wrappers stripped, ready for ``tfedge.converters.convert``.

    Raises:
        OptimizationError: for bad arguments, or when no layer can be pruned.

    Example:
        >>> sparse = prune(model, train, val, sparsity=0.8, teacher=model)  # doctest: +SKIP
        >>> min(layer_sparsity(sparse).values()) >= 0.8  # doctest: +SKIP
        True
        >>> settings = FINE_TUNE.replace(epochs=4, teacher=model)  # doctest: +SKIP
        >>> sparse = prune(model, train, val, sparsity=0.8, settings=settings)  # doctest: +SKIP
    """
    if not 0.0 < float(sparsity) < 1.0:
        raise OptimizationError(
            f"sparsity {sparsity} must be between 0 and 1 (the fraction of zero weights)",
            "use e.g. sparsity=0.8 for 80 % zeros",
        )
    settings = training.with_keywords(settings, fine_tune, "prune")
    m_by_n, _ = parse_structure(structure)
    training.check_data(train, "training")
    batch_size = settings.batch_size
    epochs = settings.epochs
    if epochs is None:
        epochs = training.epochs_for(train, DEFAULT_STEPS, batch_size, minimum=4)
    if polish_epochs is None:
        polish_epochs = max(1, epochs // 3)
    per_epoch = training.steps_per_epoch(len(train), batch_size)
    total = epochs * per_epoch

    with training.strategy_scope(settings.strategy):
        # Each pruned kernel is pruned to the sparsity asked: what cannot be pruned stays dense
        # (pruning_plan names it) rather than being made up for by pruning the rest harder.
        wrapped = wrapping.wrap(
            to_keras2(model),  # the fine-tune is tf_keras' (tfmot underneath)
            prune=float(sparsity),
            structure=structure,
            schedule=schedule,
            skip=skip,
            steps=total,
            ramp=ramp,
            frequency=frequency,
        )
        training.check_data(train, "training", wrapped)
        # Epochs that end after the ramp run at full sparsity: only those compete for "best", and
        # only once every kernel really holds it (measured, not inferred from the step count).
        ramp_steps = round(ramp * total) if schedule == "polynomial" and m_by_n is None else 0
        restore_from = min(epochs - 1, math.ceil(ramp_steps / per_epoch) - 1 if ramp_steps else 0)
        training.fit(
            wrapped,
            train,
            val,
            **settings.fit_options(epochs=epochs),
            callbacks=wrapping.callbacks(wrapped),
            restore_from=max(0, restore_from),
            accept=lambda: wrapping.sparsity_reached(wrapped),
            desc=f"pruning to {sparsity:.0%}" if m_by_n is None else f"pruning {structure}",
        )
        # Whatever epoch was kept, the kernels leave at the sparsity asked (or the M:N pattern).
        stripped = wrapping.finalize(wrapped)
        if polish_epochs:
            kernels = wrapping.requested(stripped)["plans"]["kernels"]
            names = list(dict.fromkeys(k["layer"] for k in kernels if k["pruned"]))
            training.fit(
                stripped,
                train,
                val,
                **settings.fit_options(
                    epochs=polish_epochs, learning_rate=settings.learning_rate / 10
                ),
                callbacks=[KeepZeros(stripped, names)],
                keep_initial=True,
                desc="polishing",
            )
    return stripped
