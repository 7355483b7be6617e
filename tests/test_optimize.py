"""`tfedge optimize` end to end: real fine-tuning, real int8 conversion, real interpreter runs."""

import json
import os
import subprocess
import sys

import pytest

from tfedge.cli import main
from tfedge.commands.optimize import load_recipe, stages_from_flags
from tfedge.core.errors import OptimizationError

pytestmark = pytest.mark.slow


def test_flags_become_ordered_stages_with_preservation():
    stages = stages_from_flags(prune=0.8, cluster=16, qat=True, epochs=2)
    assert [s["name"] for s in stages] == ["prune", "cluster", "qat"]
    assert stages[1]["preserve_sparsity"] is True
    assert stages[2]["preserve"] == "sparsity+clusters"
    assert all(s["epochs"] == 2 for s in stages)
    assert stages_from_flags(structured="2:4") == [
        {"name": "prune", "sparsity": 0.5, "structure": "2:4"}
    ]
    assert stages_from_flags(factorize=0.9)[0] == {"name": "factorize", "energy": 0.9}


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({}, "no optimization"), ({"prune": 1.5}, "between 0 and 1"), ({"cluster": 1}, "at least 2")],
)
def test_bad_flags(kwargs, needle):
    with pytest.raises(OptimizationError, match=needle):
        stages_from_flags(**kwargs)


def test_recipes_of_the_zoo_load():
    from pathlib import Path

    import tfedge.models

    recipes = sorted((Path(tfedge.models.__file__).parent / "recipes").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        assert load_recipe(recipe)["stages"]


def test_bad_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("stages:\n  - {name: sharpen}\n")
    with pytest.raises(OptimizationError, match="unknown stage"):
        load_recipe(path)


@pytest.fixture(scope="module")
def optimized(tmp_path_factory, digits_cnn_path, train_npz, test_npz):
    out = tmp_path_factory.mktemp("opt")
    argv = [
        "optimize",
        digits_cnn_path,
        "--train",
        train_npz,
        "--val",
        test_npz,
        "--prune",
        "0.75",
        "--qat",
        "--epochs",
        "2",
        "--runs",
        "20",
        "-o",
        out,
    ]
    status = main([str(a) for a in argv])
    return status, out


def test_optimize_writes_model_report_and_html(optimized):
    status, out = optimized
    assert status == 0
    for name in ("model.keras", "model.tflite", "report.json", "report.html"):
        assert (out / name).is_file(), name
    rows = json.loads((out / "report.json").read_text())["results"]
    stages = [row["stage"] for row in rows]
    assert stages[:2] == ["float32", "int8"] and len(rows) == 4
    for row in rows:
        assert not row.get("error"), row
        assert row["keras_accuracy"] > 0.85 and row["accuracy"] > 0.85
        assert row["latency_ms"]["p50"] > 0
    final = rows[-1]
    assert final["accuracy"] >= rows[0]["accuracy"] - 0.05
    assert final["size_gzip_bytes"] * 4 < rows[0]["size_gzip_bytes"]


def test_optimize_report_page_in_a_browser(optimized, browser):
    status, out = optimized
    assert status == 0
    page = browser.check_report(
        out / "report.html",
        ("plot-accuracy-size", "plot-accuracy-latency", "plot-latency"),
        table_rows=4,
    )
    assert "Keras accuracy" in page["dom"]


def test_optimized_tflite_is_fully_int8_and_sparse(optimized):
    from tfedge.core.inspector import inspect_model

    _, out = optimized
    info = inspect_model(out / "model.tflite")
    assert info["fully_integer"] and info["static_shapes"]
    assert info["input"][0]["dtype"] == "int8"
    assert not {"QUANTIZE", "DEQUANTIZE"} & set(info["ops"])
    assert info["weight_sparsity"] > 0.5


def test_optimized_keras_model_loads_again(optimized, digits):
    from tfedge.core.loading import load_model

    _, out = optimized
    model = load_model(out / "model.keras").model
    predictions = model.predict(digits[1].x, verbose=0).argmax(axis=-1)
    assert (predictions == digits[1].y).mean() > 0.85


def test_interrupted_run_resumes_from_checkpoints(
    optimized, digits_cnn_path, train_npz, test_npz, capsys
):
    _, out = optimized
    capsys.readouterr()
    argv = [
        "optimize",
        digits_cnn_path,
        "--train",
        train_npz,
        "--val",
        test_npz,
        "--prune",
        "0.75",
        "--qat",
        "--epochs",
        "2",
        "--runs",
        "5",
        "-o",
        out,
    ]
    assert main([str(a) for a in argv]) == 0
    printed = capsys.readouterr().out
    assert printed.count("resumed from") == 2


def test_optimize_rejects_bad_input(capsys, digits_cnn_path, tmp_path, test_npz):
    import numpy as np

    no_labels = tmp_path / "nolabels.npz"
    np.savez(no_labels, x=np.zeros((4, 16, 16, 1), np.float32))
    status = main(
        [
            "optimize",
            str(digits_cnn_path),
            "--train",
            str(no_labels),
            "--val",
            str(test_npz),
            "--prune",
            "0.5",
            "-o",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("Error:") and "labels" in err and "Traceback" not in err


def test_keras3_model_is_rebuilt_for_the_training_wrappers(tmp_path, digits, train_npz, test_npz):
    from tfedge.core.backend import keras3

    keras3.utils.set_random_seed(0)
    L = keras3.layers
    model = keras3.Sequential(
        [
            keras3.Input((16, 16, 1)),
            L.Conv2D(8, 3, activation="relu"),
            L.MaxPooling2D(),
            L.Flatten(),
            L.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(digits[0].x, digits[0].y, epochs=3, verbose=0)
    path = tmp_path / "k3.keras"
    model.save(path)
    out = tmp_path / "out"
    status = main(
        [
            "optimize",
            str(path),
            "--train",
            str(train_npz),
            "--val",
            str(test_npz),
            "--prune",
            "0.5",
            "--epochs",
            "1",
            "--runs",
            "5",
            "-o",
            str(out),
        ]
    )
    assert status == 0
    rows = json.loads((out / "report.json").read_text())["results"]
    assert rows[-1]["accuracy"] > 0.8


def test_mirrored_strategy_with_two_logical_cpus(tmp_path, digits_cnn_path, train_npz, test_npz):
    env = dict(os.environ, TFEDGE_LOGICAL_CPUS="2")
    out = tmp_path / "mirrored"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfedge",
            "optimize",
            str(digits_cnn_path),
            "--train",
            str(train_npz),
            "--val",
            str(test_npz),
            "--prune",
            "0.5",
            "--epochs",
            "1",
            "--strategy",
            "mirrored",
            "--runs",
            "5",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "MirroredStrategy over 2 replicas" in result.stdout
    assert json.loads((out / "report.json").read_text())["results"][-1]["accuracy"] > 0.8


def test_distill_flag_trains_a_half_size_student(
    tmp_path, digits_cnn_path, train_npz, test_npz, trained_digits_cnn
):
    from tfedge.core.loading import load_model

    out = tmp_path / "distilled"
    argv = [
        "optimize",
        digits_cnn_path,
        "--train",
        train_npz,
        "--val",
        test_npz,
        "--distill",
        "--runs",
        "5",
        "-o",
        out,
    ]
    assert main([str(a) for a in argv]) == 0
    student = load_model(out / "model.keras").model
    assert student.count_params() < 0.6 * trained_digits_cnn.count_params()
    rows = json.loads((out / "report.json").read_text())["results"]
    assert rows[-1]["accuracy"] > 0.9
