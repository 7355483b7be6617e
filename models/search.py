"""Accuracy-aware search over the compression stages, on Optuna: give a tolerance, get a Pareto set.

:func:`auto_optimize` runs an Optuna multi-objective study whose trials are *recipes* (the stage
lists ``tfedge optimize --recipe`` reads: ``{"stages": [{"name": "prune", "sparsity": 0.8}, ...]}``).
Each recipe is measured by an injected ``evaluator(recipe) -> figures``; the figures are a results
row (``accuracy`` of the int8 model on the validation data, ``size_gzip_bytes``, ``latency_ms``)
and the study keeps int8 accuracy against gzip size and/or p50 latency. This module only searches:
it never converts or benches, so it sits in the models layer. ``tfedge.auto_optimize`` (the
application) supplies the evaluator that runs the stages, converts to int8 and benches on a device.

How the search goes:

- the known-good hand recipes are enqueued first, cheapest first (post-training int8, QAT,
  pruning, clustering, then their combinations), so the study starts from them;
- the sampler (TPE, multi-objective) then proposes recipes from :data:`SPACE`, combined in the
  order ``tfedge optimize`` runs them (student, factorization, filter pruning, pruning,
  clustering, QAT last, each preserving the earlier stages' zeros and clusters);
- a stage whose Keras accuracy falls more than twice the tolerance below the reference stops its
  trial (pruned), and every later recipe that starts with the same stages is pruned without being
  run: the branch is closed;
- a recipe already measured (or being measured by another worker) is not run again;
- a candidate that fails is recorded as failed and the search goes on;
- the study lives in an Optuna storage (an SQLite file by default, or any RDB URL shared by
  several machines), which is also the record that lets an interrupted search resume.

Example:
    >>> result = auto_optimize(model, train, val, evaluator=my_evaluator, tolerance=0.01,
    ...                        objective="size", budget_minutes=10)  # doctest: +SKIP
    >>> result.best["recipe"]  # doctest: +SKIP
    {'stages': [{'name': 'prune', 'sparsity': 0.8}, ...]}
"""

import contextlib
import hashlib
import inspect
import json
import os
import socket
import statistics
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from tfedge.core.errors import OptimizationError, TfedgeError

__all__ = [
    "OBJECTIVES",
    "SPACE",
    "SearchResult",
    "auto_optimize",
    "seed_recipes",
    "recipe_key",
    "recipe_label",
    "recipe_cost",
    "open_storage",
    "REFERENCE_RECIPE",
    "confirm_best",
]

OBJECTIVES = ("size", "latency", "balanced")
# The float32 model: the accuracy the tolerance is measured from.
REFERENCE_RECIPE = {"stages": [], "convert": {"mode": "float32"}}
# A branch is hopeless once one of its stages loses this many tolerances of Keras accuracy: the
# later stages (clustering, QAT) win back a little, never that much.
BRANCH_SLACK = 2.0
# The chosen model's loss on the held-back samples, plus this many (paired) standard errors of
# it, must be within the tolerance: one standard error turns down the candidates that keep the
# tolerance there only by the luck of a few samples.
CONFIRM_MARGIN = 1.0
# Worst layers a near-miss candidate may run in int16 as its final step (auto_optimize).
INT16_LAYERS = 1
# Multi-fidelity: the screen every candidate with stages gets first, the share of screens the
# successive-halving pruner promotes to the full fine-tune (1 / SCREEN_REDUCTION), and how much a
# screen's score worsens per tolerance of accuracy it falls below the floor.
SCREEN = {"epochs": 1, "data_fraction": 0.25}
SCREEN_REDUCTION = 2
SCREEN_PENALTY = 4.0
DEFAULT_STUDY = "tfedge-auto"
HEARTBEAT_S = 5
GRACE_S = 20
_POLL_S = 1.0

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


@dataclass
class SearchResult:
    """What a search found: every candidate, the Pareto set and the best on the objective.

    Attributes:
        best: the chosen candidate (smallest / fastest / best balanced within the tolerance),
            or None when no candidate kept the tolerance.
        candidates: one dict per trial run (``trial``, ``state``, ``recipe``, ``label``,
            ``figures``, ``error``, ``within_tolerance``, ``pareto``), in trial order.
        pareto: the candidates on the Pareto front (accuracy against the objective's measures).
        reference: the float32 model's figures (the accuracy the tolerance is measured from).
        objective: ``"size"``, ``"latency"`` or ``"balanced"``.
        tolerance: the accepted accuracy loss (0.01 = one point).
        study_name: the Optuna study.
        storage: the storage URL (password hidden).
        trials: how many trials this study holds (duplicates included).
        stopped: why this run stopped (``"budget"``, ``"trials"``, ``"exhausted"``).
        elapsed_s: this run's wall time.
    """

    best: dict | None
    candidates: list
    pareto: list
    reference: dict
    objective: str
    tolerance: float
    study_name: str
    storage: str
    trials: int = 0
    stopped: str = "trials"
    elapsed_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def reference_accuracy(self) -> float:
        """The float32 model's accuracy on the validation data."""
        return float(self.reference["accuracy"])

    def to_dict(self) -> dict:
        """The search summary as JSON-ready data (without the per-candidate rows)."""
        return {
            "objective": self.objective,
            "tolerance": self.tolerance,
            "reference_accuracy": self.reference_accuracy,
            "study": self.study_name,
            "storage": self.storage,
            "trials": self.trials,
            "candidates": len(self.candidates),
            "pareto_trials": [c["trial"] for c in self.pareto],
            "best_trial": None if self.best is None else self.best["trial"],
            "best_recipe": None if self.best is None else self.best["recipe"],
            "stopped": self.stopped,
            "elapsed_s": round(self.elapsed_s, 1),
            **self.extra,
        }


# ----------------------------------------------------------------------------- recipes


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


# ----------------------------------------------------------------------------- figures


def _p50(figures: dict):
    latency = figures.get("latency_ms") or {}
    value = latency.get("p50", figures.get("p50_ms"))
    return None if value is None else float(value)


def _values(figures: dict, objective: str) -> list[float]:
    """The study's objective values: accuracy (maximized), then size and/or p50 (minimized)."""
    needed = ["accuracy"]
    if objective in ("size", "balanced"):
        needed.append("size_gzip_bytes")
    if objective in ("latency", "balanced"):
        needed.append("latency_ms.p50")
    found = {"accuracy": figures.get("accuracy"), "size_gzip_bytes": figures.get("size_gzip_bytes")}
    found["latency_ms.p50"] = _p50(figures)
    missing = [key for key in needed if found[key] is None]
    if missing:
        raise OptimizationError(
            f"the evaluator's figures lack {', '.join(missing)}: got keys {sorted(figures)}",
            "return a results row with accuracy, size_gzip_bytes and latency_ms.p50",
        )
    values = [float(figures["accuracy"])]
    if objective in ("size", "balanced"):
        values.append(float(figures["size_gzip_bytes"]))
    if objective in ("latency", "balanced"):
        values.append(_p50(figures))
    return values


def _directions(objective: str) -> list[str]:
    return ["maximize"] + ["minimize"] * (2 if objective == "balanced" else 1)


def _score(figures: dict, objective: str, ptq: dict | None) -> float:
    """Lower is better: gzip bytes, p50, or (balanced) the geometric mean of both vs PTQ int8."""
    if objective == "size":
        return float(figures["size_gzip_bytes"])
    if objective == "latency":
        return _p50(figures)
    base_size = float((ptq or figures)["size_gzip_bytes"]) or 1.0
    base_p50 = _p50(ptq or figures) or 1.0
    return ((figures["size_gzip_bytes"] / base_size) * (_p50(figures) / base_p50)) ** 0.5


def _describe(figures: dict, objective: str) -> str:
    parts = []
    if objective in ("size", "balanced"):
        parts.append(f"{figures['size_gzip_bytes']:,} B gzip")
    if objective in ("latency", "balanced"):
        parts.append(f"p50 {_p50(figures):.3f} ms")
    parts.append(f"acc {figures['accuracy'] * 100:.2f}%")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- storage


def _mask(url: str) -> str:
    """The URL with any password replaced by ``***``."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}@{host}"


def open_storage(url: str):
    """Open an Optuna RDB storage (SQLite file, PostgreSQL, MySQL) with trial heartbeats.

    Heartbeats let a crashed or killed worker's trial be failed after :data:`GRACE_S` seconds and
    retried once by another worker (Optuna's ``RetryFailedTrialCallback``).

    Raises:
        OptimizationError: the URL is malformed, its driver is missing or the database cannot be
            reached.

    Example:
        >>> storage = open_storage("sqlite:///search.db")  # doctest: +SKIP
    """
    import optuna
    from optuna import storages

    if not isinstance(url, str) or "://" not in url:
        raise OptimizationError(
            f"storage URL {url!r} is not a database URL",
            "use sqlite:///path/search.db or postgresql://USER:PASSWORD@HOST:PORT/DB",
            option="storage",
        )
    last = None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # Optuna >= 4.9 names the retry callback for stale heartbeats; older ones the other.
                if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):
                    callback = storages.RetryHeartbeatStaleTrialCallback(1)
                    retry = {"heartbeat_stale_trial_callback": callback}
                else:
                    retry = {"failed_trial_callback": storages.RetryFailedTrialCallback(1)}
                return storages.RDBStorage(
                    _with_driver(url),
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    engine_kwargs=_engine_kwargs(url),
                    **retry,
                )
        except Exception as exc:  # SQLAlchemy/driver errors have many types; all mean "cannot open"
            last = exc
            # Workers that start together on an empty database race to create Optuna's tables:
            # the loser sees "already exists" (PostgreSQL) or a unique-constraint failure on
            # alembic_version (SQLite) and only has to try again.
            racing = "already exists" in str(exc) or type(exc).__name__ == "IntegrityError"
            if not racing or attempt == 4:
                break
            time.sleep(0.5 + attempt)
    text = " ".join(str(last).split())[:300]
    raise OptimizationError(
        f"cannot open the storage {_mask(url)}: {type(last).__name__}: {text}",
        "check the URL, that the database server is up and reachable, and that its "
        "driver is installed (psycopg2 for postgresql://)",
        option="storage",
    ) from last


def _with_driver(url: str) -> str:
    """``postgresql://`` through psycopg2 (tfedge's dependency) unless psycopg 3 is installed.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3.
    """
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        import importlib.util

        driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"
        return f"postgresql+{driver}://{rest}"
    return url


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):
        # Several processes may share one file (resume while another finishes): wait for locks.
        return {"connect_args": {"timeout": 60}}
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return {"pool_pre_ping": True}


# ----------------------------------------------------------------------------- the study


def _quiet_optuna():
    import optuna

    # ERROR: Optuna logs each failed trial with its traceback at WARNING; the search records
    # the failure (the candidate's error) and reports it itself.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _fingerprint_of(model) -> dict:
    """A model's identity when the caller gives none: architecture and weights."""
    if not hasattr(model, "get_weights"):
        raise OptimizationError(
            f"cannot fingerprint the model {type(model).__name__}: the study records which model "
            "it searches",
            "pass the Keras model, or fingerprint={'model': 'some-id'}",
        )
    digest = hashlib.sha256()
    with contextlib.suppress(Exception):
        digest.update(model.to_json().encode())
    for weights in model.get_weights():
        digest.update(weights.tobytes())
    return {"model": digest.hexdigest()[:32]}


def _open_study(
    storage, study_name, objective, fingerprint, resume, sampler, seed_params, wait_s=30.0
):
    """Create the study (and say so) or load it, checking it belongs to this model and objective."""
    import optuna

    directions = _directions(objective)
    created = False
    try:
        study = optuna.create_study(
            storage=storage, study_name=study_name, directions=directions, sampler=sampler
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=study_name, sampler=sampler)
    if created:
        if resume:
            optuna.delete_study(study_name=study_name, storage=storage)
            raise OptimizationError(
                f"nothing to resume: the storage has no study {study_name!r}",
                "run the same command without --resume to start the search",
            )
        for params in seed_params:  # before the fingerprint: joining workers wait for it
            study.enqueue_trial(params, skip_if_exists=True)
        study.set_user_attr("objective", objective)
        study.set_user_attr("fingerprint", fingerprint)
        return study, True
    deadline = time.time() + wait_s  # another worker may have created it an instant ago
    while "fingerprint" not in study.user_attrs and time.time() < deadline:
        time.sleep(0.5)
        study = optuna.load_study(storage=storage, study_name=study_name, sampler=sampler)
    attrs = study.user_attrs
    theirs = attrs.get("fingerprint")
    if theirs is None:
        raise OptimizationError(
            f"study {study_name!r} was not made by tfedge's search (no model fingerprint)",
            "pick another study name with --study",
        )
    if theirs != fingerprint:
        differ = sorted(
            k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k)
        )
        raise OptimizationError(
            f"study {study_name!r} belongs to another model or setup: its "
            f"{', '.join(differ)} fingerprint differs from this run's",
            "pick another --study name (or output folder), or run with the study's model, data "
            "and settings",
        )
    if attrs.get("objective") != objective:
        raise OptimizationError(
            f"study {study_name!r} searches objective {attrs.get('objective')!r}, not {objective!r}",
            "pick another --study name for another objective",
        )
    return study, False


class _BranchBroken(Exception):
    def __init__(self, index, accuracy):
        super().__init__(f"stage {index + 1} Keras accuracy {accuracy:.4f}")
        self.index = index
        self.accuracy = accuracy


def _accepts(function, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())


def _first_line(exc) -> str:
    message = getattr(exc, "message", None) or str(exc)
    for line in str(message).splitlines():
        if line.strip():
            return f"{type(exc).__name__}: {line.strip()[:300]}"
    return type(exc).__name__


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def auto_optimize(
    model,
    train=None,
    val=None,
    *,
    evaluator=None,
    tolerance: float = 0.01,
    objective: str = "size",
    budget_minutes: float | None = None,
    max_trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    resume: bool = False,
    fingerprint: dict | None = None,
    epochs: int | None = None,
    seeds: list[dict] | None = None,
    seed: int | None = 0,
    on_progress=None,
    confirm=None,
    int16_layers: int = INT16_LAYERS,
    fidelity: dict | None = None,
) -> SearchResult:
    """Search the compression stages for the smallest, fastest or best balanced model within a tolerance.

    Args:
        model: the trained float model (its weights fingerprint the study unless ``fingerprint``
            is given). The evaluator is what actually runs the stages on it.
        train: the training data (passed through for symmetry with ``tfedge.auto_optimize``; the
            evaluator holds its own).
        val: the validation data (likewise).
        evaluator: ``evaluator(recipe) -> figures``, or ``evaluator(recipe, on_stage=callback)``
            which calls ``callback(stage_index, keras_accuracy)`` after each stage (the search
            raises from it to stop a hopeless branch). ``figures`` is a results row: ``accuracy``
            (int8 on the validation data), ``size_gzip_bytes`` and ``latency_ms["p50"]``.
            ``evaluator(REFERENCE_RECIPE)`` must give the float32 model's figures. An error whose
            ``stages`` attribute lists the recipe's stages up to the one that failed skips the
            recipes that start with them.
        tolerance: the accuracy the result may lose against the float32 model, in (0, 1):
            0.01 is one point.
        objective: ``"size"`` (gzip bytes), ``"latency"`` (p50) or ``"balanced"`` (both).
        budget_minutes: stop starting trials after this long (a trial running then finishes) and
            return the best so far.
        max_trials: stop once the study holds this many finished trials (all workers together).
            Without a budget the default is the seeds plus 20.
        storage: an Optuna storage URL (``sqlite:///file.db``, ``postgresql://...``); None keeps
            the study in memory.
        study_name: the study to create or join (several workers with the same storage and name
            share it).
        resume: require an existing study (an error when there is none).
        fingerprint: ``{"model": ..., "train": ..., ...}`` identifying what the study searches;
            joining a study with another fingerprint is refused.
        epochs: fine-tuning epochs for every stage (None: each stage's default).
        seeds: the first recipes, as :data:`SPACE` choices (default :func:`seed_recipes`).
        seed: the sampler's seed (None: random; workers on a shared storage use their own).
        on_progress: called with a one-line progress text after each trial.
        confirm: ``confirm(candidate) -> per-sample correctness`` (or an accuracy) on data the
            search never used (see :func:`confirm_best`); the final choice must keep the
            tolerance there too, with a margin.
        int16_layers: a candidate that misses the tolerance by less than the tolerance again
            gets a final step, int16 activations for its ``int16_layers`` worst layers (the
            evaluator is given ``convert: {"int16_worst": k}`` and names the layers it chose in
            ``figures["int16_layers"]``); kept when it is more accurate. Such a model is fully
            integer but not EdgeTPU-compatible. 0 turns the step off.
        fidelity: multi-fidelity evaluation, e.g. :data:`SCREEN` (``{"epochs": 1,
            "data_fraction": 0.25}``): a candidate with stages is first fine-tuned that briefly
            (the evaluator is called with ``fidelity=``), and only those Optuna's
            ``SuccessiveHalvingPruner`` promotes get the full fine-tune; the others end pruned,
            with their screen's figures. The pruner ranks the screens in a single-objective
            companion study (``<study>:screen``, same storage; Optuna's pruners do not take
            multi-objective studies) by the objective's score, penalized for accuracy below the
            tolerance. None evaluates every candidate at full fidelity.

    Returns:
        A :class:`SearchResult`.

    Raises:
        OptimizationError: a bad tolerance, objective or budget, no evaluator, a storage that
            cannot be opened, a study of another model, or a reference that cannot be measured.

    Example:
        >>> result = auto_optimize(model, train, val, evaluator=evaluate_recipe,
        ...                        tolerance=0.01, objective="size", max_trials=12)  # doctest: +SKIP
        >>> result.best["label"], result.best["figures"]["size_gzip_bytes"]  # doctest: +SKIP
        ('prune(0.8) + cluster(16) + qat', 11027)
    """
    check_settings(tolerance, objective, budget_minutes, max_trials)
    if evaluator is None:
        raise OptimizationError(
            "tfedge.models.auto_optimize needs evaluator=, a function recipe -> figures (int8 "
            "accuracy, gzip size, p50); pass one, or call tfedge.auto_optimize(...), which "
            "converts each candidate to int8 and benches it with LiteRT for you",
            "tfedge.auto_optimize(model, train, val, out_dir=..., tolerance=0.01)",
        )
    import optuna

    _quiet_optuna()
    started = time.time()
    fingerprint = dict(fingerprint or _fingerprint_of(model))
    if epochs is not None:
        fingerprint["epochs"] = int(epochs)
    study_name = study_name or DEFAULT_STUDY
    if storage is None:
        if resume:
            raise OptimizationError(
                "resume needs a storage: an in-memory study ends with its process",
                "pass storage='sqlite:///search.db' (tfedge.auto_optimize keeps one in its folder)",
            )
        store, shown = optuna.storages.InMemoryStorage(), "memory"
    else:
        store, shown = open_storage(storage), _mask(storage)
    choices_list = seeds if seeds is not None else seed_recipes(objective)
    sampler = optuna.samplers.TPESampler(
        seed=seed if storage is None or seed is None else seed + os.getpid(),
        multivariate=True,
        group=True,
        constant_liar=True,
        n_startup_trials=max(6, len(choices_list)),
    )
    study, created = _open_study(
        store,
        study_name,
        objective,
        fingerprint,
        resume,
        sampler,
        _seed_params(choices_list, objective),
    )
    # Measured once per study and shared by every worker (and every resumed run).
    reference = study.user_attrs.get("reference")
    if reference is None:
        reference = _measure_reference(evaluator, "reference")
        study.set_user_attr("reference", reference)
    floor = float(reference["accuracy"]) - tolerance

    if max_trials is None and budget_minutes is None:
        max_trials = len(choices_list) + 20

    pass_on_stage = _accepts(evaluator, "on_stage")
    screen = None
    if fidelity and _accepts(evaluator, "fidelity"):
        screen = optuna.create_study(
            storage=store,
            study_name=f"{study_name}:screen",
            direction="minimize",
            pruner=optuna.pruners.SuccessiveHalvingPruner(
                min_resource=1, reduction_factor=SCREEN_REDUCTION, min_early_stopping_rate=0
            ),
            load_if_exists=True,
        )
    worker = _worker_id()
    state = {"duplicates_in_a_row": 0, "ran": 0, "durations": []}

    def objective_function(trial):
        choices = _choices_from_trial(trial, objective)
        recipe = recipe_from_choices(choices, epochs)
        key = recipe_key(recipe)
        trial.set_user_attr("recipe", recipe)
        trial.set_user_attr("key", key)
        trial.set_user_attr("label", recipe_label(recipe))
        trial.set_user_attr("worker", worker)
        earlier = _earlier_result(study, trial, key)
        if earlier is not None:
            state["duplicates_in_a_row"] += 1
            trial.set_user_attr("duplicate_of", earlier.number)
            if earlier.state == optuna.trial.TrialState.COMPLETE:
                trial.set_user_attr("figures", earlier.user_attrs.get("figures"))
                return earlier.values
            if earlier.state == optuna.trial.TrialState.FAIL:
                trial.set_user_attr(
                    "pruned", f"same recipe as trial {earlier.number}, which failed"
                )
            raise optuna.TrialPruned(f"same recipe as trial {earlier.number}")
        state["duplicates_in_a_row"] = 0
        broken = _broken_prefix(study, recipe)
        if broken is not None:
            number, why = broken
            trial.set_user_attr("pruned", f"starts like trial {number}, {why}")
            raise optuna.TrialPruned(f"branch of trial {number}")
        stage_floor = float(reference["accuracy"]) - BRANCH_SLACK * tolerance
        if screen is not None and recipe["stages"]:
            _screened(screen, evaluator, recipe, fidelity, trial, floor, tolerance, objective)

        def on_stage(index, keras_accuracy):
            if keras_accuracy is not None and keras_accuracy < stage_floor:
                raise _BranchBroken(index, keras_accuracy)

        began = time.time()
        state["ran"] += 1
        try:
            if pass_on_stage:
                figures = evaluator(recipe, on_stage=on_stage)
            else:
                figures = evaluator(recipe)
        except _BranchBroken as broken_at:
            trial.set_user_attr("broken_prefix", recipe["stages"][: broken_at.index + 1])
            trial.set_user_attr(
                "pruned",
                f"stage {broken_at.index + 1} fell to {broken_at.accuracy * 100:.2f}% (Keras), "
                f"more than {BRANCH_SLACK:g}x the tolerance below the reference",
            )
            raise optuna.TrialPruned(str(broken_at)) from None
        except (KeyboardInterrupt, optuna.TrialPruned):
            raise
        except Exception as exc:
            trial.set_user_attr("error", _first_line(exc))
            if getattr(exc, "hint", None):
                trial.set_user_attr("hint", exc.hint)
            failed = getattr(exc, "stages", None)  # the stages up to the one that failed
            if isinstance(failed, list) and failed:
                trial.set_user_attr("failed_prefix", failed)
            raise
        finally:
            state["durations"].append(time.time() - began)
        figures = dict(figures)
        if figures.get("error"):
            trial.set_user_attr("error", str(figures["error"])[:300])
            raise OptimizationError(str(figures["error"]), figures.get("hint"))
        repaired = _with_int16(evaluator, recipe, figures, floor, tolerance, int16_layers)
        if repaired is not None:
            recipe, figures = repaired
            trial.set_user_attr("recipe", recipe)
            trial.set_user_attr("label", recipe_label(recipe))
        trial.set_user_attr("figures", _jsonable(figures))
        return _values(figures, objective)

    deadline = None if budget_minutes is None else started + budget_minutes * 60
    stopped = {"why": "trials"}

    def after_trial(study, trial):
        if on_progress is not None:
            on_progress(_progress_line(study, objective, floor, deadline))
        if deadline is not None:
            left = deadline - time.time()
            typical = statistics.median(state["durations"]) if state["durations"] else 0.0
            if left <= 0 or left < typical:
                stopped["why"] = "budget"
                study.stop()
        if state["duplicates_in_a_row"] >= 15:
            stopped["why"] = "exhausted"
            study.stop()

    callbacks = [after_trial]
    if max_trials is not None:
        callbacks.insert(
            0,
            optuna.study.MaxTrialsCallback(
                max_trials,
                states=(
                    optuna.trial.TrialState.COMPLETE,
                    optuna.trial.TrialState.PRUNED,
                    optuna.trial.TrialState.FAIL,
                ),
            ),
        )
    remaining = _remaining_trials(study, max_trials)
    if remaining != 0 and (deadline is None or time.time() < deadline):
        study.optimize(
            objective_function,
            n_trials=remaining,
            timeout=None if deadline is None else max(1.0, deadline - time.time()),
            callbacks=callbacks,
            catch=(Exception,),
            gc_after_trial=True,
            show_progress_bar=False,
        )
        if deadline is not None and time.time() >= deadline:
            stopped["why"] = "budget"
    result = collect(study, objective, tolerance, shown)
    result.stopped = stopped["why"]
    if confirm is not None:
        confirm_best(result, confirm)
    result.elapsed_s = time.time() - started
    return result


def _screened(screen, evaluator, recipe, fidelity, trial, floor, tolerance, objective) -> None:
    """The low-fidelity screen of one candidate; raises ``TrialPruned`` unless promoted.

    The companion study's trial is reported the screen's score at step 1 and asked
    ``should_prune()``: Optuna's successive halving keeps the best ``1 / SCREEN_REDUCTION`` of
    the screens so far.
    """
    import optuna

    trial.set_user_attr("fidelity", {"screen": dict(fidelity)})
    peer = screen.ask()
    try:
        figures = dict(evaluator(recipe, fidelity=dict(fidelity)))
    except Exception:
        screen.tell(peer, state=optuna.trial.TrialState.FAIL)
        raise  # a stage that fails briefly fails at full fidelity too
    if figures.get("error") or figures.get("accuracy") is None:
        screen.tell(peer, state=optuna.trial.TrialState.FAIL)
        return  # the full evaluation reports the error
    shortfall = max(0.0, floor - float(figures["accuracy"])) / tolerance
    value = _score(figures, objective, None) * (1.0 + SCREEN_PENALTY * shortfall)
    peer.report(value, 1)
    trial.set_user_attr("screen_figures", _jsonable(figures))
    if peer.should_prune():
        screen.tell(peer, state=optuna.trial.TrialState.PRUNED)
        trial.set_user_attr(
            "pruned",
            f"screened out after {_fidelity_text(fidelity)} (int8 "
            f"{figures['accuracy'] * 100:.2f}%, {_describe(figures, objective)}): not among the "
            f"best 1/{SCREEN_REDUCTION} of the screens (Optuna's SuccessiveHalvingPruner)",
        )
        raise optuna.TrialPruned("screened out")
    screen.tell(peer, value)
    trial.set_user_attr("fidelity", {"screen": dict(fidelity), "then": "full"})


def _fidelity_text(fidelity: dict) -> str:
    share = fidelity.get("data_fraction")
    epochs = int(fidelity["epochs"])
    text = f"{epochs} epoch{'s' if epochs > 1 else ''}"
    return text + (f" on {share * 100:g} % of the data" if share and share < 1 else "")


def _with_int16(evaluator, recipe, figures, floor, tolerance, layers):
    """The final int16 step of a candidate that just misses the tolerance, or None.

    Returns ``(recipe, figures)`` with the layers named in ``recipe["convert"]["int16"]`` (what
    ``tfedge optimize --recipe`` reproduces) when int16 made the candidate more accurate.
    """
    convert = recipe.get("convert") or {}
    accuracy = figures.get("accuracy")
    if (
        layers < 1
        or accuracy is None
        or convert.get("mode", "int8") != "int8"
        or convert.get("int16")
        or not floor - tolerance <= float(accuracy) < floor
    ):
        return None
    trying = {**recipe, "convert": {**convert, "mode": "int8", "int16_worst": int(layers)}}
    try:
        again = dict(evaluator(trying))
    except Exception:  # the step is a bonus: the candidate stands as it was measured
        return None
    names = again.get("int16_layers")
    if again.get("error") or not names or again.get("accuracy") is None:
        return None
    if float(again["accuracy"]) <= float(accuracy):
        return None
    again["int16_from_accuracy"] = float(accuracy)
    return {**recipe, "convert": {**convert, "mode": "int8", "int16": list(names)}}, again


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


def check_settings(tolerance, objective, budget_minutes=None, max_trials=None) -> None:
    """Refuse a tolerance outside (0, 1), an unknown objective, or a budget that is not positive.

    Example:
        >>> check_settings(0.01, "size")
    """
    try:
        value = float(tolerance)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise OptimizationError(
            f"tolerance {tolerance!r} is outside (0, 1); it is the accuracy the result may lose "
            "against the float model, as a fraction",
            "e.g. --tolerance 0.01 for one point of accuracy",
            option="tolerance",
        )
    if objective not in OBJECTIVES:
        raise OptimizationError(
            f"objective {objective!r} is unknown; expected one of {', '.join(OBJECTIVES)}",
            "size = smallest gzip size, latency = lowest p50 on the device, balanced = both",
            option="objective",
        )
    if budget_minutes is not None and not float(budget_minutes) > 0:
        raise OptimizationError(
            f"budget of {budget_minutes!r} minutes: expected a positive number",
            "e.g. --budget-minutes 15",
            option="budget_minutes",
        )
    if max_trials is not None and int(max_trials) < 1:
        raise OptimizationError(f"max_trials {max_trials!r}: expected at least 1")


def _measure_reference(evaluator, what) -> dict:
    try:
        figures = dict(evaluator(dict(REFERENCE_RECIPE)))
    except OptimizationError:
        raise
    except Exception as exc:
        raise OptimizationError(
            f"cannot measure the {what} (the float32 model): {_first_line(exc)}",
            getattr(exc, "hint", None) or "check the model, the data and the device",
        ) from exc
    if figures.get("error"):
        raise OptimizationError(
            f"cannot measure the {what} (the float32 model): {figures['error']}",
            figures.get("hint"),
        )
    if figures.get("accuracy") is None:
        raise OptimizationError(
            f"the {what} has no accuracy: the validation data needs labels",
            "pass validation data with integer labels (y)",
        )
    return _jsonable(figures)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _remaining_trials(study, max_trials):
    if max_trials is None:
        return None
    import optuna

    done = len(
        study.get_trials(
            deepcopy=False,
            states=(
                optuna.trial.TrialState.COMPLETE,
                optuna.trial.TrialState.PRUNED,
                optuna.trial.TrialState.FAIL,
            ),
        )
    )
    return max(0, max_trials - done)


def _earlier_result(study, trial, key):
    """An earlier trial with the same recipe: finished (or failed in one of its stages), or
    running elsewhere (then waited for).

    Of two trials that start the same recipe at once, the lower number runs it and the other
    waits, so no recipe runs twice even across machines.
    """
    import optuna

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    failed = optuna.trial.TrialState.FAIL
    while True:
        running_twin = None
        for other in study.get_trials(deepcopy=False):
            if other.number == trial.number or other.user_attrs.get("key") != key:
                continue
            if other.user_attrs.get("duplicate_of") is not None:
                continue
            if other.state in finished:
                return other
            if other.state == failed and other.user_attrs.get("failed_prefix"):
                return other  # a stage of it failed; a crash, a device or a dead worker: retried
            if other.state == optuna.trial.TrialState.RUNNING and other.number < trial.number:
                running_twin = other
        if running_twin is None:
            return None
        time.sleep(_POLL_S)
        with contextlib.suppress(Exception):
            optuna.storages.fail_stale_trials(study)


def _broken_prefix(study, recipe):
    """``(trial number, why)`` of a trial whose broken or failed stage list starts this recipe."""
    stages = recipe["stages"]
    for other in study.get_trials(deepcopy=False):
        for attr, why in (
            ("broken_prefix", "whose branch broke the tolerance"),
            ("failed_prefix", "whose stages failed at the same point"),
        ):
            prefix = other.user_attrs.get(attr)
            if prefix and stages[: len(prefix)] == prefix:
                return other.number, why
    return None


def _progress_line(study, objective, floor, deadline) -> str:
    import optuna

    trials = study.get_trials(deepcopy=False)
    counts = {s: 0 for s in ("COMPLETE", "PRUNED", "FAIL")}
    best = None
    for trial in trials:
        if trial.state.name in counts and trial.user_attrs.get("duplicate_of") is None:
            counts[trial.state.name] += 1
        figures = trial.user_attrs.get("figures")
        if trial.state == optuna.trial.TrialState.COMPLETE and figures:
            if figures["accuracy"] >= floor - 1e-9:
                score = _score(figures, objective, None)
                if best is None or score < best[0]:
                    best = (score, figures, trial)
    tried = sum(counts.values())
    line = f"candidates {tried} ({counts['PRUNED']} pruned, {counts['FAIL']} failed)"
    if best is None:
        line += " · none within the tolerance yet"
    else:
        line += (
            f" · best {objective}: {best[2].user_attrs.get('label')} "
            f"({_describe(best[1], objective)})"
        )
    if deadline is not None:
        line += f" · {max(0.0, deadline - time.time()) / 60:.1f} min left"
    return line


def collect(study, objective: str, tolerance: float, storage: str = "") -> SearchResult:
    """Read a study back into a :class:`SearchResult` (every candidate, Pareto set, best).

    Example:
        >>> collect(study, "size", 0.01).best["label"]  # doctest: +SKIP
        'prune(0.8) + cluster(16) + qat'
    """
    import optuna

    reference = study.user_attrs.get("reference") or {}
    floor = float(reference.get("accuracy", 0.0)) - tolerance
    candidates = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING):
            continue
        if trial.user_attrs.get("duplicate_of") is not None or "recipe" not in trial.user_attrs:
            continue
        figures = trial.user_attrs.get("figures")
        candidates.append(
            {
                "trial": trial.number,
                "state": trial.state.name.lower(),
                "recipe": trial.user_attrs["recipe"],
                "label": trial.user_attrs.get("label"),
                "figures": figures,
                "error": trial.user_attrs.get("error"),
                "hint": trial.user_attrs.get("hint"),
                "pruned": trial.user_attrs.get("pruned"),
                "worker": trial.user_attrs.get("worker"),
                "fidelity": trial.user_attrs.get("fidelity") or "full",
                "screen_figures": trial.user_attrs.get("screen_figures"),
                "seconds": None
                if trial.duration is None
                else round(trial.duration.total_seconds(), 1),
                "within_tolerance": bool(
                    figures
                    and trial.state == optuna.trial.TrialState.COMPLETE
                    and figures["accuracy"] >= floor - 1e-9
                ),
                "pareto": False,
            }
        )
    complete = [c for c in candidates if c["state"] == "complete" and c["figures"]]
    values = {c["trial"]: _values(c["figures"], objective) for c in complete}
    pareto = []
    for c in complete:
        mine = values[c["trial"]]
        dominated = any(
            _dominates(values[o["trial"]], mine) for o in complete if o["trial"] != c["trial"]
        )
        if not dominated:
            c["pareto"] = True
            pareto.append(c)
    ranked = _ranked(candidates, objective)
    best = ranked[0] if ranked else None
    return SearchResult(
        best=best,
        candidates=candidates,
        pareto=pareto,
        reference=reference,
        objective=objective,
        tolerance=float(tolerance),
        study_name=study.study_name,
        storage=storage,
        trials=len(study.get_trials(deepcopy=False)),
    )


def _ranked(candidates, objective: str) -> list:
    """The candidates within the tolerance, best on the objective first."""
    complete = [c for c in candidates if c["state"] == "complete" and c["figures"]]
    ptq = next((c["figures"] for c in complete if not c["recipe"]["stages"]), None)
    kept = [c for c in complete if c["within_tolerance"]]
    return sorted(
        kept,
        key=lambda c: (
            _score(c["figures"], objective, ptq),
            -c["figures"]["accuracy"],
            recipe_cost(c["recipe"]),
        ),
    )


def confirm_best(result: SearchResult, confirm, margin: float = CONFIRM_MARGIN) -> SearchResult:
    """Choose the best candidate that also keeps the tolerance on unseen (confirmation) data.

    The search picks among many candidates on the same validation data, and each fine-tune keeps
    its best epoch on it too, so the winner's accuracy there is optimistic. This walks the
    candidates within the tolerance in objective order and takes the first that keeps the
    tolerance on the confirmation data with room to spare: its accuracy loss against the float32
    model there, plus ``margin`` standard errors of that loss, must be at most ``tolerance``.
    The standard error is the paired one, from the samples where the two models disagree: a
    candidate whose predictions differ from the float model's on many samples needs a clearer
    win, so one that looks within the tolerance by luck on a few hundred samples is turned down.
    When none holds, the result falls back to post-training int8 (the recipe with no stage).

    ``confirm(candidate)`` measures a candidate (``{"recipe": ..., "figures": ...}``) on the
    confirmation data and returns each sample's correctness (a sequence of 0/1), or only the
    accuracy (a float: no standard error is known, the margin is 0). It is called first with the
    float32 reference (``{"recipe": REFERENCE_RECIPE, "figures": result.reference}``). Each
    checked candidate gets ``confirm_accuracy``, ``confirm_loss`` (the loss plus the margin) and
    ``confirmed``; ``result.extra["confirmation"]`` holds the summary (``reference_accuracy``,
    ``samples``, ``margin``, ``rejected_trials``, ``fallback``).

    Returns:
        ``result``, with ``best`` replaced.

    Example:
        >>> confirm_best(result, lambda c: [1, 1, 0, 1]).best["confirmed"]  # doctest: +SKIP
        True
    """
    summary = {
        "reference_accuracy": None,
        "samples": None,
        "margin": margin,
        "rejected_trials": [],
        "fallback": False,
    }
    result.extra["confirmation"] = summary
    ranked = _ranked(result.candidates, result.objective)
    if not ranked:
        return result
    reference = _correctness(
        confirm({"recipe": dict(REFERENCE_RECIPE), "figures": result.reference})
    )
    summary["reference_accuracy"] = float(np.mean(reference))
    summary["samples"] = int(reference.size) if reference.ndim else None

    def check(candidate) -> bool:
        if "confirm_accuracy" in candidate or "confirm_error" in candidate:
            return bool(candidate.get("confirmed"))
        try:
            correct = _correctness(confirm(candidate))
        except TfedgeError as exc:  # this candidate cannot be confirmed; the next may be
            candidate["confirm_error"] = _first_line(exc)
            candidate["confirmed"] = False
            return False
        if correct.shape != reference.shape:
            raise ValueError(
                f"confirm() gave {correct.shape} answers for trial {candidate.get('trial')} "
                f"and {reference.shape} for the reference; expected one per held-back sample "
                "for each (or an accuracy for each)"
            )
        loss = float(np.mean(reference) - np.mean(correct))
        if reference.ndim and reference.size > 1:
            differences = reference.astype(float) - correct.astype(float)
            loss += margin * float(np.std(differences, ddof=1)) / np.sqrt(reference.size)
        candidate["confirm_accuracy"] = float(np.mean(correct))
        candidate["confirm_loss"] = round(float(loss), 6)
        candidate["confirmed"] = bool(loss <= result.tolerance + 1e-9)
        return candidate["confirmed"]

    for candidate in ranked:
        if check(candidate):
            result.best = candidate
            return result
        summary["rejected_trials"].append(candidate["trial"])
    summary["fallback"] = True
    ptq = next(
        (
            c
            for c in result.candidates
            if c["state"] == "complete" and c["figures"] and not c["recipe"]["stages"]
        ),
        None,
    )
    if ptq is not None:
        check(ptq)
    result.best = ptq
    return result


def _correctness(value) -> np.ndarray:
    """A confirm answer as an array: per-sample 0/1 (1-D), or an accuracy (0-D)."""
    return np.asarray(value, dtype=float)


def _dominates(a, b) -> bool:
    """``a`` is at least as good as ``b`` everywhere and better somewhere (accuracy up, rest down)."""
    at_least = a[0] >= b[0] and all(x <= y for x, y in zip(a[1:], b[1:]))
    better = a[0] > b[0] or any(x < y for x, y in zip(a[1:], b[1:]))
    return at_least and better
