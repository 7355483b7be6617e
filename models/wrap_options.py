"""What :func:`tfedge.models.wrapping.wrap` was asked, checked, and the kernels it drives.

The options are checked here (each error says what was received and what to pass), and every
kernel of the model to wrap becomes a :class:`~tfedge.models.projection.Kernel`: pruned when the
structure fits it, clustered when it has more weights than clusters, its zeros held with
``preserve="sparsity"``.

Example:
    >>> plan = projection(kernels(model, set(), 0.8, None, None, None), options)  # doctest: +SKIP
"""

import numpy as np

from tfedge.core.errors import OptimizationError
from tfedge.models.projection import Kernel, Projection
from tfedge.models.sparsity import short_name

__all__ = [
    "SCHEDULES",
    "check_options",
    "kernels",
    "hold_zeros",
    "projection",
    "keeps_zeros",
    "tfmot_only",
    "check_something",
]

SCHEDULES = ("polynomial", "constant")


def check_options(prune, cluster, qat, schedule, ramp):
    """Raise an :class:`OptimizationError` naming the first bad option, and what to pass.

    Example:
        >>> check_options(0.8, 16, True, "polynomial", 0.5)  # passes
    """
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


def _structure_fits(variable, kind: str, m_by_n, block) -> bool:
    shape = [int(d) for d in variable.shape]
    if m_by_n is not None:
        return "Depthwise" not in kind and len(shape) in (2, 4) and shape[-2] % m_by_n[1] == 0
    if block is not None:
        return len(shape) == 2
    return True


def kernels(model, skipped, prune, cluster, m_by_n, block, exclude=()) -> list:
    """A :class:`Kernel` for every kernel of ``model`` (a wrapper's layer included), minus the
    ``skipped`` layer names (read on the model before wrapping: QAT renames its layers).

    Example:
        >>> [k.name for k in kernels(model, set(), 0.8, None, None, None)]  # doctest: +SKIP
        ['conv1/kernel', 'fc1/kernel']
    """
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
                    short_name(variable),
                    variable,
                    prune=prune is not None and _structure_fits(variable, kind, m_by_n, block),
                    cluster=cluster is not None and size > int(cluster),
                )
            )
    return out


def hold_zeros(model, kernels, exclude=()) -> list:
    """``kernels`` plus every other kernel of ``model``, each with its zeros held (a mask).

    Example:
        >>> held = hold_zeros(model, kernels(model, set(), None, 16, None, None))  # doctest: +SKIP

    For ``preserve="sparsity"``: the kernels tfedge prunes or clusters keep their zeros, and so do
    those it leaves alone (skipped ones included), or training would fill them in.
    """
    seen = {id(k.variable) for k in kernels} | {id(v) for v in exclude}
    out = list(kernels)
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        for variable in layer.trainable_weights:
            if len(variable.shape) >= 2 and id(variable) not in seen:
                seen.add(id(variable))
                out.append(Kernel(inner.name, short_name(variable), variable, False, False))
    for kernel in out:
        values = kernel.values()
        if (values == 0).any():
            kernel.set_mask((values != 0).astype(values.dtype))
    return out


def projection(kernels, options) -> Projection:
    """The :class:`Projection` that drives ``kernels`` as ``options`` (wrap's) ask.

    Example:
        >>> plan = projection(kernels(model, set(), 0.8, None, None, None), options)  # doctest: +SKIP
    """
    # A kernel neither pruned, clustered nor held would only be assigned to itself every step.
    busy = [k for k in kernels if k.prune or k.cluster or k.mask is not None]
    return Projection(
        busy,
        prune=options["prune"],
        m_by_n=options["m_by_n"],
        block=options["block"],
        cluster=options["cluster"],
        schedule=options["schedule"],
        ramp=options["ramp"],
        steps=options["steps"],
        frequency=options["frequency"],
    )


def keeps_zeros(options) -> bool:
    """True when ``options`` ask to keep zeros (``preserve`` with ``"sparsity"``).

    Example:
        >>> keeps_zeros({"preserve": "sparsity+clusters"})
        True
    """
    return "sparsity" in (options["preserve"] or "")


def tfmot_only(options, what: str):
    """Refuse tfmot's clustering options (``cluster_init``, ``per_channel``) where tfmot is not used.

    Example:
        >>> tfmot_only({"cluster_init": "kmeans++", "per_channel": False}, "a Keras 3 model")
    """
    if options["cluster_init"] != "kmeans++" or options["per_channel"]:
        raise OptimizationError(
            f"cluster_init={options['cluster_init']!r} and per_channel="
            f"{options['per_channel']!r} are tfmot's, and tfmot does not cluster {what}",
            "leave cluster_init and per_channel at their defaults, or cluster a tf_keras model"
            " alone (no prune, no qat)",
        )


def check_something(model, kernels, options):
    """Raise when nothing of ``model`` can be pruned (or clustered) as ``options`` ask.

    Example:
        >>> check_something(model, kernels(model, set(), 0.8, None, None, None), options)  # doctest: +SKIP
    """
    if options["prune"] is not None and not any(k.prune for k in kernels):
        raise OptimizationError(
            f"no layer of {model.name!r} has a kernel that can be pruned with these options",
            "skip fewer layers, or drop the structure (2:4 needs input channels divisible by 4;"
            " blocks need 2-D kernels)",
        )
    if options["cluster"] is not None and not any(k.cluster for k in kernels):
        raise OptimizationError(
            f"no kernel of {model.name!r} has more than {options['cluster']} weights to cluster",
            "cluster to fewer values, or skip fewer layers",
        )
