"""The search space: the stage choices a trial picks (:data:`SPACE`) and the recipes they make.

A point of :data:`SPACE` (``{"prune": 0.8, "qat": True}``) becomes a recipe, the stage list
``tfedge optimize --recipe`` reads, in ``tfedge optimize``'s order with each stage preserving the
earlier stages' zeros and clusters; :func:`recipe_key`, :func:`recipe_label` and
:func:`recipe_cost` name, label and price a recipe.

Example:
    >>> recipe_label(recipe_from_choices({"prune": 0.8, "qat": True}))
    'prune(0.8) + qat'
"""

import hashlib
import json

__all__ = [
    "SPACE",
    "REFERENCE_RECIPE",
    "recipe_from_choices",
    "recipe_cost",
    "recipe_key",
    "recipe_label",
]

# The float32 model: the accuracy the tolerance is measured from.
REFERENCE_RECIPE = {"stages": [], "convert": {"mode": "float32"}}

# The search space: one choice per stage, "none" leaves the stage out. Stages run in this order.
SPACE = {
    "distill": ["none", 0.5, 0.25],  # a fresh student with this fraction of the parameters
    "factorize": ["none", 0.95, 0.9],  # low-rank factorization keeping this energy
    "prune_filters": ["none", 0.25, 0.5, 0.75],  # fraction of conv filters removed
    "criterion": ["l1", "l2", "taylor"],  # filter pruning's ranking (only with prune_filters)
    "prune": ["none", 0.5, 0.7, 0.8, 0.9, "2:4"],  # magnitude pruning sparsity, or 2:4
    "cluster": ["none", 32, 16, 8],  # shared weight values per layer
    "qat": [False, True],
}
# Magnitude pruning and clustering make a model smaller gzipped, not faster (LiteRT runs the
# zeros densely), so a latency search leaves them out and spends its trials on what can be faster.
_LATENCY_SKIPS = ("prune", "cluster")
# Rough cost of each stage in fine-tuning runs, for ordering the seeds cheap to expensive.
_COST = {"qat": 1.0, "prune": 2.0, "cluster": 1.5, "prune_filters": 2.0, "factorize": 1.5}
_COST["distill"] = 3.0


def _with_preservation(stages: list[dict]) -> list[dict]:
    """Clustering keeps earlier sparsity, QAT keeps earlier sparsity and clusters (PQAT/CQAT/PCQAT)."""
    names = [s["name"] for s in stages]
    out = []
    for index, stage in enumerate(stages):
        stage = dict(stage)
        before = names[:index]
        if stage["name"] == "cluster" and "prune" in before:
            stage.setdefault("preserve_sparsity", True)
        if stage["name"] == "qat" and "preserve" not in stage:
            kept = [k for k, s in (("sparsity", "prune"), ("clusters", "cluster")) if s in before]
            if kept:
                stage["preserve"] = "+".join(kept)
        out.append(stage)
    return out


def recipe_from_choices(choices: dict, epochs: int | None = None) -> dict:
    """Turn one point of :data:`SPACE` into a recipe (stages in ``tfedge optimize``'s order).

    Example:
        >>> recipe_from_choices({"prune": 0.8, "cluster": 16, "qat": True})["stages"][-1]
        {'name': 'qat', 'preserve': 'sparsity+clusters'}
    """
    stages = []
    if choices.get("distill", "none") != "none":
        stages.append({"name": "distill", "new_student": True, "params": choices["distill"]})
    if choices.get("factorize", "none") != "none":
        stages.append({"name": "factorize", "energy": choices["factorize"]})
    if choices.get("prune_filters", "none") != "none":
        stages.append(
            {
                "name": "prune_filters",
                "ratio": choices["prune_filters"],
                "criterion": choices.get("criterion", "l1"),
            }
        )
    prune = choices.get("prune", "none")
    if prune == "2:4":
        stages.append({"name": "prune", "sparsity": 0.5, "structure": "2:4"})
    elif prune != "none":
        stages.append({"name": "prune", "sparsity": prune})
    if choices.get("cluster", "none") != "none":
        stages.append({"name": "cluster", "clusters": int(choices["cluster"])})
    if choices.get("qat"):
        stages.append({"name": "qat"})
    if epochs is not None:
        stages = [{**stage, "epochs": int(epochs)} for stage in stages]
    return {"stages": _with_preservation(stages)}


def recipe_cost(recipe: dict) -> float:
    """A rough cost (in fine-tuning runs) of a recipe, for ordering cheap to expensive.

    Example:
        >>> recipe_cost({"stages": []})
        0.0
    """
    return float(sum(_COST.get(stage["name"], 1.0) for stage in recipe.get("stages", [])))


def recipe_key(recipe: dict) -> str:
    """A stable short hash of a recipe (equal recipes, equal keys).

    Example:
        >>> recipe_key({"stages": []}) == recipe_key({"stages": []})
        True
    """
    text = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recipe_label(recipe: dict) -> str:
    """A short human label: ``prune(0.8) + cluster(16) + qat``, or ``int8 (post-training)``.

    Example:
        >>> recipe_label({"stages": [{"name": "prune", "sparsity": 0.8}, {"name": "qat"}]})
        'prune(0.8) + qat'
    """
    convert = recipe.get("convert") or {}
    if convert.get("mode") == "float32":
        return "float32"
    parts = []
    for stage in recipe.get("stages", []):
        name = stage["name"]
        value = {
            "prune": stage.get("structure") or stage.get("sparsity"),
            "cluster": stage.get("clusters"),
            "prune_filters": f"{stage.get('ratio')}, {stage.get('criterion', 'l1')}",
            "distill": f"params={stage.get('params')}",
            "factorize": stage.get("energy") or stage.get("rank"),
        }.get(name)
        parts.append(f"{name}({value})" if value is not None else name)
    label = " + ".join(parts) if parts else "int8 (post-training)"
    if convert.get("int16"):
        label += f" + int16({', '.join(convert['int16'])})"
    return label


def _choices_from_trial(trial, objective: str) -> dict:
    choices = {}
    for name, options in SPACE.items():
        if name == "criterion":
            continue
        if objective == "latency" and name in _LATENCY_SKIPS:
            continue
        choices[name] = trial.suggest_categorical(name, options)
        if name == "prune_filters" and choices[name] != "none":
            choices["criterion"] = trial.suggest_categorical("criterion", SPACE["criterion"])
    return choices
