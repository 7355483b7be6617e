"""The search runner: the Optuna study that searches the compression stages within a tolerance.

:func:`run_search` runs the Optuna multi-objective study whose trials are the recipes of
:data:`tfedge.models.search.space.SPACE`, each measured by an injected ``evaluator(recipe) ->
figures``, and returns a :class:`~tfedge.models.search.confirmation.SearchResult`.

Example:
    >>> result = run_search(model, evaluator=my_evaluator, tolerance=0.01)  # doctest: +SKIP
"""

import contextlib
import hashlib
import inspect
import os
import socket
import statistics
import time

import optuna

from tfedge.core.errors import OptimizationError
from tfedge.models.search.branches import (
    _BranchBroken,
    _closed_branch,
    _earlier_result,
    _prune_if_branch_closed,
    _record_failed_prefix,
    _reuse,
    _stage_guard,
)
from tfedge.models.search.confirmation import SearchResult, _error_text, collect, confirm_best
from tfedge.models.search.objectives import _describe, _jsonable, _score, _values, check_settings
from tfedge.models.search.screening import SCREEN_REDUCTION, _screened
from tfedge.models.search.seeding import _seed_params, seed_recipes
from tfedge.models.search.space import (
    REFERENCE_RECIPE,
    _choices_from_trial,
    recipe_from_choices,
    recipe_key,
    recipe_label,
)
from tfedge.models.search.storage import _mask, _open_study, _quiet_optuna, open_storage

__all__ = ["run_search", "DEFAULT_STUDY", "INT16_LAYERS"]

# Worst layers a near-miss candidate may run in int16 as its final step (run_search).
INT16_LAYERS = 1
DEFAULT_STUDY = "tfedge-auto"


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


def _accepts(function, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_search(
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
        >>> result = run_search(model, train, val, evaluator=evaluate_recipe,
        ...                     tolerance=0.01, objective="size", max_trials=12)  # doctest: +SKIP
        >>> result.best["label"], result.best["figures"]["size_gzip_bytes"]  # doctest: +SKIP
        ('prune(0.8) + cluster(16) + qat', 11027)
    """
    check_settings(tolerance, objective, budget_minutes, max_trials)
    if evaluator is None:
        raise OptimizationError(
            "tfedge.models.run_search needs evaluator=, a function recipe -> figures (int8 "
            "accuracy, gzip size, p50); pass one, or call tfedge.auto_optimize(...), which "
            "converts each candidate to int8 and benches it with LiteRT for you",
            "tfedge.auto_optimize(model, train, val, out_dir=..., tolerance=0.01)",
        )

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
            return _reuse(trial, earlier)
        state["duplicates_in_a_row"] = 0
        _prune_if_branch_closed(study, trial, recipe)
        if screen is not None and recipe["stages"]:
            _screened(screen, evaluator, recipe, fidelity, trial, floor, tolerance, objective)
        on_stage = _stage_guard(float(reference["accuracy"]), tolerance)
        began = time.time()
        state["ran"] += 1
        try:
            if pass_on_stage:
                figures = evaluator(recipe, on_stage=on_stage)
            else:
                figures = evaluator(recipe)
        except _BranchBroken as broken_at:
            raise _closed_branch(trial, recipe, broken_at) from None
        except (KeyboardInterrupt, optuna.TrialPruned):
            raise
        except Exception as exc:
            trial.set_user_attr("error", _error_text(exc))
            if getattr(exc, "hint", None):
                trial.set_user_attr("hint", exc.hint)
            _record_failed_prefix(trial, exc)
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


def _measure_reference(evaluator, what) -> dict:
    try:
        figures = dict(evaluator(dict(REFERENCE_RECIPE)))
    except OptimizationError:
        raise
    except Exception as exc:
        raise OptimizationError(
            f"cannot measure the {what} (the float32 model): {_error_text(exc)}",
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


def _remaining_trials(study, max_trials):
    if max_trials is None:
        return None

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


def _progress_line(study, objective, floor, deadline) -> str:

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
