"""Compress inside your own training code: ``wrap``, ``callbacks``, ``finalize`` (and ``step``).

::

    m = models.wrap(model, prune=0.8, cluster=16, qat=True)
    m.compile(optimizer, loss, metrics)                     # yours
    m.fit(train_ds, epochs=n, callbacks=[*models.callbacks(m), *yours])
    final = models.finalize(m)                              # zeros and shared values kept

Any subset of ``prune`` (with a ``structure``), ``cluster`` and ``qat`` combines in one training
run: the sparsity ramps up first, clustering starts once it is reached, and QAT's fake
quantization runs all along, so ``prune`` + ``qat`` is PQAT, ``cluster`` + ``qat`` CQAT and all
three PCQAT.

- A **tf_keras** model keeps tfmot underneath: ``prune`` alone is tfmot's ``prune_low_magnitude``
  (polynomial or constant schedule), ``cluster`` alone its ``cluster_weights``, ``qat`` its
  ``quantize_apply`` (BatchNorms folded first). The kernels tfmot leaves dense (depthwise kernels)
  are pruned by tfedge's own masks, and in the combinations pruning and clustering are tfedge's
  projections (:mod:`tfedge.models.projection`) of the same kernels QAT trains.
- A **Keras 3** model stays Keras 3: pruning and clustering are those projections (no wrapper
  layer at all), QAT is :mod:`tfedge.models.fake_quant`'s registered layers, which save and load
  as ``.keras``.

The stages :func:`tfedge.models.pruning.prune`, :func:`tfedge.models.clustering.cluster` and
:func:`tfedge.models.qat.quantize_aware` (its ``preserve``: PQAT, CQAT, PCQAT) are this same
``wrap`` -> ``fit`` with :func:`callbacks` -> :func:`finalize`, so there is one implementation.

The model :func:`finalize` returns carries what was asked and which kernels were pruned and
clustered (:func:`requested`), which :func:`tfedge.reports.compression.check_finalized` compares
with the converted file.

In a custom ``train_step`` or ``GradientTape`` loop, call :func:`step` once at the start of every
training step (before the forward pass), as tfmot's ``UpdatePruningStep`` does in ``fit``, and
tell :func:`wrap` how many steps the loop runs (``steps=N``) for the polynomial schedule.

Example:
    >>> m = wrap(model, prune=0.8, qat=True)  # doctest: +SKIP
    >>> m.compile("adam", "sparse_categorical_crossentropy")  # doctest: +SKIP
    >>> m.fit(x, y, epochs=4, callbacks=callbacks(m))  # doctest: +SKIP
    >>> blob = tfedge.converters.convert(finalize(m), calib=x)  # doctest: +SKIP
"""

import numpy as np

import tfedge.models.cloning as cloning
import tfedge.models.fake_quant as fake_quant  # noqa: F401 (registers the Keras 3 QAT layers by name)
import tfedge.models.graph as graph
import tfedge.models.layers as layer_choice
import tfedge.models.record as record
import tfedge.models.tfmot_qat as tfmot_qat
import tfedge.models.tfmot_wrappers as tfmot_wrappers
import tfedge.models.wrap_options as wrap_options
from tfedge.core.backend import is_keras3_model, keras, keras3, tfmot
from tfedge.core.errors import OptimizationError, first_line
from tfedge.core.keras_internals import rename_layer
from tfedge.core.serialization import patch_tfmot_saving, tfmot_internal
from tfedge.models.fake_quant import copy_weights, fold_batch_norms, quantize_layers
from tfedge.models.projection import projection_callback, size_tfmot_schedule
from tfedge.models.record import requested
from tfedge.models.sparsity import enforce, parse_structure, prunable_weights
from tfedge.models.structure import HoldStructure

__all__ = [
    "wrap",
    "callbacks",
    "finalize",
    "step",
    "requested",
    "sparsity_reached",
    "SCHEDULES",
    "DEFAULT_RAMP",
]

SCHEDULES = wrap_options.SCHEDULES
#: The polynomial ramp takes the first half of training; the rest trains at full sparsity (and
#: clusters, when asked).
DEFAULT_RAMP = 0.5
_STATE = "_tfedge_wrapping"


class _State:
    """What :func:`wrap` did to a model, for :func:`callbacks`, :func:`step` and :func:`finalize`."""

    def __init__(self, name, keras3_model, projection, options):
        self.name = name
        self.keras3 = keras3_model
        self.projection = projection
        self.options = options
        self.tfmot_pruned = []  # layer names tfmot's prune_low_magnitude wraps
        self.tfmot_schedule = None
        self.tfmot_clustered = False
        self.qat = False
        self.update_step = None  # tfmot's UpdatePruningStep, for step()
        self.steps_seen = 0
        self.held = []  # layers frozen until finalize (too sparse to cluster)
        self.hold = None  # HoldStructure of tf_keras QAT's preserve


def wrap(
    model,
    prune: float | None = None,
    structure=None,
    cluster: int | None = None,
    qat: bool = False,
    schedule: str = "polynomial",
    *,
    skip=(),
    steps: int | None = None,
    ramp: float = DEFAULT_RAMP,
    frequency: int | None = None,
    calib=None,
    preserve: str | None = None,
    cluster_init: str = "kmeans++",
    per_channel: bool = False,
):
    """Prepare a trained model for compression in your own training code; return the model to train.

    Args:
        model: a tf_keras or Keras 3 functional or Sequential model (nested models flattened for
            tf_keras). It is not changed: the returned model is a copy with its weights.
        prune: the fraction of zeros in every kernel (0 < prune < 1), or None. Depthwise
            kernels are pruned too.
        structure: None (any weight), ``"2:4"`` (2 zeros in every 4 input channels; ``prune``
            is then 0.5) or a block ``(h, w)`` / ``"HxW"`` of zeros in 2-D kernels.
        cluster: the number of shared values per kernel (2-256), or None.
        qat: quantization-aware training (int8 fake quantization of kernels and activations).
        schedule: ``"polynomial"`` (0 to ``prune`` over the first ``ramp`` of the steps) or
            ``"constant"`` (``prune`` from the first step).
        skip: layers left alone (names, type names or classes; ``"first"`` / ``"last"``).
        steps: the training steps in all; ``fit`` tells the callbacks itself, a custom loop
            must say it for the polynomial schedule.
        ramp: the fraction of the steps the polynomial ramp takes (clustering starts after it).
        frequency: steps between mask updates on the ramp (None: about 20 updates over it).
        preserve: an earlier stage's structure to keep: ``"sparsity"`` (zero weights stay zero
            in every kernel; with ``cluster`` only the non-zero weights are clustered, and a
            tf_keras kernel with no more non-zero weights than ``cluster`` is held as it is),
            ``"clusters"`` (weights that share a value keep sharing one: tf_keras with ``qat``)
            or ``"sparsity+clusters"``; None keeps nothing.
        cluster_init: tfmot's centroid start for a tf_keras model clustered alone:
            ``"kmeans++"``, ``"linear"``, ``"density"`` or ``"random"``.
        per_channel: with ``cluster`` alone on a tf_keras model, ``cluster`` values per output
            channel of a Conv2D (tfmot's ``cluster_per_channel``).
        calib: representative inputs (an array) to start tf_keras QAT's ranges from (tfmot starts
            them at [-6, 6]); Keras 3 QAT starts them from the first training batch.

    Returns:
        The model to compile and train with :func:`callbacks`, then to pass to :func:`finalize`.

    Raises:
        OptimizationError: for bad options, nothing asked, or a layer that cannot be wrapped
            (named, with what to do).

    Example:
        >>> m = wrap(model, prune=0.8, cluster=16, qat=True)  # doctest: +SKIP
    """

    wrap_options.check_options(prune, cluster, qat, schedule, ramp)
    tfmot_qat.check_preserve(preserve)
    if preserve is not None and "clusters" in preserve and (not qat or is_keras3_model(model)):
        raise OptimizationError(
            f"preserve={preserve!r} keeps shared values through tfmot's QAT only",
            "pass qat=True with a tf_keras model, or preserve='sparsity'",
        )
    m_by_n, block = parse_structure(structure)
    if m_by_n is not None:
        prune = m_by_n[0] / m_by_n[1]
    if prune is None and cluster is None and not qat:
        raise OptimizationError(
            "wrap() was asked for no compression: prune, structure, cluster and qat are all unset",
            "ask for at least one, e.g. models.wrap(model, prune=0.8) or qat=True",
        )
    if getattr(model, _STATE, None) is not None:
        raise OptimizationError(
            f"model {model.name!r} is already wrapped by tfedge",
            "wrap the float model once, with every scheme in the same call",
        )
    if steps is not None and (not isinstance(steps, (int, np.integer)) or steps < 1):
        raise OptimizationError(f"steps={steps!r} must be a positive integer", "e.g. steps=1000")
    if frequency is not None and (not isinstance(frequency, (int, np.integer)) or frequency < 1):
        raise OptimizationError(
            f"frequency={frequency!r} must be a positive integer", "e.g. frequency=50, or None"
        )
    options = {
        "prune": prune,
        "m_by_n": m_by_n,
        "block": block,
        "cluster": None if cluster is None else int(cluster),
        "schedule": schedule,
        "ramp": float(ramp),
        "steps": steps,
        "frequency": frequency,
        "preserve": preserve,
        "cluster_init": cluster_init,
        "per_channel": bool(per_channel),
    }
    if is_keras3_model(model):
        return _wrap_keras3(model, skip, qat, options)
    if not isinstance(model, keras.Model):
        raise OptimizationError(
            f"wrap() takes a Keras model, got {type(model).__name__}",
            "build or load the model with Keras (tf_keras or Keras 3) first",
        )
    return _wrap_keras2(model, skip, qat, options, calib)


def _wrap_keras3(model, skip, qat, options):

    skipped = layer_choice.skipped_layers(model, skip)
    if qat:
        work = quantize_layers(fold_batch_norms(model), skip=skipped)
    else:
        try:
            work = keras3.models.clone_model(model)
        except Exception as exc:
            raise OptimizationError(
                f"Keras 3 cannot copy {model.name!r} ({type(model).__name__}): {first_line(exc)}",
                "wrap a functional or Sequential model of standard (or registered) layers",
            ) from exc
        copy_weights(model, work)
    wrap_options.tfmot_only(options, "a Keras 3 model")
    kernels = wrap_options.kernels(
        work, skipped, options["prune"], options["cluster"], options["m_by_n"], options["block"]
    )
    wrap_options.check_something(model, kernels, options)
    if wrap_options.keeps_zeros(options):
        kernels = wrap_options.hold_zeros(work, kernels)
    state = _State(model.name, True, wrap_options.projection(kernels, options), options)
    state.qat = qat
    setattr(work, _STATE, state)
    return work


def _wrap_keras2(model, skip, qat, options, calib):

    work = cloning.clone_model(cloning.flatten_model(model))
    skipped = layer_choice.skipped_layers(work, skip)
    state = _State(model.name, False, None, options)
    prune, cluster = options["prune"], options["cluster"]
    exclude = []
    if qat:
        patch_tfmot_saving()
        # tfmot keeps a BatchNorm it cannot fuse as its own int8 MUL/ADD; folded beforehand, the
        # QAT graph has the same operators as post-training int8.
        work = graph.fold_batch_norms(work)
        names = tfmot_qat.annotatable_layers(work, None, skip)
        if not names:
            raise OptimizationError(
                f"tfmot's 8-bit scheme supports none of the layers of {work.name!r} "
                f"({', '.join(type(layer).__name__ for layer in work.layers)})",
                "leave qat out and convert with post-training int8 (tfedge convert --mode int8)",
            )
        work, _ = tfmot_qat.quantize(work, names)
        if calib is not None:
            tfmot_qat.calibrate_ranges(work, np.asarray(calib, np.float32))
        state.qat = True
        # Zeros and shared values are read from the kernels as QAT starts (BatchNorms folded),
        # held after every step, and put back exactly by finalize.
        preserve = options["preserve"] or ""
        hold = HoldStructure(work, zeros="sparsity" in preserve, clusters="clusters" in preserve)
        state.hold = hold if hold.held else None
    elif prune is not None and cluster is None:
        pruned = tfmot_wrappers.prune_layers(work, skip, options)
        work, state.tfmot_pruned, state.tfmot_schedule = pruned
        wrapper = tfmot_internal("sparsity.keras.pruning_wrapper").PruneLowMagnitude
        for layer in work.layers:
            if isinstance(layer, wrapper):
                exclude.extend(tfmot_wrappers.pruned_variables(layer))
    elif cluster is not None and prune is None:
        preserve = wrap_options.keeps_zeros(options)
        if preserve:  # too sparse to cluster: held as they are, or training fills in their zeros
            state.held = tfmot_wrappers.too_sparse(work, cluster, skip)
            for name in state.held:
                work.get_layer(name).trainable = False
        work, _, exclude = tfmot_wrappers.cluster_layers(
            work, skip, cluster, options["cluster_init"], preserve, options["per_channel"]
        )
        state.tfmot_clustered = True
    if not state.tfmot_clustered:
        wrap_options.tfmot_only(options, "in combination with prune or qat")
    kernels = wrap_options.kernels(
        work,
        skipped,
        prune,
        cluster,
        options["m_by_n"],
        options["block"],
        exclude=exclude,
    )
    if not state.tfmot_pruned:
        wrap_options.check_something(
            model, kernels, {**options, "cluster": None if exclude else cluster}
        )
    if wrap_options.keeps_zeros(options) and not qat:
        kernels = wrap_options.hold_zeros(work, kernels, exclude)
    state.projection = wrap_options.projection(kernels, options)
    if options["steps"] is not None:
        size_tfmot_schedule(state.tfmot_schedule, state.projection)
    setattr(work, _STATE, state)
    return work


def _state(model) -> _State:
    state = getattr(model, _STATE, None)
    if state is None:
        raise OptimizationError(
            f"model {getattr(model, 'name', model)!r} was not made by tfedge.models.wrap",
            "wrap the model first: m = models.wrap(model, prune=0.8, ...), then pass m",
        )
    return state


def callbacks(model) -> list:
    """The callbacks ``fit`` needs for a model from :func:`wrap` (put them in ``callbacks=``).

    Example:
        >>> m.fit(x, y, epochs=4, callbacks=[*callbacks(m), my_checkpoint])  # doctest: +SKIP
    """
    state = _state(model)
    out = []
    if state.tfmot_pruned:
        out.append(tfmot().sparsity.keras.UpdatePruningStep())
    out.append(projection_callback(state.projection, state.keras3, state.tfmot_schedule))
    if state.hold is not None:
        out.append(state.hold)
    return out


def step(model):
    """In a custom training loop: call once at the start of every step, before the forward pass.

    It is what :func:`callbacks` do in ``fit``: tfmot's pruning step counter (tf_keras) and
    tfedge's masks and clusters after the previous step. Pass ``steps=N`` to :func:`wrap` for
    the polynomial schedule.

    Example:
        >>> m = wrap(model, prune=0.8, steps=500)  # doctest: +SKIP
        >>> for x, y in batches:  # doctest: +SKIP
        ...     step(m)
        ...     with tf.GradientTape() as tape:
        ...         loss = loss_fn(y, m(x, training=True))
        ...     optimizer.apply_gradients(zip(tape.gradient(loss, m.trainable_weights),
        ...                                   m.trainable_weights))
    """
    state = _state(model)
    if state.tfmot_pruned:
        if state.update_step is None:
            state.update_step = tfmot().sparsity.keras.UpdatePruningStep()
            state.update_step.set_model(model)
            state.update_step.on_train_begin()
        state.update_step.on_train_batch_begin(state.steps_seen)
    if state.steps_seen == 0:
        state.projection.begin()
    else:
        state.projection.after_step()
    if state.hold is not None and state.steps_seen:
        state.hold.project()
    state.steps_seen += 1


def sparsity_reached(model, tolerance: float = 0.005) -> bool:
    """True once every kernel a model from :func:`wrap` prunes holds the final sparsity.

    For keeping the best epoch among those at full sparsity only (``accept`` of
    :func:`tfedge.models.training.fit`).

    Example:
        >>> sparsity_reached(m)  # doctest: +SKIP
        True
    """
    state = _state(model)
    target = state.projection.target
    if target is None:
        return True
    values = [float(np.mean(k.values() == 0)) for k in state.projection.pruned]
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)  # a pruning wrapper's layer
        if inner.name in state.tfmot_pruned:
            values += [float(np.mean(w.numpy() == 0)) for w in prunable_weights(inner)]
    return bool(values) and min(values) >= target - tolerance


def finalize(model):
    """End compression: the final sparsity and shared values exactly, tfmot's wrappers stripped.

    The returned model carries what :func:`wrap` was asked and which kernels it pruned and
    clustered (:func:`requested`), for :func:`tfedge.reports.compression.check_finalized` to
    compare with the converted file.

    Returns:
        A tf_keras model for a tf_keras input (tfmot's QAT model with ``qat``), a Keras 3 model
        for a Keras 3 input (with tfedge's fake-quantized layers with ``qat``), ready for
        :func:`tfedge.converters.convert`.

    Example:
        >>> final = finalize(m)  # doctest: +SKIP
        >>> blob = tfedge.converters.convert(final, calib=train)  # doctest: +SKIP
    """

    state = _state(model)
    state.projection.finish()
    if state.hold is not None:
        state.hold.project()
    asked = record.asked_kernels(model, state)
    final = model
    if state.tfmot_pruned:
        with cloning.trusted_cloning():
            final = tfmot().sparsity.keras.strip_pruning(model)
        enforce(final, state.tfmot_pruned, state.options["prune"], state.options["m_by_n"])
    if state.tfmot_clustered:
        with cloning.trusted_cloning():
            final = tfmot().clustering.keras.strip_clustering(model)
    for name in state.held:
        final.get_layer(name).trainable = True
    if state.keras3 and state.qat:
        for layer in final.layers:
            if hasattr(layer, "update_kernel_range"):
                layer.update_kernel_range()
    if final is model:
        try:
            delattr(model, _STATE)
        except AttributeError:
            pass
    rename_layer(final, state.name)
    record.attach(final, state, asked)
    return final
