"""The stage registry and the one fine-tune settings object every stage takes."""

import sys

import pytest

import tfedge.models.stages as registry
from tfedge.core.errors import OptimizationError
from tfedge.models.fine_tune import FINE_TUNE_KEYS, FineTune, defaults_of


def test_the_registry_is_what_recipes_flags_and_the_search_read():
    import tfedge.models.search as search
    from tfedge.commands.optimize import stages_from_flags
    from tfedge.models.recipe import STAGE_ORDER, STAGES

    assert registry.names() == STAGE_ORDER == tuple(STAGES)
    assert STAGES == {s.name: (s.module, s.function) for s in registry.registered()}
    # The search's space and costs are the ones each stage declares.
    import tfedge.models.search.space as space

    assert registry.search_space() == {k: list(v) for k, v in search.SPACE.items()}
    assert list(registry.search_space()) == list(search.SPACE)
    assert registry.costs() == space._COST
    assert space._LATENCY_SKIPS == ("prune", "cluster")
    points = [
        {"prune": 0.8, "cluster": 16, "qat": True},
        {"distill": 0.25, "factorize": 0.95, "prune_filters": 0.5, "criterion": "taylor"},
        {"prune": "2:4", "qat": True, "cluster": "none", "distill": "none"},
        {"prune_filters": 0.75, "qat": False},
        {},
    ]
    for point in points:
        recipe = search.recipe_from_choices(point, epochs=2)
        assert registry.stages_from_choices(point, epochs=2) == recipe["stages"], point
    flags = stages_from_flags(qat=True, prune=0.5, distill=True, factorize=0.9, cluster=8)
    assert [stage["name"] for stage in flags] == ["distill", "factorize", "prune", "cluster", "qat"]


@pytest.mark.parametrize("name", registry.names())
def test_every_stage_declares_its_fine_tune_defaults_and_takes_the_old_keywords(name):
    import inspect

    function = registry.get(name).load()
    defaults = defaults_of(function)
    assert isinstance(defaults, FineTune)
    kinds = {p.kind for p in inspect.signature(function).parameters.values()}
    assert inspect.Parameter.VAR_KEYWORD in kinds
    parameters = registry.parameters(name)
    assert {k for k in FINE_TUNE_KEYS if k not in ("teacher", "strategy")} <= set(parameters)
    assert parameters["learning_rate"] == defaults.learning_rate
    assert "settings" not in parameters and "teacher" not in parameters


def test_what_each_stage_keeps_reaches_later_stages_until_one_rebuilds():
    kept = registry.preserving([{"name": "prune"}, {"name": "cluster"}, {"name": "qat"}])
    assert kept[1]["preserve_sparsity"] is True and kept[2]["preserve"] == "sparsity+clusters"
    # Filter pruning rebuilds the model: the zeros before it are gone, QAT has none to keep.
    rebuilt = registry.preserving([{"name": "prune"}, {"name": "prune_filters"}, {"name": "qat"}])
    assert rebuilt[2] == {"name": "qat"}
    # A stage's own setting wins.
    own = registry.preserving([{"name": "prune"}, {"name": "qat", "preserve": None}])
    assert own[1] == {"name": "qat", "preserve": None}


def test_the_compression_report_reads_what_stages_make():
    from tfedge.reports.compression import requested_after

    assert requested_after([{"name": "prune", "structure": "2:4"}, {"name": "cluster"}]) == {
        "sparsity": 0.5,
        "structure": "2:4",
        "clusters": registry.parameters("cluster")["clusters"],
    }
    after = requested_after([{"name": "prune"}, {"name": "factorize"}, {"name": "qat"}])
    assert after == {"sparsity": None, "structure": None, "clusters": None}


def test_a_name_or_place_taken_is_refused(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(OptimizationError, match="clashes with the registered 'prune'"):
        registry.register(registry.Stage("prune", "x", "y", order=99))
    with pytest.raises(OptimizationError, match="clashes with the registered 'qat'"):
        registry.register(registry.Stage("sharpen", "x", "y", order=60))
    with pytest.raises(OptimizationError, match="unknown stage 'sharpen'.*prune_filters"):
        registry.get("sharpen")


NEW_STAGE = """
import tfedge.models.training as training

CHOICES = ("soft", "hard")


def sharpen(model, train, val, *, settings=training.FineTune(epochs=0), how="soft", **fine_tune):
    settings = training.with_keywords(settings, fine_tune, "sharpen")
    return training.fine_tune_rebuilt(
        model, train, val, **settings.fit_options(epochs=settings.epochs), desc="sharpening"
    )
"""


def test_a_new_stage_is_its_module_plus_one_registration(
    monkeypatch, tmp_path, trained_digits_cnn, digits
):
    from tfedge.models.recipe import validate_recipe

    (tmp_path / "my_sharpen.py").write_text(NEW_STAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register(
        registry.Stage("sharpen", "my_sharpen", "sharpen", order=45, choices={"how": ("CHOICES",)})
    )
    try:
        recipe = validate_recipe({"stages": ["qat", {"name": "sharpen", "how": "hard"}]})
        assert [stage["name"] for stage in recipe["stages"]] == ["qat", "sharpen"]
        with pytest.raises(OptimizationError, match="how is 'blunt'; expected one of soft, hard"):
            validate_recipe({"stages": [{"name": "sharpen", "how": "blunt"}]})
        model = registry.run_stage(recipe["stages"][1], trained_digits_cnn, *digits)
        assert model is trained_digits_cnn  # epochs 0: the stage's default, nothing trained
        assert len(registry.code_key([{"name": "sharpen"}])) == 16
    finally:
        registry.parameters.cache_clear()
        sys.modules.pop("my_sharpen", None)


def _spy_fit(monkeypatch):
    from tfedge.models import training

    seen = []
    real_fit = training.fit

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", spy)
    return seen


SMALL = {"epochs": 1, "batch_size": 64, "learning_rate": 3e-4, "seed": 1}
STAGE_ARGS = {
    "distill": {"new_student": True},
    "factorize": {"energy": 0.5},
    "prune_filters": {"ratio": 0.25},
    "prune": {"sparsity": 0.5, "polish_epochs": 0},
    "cluster": {"clusters": 8},
    "qat": {},
}


@pytest.mark.parametrize("name", registry.names())
def test_the_old_keywords_and_settings_reach_the_fine_tune_alike(
    name, monkeypatch, trained_digits_cnn, digits
):
    function = registry.get(name).load()
    train, val = digits[0].take(256, seed=0), digits[1].take(128, seed=0)
    teacher = trained_digits_cnn
    seen = _spy_fit(monkeypatch)
    function(trained_digits_cnn, train, val, teacher=teacher, **SMALL, **STAGE_ARGS[name])
    settings = defaults_of(function).replace(teacher=teacher, **SMALL)
    function(trained_digits_cnn, train, val, settings=settings, **STAGE_ARGS[name])
    assert len(seen) == 2
    old, new = seen
    for key in ("epochs", "batch_size", "learning_rate", "seed", "temperature", "alpha"):
        assert old[key] == new[key] == getattr(settings, key), key
    assert old["teacher"] is not None and new["teacher"] is not None


def test_a_fine_tune_keyword_that_is_no_setting_is_named(trained_digits_cnn, digits):
    from tfedge.models.pruning import prune

    with pytest.raises(OptimizationError, match="unknown keyword 'epoch'") as caught:
        prune(trained_digits_cnn, digits[0], digits[1], epoch=3)
    assert "batch_size" in str(caught.value) and caught.value.hint
    with pytest.raises(OptimizationError, match="expected a tfedge.models.training.FineTune"):
        prune(trained_digits_cnn, digits[0], digits[1], settings={"epochs": 3})


def test_a_recipe_stage_fine_tunes_over_the_stage_defaults(monkeypatch, trained_digits_cnn, digits):
    seen = _spy_fit(monkeypatch)
    train, val = digits[0].take(256, seed=0), digits[1].take(128, seed=0)
    stage = {"name": "prune", "sparsity": 0.5, "epochs": 1, "polish_epochs": 0}
    registry.run_stage(stage, trained_digits_cnn, train, val, teacher=trained_digits_cnn)
    from tfedge.models.pruning import FINE_TUNE

    assert seen[0]["epochs"] == 1 and seen[0]["learning_rate"] == FINE_TUNE.learning_rate == 2e-3
    assert seen[0]["teacher"] is trained_digits_cnn


def test_the_stage_running_names_still_import_from_the_optimize_command():
    import tfedge.commands.optimize as optimize
    import tfedge.commands.stage_worker as stage_worker

    for name in ("run_stage", "code_key", "save_atomically"):
        assert getattr(optimize, name) is getattr(registry, name)
    assert stage_worker.run_stage is registry.run_stage
    assert registry.code_key([{"name": "qat"}]) != registry.code_key([{"name": "prune"}])
