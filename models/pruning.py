"""Magnitude pruning that keeps accuracy: a schedule sized by the data, distillation, and a polish.

``prune`` wraps the chosen layers with tfmot's ``prune_low_magnitude``, ramps the sparsity up over
the first part of training (polynomial, or constant from the start), keeps fine-tuning at the final
sparsity (from a teacher when one is given), keeps the best epoch, strips the wrappers and polishes
the stripped model with its zeros held in place. The returned model converts to a fully-int8
``.tflite`` whose zero weights stay zero, so it compresses well with gzip.

``sparsity`` is the fraction of kernel weights that end up zero. The first and last layers with a
kernel are left dense by default (they are small and matter most for accuracy) and are made up for:
the other layers are pruned slightly more, so that ``sparsity`` holds over all the kernels, as
``tfedge inspect`` counts it. Layers skipped by name or type are simply left out.

Example:
    >>> from tfedge.models.pruning import prune
    >>> sparse = prune(model, train, val, sparsity=0.8, teacher=model)  # doctest: +SKIP
    >>> blob = tfedge.converters.convert(sparse, calib=train)  # doctest: +SKIP
"""

import math

import numpy as np

from tfedge.backend import keras, tf, tfmot
from tfedge.errors import OptimizationError, first_line
from tfedge.models import cloning, layers, training
from tfedge.serialization import tfmot_internal

__all__ = ["prune", "weight_sparsity", "KeepZeros", "SCHEDULES", "DEFAULT_STEPS", "DEFAULT_SKIP"]

SCHEDULES = ("polynomial", "constant")
#: Leave the first layer with a kernel (the input conv) and the last (the classifier) dense, unless
#: they hold most of the weights (a tiny model), in which case every layer is pruned.
DEFAULT_SKIP = ("first", "last")
DEFAULT_STEPS = 900
MAX_LAYER_SPARSITY = 0.98
#: With the default skip, the most the pruned layers are asked to make up for the dense first and
#: last layers; past it (an MLP whose first layer holds half the weights), the first or the last
#: layer is pruned too rather than the rest being pruned to nothing.
MAX_MAKE_UP_SPARSITY = 0.9


def _sparsity_module():
    return tfmot().sparsity.keras


def _registry():
    return tfmot_internal("sparsity.keras.prune_registry").PruneRegistry


def _prunable_weights(layer) -> list:
    """The weights tfmot would prune in ``layer`` (its kernels), or [] when it cannot."""
    mot = _sparsity_module()
    if isinstance(layer, mot.PrunableLayer):
        return list(layer.get_prunable_weights())
    registry = _registry()
    if not registry.supports(layer):
        return []
    try:
        names = registry._weight_names(layer)
    except KeyError:  # RNNs: prunable through their cells
        return [w for w in layer.trainable_weights if "kernel" in w.name]
    return [getattr(layer, name) for name in names if getattr(layer, name, None) is not None]


def _parse_structure(structure):
    """``None`` → ``(None, None)``; ``"2:4"`` → ``((2, 4), None)``; ``(h, w)`` or ``"HxW"`` → ``(None, (h, w))``."""
    if structure is None:
        return None, None
    if isinstance(structure, str) and "x" in structure.lower():
        parts = structure.lower().split("x")
        if len(parts) == 2 and all(p.strip().isdigit() and int(p) >= 1 for p in parts):
            return None, (int(parts[0]), int(parts[1]))
        raise OptimizationError(
            f"structure {structure!r} is not a block 'HxW' of positive integers",
            "use a block such as '1x4' (zeros in whole 1x4 blocks) or an 'M:N' pattern such as '2:4'",
        )
    if isinstance(structure, str):
        parts = structure.split(":")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            m, n = (int(p) for p in parts)
            if 0 < m < n:
                return (m, n), None
        raise OptimizationError(
            f"structure {structure!r} is not an 'M:N' pattern with 0 < M < N",
            "use structure='2:4' (2 zeros in every 4 weights) or a block such as (1, 4)",
        )
    if (
        isinstance(structure, (tuple, list))
        and len(structure) == 2
        and all(isinstance(v, (int, np.integer)) and v >= 1 for v in structure)
    ):
        return None, (int(structure[0]), int(structure[1]))
    raise OptimizationError(
        f"structure {structure!r} is neither None, an 'M:N' string nor a (height, width) block",
        "use structure=None (any weights), '2:4', or a block such as (1, 4)",
    )


def _eligible(m_by_n, block):
    def check(layer) -> bool:
        weights = _prunable_weights(layer)
        if not weights:
            return False
        for weight in weights:
            shape = [int(d) for d in weight.shape]
            if block is not None and len([d for d in shape if d != 1]) > 2:
                return False
            if m_by_n is not None and (len(shape) not in (2, 4) or shape[-2] % m_by_n[1]):
                return False
        return True

    return check


def _layer_sparsity(model, names, skip, sparsity, m_by_n) -> float:
    """The per-layer sparsity that makes up for the layers skipped as "first" / "last"."""
    if m_by_n is not None:
        return m_by_n[0] / m_by_n[1]
    edges = [item for item in _as_tuple(skip) if item in ("first", "last")]
    dense = [name for name in layers.skipped_layers(model, edges) if name not in names]
    pruned = _size(model, names)
    # every kernel counts, as in weight_sparsity: a SeparableConv2D's depthwise kernel, which
    # tfmot leaves dense, is made up for like the first and last layers
    total = _kernel_size(model, names + dense)
    if pruned == 0:
        return sparsity
    needed = sparsity * total / pruned
    if needed > MAX_LAYER_SPARSITY:
        raise OptimizationError(
            f"sparsity {sparsity:.2f} over {', '.join(names + dense)} needs {needed:.2f} in the "
            f"pruned layers ({', '.join(names)}), which hold only {pruned / total:.0%} of those "
            "weights",
            "prune more layers (skip fewer: skip=() prunes them all) or ask for less sparsity",
        )
    return max(sparsity, needed)


def _as_tuple(skip) -> tuple:
    if skip is None:
        return ()
    if isinstance(skip, (str, type)):
        return (skip,)
    return tuple(skip)


def _size(model, names) -> int:
    return sum(
        int(np.prod(w.shape)) for name in names for w in _prunable_weights(model.get_layer(name))
    )


def _needed(model, names, sparsity) -> float:
    """The sparsity ``names`` need for ``sparsity`` over them and the first and last layers."""
    edges = [n for n in layers.skipped_layers(model, DEFAULT_SKIP) if n not in names]
    pruned = _size(model, names)
    return sparsity * _kernel_size(model, names + edges) / pruned if pruned else math.inf


def _kernel_size(model, names) -> int:
    """All the kernel weights (rank >= 2) of the named layers, pruned by tfmot or not."""
    return sum(
        int(np.prod(w.shape))
        for name in names
        for w in model.get_layer(name).trainable_weights
        if len(w.shape) >= 2
    )


def _choose_layers(model, skip, eligible, sparsity=None, m_by_n=None) -> list[str]:
    names = layers.select_layers(model, skip, eligible=eligible)
    if skip is not DEFAULT_SKIP:
        return names
    every = layers.select_layers(model, (), eligible=eligible)
    if _size(model, names) < 0.5 * _size(model, every):
        return every
    if sparsity is None or m_by_n is not None:
        return names
    if _needed(model, names, sparsity) <= MAX_MAKE_UP_SPARSITY:
        return names
    # Too much to make up: keep only the last layer dense, else only the first, else none.
    for fewer in (("last",), ("first",)):
        candidate = layers.select_layers(model, fewer, eligible=eligible)
        if candidate and _needed(model, candidate, sparsity) <= MAX_MAKE_UP_SPARSITY:
            return candidate
    return every


def weight_sparsity(model, layers=None) -> float:
    """The fraction of zeros among the kernels (weights of rank >= 2) of the model or named layers.

    Biases are not counted, as in ``tfedge inspect``'s ``weight_sparsity``.

    Example:
        >>> round(weight_sparsity(pruned_model), 2)  # doctest: +SKIP
        0.8
    """
    weights = []
    for layer in model.layers:
        if layers is None or layer.name in layers:
            weights.extend(w for w in layer.trainable_weights if len(w.shape) >= 2)
    zeros = sum(int(np.sum(w.numpy() == 0)) for w in weights)
    total = sum(int(np.prod(w.shape)) for w in weights)
    return zeros / max(total, 1)


class KeepZeros(keras.callbacks.Callback):
    """Hold the zero weights of the given layers at zero while a stripped model trains.

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
            for weight in _prunable_weights(model.get_layer(name)):
                mask = tf.constant((weight.numpy() != 0).astype(weight.dtype.as_numpy_dtype))
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
    epochs: int | None = None,
    teacher=None,
    strategy=None,
    sparsity: float = 0.8,
    schedule: str = "polynomial",
    structure=None,
    skip=DEFAULT_SKIP,
    ramp: float = 0.6,
    frequency: int | None = None,
    polish_epochs: int | None = None,
    batch_size: int = training.DEFAULT_BATCH_SIZE,
    learning_rate: float = 1e-3,
    temperature: float = 1.0,
    alpha: float = 0.5,
    seed: int | None = 0,
):
    """Prune a trained model to ``sparsity`` and fine-tune it back; return the stripped model.

    Args:
        model: a trained tf_keras functional or Sequential model (nested models are flattened).
        train: training :class:`~tfedge.data.Dataset` with labels.
        val: validation :class:`~tfedge.data.Dataset`; the best epoch at full sparsity is kept.
        epochs: fine-tuning epochs with the pruning wrappers (None: about 900 optimizer steps).
        teacher: a float model to distill from while fine-tuning (None: the labels only).
        strategy: a ``tf.distribute`` strategy to build and train under, or None.
        sparsity: the fraction of zero kernel weights (0 < sparsity < 1), over the pruned layers
            and the layers skipped as "first" / "last" together.
        schedule: ``"polynomial"`` (0 to ``sparsity`` over the first ``ramp`` of the steps, then
            held) or ``"constant"`` (``sparsity`` from the first step).
        structure: None (any weight), ``"2:4"`` (2 zeros in every 4 consecutive input channels,
            50 %, ``sparsity`` is then ignored) or a block ``(height, width)`` for 2-D kernels.
        skip: layers left dense: ``"first"`` / ``"last"`` (the first and last layers with a
            kernel), names, type names or classes. By default the first and last, unless the
            other layers hold less than half of the weights (then nothing is skipped).
        ramp: the fraction of the steps over which the polynomial schedule ramps up.
        frequency: steps between mask updates (None: about 20 updates over the ramp).
        polish_epochs: epochs of fine-tuning after stripping, zeros held (None: a third of
            ``epochs``; 0 to skip).
        batch_size: the batch size (the schedule's steps are counted with it).
        learning_rate: Adam's initial learning rate (cosine-decayed).
        temperature: the distillation temperature (with a teacher). 1, not Hinton's 4: a teacher
            that is not very confident gives near-uniform targets at T=4 (a Keras 3 residual
            CNN pruned to 75 %: 89 % at T=4, alpha=0.1; 96 % at T=1, alpha=0.5; float 96 %).
        alpha: the true-label weight in distillation (with a teacher).
        seed: the random seed.

    Returns:
        The pruned model with the wrappers stripped, ready for ``tfedge.converters.convert``.

    Raises:
        OptimizationError: for bad arguments, or when no layer can be pruned.

    Example:
        >>> sparse = prune(model, train, val, sparsity=0.8, teacher=model)  # doctest: +SKIP
        >>> weight_sparsity(sparse) >= 0.8  # doctest: +SKIP
        True
    """
    if not 0.0 < float(sparsity) < 1.0:
        raise OptimizationError(
            f"sparsity {sparsity} must be between 0 and 1 (the fraction of zero weights)",
            "use e.g. sparsity=0.8 for 80 % zeros",
        )
    if schedule not in SCHEDULES:
        raise OptimizationError(
            f"pruning schedule {schedule!r} is unknown; expected one of {', '.join(SCHEDULES)}",
            "'polynomial' ramps the sparsity up gently and keeps more accuracy",
        )
    if not 0.0 < ramp <= 1.0:
        raise OptimizationError(f"ramp {ramp} must be in (0, 1]", "use 0.6: 60 % of the steps")
    m_by_n, block = _parse_structure(structure)
    training.check_data(train, "training")
    mot = _sparsity_module()
    if epochs is None:
        epochs = training.epochs_for(train, DEFAULT_STEPS, batch_size, minimum=4)
    if polish_epochs is None:
        polish_epochs = max(1, epochs // 3)
    per_epoch = training.steps_per_epoch(len(train), batch_size)
    total = epochs * per_epoch

    with training.strategy_scope(strategy):
        work = cloning.clone_model(cloning.flatten_model(model))
        training.check_data(train, "training", work)
        names = _choose_layers(work, skip, _eligible(m_by_n, block), float(sparsity), m_by_n)
        if not names:
            what = f" with structure {structure!r}" if structure is not None else ""
            raise OptimizationError(
                f"no layer of {work.name!r} can be pruned{what} once {list(skip)} are skipped",
                "prune a model with Conv/Dense layers, skip fewer layers, or drop the structure "
                "(2:4 needs input channels divisible by 4; blocks need 2-D kernels)",
            )
        target = _layer_sparsity(work, names, skip, float(sparsity), m_by_n)
        if schedule == "polynomial":
            ramp_steps = max(1, int(round(ramp * total)))
            step = frequency or max(1, ramp_steps // 20)
            ramp_steps = max(step, ramp_steps // step * step)
            pruning_schedule = mot.PolynomialDecay(
                initial_sparsity=0.0,
                final_sparsity=target,
                begin_step=0,
                end_step=ramp_steps,
                frequency=step,
            )
        else:
            ramp_steps = 0
            step = frequency or max(1, per_epoch // 2)
            pruning_schedule = mot.ConstantSparsity(target, begin_step=0, frequency=step)
        params = {"pruning_schedule": pruning_schedule}
        if m_by_n is not None:
            params["sparsity_m_by_n"] = m_by_n
        if block is not None:
            params["block_size"] = block

        def wrap(layer):
            if layer.name in names:
                return mot.prune_low_magnitude(layer, **params)
            return layer

        try:
            with cloning.trusted_cloning():
                wrapped = keras.models.clone_model(work, clone_function=wrap)
        except ValueError as exc:
            raise OptimizationError(
                f"tfmot cannot prune {work.name!r}: {first_line(exc)}",
                "skip the layer it names (skip=(..., 'NAME'))",
            ) from exc
        # Epochs that end after the ramp run at full sparsity: only those compete for "best".
        restore_from = min(epochs - 1, math.ceil(ramp_steps / per_epoch) - 1 if ramp_steps else 0)
        training.fit(
            wrapped,
            train,
            val,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            teacher=teacher,
            temperature=temperature,
            alpha=alpha,
            strategy=strategy,
            callbacks=[mot.UpdatePruningStep()],
            restore_from=max(0, restore_from),
            desc=f"pruning to {sparsity:.0%}" if m_by_n is None else f"pruning {structure}",
            seed=seed,
        )
        with cloning.trusted_cloning():
            stripped = mot.strip_pruning(wrapped)
        if polish_epochs:
            training.fit(
                stripped,
                train,
                val,
                epochs=polish_epochs,
                batch_size=batch_size,
                learning_rate=learning_rate / 10,
                teacher=teacher,
                temperature=temperature,
                alpha=alpha,
                strategy=strategy,
                callbacks=[KeepZeros(stripped, names)],
                keep_initial=True,
                desc="polishing",
                seed=seed,
            )
    stripped._name = model.name
    return stripped
