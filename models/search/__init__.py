"""Accuracy-aware search over the compression stages, on Optuna: give a tolerance, get a Pareto set.

:func:`run_search` runs an Optuna multi-objective study whose trials are *recipes* (the stage
lists ``tfedge optimize --recipe`` reads: ``{"stages": [{"name": "prune", "sparsity": 0.8}, ...]}``).
Each recipe is measured by an injected ``evaluator(recipe) -> figures``; the figures are a results
row (``accuracy`` of the int8 model on the validation data, ``size_gzip_bytes``, ``latency_ms``)
and the study keeps int8 accuracy against gzip size and/or p50 latency. This package only
searches: it never converts or benches, so it sits in the models layer. ``tfedge.auto_optimize``
(the application) supplies the evaluator that runs the stages, converts to int8 and benches on a
device. ``tfedge.models.auto_optimize`` is :func:`run_search` under its older name.

How the search goes, one module per part:

- ``space``: the sampler (TPE, multi-objective) proposes recipes from :data:`SPACE`, combined in
  the order ``tfedge optimize`` runs them (student, factorization, filter pruning, pruning,
  clustering, QAT last, each preserving the earlier stages' zeros and clusters);
- ``seeding``: the known-good hand recipes are enqueued first, cheapest first (post-training
  int8, QAT, pruning, clustering, then their combinations), so the study starts from them;
- ``branches``: a stage whose Keras accuracy falls more than twice the tolerance below the
  reference stops its trial (pruned), and every later recipe that starts with the same stages is
  pruned without being run: the branch is closed; a recipe already measured (or being measured
  by another worker) is not run again;
- ``screening``: optionally, each candidate is screened briefly first (multi-fidelity);
- ``confirmation``: the candidates read back, ranked, and the choice confirmed on held-back data;
- ``storage`` and ``study``: a candidate that fails is recorded as failed and the search goes
  on; the study lives in an Optuna storage (an SQLite file by default, or any RDB URL shared by
  several machines), which is also the record that lets an interrupted search resume;
- ``objectives``: the figures as the study's values and the objective's score.

Example:
    >>> result = run_search(model, train, val, evaluator=my_evaluator, tolerance=0.01,
    ...                     objective="size", budget_minutes=10)  # doctest: +SKIP
    >>> result.best["recipe"]  # doctest: +SKIP
    {'stages': [{'name': 'prune', 'sparsity': 0.8}, ...]}
"""

from tfedge.models.search.branches import BRANCH_SLACK
from tfedge.models.search.confirmation import CONFIRM_MARGIN, SearchResult, collect, confirm_best
from tfedge.models.search.objectives import OBJECTIVES, check_settings
from tfedge.models.search.screening import (
    MIN_SCREEN_SAMPLES,
    SCREEN,
    SCREEN_PENALTY,
    SCREEN_REDUCTION,
    screen_for,
)
from tfedge.models.search.seeding import seed_recipes
from tfedge.models.search.space import (
    REFERENCE_RECIPE,
    SPACE,
    recipe_cost,
    recipe_from_choices,
    recipe_key,
    recipe_label,
)
from tfedge.models.search.storage import GRACE_S, HEARTBEAT_S, open_storage
from tfedge.models.search.study import DEFAULT_STUDY, INT16_LAYERS, run_search

# The older name of run_search (README: ``tfedge.models.auto_optimize(..., evaluator=...)``).
auto_optimize = run_search

__all__ = [
    "OBJECTIVES",
    "SPACE",
    "SearchResult",
    "run_search",
    "auto_optimize",
    "seed_recipes",
    "recipe_key",
    "recipe_label",
    "recipe_cost",
    "recipe_from_choices",
    "open_storage",
    "REFERENCE_RECIPE",
    "confirm_best",
    "collect",
    "check_settings",
    "BRANCH_SLACK",
    "CONFIRM_MARGIN",
    "INT16_LAYERS",
    "SCREEN",
    "SCREEN_REDUCTION",
    "SCREEN_PENALTY",
    "MIN_SCREEN_SAMPLES",
    "screen_for",
    "DEFAULT_STUDY",
    "HEARTBEAT_S",
    "GRACE_S",
]
