"""Multi-fidelity: a brief screen of each candidate, and only the promoted get the full fine-tune.

Example:
    >>> SCREEN
    {'epochs': 1, 'data_fraction': 0.25}
"""

import os
import warnings

import optuna

from tfedge.models.search.confirmation import _error_text
from tfedge.models.search.objectives import _describe, _jsonable, _score

__all__ = ["SCREEN", "SCREEN_REDUCTION", "SCREEN_PENALTY", "MIN_SCREEN_SAMPLES", "screen_for"]

# Multi-fidelity: the screen every candidate with stages gets first, the share of screens the
# successive-halving pruner promotes to the full fine-tune (1 / SCREEN_REDUCTION), and how much a
# screen's score worsens per tolerance of accuracy it falls below the floor.
SCREEN = {"epochs": 1, "data_fraction": 0.25}
SCREEN_REDUCTION = 2
SCREEN_PENALTY = 4.0
# The fewest training samples a screen fine-tunes on: a quarter of a small set is a handful of
# steps, too few for a pruning schedule to recover in, and on such a set the screen's cost is
# mostly loading, tracing and conversion, not training.
MIN_SCREEN_SAMPLES = 1024


def screen_for(train, screen: dict = SCREEN) -> dict:
    """The screen for ``train``: its share raised so that it holds :data:`MIN_SCREEN_SAMPLES`.

    A set whose size is unknown (a ``tf.data`` pipeline of unknown cardinality, or None) keeps
    the share.

    Example:
        >>> screen_for(range(100_000))
        {'epochs': 1, 'data_fraction': 0.25}
        >>> screen_for(range(1_000))
        {'epochs': 1, 'data_fraction': 1.0}
    """
    if isinstance(train, (str, bytes, os.PathLike)):
        raise TypeError(f"screen_for takes the loaded training data, not the path {train!r}")
    try:
        count = len(train)
    except TypeError:
        return dict(screen)
    share = float(screen["data_fraction"])
    if count > 0 and count * share < MIN_SCREEN_SAMPLES:
        share = min(1.0, MIN_SCREEN_SAMPLES / count)
    return {**screen, "data_fraction": round(share, 4)}


def _screened(screen, evaluator, recipe, fidelity, trial, floor, tolerance, objective) -> None:
    """The low-fidelity screen of one candidate; raises ``TrialPruned`` unless promoted.

    The companion study's trial is reported the screen's score at step 1 and asked
    ``should_prune()``: Optuna's successive halving keeps the best ``1 / SCREEN_REDUCTION`` of
    the screens so far.
    """

    trial.set_user_attr("fidelity", {"screen": dict(fidelity)})
    with warnings.catch_warnings():
        # The companion study shares the storage's heartbeats, which only Study.optimize beats;
        # its one-step trials need none, and Optuna's warning would print once per screen.
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        peer = screen.ask()
    try:
        figures = dict(evaluator(recipe, fidelity=dict(fidelity)))
    except Exception as exc:
        screen.tell(peer, state=optuna.trial.TrialState.FAIL)
        # A stage that fails briefly fails at full fidelity too: the trial is recorded as the
        # full evaluation records a failure, its error and the stages that failed (the screen's
        # carry its epochs; the recipe's own close the branch).
        trial.set_user_attr("error", _error_text(exc))
        if getattr(exc, "hint", None):
            trial.set_user_attr("hint", exc.hint)
        failed = getattr(exc, "stages", None)
        if isinstance(failed, list) and failed:
            trial.set_user_attr("failed_prefix", recipe["stages"][: len(failed)])
        raise
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
