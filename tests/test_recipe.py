"""The recipe schema: every key honoured or refused by name, before any work."""

from pathlib import Path

import pytest

from tfedge.cli import main
from tfedge.core.errors import OptimizationError
from tfedge.core.inspector import inspect_model
from tfedge.models.recipe import load_recipe, validate_recipe

SHIPPED = sorted((Path(__file__).resolve().parent.parent / "models" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_passes_the_schema(path):
    recipe = load_recipe(path)
    assert recipe["stages"] and set(recipe) == {"model", "train", "stages", "convert"}
    assert recipe["convert"]["mode"] == "int8"
    assert isinstance(recipe["model"], dict) and recipe["model"]["epochs"] > 0


@pytest.mark.parametrize(
    ("recipe", "needles"),
    [
        ({"stages": [], "stagse": []}, ["unknown key 'stagse'", "model, train, stages, convert"]),
        ({"stage": []}, ["unknown key 'stage'"]),
        ({"train": {"epochs": 2}}, ["stages must be a list"]),
        ({"stages": "prune"}, ["stages must be a list"]),
        ({"stages": [{"name": "sharpen"}]}, ["unknown stage 'sharpen'", "prune_filters"]),
        ({"stages": [{"sparsity": 0.8}]}, ["unknown stage None"]),
        ({"stages": [7]}, ["stages[0]", "a stage name or a mapping"]),
        (
            {"stages": [{"name": "prune", "sparsty": 0.8}]},
            ["stages[0] (prune)", "unknown parameter 'sparsty'", "sparsity"],
        ),
        ({"stages": [{"name": "prune", "sparsity": 1.5}]}, ["sparsity is 1.5", "(0, 1)"]),
        ({"stages": [{"name": "prune", "sparsity": "0.8"}]}, ["sparsity is '0.8'"]),
        ({"stages": [{"name": "prune", "schedule": "cubic"}]}, ["schedule", "polynomial"]),
        ({"stages": [{"name": "prune", "structure": "4:2"}]}, ["structure is '4:2'", "2:4"]),
        ({"stages": [{"name": "cluster", "clusters": 1}]}, ["clusters is 1", "[2, 256]"]),
        ({"stages": [{"name": "cluster", "init": "best"}]}, ["init is 'best'", "kmeans++"]),
        ({"stages": [{"name": "qat", "epochs": 0}]}, ["epochs is 0", "integer"]),
        ({"stages": [{"name": "qat", "epochs": True}]}, ["epochs is True"]),
        ({"stages": [{"name": "qat", "preserve": "all"}]}, ["preserve is 'all'"]),
        ({"stages": [{"name": "prune_filters", "criterion": "l3"}]}, ["criterion", "taylor"]),
        ({"stages": [{"name": "qat", "teacher": "m.keras"}]}, ["unknown parameter 'teacher'"]),
        ({"stages": [], "train": {"epoch": 3}}, ["train", "unknown key 'epoch'", "batch_size"]),
        ({"stages": [], "train": {"learning_rate": -1}}, ["learning_rate is -1"]),
        ({"stages": [], "train": [1, 2]}, ["train", "expected a mapping"]),
        ({"stages": [], "convert": {"mode": "int4"}}, ["convert.mode", "int16x8"]),
        ({"stages": [], "convert": {"weights": "int2"}}, ["convert.weights", "int4"]),
        ({"stages": [], "convert": {"int16": [3]}}, ["convert.int16", "layer name"]),
        ({"stages": [], "convert": {"target": "edgetpu"}}, ["unknown key 'target'", "keep_float"]),
        ({"stages": [], "model": {"epochs": 3}}, ["model", "needs a 'name'"]),
        ({"stages": [{"name": "prune", "x" * 5000: 1}]}, ["unknown parameter", "..."]),
    ],
)
def test_a_key_or_value_outside_the_schema_is_named(recipe, needles):
    with pytest.raises(OptimizationError) as caught:
        validate_recipe(recipe)
    message = str(caught.value)
    assert len(message) < 1000, message
    for needle in needles:
        assert needle in message, message


def test_train_settings_reach_every_stage_unless_the_stage_sets_its_own():
    recipe = validate_recipe(
        {
            "train": {"epochs": 4, "batch_size": 64, "learning_rate": 0.001},
            "stages": [{"name": "prune", "sparsity": 0.5, "epochs": 2}, "cluster", "qat"],
            "convert": {"mode": "int8", "int16": "fc1"},
        }
    )
    prune, cluster, qat = recipe["stages"]
    assert prune == {
        "name": "prune",
        "sparsity": 0.5,
        "epochs": 2,
        "batch_size": 64,
        "learning_rate": 0.001,
    }
    assert cluster["epochs"] == qat["epochs"] == 4
    assert cluster["preserve_sparsity"] is True and qat["preserve"] == "sparsity+clusters"
    assert recipe["convert"] == {"mode": "int8", "int16": ["fc1"]}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        # nine levels of nine aliases: a billion list items once expanded
        (
            "a: &a [x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n"
                for i in range(8)
            )
            + "stages: *i\n",
            "alias (*a) is not accepted",
        ),
        ("stages: [\n", "not valid YAML: line 2, column 1"),
        ("# " + "x" * 70_000 + "\nstages: []\n", "bytes; a recipe is a few lines"),
        ("stages: []\n" + "#" * 10 + "\udcff", "not UTF-8"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_recipe_files_give_one_short_error(tmp_path, text, needle):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(OptimizationError) as caught:
        load_recipe(path)
    assert needle in str(caught.value)
    assert len(str(caught.value)) < 600


@pytest.mark.parametrize(
    ("recipe", "needle"),
    [
        ("stages:\n  - {name: prune, sparsty: 0.8}\n", "unknown parameter 'sparsty'"),
        ("stages: []\nconvert: {int16: [no_such_layer]}\n", "'no_such_layer', which is no layer"),
    ],
)
def test_optimize_refuses_a_bad_recipe_in_one_error_line_before_any_work(
    recipe, needle, digits_cnn_path, train_npz, test_npz, tmp_path, capsys
):
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe)
    out = tmp_path / "out"
    argv = ["optimize", digits_cnn_path, "--train", train_npz, "--val", test_npz]
    status = main([str(a) for a in [*argv, "--recipe", path, "-o", out]])
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("Error: ") and needle in err, err
    assert "Traceback" not in err and "unexpected failure" not in err
    assert not (out / "checkpoints" / "00-int8.tflite").exists()


@pytest.mark.slow
def test_optimize_honours_the_recipe_train_and_convert_sections(
    digits_cnn_path, train_npz, test_npz, tmp_path, capsys
):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "train: {epochs: 1, batch_size: 64}\n"
        "stages:\n  - {name: prune, sparsity: 0.5}\n"
        "convert: {mode: int8, int16: [fc1]}\n"
    )
    out = tmp_path / "out"
    argv = ["optimize", digits_cnn_path, "--train", train_npz, "--val", test_npz, "--runs", "3"]
    assert main([str(a) for a in [*argv, "--recipe", path, "-o", out]]) == 0
    shown = capsys.readouterr().out
    assert "prune(sparsity=0.5, batch_size=64)" in shown

    def computed(blob):
        info = inspect_model(blob, detail=True)
        dtypes = {t["index"]: t["dtype"] for t in info["tensors"] if t["subgraph"] == 0}
        return {dtypes[op["outputs"][0]] for op in info["operators"]}

    # The stage's model has int16 operators (fc1 and its reader); the post-training baseline none.
    assert "int16" in computed((out / "model.tflite").read_bytes())
    assert "int16" not in computed((out / "checkpoints" / "00-int8.tflite").read_bytes())
