"""`tfedge optimize --auto`: the Optuna search, measured for real (fine-tunes, int8, LiteRT).

The search rules (seeds, failed candidates, closed branches, duplicates, budget, Pareto set) are
checked on :func:`tfedge.models.search.run_search` with a deterministic evaluator, the documented
injection point; everything else runs the real evaluator on a tiny digits CNN with one-epoch
fine-tunes, real SQLite and PostgreSQL storages, and real worker processes.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfedge.cli import main
from tfedge.core.errors import OptimizationError
from tfedge.models import search

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- the rules


def test_recipes_follow_optimize_order_and_preservation():
    recipe = search.recipe_from_choices(
        {"qat": True, "cluster": 16, "prune": 0.8, "prune_filters": 0.5, "distill": 0.5}, epochs=1
    )
    names = [stage["name"] for stage in recipe["stages"]]
    assert names == ["distill", "prune_filters", "prune", "cluster", "qat"]
    assert recipe["stages"][3]["preserve_sparsity"] is True
    assert recipe["stages"][4]["preserve"] == "sparsity+clusters"
    assert all(stage["epochs"] == 1 for stage in recipe["stages"])
    assert search.recipe_from_choices({"prune": "2:4"})["stages"] == [
        {"name": "prune", "sparsity": 0.5, "structure": "2:4"}
    ]
    assert search.recipe_label(search.recipe_from_choices({})) == "int8 (post-training)"


@pytest.mark.parametrize("objective", search.OBJECTIVES)
def test_seeds_start_cheap_and_hold_the_hand_recipes(objective):
    seeds = search.seed_recipes(objective)
    costs = [search.recipe_cost(search.recipe_from_choices(s)) for s in seeds]
    assert seeds[0] == {} and costs == sorted(costs)
    if objective == "size":  # the README's best hand row: prune 80 % + cluster 16 + PCQAT
        assert {"prune": 0.8, "cluster": 16, "qat": True} in seeds
    if objective == "latency":  # and its 50 % filter-pruning row
        assert {"prune_filters": 0.5} in seeds


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"tolerance": 0}, r"outside \(0, 1\)"),
        ({"tolerance": 1.0}, r"outside \(0, 1\)"),
        ({"tolerance": -0.1}, r"outside \(0, 1\)"),
        ({"objective": "speed"}, "unknown"),
        ({"budget_minutes": 0}, "positive"),
    ],
)
def test_bad_settings(kwargs, needle):
    settings = {"tolerance": 0.01, "objective": "size", "evaluator": lambda r: {}, **kwargs}
    with pytest.raises(OptimizationError, match=needle):
        search.run_search(None, **settings)


def test_run_search_needs_an_evaluator():
    with pytest.raises(OptimizationError, match="tfedge.auto_optimize") as info:
        search.run_search(None, tolerance=0.01)
    assert "evaluator" in info.value.message


def test_both_documented_auto_optimize_names_still_work_and_differ(tmp_path):
    import importlib
    import inspect

    import tfedge
    import tfedge.commands.auto as auto
    import tfedge.commands.evaluator as evaluator
    import tfedge.models

    # tfedge.models.auto_optimize is the study runner (bring your own evaluator) ...
    assert tfedge.models.auto_optimize is search.run_search is search.auto_optimize
    assert "evaluator" in inspect.signature(tfedge.models.auto_optimize).parameters
    with pytest.raises(OptimizationError, match="needs evaluator="):
        tfedge.models.auto_optimize(None, tolerance=0.01)
    # ... tfedge.auto_optimize the command, which measures for real and writes out_dir.
    assert tfedge.auto_optimize is auto.auto_optimize
    # the evaluator has a module of its own; the old paths still reach it
    assert auto.RecipeEvaluator is evaluator.RecipeEvaluator
    assert importlib.import_module("tfedge.search").RecipeEvaluator is evaluator.RecipeEvaluator
    assert "out_dir" in inspect.signature(tfedge.auto_optimize).parameters
    with pytest.raises(OptimizationError, match=r"outside \(0, 1\)"):
        tfedge.auto_optimize("model.keras", None, None, out_dir=tmp_path, tolerance=2.0)
    assert not any(tmp_path.iterdir())  # refused before anything was written


class RuleEvaluator:
    """Figures computed from the recipe: each stage shrinks the model and costs some accuracy.

    Pruning to 0.9 loses 5 points at once (a branch that breaks the tolerance), 2:4 fails.
    """

    def __init__(self, delay=0.0):
        self.calls = []
        self.delay = delay

    def __call__(self, recipe, on_stage=None):
        self.calls.append(search.recipe_key(recipe))
        time.sleep(self.delay)
        accuracy, size = 0.95, 10000.0
        if recipe.get("convert", {}).get("mode") == "float32":
            return {"accuracy": accuracy, "size_gzip_bytes": 40000, "latency_ms": {"p50": 1.0}}
        for index, stage in enumerate(recipe["stages"]):
            if stage.get("structure") == "2:4":
                error = RuntimeError("2:4 is not supported by this model")
                error.stages = recipe["stages"][: index + 1]  # as RecipeEvaluator marks it
                raise error
            loss = {"prune": 0.004, "cluster": 0.003, "qat": -0.002}.get(stage["name"], 0.004)
            if stage.get("sparsity") == 0.9:
                loss = 0.05
            accuracy -= loss
            size *= {"prune": 1 - stage.get("sparsity", 0.5) * 0.8, "cluster": 0.7}.get(
                stage["name"], 0.9
            )
            if on_stage:
                on_stage(index, accuracy)
        p50 = 1.0 - 0.1 * len(recipe["stages"])
        return {"accuracy": accuracy, "size_gzip_bytes": int(size), "latency_ms": {"p50": p50}}


def test_search_rules(tmp_path):
    evaluator = RuleEvaluator()
    lines = []
    seeds = [{}, {"prune": 0.9}, {"prune": 0.9, "qat": True}, {"prune": "2:4"}, {"qat": True}]
    seeds += [{"prune": 0.8, "cluster": 16, "qat": True}, {"qat": True}]
    seeds += [{"prune": "2:4", "qat": True}]
    result = search.run_search(
        None,
        evaluator=evaluator,
        tolerance=0.01,
        objective="size",
        max_trials=12,
        seeds=seeds,
        storage=f"sqlite:///{tmp_path / 's.db'}",
        fingerprint={"model": "rules"},
        on_progress=lines.append,
    )
    by_label = {c["label"]: c for c in result.candidates}
    # the seeds ran first, in the order given
    assert [c["label"] for c in result.candidates[:3]] == [
        "int8 (post-training)",
        "prune(0.9)",
        "prune(0.9) + qat",
    ]
    # prune 0.9 broke the tolerance: its trial and its branch are pruned, the branch never ran
    assert by_label["prune(0.9)"]["state"] == "pruned"
    assert by_label["prune(0.9) + qat"]["state"] == "pruned"
    assert "branch broke" in by_label["prune(0.9) + qat"]["pruned"]
    branch = search.recipe_key(search.recipe_from_choices({"prune": 0.9, "qat": True}))
    assert branch not in evaluator.calls
    # a failing candidate is recorded, and the search went on
    failed = next(c for c in result.candidates if c["label"] == "prune(2:4)")
    assert failed["state"] == "fail" and "not supported" in failed["error"]
    assert len(result.candidates) > 5
    # ... and neither it nor a recipe that starts with the stage that failed runs again
    assert "failed at the same point" in by_label["prune(2:4) + qat"]["pruned"]
    assert sum(key == search.recipe_key(failed["recipe"]) for key in evaluator.calls) == 1
    # no recipe was measured twice (the repeated seed and any re-sampled recipe)
    assert len(evaluator.calls) == len(set(evaluator.calls))
    # best = smallest within the tolerance; Pareto = not dominated
    kept = [c for c in result.candidates if c["within_tolerance"]]
    assert result.best["figures"]["size_gzip_bytes"] == min(
        c["figures"]["size_gzip_bytes"] for c in kept
    )
    assert result.best["within_tolerance"] and result.best["pareto"]
    for c in result.pareto:
        for o in result.candidates:
            if o["figures"] and o["state"] == "complete":
                assert not (
                    o["figures"]["accuracy"] >= c["figures"]["accuracy"]
                    and o["figures"]["size_gzip_bytes"] < c["figures"]["size_gzip_bytes"]
                )
    assert lines and lines[-1].startswith(f"candidates {len(result.candidates)} ")
    assert "best size" in lines[-1]


class NearMissEvaluator(RuleEvaluator):
    """QAT ends 0.3 points below the tolerance; int16 for the worst layer wins 0.5 back."""

    def __call__(self, recipe, on_stage=None):
        figures = super().__call__(recipe, on_stage)
        convert = recipe.get("convert") or {}
        if [s["name"] for s in recipe["stages"]] == ["qat"]:
            figures["accuracy"] = 0.937
            figures["edgetpu_compatible"] = True
            if convert.get("int16_worst") == 1:
                figures.update(accuracy=0.942, int16_layers=["fc1"], edgetpu_compatible=False)
        return figures


def test_a_near_miss_gets_int16_for_its_worst_layer_as_a_final_step(tmp_path):
    from tfedge.models.recipe import validate_recipe

    evaluator = NearMissEvaluator()
    result = search.run_search(
        None,
        evaluator=evaluator,
        tolerance=0.01,
        objective="size",
        max_trials=2,
        seeds=[{"qat": True}, {"prune": 0.9}],
        fingerprint={"model": "near-miss"},
    )
    qat, pruned = result.candidates
    assert qat["label"] == "qat + int16(fc1)"
    assert qat["recipe"]["convert"] == {"mode": "int8", "int16": ["fc1"]}
    assert qat["figures"]["accuracy"] == 0.942 and qat["figures"]["int16_from_accuracy"] == 0.937
    assert qat["within_tolerance"] and not qat["figures"]["edgetpu_compatible"]
    validate_recipe(qat["recipe"])  # what recipe.yaml will hold
    # 5 points below the floor is no near miss: no second measurement
    assert "int16" not in (pruned["recipe"].get("convert") or {})
    assert len(evaluator.calls) == 1 + 2 + 1  # the reference, two candidates, one int16 step


class ScreenedEvaluator(RuleEvaluator):
    """A brief fine-tune costs each stage a point more than the full one."""

    def __init__(self):
        super().__init__()
        self.screens, self.full = [], []

    def __call__(self, recipe, on_stage=None, fidelity=None):
        figures = super().__call__(recipe, None if fidelity else on_stage)
        if fidelity is not None:
            self.screens.append(search.recipe_label(recipe))
            figures["accuracy"] -= 0.01 * len(recipe["stages"])
        elif recipe.get("stages"):
            self.full.append(search.recipe_label(recipe))
        return figures


def _screened_search(tmp_path, seeds, model_name):
    """Runs a multi-fidelity size search over ``seeds``; returns (evaluator, result)."""
    evaluator = ScreenedEvaluator()
    result = search.run_search(
        None,
        evaluator=evaluator,
        tolerance=0.01,
        objective="size",
        max_trials=len(seeds),
        seeds=seeds,
        storage=f"sqlite:///{tmp_path / 's.db'}",
        fingerprint={"model": model_name},
        fidelity=search.SCREEN,
    )
    return evaluator, result


def test_multi_fidelity_screens_candidates_and_fully_tunes_only_the_promoted(tmp_path):
    seeds = [{}, {"qat": True}, {"prune": 0.9}, {"prune": 0.5}, {"prune": 0.8, "cluster": 16}]
    seeds += [{"prune": 0.9, "qat": True}, {"prune": 0.7, "qat": True}]
    evaluator, result = _screened_search(tmp_path, seeds, "screened")
    by_label = {c["label"]: c for c in result.candidates}
    assert by_label["int8 (post-training)"]["fidelity"] == "full"  # nothing to fine-tune
    screened = [c for c in result.candidates if c["label"] != "int8 (post-training)"]
    assert sorted(evaluator.screens) == sorted(c["label"] for c in screened)
    pruned = [c for c in screened if c["state"] == "pruned"]
    promoted = [c for c in screened if c["state"] == "complete"]
    assert pruned and promoted
    assert sorted(evaluator.full) == sorted(c["label"] for c in promoted)
    for candidate in pruned:
        assert "SuccessiveHalvingPruner" in candidate["pruned"]
        assert candidate["fidelity"] == {"screen": search.SCREEN}
        assert candidate["screen_figures"]["accuracy"] > 0
    for candidate in promoted:
        assert candidate["fidelity"] == {"screen": search.SCREEN, "then": "full"}
    # a 5-point loss is screened out; the best is within the tolerance
    assert by_label["prune(0.9)"]["state"] == "pruned"
    assert result.best is not None and result.best["within_tolerance"]


def test_a_stage_that_fails_in_its_screen_is_recorded_and_closes_its_branch(tmp_path):
    seeds = [{}, {"prune": "2:4"}, {"prune": "2:4", "qat": True}, {"qat": True}]
    evaluator, result = _screened_search(tmp_path, seeds, "screen-fails")
    by_label = {c["label"]: c for c in result.candidates}
    failed = by_label["prune(2:4)"]
    assert failed["state"] == "fail" and "2:4 is not supported" in failed["error"]
    # The recipe that starts the same way is not screened: its branch is closed.
    assert "failed at the same point" in by_label["prune(2:4) + qat"]["pruned"]
    assert evaluator.screens.count("prune(2:4) + qat") == 0


def test_budget_stops_and_returns_the_best_so_far(tmp_path):
    evaluator = RuleEvaluator(delay=0.4)
    lines = []
    started = time.time()
    result = search.run_search(
        None,
        evaluator=evaluator,
        tolerance=0.01,
        objective="balanced",
        budget_minutes=0.03,
        fingerprint={"model": "budget"},
        on_progress=lines.append,
    )
    assert time.time() - started < 0.03 * 60 + 2
    assert result.stopped == "budget"
    assert 1 <= len(result.candidates) < 10
    assert result.best is not None
    assert "min left" in lines[-1]


def _confirmed_search(tmp_path, confirm, db="s.db"):
    return search.run_search(
        None,
        evaluator=RuleEvaluator(),
        tolerance=0.01,
        objective="size",
        max_trials=6,
        seeds=[{}, {"qat": True}, {"prune": 0.8}, {"cluster": 16}, {"prune": 0.8, "qat": True}],
        storage=f"sqlite:///{tmp_path / db}",
        fingerprint={"model": "confirm"},
        confirm=confirm,
    )


def test_the_choice_must_hold_the_tolerance_on_held_back_data(tmp_path):
    """The smallest candidates lose accuracy on unseen data: the first that holds is chosen."""
    unconfirmed = _confirmed_search(tmp_path, None, db="plain.db")
    ranked = sorted(
        (c for c in unconfirmed.candidates if c["within_tolerance"]),
        key=lambda c: c["figures"]["size_gzip_bytes"],
    )
    assert len(ranked) >= 3 and unconfirmed.best["trial"] == ranked[0]["trial"]
    overfit = {search.recipe_key(c["recipe"]) for c in ranked[:2]}
    asked = []

    def confirm(candidate):
        asked.append(candidate["recipe"])
        if candidate["recipe"] == search.REFERENCE_RECIPE:
            return 0.96
        return 0.90 if search.recipe_key(candidate["recipe"]) in overfit else 0.955

    result = _confirmed_search(tmp_path, confirm)
    assert asked[0] == search.REFERENCE_RECIPE  # the float model's held-back accuracy first
    by_trial = {c["trial"]: c for c in result.candidates}
    rejected = [by_trial[c["trial"]] for c in ranked[:2]]
    assert all(c["confirm_accuracy"] == 0.90 and not c["confirmed"] for c in rejected)
    assert result.best["trial"] == ranked[2]["trial"]
    assert result.best["confirmed"] and result.best["confirm_accuracy"] == 0.955
    summary = result.to_dict()["confirmation"]
    assert summary["rejected_trials"] == [c["trial"] for c in ranked[:2]]
    assert summary["reference_accuracy"] == 0.96 and summary["fallback"] is False
    assert result.to_dict()["best_trial"] == ranked[2]["trial"]
    # only the reference and the three walked candidates were measured on the held-back data
    assert len(asked) == 4


def _answers(disagree_wrong: int, disagree_right: int, samples: int = 200):
    """Per-sample correctness of a candidate against a reference that gets the first 190 right:
    wrong on ``disagree_wrong`` of those, right on ``disagree_right`` of the other 10."""
    import numpy as np

    correct = np.zeros(samples, dtype=int)
    correct[:190] = 1
    correct[:disagree_wrong] = 0
    correct[190 : 190 + disagree_right] = 1
    return correct


@pytest.mark.parametrize(
    ("wrong", "right", "kept"),
    [
        (0, 0, True),  # the float model's own answers
        (1, 1, True),  # loss 0, two disagreements: 0.71 points of margin
        (3, 1, False),  # loss 1 point: at the tolerance, no room for the margin
        (9, 8, False),  # loss 0.5 point, but 17 disagreements: 2.1 points of margin
        (2, 3, True),  # a gain of 0.5 point, five disagreements
    ],
)
def test_held_back_loss_needs_a_margin_of_one_paired_standard_error(tmp_path, wrong, right, kept):
    """Within the tolerance by the luck of a few samples is not enough: the margin grows with the
    number of samples where the candidate and the float model disagree."""
    reference = _answers(0, 0)

    def confirm(candidate):
        if candidate["recipe"] == search.REFERENCE_RECIPE:
            return reference
        return _answers(wrong, right) if candidate["recipe"]["stages"] else reference

    result = _confirmed_search(tmp_path, confirm)
    summary = result.extra["confirmation"]
    assert summary["samples"] == 200 and summary["margin"] == search.CONFIRM_MARGIN == 1.0
    checked = [c for c in result.candidates if "confirm_accuracy" in c and c["recipe"]["stages"]]
    assert checked and (len(checked) == 1 or not kept)  # the walk stops at the first kept
    loss = (wrong - right) / 200
    for candidate in checked:
        assert candidate["confirm_accuracy"] == pytest.approx(reference.mean() - loss)
        assert candidate["confirm_loss"] > loss or (wrong, right) == (0, 0)
        assert candidate["confirmed"] is kept
    # rejected: the walk goes on to post-training int8 (the reference's answers here)
    assert bool(result.best["recipe"]["stages"]) is kept and result.best["confirmed"]


def test_when_no_candidate_holds_on_held_back_data_ptq_is_the_fallback(tmp_path):
    def confirm(candidate):
        return 0.96 if candidate["recipe"] == search.REFERENCE_RECIPE else 0.5

    result = _confirmed_search(tmp_path, confirm)
    assert result.best["recipe"] == {"stages": []}
    assert result.extra["confirmation"]["fallback"] is True
    kept = [c for c in result.candidates if c["within_tolerance"]]
    assert all(c["confirmed"] is False for c in kept)


def test_split_confirmation_is_seeded_stratified_and_disjoint(digits):
    from tfedge.commands.evaluator import split_confirmation

    val = digits[1].take(200, seed=1)
    search_part, confirm_part = split_confirmation(val)
    again = split_confirmation(val)
    assert (again[1].x == confirm_part.x).all() and (again[1].y == confirm_part.y).all()
    assert len(search_part) + len(confirm_part) == 200
    assert abs(len(search_part) - len(confirm_part)) <= 10
    searched_rows = {row.tobytes() for row in search_part.x}
    assert not any(row.tobytes() in searched_rows for row in confirm_part.x)
    for label in range(10):
        total = int((val.y == label).sum())
        assert abs(int((confirm_part.y == label).sum()) - total / 2) <= 0.5


# ----------------------------------------------------------------------------- for real


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, digits, train_npz, test_npz):
    """A 4-filter digits CNN trained 4 epochs (about 95 %), and another model for mismatches."""
    from tfedge.models.zoo import build, train

    folder = tmp_path_factory.mktemp("tiny")
    model = train(build("digits_cnn", width=4), digits[0], epochs=4)
    model.save(folder / "tiny.keras")
    other = build("digits_cnn", width=4)
    other.save(folder / "other.keras")
    return {
        "model": folder / "tiny.keras",
        "other": folder / "other.keras",
        "train": train_npz,
        "val": test_npz,
    }


def test_the_evaluator_keeps_back_half_of_val_unless_it_is_small(tiny, digits, tmp_path, capsys):
    from tfedge.commands.evaluator import MIN_SPLIT_SAMPLES, RecipeEvaluator

    full = RecipeEvaluator(tiny["model"], tiny["train"], tiny["val"], out_dir=tmp_path / "a")
    assert len(full.val) + len(full.confirm) == len(digits[1])
    assert abs(len(full.val) - len(full.confirm)) <= 10
    assert (tmp_path / "a" / "confirm.npz").is_file()
    small = digits[1].take(MIN_SPLIT_SAMPLES - 1, seed=0)
    few = RecipeEvaluator(tiny["model"], tiny["train"], small, out_dir=tmp_path / "b")
    assert few.confirm is None and len(few.val) == MIN_SPLIT_SAMPLES - 1
    out = capsys.readouterr()
    assert f"--val has {MIN_SPLIT_SAMPLES - 1} samples" in out.out + out.err


def _crash_when_training(evaluator, signum, times):
    """Send ``signum`` to the evaluator's fine-tune process once it is inside a stage, ``times``
    times (each to a new process). Returns the watcher and the extra environment of every
    process seen inside a stage, ``(env, crashed)`` each."""
    seen = []

    def watch():
        deadline = time.time() + 180
        pids = set()
        while time.time() < deadline:
            worker = evaluator._worker
            process = worker.process if worker is not None else None
            if process is not None and process.pid not in pids and worker.running:
                pids.add(process.pid)
                env = dict(worker.env)
                if sum(crashed for _, crashed in seen) >= times:
                    seen.append((env, False))
                    return
                time.sleep(1.0)  # well inside the stage's fine-tune
                killed = worker.process is process and bool(worker.running)
                if killed:
                    os.kill(process.pid, signum)
                seen.append((env, killed))
            time.sleep(0.05)

    return watch, seen


@pytest.fixture
def crashing(monkeypatch):
    """Run ``call`` while a thread crashes the fine-tune process ``times`` times."""
    import threading

    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)  # the retry turns it off

    def run(evaluator, call, signum, times):
        watch, seen = _crash_when_training(evaluator, signum, times)
        killer = threading.Thread(target=watch, daemon=True)
        killer.start()
        try:
            return call(), seen
        finally:
            killer.join(timeout=5)

    return run


def _stage_outputs(folder: Path) -> list:
    return [p for p in (folder / "cache").glob("*.keras") if not p.name.startswith("base-")]


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGABRT])
def test_a_native_crash_in_a_fine_tune_is_retried_without_onednn(tiny, tmp_path, crashing, signum):
    """A fine-tune process that dies by a signal (as TensorFlow's native crashes end it) runs
    the stage again in a new process with oneDNN's kernels off, where those crashes do not
    happen."""
    from tfedge.commands.evaluator import RecipeEvaluator
    from tfedge.commands.stage_worker import WITHOUT_ONEDNN

    evaluator = RecipeEvaluator(tiny["model"], tiny["train"], tiny["val"], out_dir=tmp_path, runs=5)
    recipe = {"stages": [{"name": "prune", "sparsity": 0.5, "epochs": 8}]}
    try:
        figures, seen = crashing(evaluator, lambda: evaluator(recipe), signum, times=1)
        # crashed with oneDNN as the user has it, then run again with oneDNN off, and kept
        assert seen == [({}, True), (WITHOUT_ONEDNN, False)]
        assert figures["accuracy"] > 0.5 and figures["keras_accuracy"] > 0.5
        assert evaluator._worker.process is None  # the oneDNN-off process is not kept
    finally:
        evaluator.close()


def test_a_fine_tune_process_whose_memory_grew_is_replaced_between_stages(
    tiny, tmp_path, monkeypatch
):
    """A child over its memory allowance says so in its answer and ends; the next stage gets a
    fresh child, and no stage fails for it."""
    from tfedge.commands.evaluator import RecipeEvaluator

    monkeypatch.setenv("TFEDGE_WORKER_RECYCLE_BYTES", "0")  # every child ends after one stage
    evaluator = RecipeEvaluator(tiny["model"], tiny["train"], tiny["val"], out_dir=tmp_path, runs=3)
    children = []
    try:
        for recipe in (
            {"stages": [{"name": "prune", "sparsity": 0.5, "epochs": 1}]},
            {"stages": [{"name": "prune", "sparsity": 0.5, "epochs": 1}, {"name": "qat"}]},
            {"stages": [{"name": "cluster", "clusters": 8, "epochs": 1}]},
        ):
            figures = evaluator(recipe)
            assert figures["accuracy"] > 0.3
            children.append(evaluator._worker.process)
    finally:
        evaluator.close()
    assert children == [None, None, None]  # each child ended after its stage


def test_the_evaluator_runs_the_worst_layer_in_int16_and_marks_the_edgetpu(tiny, tmp_path):
    from tfedge.commands.evaluator import RecipeEvaluator
    from tfedge.core.inspector import inspect_model

    evaluator = RecipeEvaluator(tiny["model"], tiny["train"], tiny["val"], out_dir=tmp_path, runs=3)
    try:
        plain = evaluator({"stages": []})
        mixed = evaluator({"stages": [], "convert": {"mode": "int8", "int16_worst": 1}})
    finally:
        evaluator.close()
    assert plain["edgetpu_compatible"] is True and "int16_layers" not in plain
    (layer,) = mixed["int16_layers"]
    assert layer in {"conv1", "conv2", "fc1", "logits"}
    assert mixed["edgetpu_compatible"] is False
    info = inspect_model(mixed["model"], detail=True)
    assert "int16" in {t["dtype"] for t in info["tensors"]}
    assert info["fully_integer"]


def test_a_screen_fine_tunes_briefly_on_a_share_of_the_data(tiny, tmp_path):
    from tfedge.commands.evaluator import RecipeEvaluator

    evaluator = RecipeEvaluator(tiny["model"], tiny["train"], tiny["val"], out_dir=tmp_path, runs=3)
    recipe = {"stages": [{"name": "prune", "sparsity": 0.5, "epochs": 3}]}
    try:
        screen = evaluator(recipe, fidelity={"epochs": 1, "data_fraction": 0.25})
        full = evaluator(recipe)
    finally:
        evaluator.close()
    assert screen["fidelity"] == {"epochs": 1, "data_fraction": 0.25} and full["fidelity"] == "full"
    assert screen["model"] != full["model"]  # two stage outputs, cached apart
    assert len(list((tmp_path / "cache").glob("*.keras"))) >= 2
    assert 0.3 < screen["accuracy"] and 0.3 < full["accuracy"]


def test_a_fine_tune_that_crashes_twice_fails_that_candidate_only(tiny, tmp_path, crashing):
    """Crashing with oneDNN on and off fails the candidate with the signal named; the
    evaluator's next candidate runs in a new process."""
    from tfedge.commands.evaluator import RecipeEvaluator
    from tfedge.commands.stage_worker import WITHOUT_ONEDNN

    evaluator = RecipeEvaluator(tiny["model"], tiny["train"], tiny["val"], out_dir=tmp_path, runs=5)
    try:
        slow = {"stages": [{"name": "prune", "sparsity": 0.5, "epochs": 30}]}

        def call():
            with pytest.raises(OptimizationError, match="ended with signal SIGSEGV") as info:
                evaluator(slow)
            return info

        info, seen = crashing(evaluator, call, signal.SIGSEGV, times=2)
        assert seen == [({}, True), (WITHOUT_ONEDNN, True)]
        assert "prune(0.5)" in info.value.message and "oneDNN" in info.value.message
        assert info.value.hint
        assert evaluator._worker.process is None
        assert not _stage_outputs(tmp_path)  # nothing half-written kept

        figures = evaluator({"stages": [{"name": "prune", "sparsity": 0.5, "epochs": 1}]})
        assert figures["accuracy"] > 0.5 and Path(figures["model"]).is_file()
        assert len(_stage_outputs(tmp_path)) == 1
    finally:
        evaluator.close()
    assert evaluator._worker.process is None


def test_a_model_the_fine_tune_process_cannot_load_is_trained_here(digits, tmp_path, capsys):
    """A custom layer registered only in the user's program is unknown to the child process:
    the fine-tunes then run in the search's own process, with a warning."""
    from tfedge.commands.evaluator import RecipeEvaluator
    from tfedge.core.backend import keras

    @keras.utils.register_keras_serializable(package="tfedge_test_only_here")
    class Scale(keras.layers.Layer):
        def __init__(self, factor=1.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, inputs):
            return inputs * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    model = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            Scale(1.0),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits[0].x, digits[0].y, epochs=3, verbose=0)
    evaluator = RecipeEvaluator(model, digits[0], digits[1], out_dir=tmp_path, runs=5)
    try:
        figures = evaluator({"stages": [{"name": "prune", "sparsity": 0.5, "epochs": 1}]})
    finally:
        evaluator.close()
    out = capsys.readouterr()
    assert "cannot run in a process of their own" in out.out
    assert "Scale" in out.out  # the child's own error says what it could not load
    assert evaluator.isolate is False and evaluator._worker is None
    assert figures["accuracy"] > 0.5


def test_a_stage_error_in_the_fine_tune_process_comes_back_with_its_hint(tiny, tmp_path):
    from tfedge.commands.evaluator import RecipeEvaluator

    evaluator = RecipeEvaluator(tiny["model"], tiny["train"], tiny["val"], out_dir=tmp_path)
    try:
        with pytest.raises(OptimizationError, match="clusters 1 must be") as info:
            evaluator({"stages": [{"name": "cluster", "clusters": 1, "epochs": 1}]})
        assert "16" in info.value.hint
        process = evaluator._worker.process
        assert process is not None and process.poll() is None  # it serves on after an error
    finally:
        evaluator.close()
    assert process.wait(timeout=30) == 0


def auto_argv(tiny, out, *extra, model=None):
    argv = [
        "optimize",
        model or tiny["model"],
        "--train",
        tiny["train"],
        "--val",
        tiny["val"],
        "--auto",
        "--tolerance",
        "0.02",
        "--objective",
        "size",
        "--epochs",
        "1",
        "--runs",
        "10",
        "-o",
        out,
        *extra,
    ]
    return [str(a) for a in argv]


def run_cli(argv, env=None, stdout=subprocess.PIPE, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "tfedge", *argv],
        cwd=ROOT,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


@pytest.fixture(scope="module")
def searched(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto")
    status = main(auto_argv(tiny, out, "--trials", "3"))
    return status, out


def test_auto_writes_the_best_model_report_and_recipe(searched, tiny, tflite_accuracy, tmp_path):
    from tfedge.core.data import load_data
    from tfedge.core.inspector import inspect_model

    status, out = searched
    assert status == 0
    report = json.loads((out / "report.json").read_text())
    rows = report["results"]
    assert rows[0]["stage"] == "float32" and rows[0]["state"] == "reference"
    candidates = rows[1:]
    assert [r["trial"] for r in candidates] == [0, 1, 2]
    assert candidates[0]["stage"] == "int8 (post-training)"  # the cheapest seed first
    for row in candidates:
        assert row["state"] == "complete"
        assert {"recipe", "accuracy", "size_gzip_bytes", "latency_ms", "keras_accuracy"} <= set(row)
        assert {"pareto", "within_tolerance", "chosen"} <= set(row)
    (chosen,) = [r for r in candidates if r["chosen"]]
    floor = rows[0]["accuracy"] - 0.02
    assert chosen["accuracy"] >= floor - 1e-9
    assert report["search"]["best_trial"] == chosen["trial"]
    assert report["search"]["objective"] == "size"
    # the choice was confirmed on the held-back half of --val, which the search never measured
    confirmation = report["search"]["confirmation"]
    assert rows[0]["confirm_accuracy"] == confirmation["reference_accuracy"]
    assert chosen["confirmed"] or confirmation["fallback"]
    if not confirmation["fallback"]:  # the smallest within the tolerance not rejected on it
        kept = [r for r in candidates if r["accuracy"] >= floor - 1e-9 and r.get("confirmed", True)]
        assert chosen["pareto"]
        assert chosen["size_gzip_bytes"] == min(r["size_gzip_bytes"] for r in kept)
        loss = confirmation["reference_accuracy"] - chosen["confirm_accuracy"]
        assert loss - 1e-9 <= chosen["confirm_loss"] <= 0.02 + 1e-9
    search_part, held_back = load_data(out / "val.npz"), load_data(out / "confirm.npz")
    assert len(search_part) + len(held_back) == len(load_data(tiny["val"]))
    # the model is the chosen one, fully int8, with the accuracies the report says
    blob = (out / "model.tflite").read_bytes()
    assert inspect_model(blob)["fully_integer"]
    assert tflite_accuracy(blob, search_part, tmp_path) == pytest.approx(chosen["accuracy"])
    assert tflite_accuracy(blob, held_back, tmp_path) == pytest.approx(chosen["confirm_accuracy"])
    page = (out / "report.html").read_text()
    assert "<svg" in page and "Pareto" in page and chosen["stage"] in page
    assert (out / "model.keras").is_file()


def test_recipe_yaml_reproduces_the_chosen_model(searched, tiny, tflite_accuracy, tmp_path):
    from tfedge.core.data import load_data

    _, out = searched
    report = json.loads((out / "report.json").read_text())
    (chosen,) = [r for r in report["results"] if r.get("chosen")]
    again = tmp_path / "again"
    argv = ["optimize", tiny["model"], "--train", tiny["train"], "--val", tiny["val"]]
    argv += ["--recipe", out / "recipe.yaml", "--runs", "5", "-o", again]
    assert main([str(a) for a in argv]) == 0
    accuracy = tflite_accuracy(
        (again / "model.tflite").read_bytes(), load_data(out / "val.npz"), tmp_path
    )
    assert abs(accuracy - chosen["accuracy"]) <= 0.005


def test_python_api_returns_the_search_result(searched, tiny):
    import tfedge
    from tfedge.models import SearchResult

    _, out = searched
    # the study is complete (3 trials): this reads it back without running a trial
    result = tfedge.auto_optimize(
        str(tiny["model"]),
        tiny["train"],
        tiny["val"],
        out_dir=out,
        tolerance=0.02,
        objective="size",
        epochs=1,
        max_trials=3,
        resume=True,
    )
    assert isinstance(result, SearchResult)
    assert len(result.candidates) == 3 and result.best is not None
    assert result.to_dict()["best_trial"] == result.best["trial"]


def _error_lines(capsys):
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.startswith("Error:")], err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--tolerance", "1.5"], "outside (0, 1)"),
        (["--tolerance", "0"], "outside (0, 1)"),
        (["--storage", "postgresql://nobody@127.0.0.1:1/db", "--study", "s"], "cannot open"),
        (["--storage", "not-a-url", "--study", "s"], "not a database URL"),
        (["--resume", "--study", "never-made"], "nothing to resume"),
        (["--prune", "0.5"], "either --auto or a recipe"),
        (["--strategy", "multiworker"], "not supported"),
    ],
)
def test_bad_input_is_one_error_line(tiny, tmp_path, capsys, extra, needle):
    assert main(auto_argv(tiny, tmp_path, *extra)) == 1
    errors, err = _error_lines(capsys)
    assert len(errors) == 1 and needle in errors[0], err
    assert "Traceback" not in err


def test_latency_needs_a_reachable_device(tiny, tmp_path, capsys):
    with socket.socket() as probe:  # a port nothing listens on: the ssh device is down
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    extra = ["--objective", "latency", "--device", f"ssh://nobody@127.0.0.1:{port}"]
    assert main(auto_argv(tiny, tmp_path, *extra)) == 1
    errors, err = _error_lines(capsys)
    assert len(errors) == 1 and "cannot measure the reference" in errors[0], err


def test_a_study_of_another_model_is_refused(searched, tiny, capsys):
    _, out = searched
    assert main(auto_argv(tiny, out, "--trials", "3", model=tiny["other"])) == 1
    errors, err = _error_lines(capsys)
    assert len(errors) == 1 and "belongs to another model" in errors[0], err
    assert "model" in errors[0]


def _study(url, name):
    import optuna

    return optuna.load_study(storage=search.open_storage(url), study_name=name)


def test_a_killed_search_resumes_without_repeating_finished_trials(tiny, tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'search.db'}"
    argv = auto_argv(tiny, tmp_path, "--trials", "2")
    # Its output goes to a file: nobody reads a pipe while it runs, and a full pipe would stall it.
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115 (closed after the kill)
    first = run_cli(argv, stdout=log)
    deadline = time.time() + 240
    finished = []
    while time.time() < deadline and first.poll() is None:
        time.sleep(0.5)
        with_storage = (tmp_path / "search.db").is_file()
        if with_storage:
            try:
                study = _study(url, "auto-size")
            except (KeyError, optuna.exceptions.StorageInternalError):
                continue
            finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
            if finished:
                break
    log.flush()
    output = (tmp_path / "first.log").read_text()[-2500:]
    # A first run that died by a signal of its own (TensorFlow's rare native abort, see the README)
    # is a killed run too: the rerun must still resume. One that failed otherwise is a failure.
    died = first.poll() is not None and first.returncode < 0
    assert first.returncode in (None, 0) or died, output
    if not finished and first.returncode == 0:  # it ended between two looks
        finished = _study(url, "auto-size").get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert finished or died, "the first run finished no trial before the deadline:\n" + output
    first.send_signal(signal.SIGKILL)
    first.wait()
    log.close()
    before = {t.number: (t.datetime_start, t.user_attrs["key"]) for t in finished}

    assert main(argv) == 0
    study = _study(url, "auto-size")
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    for trial in complete:  # the trials finished before the kill are kept, not run again
        if trial.number in before:
            assert (trial.datetime_start, trial.user_attrs["key"]) == before[trial.number]
    measured = [t.user_attrs["key"] for t in complete if "duplicate_of" not in t.user_attrs]
    assert len(measured) == len(set(measured))
    done = study.get_trials(
        states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )
    assert len(done) >= 2 - 1  # the killed trial may still be waiting out its heartbeat
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["search"]["best_trial"] is not None


def test_two_workers_share_a_postgresql_study(postgres_url, tiny, tmp_path):
    import optuna

    name = "tiny-size"
    workers = [
        run_cli(
            auto_argv(tiny, tmp_path / f"w{i}", "--trials", "3")
            + ["--storage", postgres_url, "--study", name]
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[-2500:] for o in outputs]
    study = _study(postgres_url, name)
    trials = study.get_trials(
        states=(
            optuna.trial.TrialState.COMPLETE,
            optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL,
        )
    )
    assert len(trials) >= 3
    measured = [t for t in trials if "duplicate_of" not in t.user_attrs]
    keys = [t.user_attrs["key"] for t in measured]
    assert len(keys) == len(set(keys)), "a recipe ran twice"
    assert len({t.user_attrs["worker"] for t in measured}) == 2, "one worker did everything"
    for i in range(2):
        report = json.loads((tmp_path / f"w{i}" / "report.json").read_text())
        assert report["search"]["study"] == name
        assert (tmp_path / f"w{i}" / "model.tflite").is_file()


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_multiworker_fine_tune_on_two_local_workers(tiny, tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = []
    for index in range(2):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        argv = ["optimize", tiny["model"], "--train", tiny["train"], "--val", tiny["val"]]
        argv += ["--qat", "--epochs", "1", "--strategy", "multiworker", "--runs", "5"]
        argv += ["-o", tmp_path / f"w{index}"]
        # to files: the workers train in lockstep, so one stalled on an unread pipe stalls both
        log = open(tmp_path / f"w{index}.log", "w")  # noqa: SIM115 (closed below)
        env = {"TF_CONFIG": json.dumps(config)}
        workers.append((run_cli([str(a) for a in argv], env=env, stdout=log), log))
    for worker, log in workers:
        worker.wait(timeout=300)
        log.close()
    outputs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    workers = [worker for worker, _ in workers]
    assert [w.returncode for w in workers] == [0, 0], [o[-2500:] for o in outputs]
    for output in outputs:
        assert "MultiWorkerMirroredStrategy over 2 replicas" in output
    # synchronous training: both workers end with the same weights
    blobs = [(tmp_path / f"w{i}" / "model.tflite").read_bytes() for i in range(2)]
    assert blobs[0] == blobs[1]


def test_multiworker_without_tf_config_is_an_error(monkeypatch):
    from tfedge.models.training import resolve_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(OptimizationError, match="TF_CONFIG"):
        resolve_strategy("multiworker")


@pytest.mark.parametrize(
    ("samples", "share"),
    [(100_000, 0.25), (4_096, 0.25), (2_048, 0.5), (1_000, 1.0), (None, 0.25)],
)
def test_a_screen_holds_at_least_min_screen_samples(samples, share):
    train = None if samples is None else range(samples)  # only its length matters
    screen = search.screen_for(train)
    assert screen == {**search.SCREEN, "data_fraction": share}
    if samples is not None:
        assert samples * screen["data_fraction"] >= min(samples, search.MIN_SCREEN_SAMPLES)


def test_a_screen_is_sized_from_the_data_not_its_path():
    with pytest.raises(TypeError, match="not the path"):
        search.screen_for("train.npz")
