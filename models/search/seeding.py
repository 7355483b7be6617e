"""Seeding: the known-good hand recipes a study starts from, cheapest first.

Example:
    >>> seed_recipes("size")[:2]
    [{}, {'qat': True}]
"""

from tfedge.models.search.space import _LATENCY_SKIPS, SPACE, recipe_cost, recipe_from_choices

__all__ = ["seed_recipes"]


def seed_recipes(objective: str) -> list[dict]:
    """The known-good hand recipes the study starts from, as :data:`SPACE` choices, cheapest first.

    They are the rows of the README's compression and filter-pruning tables: post-training int8,
    QAT, 80 % pruning, 16 clusters, 2:4, PQAT, PCQAT (prune 80 % + cluster 16 + QAT, the smallest
    hand recipe), the half-size distilled student and 50 % filter pruning (+ QAT).

    Example:
        >>> seed_recipes("latency")[0]
        {}
    """
    size = [
        {},
        {"qat": True},
        {"prune": 0.8},
        {"cluster": 16},
        {"prune": 0.8, "qat": True},
        {"prune": 0.8, "cluster": 16, "qat": True},
        {"prune": 0.9, "cluster": 16, "qat": True},
        {"prune_filters": 0.5, "prune": 0.8, "cluster": 16, "qat": True},
    ]
    latency = [
        {},
        {"qat": True},
        {"prune_filters": 0.5},
        {"prune_filters": 0.5, "qat": True},
        {"distill": 0.5},
        {"prune_filters": 0.75, "qat": True},
    ]
    if objective == "size":
        seeds = size
    elif objective == "latency":
        seeds = latency
    else:
        seeds = size[:2] + latency[2:4] + size[4:6] + latency[4:5]
    return sorted(seeds, key=lambda c: recipe_cost(recipe_from_choices(c)))


def _seed_params(choices_list, objective) -> list[dict]:
    """Seeds as full points of the study's space (Optuna's ``enqueue_trial`` parameters)."""
    out = []
    for choices in choices_list:
        params = dict(choices)
        for name in SPACE:
            if name == "criterion" or (objective == "latency" and name in _LATENCY_SKIPS):
                continue
            params.setdefault(name, False if name == "qat" else "none")
        if params.get("prune_filters", "none") != "none":
            params.setdefault("criterion", "l1")
        out.append(params)
    return out
