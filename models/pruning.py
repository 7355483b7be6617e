"""Magnitude pruning that keeps accuracy: a schedule sized by the data, distillation, and a polish.

``prune`` wraps the chosen layers with tfmot's ``prune_low_magnitude``, ramps the sparsity up over
the first part of training (polynomial, or constant from the start), keeps fine-tuning at the final
sparsity (from a teacher when one is given), keeps the best epoch, strips the wrappers and polishes
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

import numpy as np

import tfedge.models.cloning as cloning
import tfedge.models.layers as layers
import tfedge.models.training as training
from tfedge.core.backend import keras, tf, tfmot
from tfedge.core.errors import OptimizationError, first_line
from tfedge.core.keras_internals import rename_layer, weight_names
from tfedge.core.serialization import tfmot_internal
from tfedge.models.projection import Kernel, Projection

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

SCHEDULES = ("polynomial", "constant")
#: Prune every kernel tfmot can prune, each to the requested sparsity. (Leaving the first and
#: last layers dense and pruning the rest harder to make up for them gave a DS-CNN 90 % sparse
#: pointwise convolutions and a model that was neither at the asked sparsity per layer nor, once
#: the depthwise kernels were counted, overall.)
DEFAULT_SKIP = ()
DEFAULT_STEPS = 900
#: How :func:`prune` fine-tunes by default. learning_rate 2e-3 rather than 1e-3: a BatchNorm
#: DS-CNN pruned to 75 % in 12 epochs kept 99.2 % (float 99.2 %) against 97.5 % at 1e-3; the
#: digits CNN at 80 % lost nothing either way. temperature 1, not Hinton's 4: a teacher that is
#: not very confident gives near-uniform targets at T=4 (a Keras 3 residual CNN pruned to 75 %:
#: 89 % at T=4, alpha=0.1; 96 % at T=1, alpha=0.5; float 96 %).
FINE_TUNE = training.FineTune(learning_rate=2e-3, temperature=1.0, alpha=0.5)


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
        names = weight_names(registry, layer)
    except KeyError:  # RNNs: prunable through their cells
        return [w for w in layer.trainable_weights if "kernel" in w.name]
    return [getattr(layer, name) for name in names if getattr(layer, name, None) is not None]


def parse_structure(structure):
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


def _skip_tuple(skip) -> tuple:
    """``skip`` as a tuple (a single name, type or class becomes a 1-tuple)."""
    return (skip,) if isinstance(skip, (str, type)) else tuple(skip or ())


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


def _dense_reason(layer, m_by_n, block) -> str | None:
    """Why tfmot leaves ``layer``'s kernels dense under this structure (None: it can prune them)."""
    weights = _prunable_weights(layer)
    kind = type(layer).__name__
    if not weights:
        if "Depthwise" in kind:
            return "tfmot does not prune depthwise kernels"
        return f"tfmot cannot prune a {kind}"
    for weight in weights:
        shape = [int(d) for d in weight.shape]
        if block is not None and len([d for d in shape if d != 1]) > 2:
            return f"a block needs a 2-D kernel, this one is {shape}"
        if m_by_n is not None and (len(shape) not in (2, 4) or shape[-2] % m_by_n[1]):
            return (
                f"{m_by_n[0]}:{m_by_n[1]} needs input channels divisible by {m_by_n[1]}, "
                f"this kernel has {shape[-2]}"
            )
    return None


def pruning_plan(model, structure=None, skip=DEFAULT_SKIP) -> dict:
    """Which kernels :func:`prune` prunes in ``model`` and which it leaves dense, and why.

    Every kernel tfmot can prune is pruned to the requested sparsity; the rest (depthwise
    kernels, a SeparableConv2D's depthwise half, kernels a structure does not fit, skipped
    layers) stay dense and are listed with the reason.

    Args:
        model: a tf_keras (or Keras 3) functional or Sequential model.
        structure: as in :func:`prune`.
        skip: as in :func:`prune`.

    Returns:
        ``{"pruned": [layer names], "dense": [{"layer", "weight", "reason"}], "kernels":
        [{"layer", "weight", "elements", "pruned"}] (every kernel, in model order),
        "pruned_weights": n, "kernel_weights": n}``; ``pruned_weights / kernel_weights`` is the
        share of all kernel weights the requested sparsity applies to.

    Example:
        >>> pruning_plan(build("ds_cnn"))["dense"][0]["reason"]  # doctest: +SKIP
        'tfmot does not prune depthwise kernels'
    """
    m_by_n, block = parse_structure(structure)
    flat = cloning.flatten_model(model)
    skipped = layers.skipped_layers(flat, skip)
    pruned, dense, kernels, pruned_weights, kernel_weights = [], [], [], 0, 0
    for layer in layers.kernel_layers(flat):
        reason = "skipped" if layer.name in skipped else _dense_reason(layer, m_by_n, block)
        targets = [] if reason else _prunable_weights(layer)
        if layer.name not in skipped:
            targets = targets + _own_kernels(layer, m_by_n, block)
            if targets and reason and reason.startswith("tfmot does not prune depthwise"):
                reason = None
        for weight in layer.trainable_weights:
            if len(weight.shape) < 2:
                continue
            size = int(np.prod(weight.shape))
            kernel_weights += size
            hit = any(weight is t for t in targets)
            kernels.append(
                {"layer": layer.name, "weight": _short(weight), "elements": size, "pruned": hit}
            )
            if hit:
                pruned_weights += size
                continue
            why = reason or f"tfmot prunes only the {', '.join(_short(t) for t in targets)}"
            dense.append({"layer": layer.name, "weight": _short(weight), "reason": why})
        if targets:
            pruned.append(layer.name)
    return {
        "pruned": pruned,
        "dense": dense,
        "kernels": kernels,
        "pruned_weights": pruned_weights,
        "kernel_weights": kernel_weights,
    }


def _own_kernels(layer, m_by_n=None, block=None) -> list:
    """The depthwise kernels of ``layer`` that tfmot leaves dense and tfedge prunes itself.

    An M:N pattern (along input channels) and a 2-D block do not apply to a depthwise kernel:
    with a structure those stay dense.
    """
    if m_by_n is not None or block is not None:
        return []
    theirs = {id(w) for w in _prunable_weights(layer)}
    return [
        w
        for w in layer.trainable_weights
        if len(w.shape) == 4 and "depthwise_kernel" in w.name and id(w) not in theirs
    ]


def _short(weight) -> str:
    return weight.name.split("/")[-1].split(":")[0]


def layer_sparsity(model, names=None) -> dict:
    """The fraction of zeros of each prunable kernel (``"<layer>/<weight>"``) of the named layers.

    Example:
        >>> layer_sparsity(pruned, ["pw1"])  # doctest: +SKIP
        {'pw1/kernel': 0.75}
    """
    out = {}
    for layer in model.layers:
        if names is not None and layer.name not in names:
            continue
        inner = getattr(layer, "layer", layer)  # a pruning wrapper's layer
        for weight in _prunable_weights(inner):
            values = weight.numpy()
            out[f"{inner.name}/{_short(weight)}"] = float(np.mean(values == 0))
    return out


def _reached(model, target: float, tolerance: float = 0.005):
    """A predicate: every pruned kernel of ``model`` (wrapped or stripped) holds ``target``."""

    def check() -> bool:
        values = layer_sparsity(model).values()
        return bool(values) and min(values) >= target - tolerance

    return check


def _enforce(model, names, target: float, m_by_n) -> int:
    """Zero the smallest weights a pruned kernel still needs to hold ``target`` (or M:N).

    tfmot's schedule normally gets there itself; this makes the result independent of when its
    last mask update ran. Returns the number of weights set to zero.
    """
    changed = 0
    for name in names:
        for weight in _prunable_weights(model.get_layer(name)):
            values = weight.numpy()
            if m_by_n is not None:
                m, n = m_by_n
                moved = np.moveaxis(values, -2, -1)
                groups = moved.reshape(-1, n)
                order = np.argsort(np.abs(groups), axis=1, kind="stable")
                cut = np.zeros_like(groups, dtype=bool)
                np.put_along_axis(cut, order[:, :m], True, axis=1)
                new = np.where(cut, 0, groups).reshape(moved.shape)
                new = np.moveaxis(new, -1, -2)
            else:
                flat = values.reshape(-1)
                want = int(round(target * flat.size))
                zeros = int(np.sum(flat == 0))
                if zeros >= want:
                    continue
                new = flat.copy()
                order = np.argsort(np.abs(flat), kind="stable")
                new[order[:want]] = 0
                new = new.reshape(values.shape)
            diff = int(np.sum((new == 0) & (values != 0)))
            if diff:
                weight.assign(new.astype(values.dtype))
                changed += diff
    return changed


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


class _OwnPruning:
    """tfedge's masks for the depthwise kernels tfmot leaves dense, driven by a callback."""

    def __init__(self, projection):
        self.projection = projection
        self.callbacks = []
        if projection is not None:
            from tfedge.models.projection import projection_callback

            self.callbacks = [projection_callback(projection)]

    def reached(self, theirs, target: float, tolerance: float = 0.005):
        if self.projection is None:
            return theirs

        def check() -> bool:
            ours = [np.mean(k.values() == 0) for k in self.projection.pruned]
            return theirs() and min(ours) >= target - tolerance

        return check

    def finish(self):
        if self.projection is not None:
            self.projection.finish()


def _own_projection(work, skip, m_by_n, block, target, schedule, ramp, total):

    skipped = layers.skipped_layers(work, skip)
    kernels = [
        Kernel(layer.name, _short(weight), weight, prune=True, cluster=False)
        for layer in work.layers
        if layer.name not in skipped
        for weight in _own_kernels(layer, m_by_n, block)
    ]
    if not kernels:
        return _OwnPruning(None)
    projection = Projection(kernels, prune=target, schedule=schedule, ramp=ramp, steps=total)
    return _OwnPruning(projection)


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
    if schedule not in SCHEDULES:
        raise OptimizationError(
            f"pruning schedule {schedule!r} is unknown; expected one of {', '.join(SCHEDULES)}",
            "'polynomial' ramps the sparsity up gently and keeps more accuracy",
        )
    if not 0.0 < ramp <= 1.0:
        raise OptimizationError(f"ramp {ramp} must be in (0, 1]", "use 0.6: 60 % of the steps")
    settings = training.with_keywords(settings, fine_tune, "prune")
    m_by_n, block = parse_structure(structure)
    training.check_data(train, "training")
    mot = _sparsity_module()
    batch_size = settings.batch_size
    epochs = settings.epochs
    if epochs is None:
        epochs = training.epochs_for(train, DEFAULT_STEPS, batch_size, minimum=4)
    if polish_epochs is None:
        polish_epochs = max(1, epochs // 3)
    per_epoch = training.steps_per_epoch(len(train), batch_size)
    total = epochs * per_epoch

    with training.strategy_scope(settings.strategy):
        work = cloning.clone_model(cloning.flatten_model(model))
        training.check_data(train, "training", work)
        names = layers.select_layers(work, skip, eligible=_eligible(m_by_n, block))
        if not names:
            what = f" with structure {structure!r}" if structure is not None else ""
            raise OptimizationError(
                f"no layer of {work.name!r} can be pruned{what}"
                + (f" once {list(_skip_tuple(skip))} are skipped" if skip else ""),
                "prune a model with Conv/Dense layers, skip fewer layers, or drop the structure "
                "(2:4 needs input channels divisible by 4; blocks need 2-D kernels)",
            )
        # Each pruned kernel is pruned to the sparsity asked: what tfmot cannot prune stays dense
        # (pruning_plan names it) rather than being made up for by pruning the rest harder.
        target = m_by_n[0] / m_by_n[1] if m_by_n is not None else float(sparsity)
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
        # The depthwise kernels tfmot leaves dense are pruned by tfedge's own masks, on the same
        # ramp (the layers are shared by ``work`` and ``wrapped``, so are their variables).
        own = _own_projection(work, skip, m_by_n, block, target, schedule, ramp, total)
        # Epochs that end after the ramp run at full sparsity: only those compete for "best", and
        # only once every kernel really holds it (measured, not inferred from the step count).
        restore_from = min(epochs - 1, math.ceil(ramp_steps / per_epoch) - 1 if ramp_steps else 0)
        training.fit(
            wrapped,
            train,
            val,
            **settings.fit_options(epochs=epochs),
            callbacks=[mot.UpdatePruningStep(), *own.callbacks],
            restore_from=max(0, restore_from),
            accept=own.reached(_reached(wrapped, target), target),
            desc=f"pruning to {sparsity:.0%}" if m_by_n is None else f"pruning {structure}",
        )
        with cloning.trusted_cloning():
            stripped = mot.strip_pruning(wrapped)
        # Whatever epoch was kept, the kernels leave at the sparsity asked (or the M:N pattern).
        _enforce(stripped, names, target, m_by_n)
        own.finish()
        if polish_epochs:
            training.fit(
                stripped,
                train,
                val,
                **settings.fit_options(
                    epochs=polish_epochs, learning_rate=settings.learning_rate / 10
                ),
                callbacks=[KeepZeros(stripped, names), *own.callbacks],
                keep_initial=True,
                desc="polishing",
            )
    rename_layer(stripped, model.name)
    return stripped
