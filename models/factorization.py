"""Low-rank factorization: Dense and 1x1 Conv2D layers replaced by two thinner layers (truncated SVD).

A layer ``y = act(x @ W + b)`` with ``W`` of shape ``(n_in, n_out)`` becomes
``y = act((x @ A) @ B + b)`` with ``A = U_r sqrt(S_r)`` (``n_in x r``, no bias, linear) and
``B = sqrt(S_r) V_r^T`` (``r x n_out``), from the SVD ``W = U S V^T`` truncated to rank ``r``. The
rank is fixed (``rank``), a fraction of the full rank (``ratio``), or the smallest that keeps
``energy`` of the squared singular values. A layer is left alone when the two factors would not hold
fewer parameters than ``W``. The second layer keeps the original's name, activation, bias and
regularizers, so everything downstream is unchanged; the first is named ``<name>_svd``.

Example:
    >>> from tfedge.models.zoo import build
    >>> thin, report = decompose(build("digits_cnn"), rank=8)
    >>> [(r.layer, r.rank) for r in report if r.applied]
    [('fc1', 8), ('logits', 8)]
"""

import copy
import fnmatch
import math
from dataclasses import dataclass

import numpy as np

import tfedge.models.training as training
from tfedge.core.backend import keras
from tfedge.core.errors import OptimizationError
from tfedge.models.graph import (
    as_functional,
    graph_nodes,
    rebuild,
    stage_data,
)

__all__ = ["Factorized", "decompose", "factorize", "choose_rank", "FINE_TUNE", "DEFAULT_EPOCHS"]

DEFAULT_EPOCHS = 5
#: How :func:`factorize` fine-tunes by default: ``epochs`` None is :data:`DEFAULT_EPOCHS`.
#: temperature 1, as for filter pruning: a factorized model starts away from its teacher, and
#: T=4 brought the digits CNN back more slowly (3 epochs: down 4.5 points on one CI run).
FINE_TUNE = training.FineTune(learning_rate=1e-3, temperature=1.0, alpha=0.5)
DEFAULT_ENERGY = 0.9


@dataclass
class Factorized:
    """What :func:`decompose` decided for one Dense / 1x1 Conv2D layer.

    Attributes:
        layer: the layer name.
        shape: ``(n_in, n_out)`` of its weight matrix.
        rank: the chosen rank.
        energy: the fraction of squared singular values kept at that rank.
        params_before: weights (without bias) before.
        params_after: weights of the two factors.
        applied: False when the factors would not be smaller (the layer was left as it was).
    """

    layer: str
    shape: tuple
    rank: int
    energy: float
    params_before: int
    params_after: int
    applied: bool


def choose_rank(singular_values, *, rank=None, ratio=None, energy=DEFAULT_ENERGY) -> int:
    """The truncation rank: ``rank`` if given, else ``ceil(ratio * full rank)``, else by ``energy``.

    Example:
        >>> choose_rank(np.array([3.0, 1.0, 0.1]), energy=0.85)
        1
        >>> choose_rank(np.array([3.0, 1.0, 0.1]), ratio=0.5)
        2
    """
    full = len(singular_values)
    if rank is not None:
        return max(1, min(int(rank), full))
    if ratio is not None:
        return max(1, min(full, math.ceil(float(ratio) * full)))
    energy = DEFAULT_ENERGY if energy is None else energy
    squared = np.asarray(singular_values, np.float64) ** 2
    total = squared.sum()
    if total <= 0:
        return 1
    kept = np.cumsum(squared) / total
    return int(min(full, np.searchsorted(kept, float(energy) - 1e-12) + 1))


def _check(rank, ratio, energy):
    if rank is not None and (not isinstance(rank, (int, np.integer)) or rank < 1):
        raise OptimizationError(
            f"factorization rank {rank!r} is not a positive integer",
            "give rank=8 (a fixed rank), or ratio=0.25, or energy=0.9",
        )
    if ratio is not None and not 0.0 < float(ratio) <= 1.0:
        raise OptimizationError(
            f"factorization ratio {ratio!r} is out of range; expected a fraction in (0, 1]",
            "ratio=0.25 keeps a quarter of each layer's full rank",
        )
    if energy is not None and not 0.0 < float(energy) <= 1.0:
        raise OptimizationError(
            f"factorization energy {energy!r} is out of range; expected a fraction in (0, 1]",
            "energy=0.9 keeps the singular values that hold 90 % of the squared sum",
        )


def _is_target(node) -> bool:
    layer = node.layer
    if node.shared or len(node.inputs) != 1:
        return False
    if node.class_name == "Dense":
        return True
    if node.class_name == "Conv2D":
        return (
            tuple(layer.kernel_size) == (1, 1)
            and getattr(layer, "groups", 1) == 1
            and layer.data_format == "channels_last"
        )
    return False


def _unique(name, taken):
    candidate, index = name, 1
    while candidate in taken:
        index += 1
        candidate = f"{name}_{index}"
    taken.add(candidate)
    return candidate


def decompose(
    model, *, rank=None, ratio=None, energy=DEFAULT_ENERGY, skip=()
) -> tuple[keras.Model, list[Factorized]]:
    """Replace each Dense / 1x1 Conv2D by its two SVD factors where that saves parameters (no training).

    Args:
        model: a tf_keras functional or Sequential model.
        rank: a fixed rank for every layer (capped at the full rank).
        ratio: or the fraction of each layer's full rank to keep.
        energy: or the fraction of squared singular values to keep (the default, 0.9).
        skip: layer names or glob patterns to leave alone.

    Returns:
        ``(new_model, report)``: the rebuilt model and one :class:`Factorized` per candidate layer.

    Raises:
        OptimizationError: bad rank/ratio/energy, or no Dense / 1x1 Conv2D layer in the model.

    Example:
        >>> from tfedge.models.zoo import build
        >>> thin, report = decompose(build("ds_cnn"), ratio=0.25)
        >>> thin.get_layer("pw1_svd").filters
        16
    """
    _check(rank, ratio, energy)
    functional = as_functional(model)
    nodes = graph_nodes(functional)
    targets = [n for n in nodes if _is_target(n)]
    if not targets:
        raise OptimizationError(
            f"model {functional.name!r} has no Dense or 1x1 Conv2D layer to factorize",
            "factorization splits Dense and pointwise (1x1) convolutions; for 3x3 convolutions "
            "use prune_filters",
        )
    config = functional.get_config()
    entries = {entry["config"]["name"]: entry for entry in config["layers"]}
    taken = set(entries)
    weights = {}
    report = []
    for node in targets:
        layer = node.layer
        if any(fnmatch.fnmatchcase(node.name, pattern) for pattern in skip):
            continue
        arrays = layer.get_weights()
        kernel = arrays[0]
        matrix = kernel.reshape(kernel.shape[-2], kernel.shape[-1])
        n_in, n_out = matrix.shape
        u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
        r = choose_rank(s, rank=rank, ratio=ratio, energy=energy)
        total = float((s**2).sum()) or 1.0
        kept_energy = float((s[:r] ** 2).sum() / total)
        before, after = n_in * n_out, r * (n_in + n_out)
        applied = after < before
        report.append(
            Factorized(node.name, (n_in, n_out), r, round(kept_energy, 6), before, after, applied)
        )
        if not applied:
            continue
        root = np.sqrt(s[:r])
        first = (u[:, :r] * root).astype(np.float32)
        second = (root[:, None] * vt[:r]).astype(np.float32)
        entry = entries[node.name]
        first_name = _unique(f"{node.name}_svd", taken)
        original = entry["config"]
        if node.class_name == "Dense":
            first_config = {
                "name": first_name,
                "trainable": original.get("trainable", True),
                "dtype": original.get("dtype", "float32"),
                "units": r,
                "activation": "linear",
                "use_bias": False,
            }
            weights[first_name] = [first]
            weights[node.name] = [second] + arrays[1:]
        else:
            first_config = {
                "name": first_name,
                "trainable": original.get("trainable", True),
                "dtype": original.get("dtype", "float32"),
                "filters": r,
                "kernel_size": (1, 1),
                "strides": tuple(original.get("strides", (1, 1))),
                "padding": original.get("padding", "valid"),
                "data_format": original.get("data_format"),
                "dilation_rate": tuple(original.get("dilation_rate", (1, 1))),
                "activation": "linear",
                "use_bias": False,
            }
            original["strides"] = (1, 1)
            original["padding"] = "valid"
            original["dilation_rate"] = (1, 1)
            weights[first_name] = [first.reshape(1, 1, n_in, r)]
            weights[node.name] = [second.reshape(1, 1, r, n_out)] + arrays[1:]
        first_entry = {
            "class_name": node.class_name,
            "config": first_config,
            "name": first_name,
            "inbound_nodes": copy.deepcopy(entry["inbound_nodes"]),
        }
        for key in ("module", "registered_name"):
            if key in entry:
                first_entry[key] = entry[key]
        entry["inbound_nodes"] = [[[first_name, 0, 0, {}]]]
        config["layers"].insert(config["layers"].index(entry), first_entry)
    if not any(item.applied for item in report):
        return functional, report
    return rebuild(functional, config, weights), report


def factorize(
    model,
    train,
    val=None,
    *,
    settings: training.FineTune = FINE_TUNE,
    rank: int | None = None,
    ratio: float | None = None,
    energy: float | None = DEFAULT_ENERGY,
    skip=(),
    **fine_tune,
) -> keras.Model:
    """Factorization stage: truncated-SVD split of Dense / 1x1 Conv2D layers (:func:`decompose`), then fine-tune.

    Args:
        model: a tf_keras functional or Sequential model (trained).
        train: labelled training data (a :class:`tfedge.core.data.Dataset`, ``(x, y)``, an ``.npz``...).
        val: labelled validation data; the best fine-tuning epoch on it is kept (optional).
        settings: how it fine-tunes (:class:`~tfedge.models.training.FineTune`, default
            :data:`FINE_TUNE`): ``epochs`` (None: 5; 0 skips fine-tuning), the ``teacher`` to
            distil from (typically the original model), the strategy.
        rank: a fixed rank (takes precedence over ``ratio`` and ``energy``).
        ratio: the fraction of each layer's full rank to keep (takes precedence over ``energy``).
        energy: the fraction of squared singular values to keep (default 0.9).
        skip: layer names or glob patterns to leave alone.
        **fine_tune: fields of ``settings`` as keywords (``epochs=3``, ``teacher=model``): they
            replace those fields.

    Returns:
        The factorized tf_keras model, fine-tuned, ready for :func:`tfedge.converters.convert`.

    Example:
        >>> thin = factorize(model, train, val, energy=0.9, teacher=model)  # doctest: +SKIP
    """
    settings = training.with_keywords(settings, fine_tune, "factorize")
    functional = as_functional(model)
    strategy = training.resolve_strategy(settings.strategy)
    train = stage_data(train, functional, "train")
    val = stage_data(val, functional, "val")
    with training.strategy_scope(strategy):
        result, report = decompose(functional, rank=rank, ratio=ratio, energy=energy, skip=skip)
    if not any(item.applied for item in report):
        raise OptimizationError(
            "factorization would not shrink any layer of "
            f"{functional.name!r}: at the chosen ranks "
            + ", ".join(f"{r.layer} r={r.rank}" for r in report)
            + " the two factors hold at least as many weights as the original",
            "lower the rank: energy=0.8, ratio=0.25 or rank=8",
        )
    epochs = DEFAULT_EPOCHS if settings.epochs is None else int(settings.epochs)
    return training.fine_tune_rebuilt(
        result,
        train,
        val,
        **settings.fit_options(epochs=epochs, strategy=strategy),
        desc="fine-tuning factorized layers",
    )
