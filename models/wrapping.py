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

import json

import numpy as np

import tfedge.models.cloning as cloning
import tfedge.models.fake_quant as fake_quant  # noqa: F401 (registers the Keras 3 QAT layers by name)
import tfedge.models.layers as layer_choice
from tfedge.core.backend import is_keras3_model, keras, keras3, tfmot
from tfedge.core.errors import OptimizationError, first_line
from tfedge.core.keras_internals import rename_layer
from tfedge.models.clustering import _clusterable, _init
from tfedge.models.fake_quant import copy_weights, fold_batch_norms, quantize_layers
from tfedge.models.projection import Kernel, Projection, projection_callback, size_tfmot_schedule
from tfedge.models.pruning import _eligible, parse_structure

__all__ = ["wrap", "callbacks", "finalize", "step", "requested", "SCHEDULES", "DEFAULT_RAMP"]

SCHEDULES = ("polynomial", "constant")
#: The polynomial ramp takes the first half of training; the rest trains at full sparsity (and
#: clusters, when asked).
DEFAULT_RAMP = 0.5
_STATE = "_tfedge_wrapping"
# finalize's record of what was asked, as JSON text: Keras tracks a dict or list attribute
# (wrapping it in its own containers), never a string.
_REQUESTED = "_tfedge_requested"


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


def _check_options(prune, cluster, qat, schedule, ramp):
    if prune is not None and not (isinstance(prune, (int, float)) and 0.0 < float(prune) < 1.0):
        raise OptimizationError(
            f"prune={prune!r} must be a fraction of zero weights between 0 and 1",
            "use e.g. prune=0.8 for 80 % zeros, or leave it out",
        )
    if cluster is not None and (
        isinstance(cluster, bool)
        or not isinstance(cluster, (int, np.integer))
        or not 2 <= int(cluster) <= 256
    ):
        raise OptimizationError(
            f"cluster={cluster!r} must be an integer from 2 to 256 (shared values per kernel)",
            "use cluster=16 (4-bit weights) or 32, or leave it out",
        )
    if schedule not in SCHEDULES:
        raise OptimizationError(
            f"schedule={schedule!r} is unknown; expected one of {', '.join(SCHEDULES)}",
            "'polynomial' ramps the sparsity up gently and keeps more accuracy",
        )
    if not 0.0 < float(ramp) <= 1.0:
        raise OptimizationError(f"ramp={ramp!r} must be in (0, 1]", "use 0.5: half of the steps")
    if not isinstance(qat, bool):
        raise OptimizationError(f"qat={qat!r} must be True or False", "use qat=True for QAT")


def _short(variable) -> str:
    return variable.name.split("/")[-1].split(":")[0]


def _structure_fits(variable, kind: str, m_by_n, block) -> bool:
    shape = [int(d) for d in variable.shape]
    if m_by_n is not None:
        return "Depthwise" not in kind and len(shape) in (2, 4) and shape[-2] % m_by_n[1] == 0
    if block is not None:
        return len(shape) == 2
    return True


def _kernels(model, skip, prune, cluster, m_by_n, block, exclude=()) -> list:
    """A :class:`Kernel` for every kernel of ``model`` (a wrapper's layer included), minus ``skip``."""
    skipped = layer_choice.skipped_layers(model, skip)
    out, seen = [], set(id(v) for v in exclude)
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if layer.name in skipped or inner.name in skipped:
            continue
        kind = type(inner).__name__
        for variable in layer.trainable_weights:
            if len(variable.shape) < 2 or id(variable) in seen:
                continue
            seen.add(id(variable))
            size = int(np.prod(variable.shape))
            out.append(
                Kernel(
                    inner.name,
                    _short(variable),
                    variable,
                    prune=prune is not None and _structure_fits(variable, kind, m_by_n, block),
                    cluster=cluster is not None and size > int(cluster),
                )
            )
    return out


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
    calib=None,
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

    _check_options(prune, cluster, qat, schedule, ramp)
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
    options = {
        "prune": prune,
        "m_by_n": m_by_n,
        "block": block,
        "cluster": None if cluster is None else int(cluster),
        "schedule": schedule,
        "ramp": float(ramp),
        "steps": steps,
    }
    if is_keras3_model(model):
        return _wrap_keras3(model, skip, qat, options)
    if not isinstance(model, keras.Model):
        raise OptimizationError(
            f"wrap() takes a Keras model, got {type(model).__name__}",
            "build or load the model with Keras (tf_keras or Keras 3) first",
        )
    return _wrap_keras2(model, skip, qat, options, calib)


def _projection(kernels, options) -> Projection:
    return Projection(
        kernels,
        prune=options["prune"],
        m_by_n=options["m_by_n"],
        block=options["block"],
        cluster=options["cluster"],
        schedule=options["schedule"],
        ramp=options["ramp"],
        steps=options["steps"],
    )


def _wrap_keras3(model, skip, qat, options):

    if qat:
        skipped = layer_choice.skipped_layers(model, skip)
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
    kernels = _kernels(
        work, skip, options["prune"], options["cluster"], options["m_by_n"], options["block"]
    )
    _check_something(model, kernels, options)
    state = _State(model.name, True, _projection(kernels, options), options)
    state.qat = qat
    setattr(work, _STATE, state)
    return work


def _check_something(model, kernels, options):
    if options["prune"] is not None and not any(k.prune for k in kernels):
        raise OptimizationError(
            f"no kernel of {model.name!r} can be pruned with these options",
            "skip fewer layers, or drop the structure (2:4 needs input channels divisible by 4;"
            " blocks need 2-D kernels)",
        )
    if options["cluster"] is not None and not any(k.cluster for k in kernels):
        raise OptimizationError(
            f"no kernel of {model.name!r} has more than {options['cluster']} weights to cluster",
            "cluster to fewer values, or skip fewer layers",
        )


def _tfmot_schedule(options):
    """tfmot's schedule object; its steps are set (again) when training begins."""
    mot = tfmot().sparsity.keras
    if options["schedule"] == "constant" or options["m_by_n"] is not None:
        return mot.ConstantSparsity(options["prune"], begin_step=0, frequency=1)
    return mot.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=options["prune"], begin_step=0, end_step=1000
    )


def _wrap_keras2(model, skip, qat, options, calib):

    work = cloning.clone_model(cloning.flatten_model(model))
    state = _State(model.name, False, None, options)
    prune, cluster = options["prune"], options["cluster"]
    exclude = []
    if qat:
        import tfedge.models.qat as qat_stage
        from tfedge.core.serialization import patch_tfmot_saving
        from tfedge.models.graph import fold_batch_norms

        patch_tfmot_saving()
        work = fold_batch_norms(work)
        names = qat_stage.annotatable_layers(work, None, skip)
        if not names:
            raise OptimizationError(
                f"tfmot's 8-bit scheme supports none of the layers of {work.name!r}",
                "leave qat out and convert with post-training int8",
            )
        work, _ = qat_stage._quantize(work, names, qat_stage._scheme(None))
        if calib is not None:
            qat_stage.calibrate_ranges(work, np.asarray(calib, np.float32))
        state.qat = True
    elif prune is not None and cluster is None:
        work, state.tfmot_pruned, state.tfmot_schedule = _tfmot_prune(work, skip, options)
        from tfedge.core.serialization import tfmot_internal

        wrapper = tfmot_internal("sparsity.keras.pruning_wrapper").PruneLowMagnitude
        for layer in work.layers:
            if isinstance(layer, wrapper):
                exclude.extend(_prunable(layer))
    elif cluster is not None and prune is None:
        work, exclude = _tfmot_cluster(work, skip, cluster)
        state.tfmot_clustered = True
    kernels = _kernels(
        work,
        skip,
        prune,
        cluster,
        options["m_by_n"],
        options["block"],
        exclude=exclude,
    )
    if not state.tfmot_pruned:
        _check_something(model, kernels, {**options, "cluster": None if exclude else cluster})
    state.projection = _projection(kernels, options)
    if options["steps"] is not None:
        size_tfmot_schedule(state.tfmot_schedule, state.projection)
    setattr(work, _STATE, state)
    return work


def _prunable(wrapper) -> list:
    """The variables tfmot's pruning wrapper prunes (kept out of tfedge's own masks)."""
    return [weight for weight, _, _ in wrapper.pruning_vars]


def _tfmot_prune(work, skip, options):

    mot = tfmot().sparsity.keras
    m_by_n, block = options["m_by_n"], options["block"]
    eligible = _eligible(m_by_n, block)
    skipped = layer_choice.skipped_layers(work, skip)
    names = [layer.name for layer in work.layers if layer.name not in skipped and eligible(layer)]
    schedule = _tfmot_schedule(options)
    params = {"pruning_schedule": schedule}
    if m_by_n is not None:
        params["sparsity_m_by_n"] = m_by_n
    if block is not None:
        params["block_size"] = block
    if not names:
        return work, [], None

    def wrap_layer(layer):
        return mot.prune_low_magnitude(layer, **params) if layer.name in names else layer

    try:
        with cloning.trusted_cloning():
            wrapped = keras.models.clone_model(work, clone_function=wrap_layer)
    except ValueError as exc:
        raise OptimizationError(
            f"tfmot cannot prune {work.name!r}: {first_line(exc)}",
            "skip the layer it names (skip=[..., 'NAME'])",
        ) from exc
    return wrapped, names, schedule


def _tfmot_cluster(work, skip, clusters):

    mot = tfmot().clustering.keras
    check = _clusterable(clusters)
    skipped = layer_choice.skipped_layers(work, skip)
    names = [layer.name for layer in work.layers if layer.name not in skipped and check(layer)]

    def wrap_layer(layer):
        if layer.name not in names:
            return layer
        return mot.cluster_weights(
            layer, number_of_clusters=clusters, cluster_centroids_init=_init("kmeans++")
        )

    try:
        with cloning.trusted_cloning():
            wrapped = keras.models.clone_model(work, clone_function=wrap_layer)
    except (ValueError, TypeError) as exc:
        raise OptimizationError(
            f"tfmot cannot cluster {work.name!r}: {first_line(exc)}",
            "skip the layer it names (skip=[..., 'NAME'])",
        ) from exc
    if not names:
        raise OptimizationError(
            f"no layer of {work.name!r} can be clustered to {clusters} values",
            "cluster a model with Conv/Dense layers larger than the number of clusters",
        )
    # tfmot's wrappers hold the clustered kernels (and the depthwise kernels it leaves alone):
    # tfedge's projection keeps its hands off all of them.
    exclude = [
        w
        for layer in wrapped.layers
        if getattr(layer, "layer", None) is not None
        for w in layer.weights
    ]
    return wrapped, exclude


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
    state.steps_seen += 1


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
    asked = _asked_kernels(model, state)
    final = model
    if state.tfmot_pruned:
        from tfedge.models.pruning import _enforce

        with cloning.trusted_cloning():
            final = tfmot().sparsity.keras.strip_pruning(model)
        _enforce(final, state.tfmot_pruned, state.options["prune"], state.options["m_by_n"])
    if state.tfmot_clustered:
        with cloning.trusted_cloning():
            final = tfmot().clustering.keras.strip_clustering(model)
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
    setattr(final, _REQUESTED, json.dumps(_record(final, state, *asked)))
    return final


def _asked_kernels(model, state) -> tuple[set, set]:
    """The ``(layer, weight)`` keys of the kernels ``model`` prunes and clusters, tfmot's included.

    A tfmot-clustered layer is keyed ``(layer, None)``: its kernels (never a depthwise one) are
    its wrapper's centroids until it is stripped.
    """
    pruned = {(k.layer, k.weight) for k in state.projection.kernels if k.prune}
    clustered = {(k.layer, k.weight) for k in state.projection.kernels if k.cluster}
    for layer in model.layers:
        inner = getattr(layer, "layer", None)
        if inner is None:
            continue
        if state.tfmot_pruned and inner.name in state.tfmot_pruned:
            pruned.update((inner.name, _short(w)) for w in _prunable(layer))
        if state.tfmot_clustered:
            clustered.add((inner.name, None))
    return pruned, clustered


def _record(final, state, pruned: set, clustered: set) -> dict:
    """:func:`requested`'s record of ``final``: its kernels in model order, each asked or not."""
    options = state.options
    if options["m_by_n"] is not None:
        structure = f"{options['m_by_n'][0]}:{options['m_by_n'][1]}"
    elif options["block"] is not None:
        structure = f"{options['block'][0]}x{options['block'][1]}"
    else:
        structure = None
    kernels, dense, unclustered, clustered_layers = [], [], [], []
    for layer in final.layers:
        inner = getattr(layer, "layer", layer)
        for weight in layer.trainable_weights:
            if len(weight.shape) < 2:
                continue
            key = (inner.name, _short(weight))
            shared = options["cluster"] is not None and (
                key in clustered or ((key[0], None) in clustered and "depthwise" not in key[1])
            )
            kernels.append(
                {
                    "layer": key[0],
                    "weight": key[1],
                    "elements": int(np.prod(weight.shape)),
                    "pruned": key in pruned,
                    "clustered": shared,
                }
            )
            if options["prune"] is not None and key not in pruned:
                dense.append({"layer": key[0], "weight": key[1], "reason": "not pruned by wrap"})
            if options["cluster"] is None:
                continue
            if shared:
                if key[0] not in clustered_layers:
                    clustered_layers.append(key[0])
            else:
                reason = "not clustered by wrap (skipped, or no more weights than clusters)"
                unclustered.append({"layer": key[0], "weight": key[1], "reason": reason})
    pruned_weights = sum(k["elements"] for k in kernels if k["pruned"])
    return {
        "sparsity": None if options["prune"] is None else float(options["prune"]),
        "structure": structure,
        "clusters": options["cluster"],
        "qat": bool(state.qat),
        "plans": {
            "kernels": kernels,
            "dense": dense,
            "pruned_weights": pruned_weights,
            "kernel_weights": sum(k["elements"] for k in kernels),
            "clustered": clustered_layers,
            "unclustered": unclustered,
        },
    }


def requested(model) -> dict:
    """What :func:`wrap` was asked for the model :func:`finalize` returned, and what it touched.

    The record lives on the model object: it does not survive a ``.keras`` (or SavedModel) save
    and load, which keep only Keras' own config. It is JSON: save it beside the model
    (``json.dump(requested(final), f)``) and pass it back to
    :func:`tfedge.reports.compression.check_finalized` in place of the model.

    Returns:
        ``{"sparsity", "structure", "clusters", "qat", "plans": {"kernels": [{"layer", "weight",
        "elements", "pruned", "clustered"}], "dense", "pruned_weights", "kernel_weights", "clustered",
        "unclustered"}}``: the request as :func:`tfedge.reports.compression.requested_after`
        writes it, plus the plans :func:`tfedge.reports.compression.compression_entry` reads.

    Raises:
        OptimizationError: the model was not returned by :func:`finalize`.

    Example:
        >>> final = finalize(wrap(model, prune=0.8))  # doctest: +SKIP
        >>> requested(final)["sparsity"]  # doctest: +SKIP
        0.8
    """
    text = getattr(model, _REQUESTED, None)
    if not isinstance(text, str):
        raise OptimizationError(
            f"model {getattr(model, 'name', model)!r} carries no record of models.finalize",
            "pass the model models.finalize returned (a saved and loaded model has lost it:"
            " pass the json.dump of models.requested(final) instead)",
        )
    return json.loads(text)
