"""Branch closing: no recipe runs twice, and none that starts like a broken or failed one.

A stage whose Keras accuracy falls more than :data:`BRANCH_SLACK` tolerances below the
reference stops its trial, which records the stages up to it (``broken_prefix``); a stage that
fails records them too (``failed_prefix``). Every later recipe that starts with such a prefix is
pruned without being run, and a recipe already measured (or being measured by another worker)
takes that trial's result.
"""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
import contextlib
import time

__all__ = ["BRANCH_SLACK"]

# A branch is hopeless once one of its stages loses this many tolerances of Keras accuracy: the
# later stages (clustering, QAT) win back a little, never that much.
BRANCH_SLACK = 2.0
_POLL_S = 1.0


class _BranchBroken(Exception):
    def __init__(self, index, accuracy):
        super().__init__(f"stage {index + 1} Keras accuracy {accuracy:.4f}")
        self.index = index
        self.accuracy = accuracy


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


def _reuse(trial, earlier):
    """This trial takes the result of ``earlier``, a trial of the same recipe: its values, or pruned."""
    import optuna

    trial.set_user_attr("duplicate_of", earlier.number)
    if earlier.state == optuna.trial.TrialState.COMPLETE:
        trial.set_user_attr("figures", earlier.user_attrs.get("figures"))
        return earlier.values
    if earlier.state == optuna.trial.TrialState.FAIL:
        trial.set_user_attr("pruned", f"same recipe as trial {earlier.number}, which failed")
    raise optuna.TrialPruned(f"same recipe as trial {earlier.number}")


def _prune_if_branch_closed(study, trial, recipe) -> None:
    """Prune this trial, unrun, when its recipe starts like a broken or failed one."""
    import optuna

    broken = _broken_prefix(study, recipe)
    if broken is not None:
        number, why = broken
        trial.set_user_attr("pruned", f"starts like trial {number}, {why}")
        raise optuna.TrialPruned(f"branch of trial {number}")


def _stage_guard(reference_accuracy: float, tolerance: float):
    """The evaluator's ``on_stage`` callback: raises :class:`_BranchBroken` below the stage floor."""
    floor = reference_accuracy - BRANCH_SLACK * tolerance

    def on_stage(index, keras_accuracy):
        if keras_accuracy is not None and keras_accuracy < floor:
            raise _BranchBroken(index, keras_accuracy)

    return on_stage


def _closed_branch(trial, recipe, broken_at: _BranchBroken):
    """Record the broken stage list on the trial; returns the ``TrialPruned`` to raise."""
    import optuna

    trial.set_user_attr("broken_prefix", recipe["stages"][: broken_at.index + 1])
    trial.set_user_attr(
        "pruned",
        f"stage {broken_at.index + 1} fell to {broken_at.accuracy * 100:.2f}% (Keras), "
        f"more than {BRANCH_SLACK:g}x the tolerance below the reference",
    )
    return optuna.TrialPruned(str(broken_at))


def _record_failed_prefix(trial, exc) -> None:
    """An error that names the stages up to the one that failed closes the recipes starting so."""
    failed = getattr(exc, "stages", None)
    if isinstance(failed, list) and failed:
        trial.set_user_attr("failed_prefix", failed)
