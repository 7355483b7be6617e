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

import tfedge.models.stages as stages

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

# The search space and the stages' costs are the stage registry's (each stage declares its own
# choices and cost once): one choice per stage, "none" leaves the stage out, in the order stages
# run in.
SPACE = stages.search_space()
_COST = stages.costs()
# Magnitude pruning and clustering make a model smaller gzipped, not faster (LiteRT runs the
# zeros densely), so a latency search leaves out the stages that only make zeros or shared values.
_LATENCY_SKIPS = tuple(
    name
    for name in stages.names()
    if stages.get(name).makes & {stages.ZEROS, stages.SHARED_VALUES}
    and not stages.get(name).rebuilds
)


def recipe_from_choices(choices: dict, epochs: int | None = None) -> dict:
    """Turn one point of :data:`SPACE` into a recipe (stages in ``tfedge optimize``'s order).

    Example:
        >>> recipe_from_choices({"prune": 0.8, "cluster": 16, "qat": True})["stages"][-1]
        {'name': 'qat', 'preserve': 'sparsity+clusters'}
    """
    return {"stages": stages.stages_from_choices(choices, epochs)}


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
