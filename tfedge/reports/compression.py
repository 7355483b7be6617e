"""Requested against achieved compression, read from each stage's int8 ``.tflite`` itself.

``tfedge optimize`` asks for a sparsity (``--prune``, ``--structured``) and a number of shared
values (``--cluster``); what reaches the device is whatever the int8 file holds. For every stage
:func:`compression_entry` reads the file's weight tensors (``tfedge inspect``'s statistics), ties
each one to the Keras layer it came from, and reports the requested and achieved sparsity and
distinct values, overall and per layer, with the layers left dense or unclustered named and why.

Example:
    >>> entry = compression_entry("checkpoints/02-qat.tflite", {"sparsity": 0.75}, plans)  # doctest: +SKIP
    >>> entry["achieved"]["sparsity"], entry["met"]  # doctest: +SKIP
    (0.75, True)
"""

import numpy as np

import tfedge.models.stages as registry
import tfedge.models.wrapping as wrapping
from tfedge.core.errors import OptimizationError
from tfedge.core.inspector import inspect_model
from tfedge.core.tflite_file import read_model, weight_values
from tfedge.models.pruning import pruning_plan

__all__ = [
    "requested_after",
    "compression_entry",
    "format_compression",
    "StagePlans",
    "check_finalized",
    "TOLERANCE",
]

#: How far (a fraction) the achieved sparsity may fall short of the requested one.
TOLERANCE = 0.01


def _stage(stage: dict):
    """The registry's entry of a stage dict (None for a name no stage has)."""
    name = stage.get("name")
    return registry.get(name) if name in registry.names() else None


def requested_after(stages: list[dict]) -> dict:
    """The structure the stages so far ask the model to carry.

    What a stage makes (zeros, shared values: the stage registry, :mod:`tfedge.models.stages`)
    carries over to later stages (which preserve it); a stage that rebuilds the model
    (distillation, factorization, filter pruning) starts afresh.

    Example:
        >>> requested_after([{"name": "prune", "sparsity": 0.75}, {"name": "qat"}])
        {'sparsity': 0.75, 'structure': None, 'clusters': None}
    """
    requested = {"sparsity": None, "structure": None, "clusters": None}
    for stage in stages:
        entry = _stage(stage)
        if entry is None:
            continue
        if entry.rebuilds:
            requested = {"sparsity": None, "structure": None, "clusters": None}
        if registry.ZEROS in entry.makes:
            defaults = registry.parameters(entry.name)
            structure = stage.get("structure")
            requested["structure"] = None if structure is None else str(structure)
            pattern = _m_by_n(structure)
            requested["sparsity"] = (
                pattern[0] / pattern[1]
                if pattern
                else float(stage.get("sparsity", defaults["sparsity"]))
            )
        if registry.SHARED_VALUES in entry.makes:
            defaults = registry.parameters(entry.name)
            requested["clusters"] = int(stage.get("clusters", defaults["clusters"]))
    return requested


def _m_by_n(structure):
    if isinstance(structure, str) and ":" in structure:
        m, n = (int(p) for p in structure.split(":"))
        return m, n
    return None


def _strip(component: str) -> str:
    return component[len("quant_") :] if component.startswith("quant_") else component


def _layer_of(name: str, op: str, kernels: list[dict]) -> dict | None:
    """The kernel (``{"layer", "weight", ...}``) a tensor named ``name`` came from, by name."""
    by_layer = {}
    for kernel in kernels:
        by_layer.setdefault(kernel["layer"], []).append(kernel)
    for component in reversed([_strip(c) for c in name.split("/")]):
        candidates = by_layer.get(component)
        if not candidates:
            continue
        if len(candidates) == 1:
            return candidates[0]
        depthwise = op == "DEPTHWISE_CONV_2D"
        for kernel in candidates:
            if ("depthwise" in (kernel["weight"] or "")) == depthwise:
                return kernel
    return None


def _match(weights: list[dict], kernels: list[dict]) -> list:
    """Each weight tensor's kernel: by name first, then in order among same-sized kernels."""
    matched = [_layer_of(w["name"], w["op"], kernels) for w in weights]
    used = {id(k) for k in matched if k is not None}
    for index, weight in enumerate(weights):
        if matched[index] is not None:
            continue
        for kernel in kernels:
            if id(kernel) not in used and kernel["elements"] == weight["elements"]:
                matched[index] = kernel
                used.add(id(kernel))
                break
    return matched


def _pattern_share(model, subgraph: int, index: int, m: int, n: int):
    """The share of groups of ``n`` consecutive input-channel weights holding ``m`` zeros or more.

    TFLite stores CONV_2D filters as [out, h, w, in] and FULLY_CONNECTED as [out, in]: input
    channels are the last axis. None when the tensor cannot be read or ``in`` is not a multiple
    of ``n``.
    """
    tensor = model.graphs[subgraph].tensors[index]
    read = weight_values(model, tensor)
    if read is None or not tensor.shape or tensor.shape[-1] % n or tensor.sparse:
        return None
    values, zero_points, _, _ = read
    zero = values == 0 if zero_points is None else values == zero_points.reshape(-1, 1)
    groups = zero.reshape(-1, n).sum(axis=1)
    return float(np.mean(groups >= m))


def compression_entry(tflite_path, requested: dict, plans: dict | None = None) -> dict:
    """Requested and achieved sparsity and distinct values of one stage's int8 model.

    Args:
        tflite_path: the stage's ``.tflite``.
        requested: :func:`requested_after` of the stages so far.
        plans: ``{"kernels": [{"layer", "weight", "elements", "pruned"}], "dense": [...],
            "pruned_weights", "kernel_weights", "clustered": [...], "unclustered": [...]}`` from
            :func:`tfedge.models.pruning.pruning_plan` and
            :func:`tfedge.models.clustering.clustering_plan` (None: nothing known).

    Returns:
        ``{"requested": {...}, "achieved": {"sparsity", "weight_sparsity", "pattern",
        "unique_values_max"}, "met": bool or None, "notes": [...], "dense_layers": [...],
        "unclustered_layers": [...], "layers": [{"tensor", "layer", "weight", "op", "elements",
        "sparsity", "unique_values", "pruned", "clustered"}]}``. ``achieved.sparsity`` is over
        the pruned layers' tensors, ``weight_sparsity`` over every weight tensor (as ``tfedge
        inspect`` counts it), ``unique_values_max`` the most distinct values in one channel of
        a clustered tensor (of any tensor when nothing was clustered).

    Example:
        >>> compression_entry(path, {"sparsity": 0.5, "structure": None, "clusters": 16}, plans)["met"]  # doctest: +SKIP
        True
    """
    plans = plans or {}
    info = inspect_model(tflite_path, detail=True)
    weights = info.get("weights", [])
    kernels = plans.get("kernels", [])
    pruned_keys = {(k["layer"], k["weight"]) for k in kernels if k.get("pruned")}
    clustered_layers = set(plans.get("clustered", []))
    matched = _match(weights, kernels)
    layers_out = []
    for weight, kernel in zip(weights, matched):
        key = (kernel["layer"], kernel["weight"]) if kernel else None
        layers_out.append(
            {
                "tensor": weight["name"],
                "layer": kernel["layer"] if kernel else None,
                "weight": kernel["weight"] if kernel else None,
                "op": weight["op"],
                "elements": weight["elements"],
                "zeros": weight["zeros"],
                "sparsity": weight["sparsity"],
                "unique_values": weight["unique_values"],
                "pruned": key in pruned_keys,
                "clustered": bool(
                    kernel
                    and kernel["layer"] in clustered_layers
                    and "depthwise" not in (kernel["weight"] or "")
                ),
            }
        )
    pruned = [layer for layer in layers_out if layer["pruned"]]
    clustered = [layer for layer in layers_out if layer["clustered"]]
    elements = sum(layer["elements"] for layer in pruned)
    achieved_sparsity = (
        round(sum(layer["zeros"] for layer in pruned) / elements, 6) if elements else None
    )
    pool = clustered if clustered else layers_out
    achieved = {
        "sparsity": achieved_sparsity,
        "weight_sparsity": info["weight_sparsity"],
        "layer_sparsity_min": min((layer["sparsity"] for layer in pruned), default=None),
        "unique_values_max": max((layer["unique_values"] for layer in pool), default=0),
    }
    pattern = _m_by_n(requested.get("structure"))
    if pattern and pruned:
        model = read_model(tflite_path)
        shares = []
        for weight, layer in zip(weights, layers_out):
            if layer["pruned"]:
                share = _pattern_share(model, weight["subgraph"], weight["tensor"], *pattern)
                layer["pattern"] = share
                if share is not None:
                    shares.append(share)
        achieved["pattern"] = min(shares) if shares else None
    notes, met = [], None
    asked = requested.get("sparsity")
    if asked is not None:
        met = achieved_sparsity is not None and achieved_sparsity >= asked - TOLERANCE
        if pattern:
            met = met and achieved.get("pattern") == 1.0
            if achieved.get("pattern") not in (None, 1.0):
                notes.append(
                    f"{requested['structure']}: only {achieved['pattern']:.1%} of the groups of "
                    f"{pattern[1]} hold {pattern[0]} zeros"
                )
        share = plans.get("pruned_weights", 0) / max(plans.get("kernel_weights", 0), 1)
        dense = plans.get("dense", [])
        if not pruned:
            notes.append(f"sparsity {asked:.0%} asked, but no layer of the model could be pruned")
        elif not met:
            notes.append(
                f"sparsity {asked:.0%} asked, {achieved_sparsity:.1%} reached on the pruned layers"
            )
        if dense:
            names = ", ".join(
                f"{d['layer']}" + (f"/{d['weight']}" if d.get("weight") else "") for d in dense
            )
            reasons = sorted({d["reason"] for d in dense})
            notes.append(
                f"{asked:.0%} applies to the kernels tfmot can prune ({share:.0%} of the kernel "
                f"weights); left dense: {names} ({'; '.join(reasons)}), so the whole model is "
                f"{info['weight_sparsity']:.0%} zeros"
            )
    clusters = requested.get("clusters")
    if clusters is not None:
        over = [layer for layer in clustered if layer["unique_values"] > clusters]
        cluster_met = bool(clustered) and not over
        met = cluster_met if met is None else (met and cluster_met)
        if over:
            notes.append(
                f"{clusters} values asked, "
                + ", ".join(f"{o['layer']} has {o['unique_values']}" for o in over)
            )
        if plans.get("unclustered"):
            names = ", ".join(u["layer"] for u in plans["unclustered"])
            reasons = sorted({u["reason"] for u in plans["unclustered"]})
            notes.append(f"not clustered: {names} ({'; '.join(reasons)})")
    return {
        "requested": dict(requested),
        "achieved": achieved,
        "met": met,
        "notes": notes,
        "dense_layers": list(plans.get("dense", [])),
        "unclustered_layers": list(plans.get("unclustered", [])),
        "layers": layers_out,
    }


def _percent(value) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def format_compression(rows) -> str:
    """A plain-text table: per stage, sparsity and distinct values asked and reached.

    Example:
        >>> print(format_compression(report["results"]))  # doctest: +SKIP
    """
    header = ("stage", "sparsity asked", "reached", "all weights", "values asked", "max values")
    lines = [header]
    notes = {}  # note -> the stages it holds for, said once
    for row in rows:
        entry = row.get("compression")
        if not entry:
            continue
        requested, achieved = entry["requested"], entry["achieved"]
        stage = str(row.get("stage") or row.get("model"))
        asked = requested.get("sparsity")
        if requested.get("structure"):
            asked_text = str(requested["structure"])
        else:
            asked_text = _percent(asked)
        lines.append(
            (
                stage,
                asked_text,
                _percent(achieved.get("sparsity")),
                _percent(achieved.get("weight_sparsity")),
                "-" if requested.get("clusters") is None else str(requested["clusters"]),
                str(achieved.get("unique_values_max")),
            )
        )
        for note in entry.get("notes", []):
            notes.setdefault(note, []).append(stage)
    if len(lines) == 1:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines
    ]
    said = [f"{', '.join(where)}: {note}" for note, where in notes.items()]
    return "\n".join(text + said)


class StagePlans:
    """Follows a run's stages: which kernels are pruned or clustered, and with what request.

    Call :meth:`before` with each stage and the model it starts from, then :meth:`entry` with
    the stage's ``.tflite``. Pruning and clustering plans carry over to later stages (QAT keeps
    them); a stage that rebuilds the model starts afresh.

    Example:
        >>> plans = StagePlans()
        >>> plans.before({"name": "prune", "sparsity": 0.75}, model)  # doctest: +SKIP
        >>> plans.entry("01-prune.tflite", model)["met"]  # doctest: +SKIP
        True
    """

    def __init__(self):
        self.stages = []
        self.plans = {}
        self.kernels_model = None

    def before(self, stage: dict, model) -> None:
        """Record ``stage`` and plan it on ``model``, the model it starts from."""
        entry = _stage(stage)
        self.stages.append(stage)
        self.kernels_model = model if entry is not None and entry.annotates else None
        if entry is None:
            return
        if entry.rebuilds:
            self.plans = {}
        if registry.ZEROS in entry.makes:
            from tfedge.models.pruning import DEFAULT_SKIP, pruning_plan

            plan = pruning_plan(model, stage.get("structure"), stage.get("skip", DEFAULT_SKIP))
            self.plans.update(
                {k: plan[k] for k in ("dense", "kernels", "pruned_weights", "kernel_weights")}
            )
        if registry.SHARED_VALUES in entry.makes:
            from tfedge.models.clustering import clustering_plan

            plan = clustering_plan(
                model,
                stage.get("clusters", registry.parameters(entry.name)["clusters"]),
                stage.get("skip", ()),
                preserve_sparsity=bool(stage.get("preserve_sparsity", False)),
            )
            self.plans.update(plan)

    def entry(self, tflite_path, model) -> dict:
        """:func:`compression_entry` of the stage's (or, before any stage, the baseline's) file."""

        source = self.kernels_model if self.kernels_model is not None else model
        try:
            kernels = pruning_plan(source)["kernels"]
        except OptimizationError:  # a model whose layers cannot be read: tensors stay unnamed
            kernels = []
        pruned = {(k["layer"], k["weight"]) for k in self.plans.get("kernels", []) if k["pruned"]}
        for kernel in kernels:
            kernel["pruned"] = (kernel["layer"], kernel["weight"]) in pruned
        plans = {**self.plans, "kernels": kernels}
        return compression_entry(tflite_path, requested_after(self.stages), plans)


def check_finalized(model, tflite) -> dict:
    """Requested against achieved for a model of your own loop (:func:`tfedge.models.finalize`).

    Args:
        model: the model ``finalize`` returned, or its :func:`tfedge.models.requested` record
            (the JSON a saved model needs beside it: the record does not survive ``.keras``).
        tflite: the converted file: a path or its bytes (what ``convert`` returned).

    Returns:
        :func:`compression_entry` of the file (``requested`` gains ``qat``), plus
        ``fully_integer`` (no float operator, I/O included; a note says when not). ``met`` is
        the compression check: the requested sparsity on every kernel ``wrap`` pruned and at
        most the requested distinct values in every one it clustered.

    Example:
        >>> final = models.finalize(m)  # doctest: +SKIP
        >>> check_finalized(final, convert(final, calib=train))["met"]  # doctest: +SKIP
        True
    """
    # Importing tfedge.models loads TensorFlow (about 10 s measured); the rest of this module
    # reads .tflite files and JSON without it.

    record = model if isinstance(model, dict) else wrapping.requested(model)
    asked = {key: record.get(key) for key in ("sparsity", "structure", "clusters")}
    entry = compression_entry(tflite, asked, record.get("plans"))
    entry["requested"]["qat"] = bool(record.get("qat"))
    _check_depthwise_clusters(entry, record)
    info = inspect_model(tflite)
    entry["fully_integer"] = info["fully_integer"]
    if not info["fully_integer"]:
        entry["notes"].append(
            "not fully int8: float operators " + ", ".join(info.get("float_ops", []))
        )
    return entry


def _check_depthwise_clusters(entry: dict, record: dict) -> None:
    """Hold the depthwise kernels ``wrap`` clustered (tfmot never does) to the clusters too."""
    clusters = record.get("clusters")
    shared = {
        (k["layer"], k["weight"])
        for k in record.get("plans", {}).get("kernels", [])
        if k.get("clustered") and "depthwise" in k["weight"]
    }
    for layer in entry["layers"]:
        if clusters is None or (layer["layer"], layer["weight"]) not in shared:
            continue
        layer["clustered"] = True
        if layer["unique_values"] > clusters:
            entry["met"] = False
            entry["notes"].append(
                f"{clusters} values asked, {layer['layer']} has {layer['unique_values']}"
            )
