"""The search's result: the candidates read back from a study, ranked, and the choice confirmed.

:func:`collect` reads every trial into a :class:`SearchResult` (Pareto set, best within the
tolerance); :func:`confirm_best` replaces the best by the first candidate, in objective order,
that also keeps the tolerance on data the search never saw.

Example:
    >>> result = confirm_best(collect(study, "size", 0.01), confirm)  # doctest: +SKIP
"""

from dataclasses import dataclass, field

import numpy as np
import optuna

from tfedge.core.errors import TfedgeError, first_line
from tfedge.models.search.objectives import _score, _values
from tfedge.models.search.space import REFERENCE_RECIPE, recipe_cost

__all__ = ["SearchResult", "collect", "confirm_best", "CONFIRM_MARGIN"]

# The chosen model's loss on the held-back samples, plus this many (paired) standard errors of
# it, must be within the tolerance: one standard error turns down the candidates that keep the
# tolerance there only by the luck of a few samples.
CONFIRM_MARGIN = 1.0


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


def _error_text(exc) -> str:
    """A candidate's error: the exception's type and the first line of its message."""
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


def collect(study, objective: str, tolerance: float, storage: str = "") -> SearchResult:
    """Read a study back into a :class:`SearchResult` (every candidate, Pareto set, best).

    Example:
        >>> collect(study, "size", 0.01).best["label"]  # doctest: +SKIP
        'prune(0.8) + cluster(16) + qat'
    """

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
            candidate["confirm_error"] = _error_text(exc)
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
