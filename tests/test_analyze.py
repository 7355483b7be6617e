"""tfedge analyze, convert --int16 and --weights int4 on a digits model with one sensitive layer.

The sensitive layer is made by hand after training: one unit of ``sensitive`` gets a bias of
+2000 (always on, so its output has one huge channel) and the next layer ignores that unit. The
float model is unchanged in what it computes, but int8 gives the whole tensor one scale, so the
31 useful channels fall to a few int8 steps: int8 loses tens of points.
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfedge.cli import main

OUTLIER = 2000.0


@pytest.fixture(scope="module")
def small_digits():
    from tfedge.core.digits import load_digits

    return load_digits(size=8)


@pytest.fixture(scope="module")
def sensitive(small_digits, tmp_path_factory):
    """``{"model", "train", "test"}`` paths: the trained 8x8-digits model with a sensitive layer."""
    from tfedge.core.backend import keras

    train, test = small_digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(32, activation="relu", name="sensitive"),
            keras.layers.Dense(10, name="logits"),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile("adam", loss, metrics=["accuracy"])
    model.fit(train.x, train.y, epochs=15, batch_size=32, verbose=0)
    kernel, bias = model.get_layer("sensitive").get_weights()
    bias[0] += OUTLIER
    model.get_layer("sensitive").set_weights([kernel, bias])
    weights, out_bias = model.get_layer("logits").get_weights()
    weights[0] = 0.0
    model.get_layer("logits").set_weights([weights, out_bias])
    for name in ("conv", "sensitive"):
        model.get_layer(name).trainable = False
    model.compile("adam", loss, metrics=["accuracy"])
    model.fit(train.x, train.y, epochs=3, batch_size=32, verbose=0)
    folder = tmp_path_factory.mktemp("sensitive")
    model.save(folder / "model.keras")
    return {
        "model": folder / "model.keras",
        "train": train.save(folder / "train.npz"),
        "test": test.save(folder / "test.npz"),
        "folder": folder,
    }


# The .npz files ``fixed``'s run read from disk, one name per read (tfedge.core.data._load_npz).
READS = []


@pytest.fixture(scope="module")
def fixed(sensitive):
    """``tfedge analyze --fix`` run once through the command line: its JSON report."""
    import tfedge.core.data as data_module

    folder = sensitive["folder"]
    argv = ["analyze", str(sensitive["model"]), "--calib", str(sensitive["train"])]
    argv += ["--data", str(sensitive["test"]), "--fix", "-o", str(folder / "fixed.tflite")]
    argv += ["--json", str(folder / "analysis.json"), "--explorer", str(folder / "me.json")]
    read = data_module._load_npz

    def counted(path, name):
        READS.append(Path(path).name)
        return read(path, name)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data_module, "_load_npz", counted)
        assert main(argv) == 0
    return json.loads((folder / "analysis.json").read_text())


def test_the_calibration_data_is_read_once_for_every_conversion(fixed):
    conversions = [f for f in fixed["fixes"] if "error" not in f]
    assert len(conversions) >= 4  # int8, int16 and keep_float candidates, int16x8, each calibrated
    assert READS.count("train.npz") == 1


def _fix(report, prefix):
    return next(f for f in report["fixes"] if f["fix"].startswith(prefix) and "accuracy" in f)


def test_analyze_names_the_sensitive_layer_among_the_worst_three(fixed):
    assert "sensitive" in [row["name"] for row in fixed["worst"][:3]]
    for row in fixed["layers"]:
        assert {"name", "op", "rmse_over_scale", "max_abs_error", "cosine"} <= set(row)
    assert sorted(fixed["worst"], key=lambda r: r["sqnr_db"]) == fixed["worst"]


def test_fix_brings_int8_back_within_one_point_and_keeps_it_fully_integer(
    fixed, sensitive, small_digits, tflite_accuracy, tmp_path
):
    plain = _fix(fixed, "int8")
    assert plain["accuracy"] < fixed["float_accuracy"] - 0.05  # the layer really is sensitive
    chosen = next(f for f in fixed["fixes"] if f["fix"] == fixed["chosen"])
    assert chosen["accuracy"] >= fixed["float_accuracy"] - 0.01
    assert chosen["fully_integer"] and chosen["fix"].startswith("int16:")
    # the record says which operators the chosen layers covered
    assert [entry["layer"] for entry in chosen["selected"]] == chosen["layers"]
    assert all(
        entry["operators"] >= 1 and entry["option"] == "int16" for entry in chosen["selected"]
    )
    blob = (sensitive["folder"] / "fixed.tflite").read_bytes()
    assert tflite_accuracy(blob, small_digits[1], tmp_path) == chosen["accuracy"]
    for record in (f for f in fixed["fixes"] if "error" not in f):
        assert {
            "fix",
            "accuracy",
            "size_bytes",
            "p50_ms",
            "fully_integer",
            "edgetpu_compatible",
        } <= set(record)


def test_int16_layer_model_runs_in_litert_with_the_accuracy_analyze_reported(
    fixed, sensitive, small_digits, tflite_accuracy, tmp_path
):
    from tfedge.converters import convert
    from tfedge.core.inspector import inspect_model

    record = _fix(fixed, "int16:")
    blob = convert(
        sensitive["model"], calib=sensitive["train"], calib_samples=200, int16=record["layers"]
    )
    info = inspect_model(blob)
    assert info["fully_integer"] and info["input"][0]["dtype"] == "int8"
    assert info["output"][0]["dtype"] == "int8"
    accuracy = tflite_accuracy(blob, small_digits[1], tmp_path)
    assert accuracy == record["accuracy"]
    # measured against plain int8 and whole-model int16x8 on the same data
    assert accuracy > _fix(fixed, "int8")["accuracy"] + 0.05
    assert accuracy >= _fix(fixed, "int16x8")["accuracy"] - 0.01


def test_keep_float_reaches_the_output_layer(sensitive):
    """The converter names an output layer's tensor ``Identity``: --keep-float of it still works."""
    from tfedge.converters import convert
    from tfedge.core.inspector import inspect_model

    blob = convert(sensitive["model"], calib=sensitive["train"], keep_float=["logits"])
    assert "FULLY_CONNECTED" in inspect_model(blob)["float_ops"]


def test_int4_weights_run_in_litert_and_are_smaller(
    sensitive, small_digits, tflite_accuracy, tmp_path
):
    from tfedge.converters import convert
    from tfedge.core.inspector import inspect_model

    int8 = convert(sensitive["model"], calib=sensitive["train"], int16=["sensitive"])
    int4 = convert(
        sensitive["model"], calib=sensitive["train"], int16=["sensitive"], weights="int4"
    )
    assert len(int4) < len(int8)
    dtypes = {t["dtype"] for t in inspect_model(int4, detail=True)["tensors"]}
    assert "int4" in dtypes
    assert tflite_accuracy(int4, small_digits[1], tmp_path) > 0.8


def test_int4_error_names_the_operator_litert_cannot_run(small_digits):
    from tfedge.converters import convert
    from tfedge.core.backend import keras
    from tfedge.core.errors import ConversionError

    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2DTranspose(4, 3, strides=2, name="up"),
            layers.Flatten(),
            layers.Dense(10),
        ]
    )
    with pytest.raises(ConversionError, match="int4-weight kernel for TRANSPOSE_CONV"):
        convert(model, calib=small_digits[0], calib_samples=20, weights="int4")


def test_explorer_node_data_is_accepted_by_model_explorer(fixed, sensitive, tmp_path):
    """Model Explorer's own node-data classes parse the file; its TFLite adapter's graph of
    ``tfedge convert``'s int8 model has a node for every key, and the sensitive one is red."""
    pytest.importorskip("model_explorer")
    from model_explorer import node_data_builder as ndb
    from model_explorer.builtin_tflite_flatbuffer_adapter import BuiltinTfliteFlatbufferAdapter

    raw = json.loads((sensitive["folder"] / "me.json").read_text())
    data = ndb.GraphNodeData(
        **{
            **raw,
            "results": {k: ndb.NodeDataResult(**v) for k, v in raw["results"].items()},
            "thresholds": [ndb.ThresholdItem(**t) for t in raw["thresholds"]],
        }
    )
    written = json.loads(data.to_json_string())
    assert {key: written[key] for key in raw} == raw
    int8 = tmp_path / "model_int8.tflite"
    assert (
        main(
            [
                "convert",
                str(sensitive["model"]),
                "--calib",
                str(sensitive["train"]),
                "-o",
                str(int8),
            ]
        )
        == 0
    )
    graphs = BuiltinTfliteFlatbufferAdapter().convert(str(int8), {})["graphCollections"]
    graph = graphs[0].graphs[0]
    graph = dataclasses.asdict(graph) if dataclasses.is_dataclass(graph) else graph
    outputs = {
        attr["value"]: node["label"]
        for node in graph["nodes"]
        for meta in node.get("outputsMetadata") or []
        for attr in meta["attrs"]
        if attr["key"] == "tensor_name"
    }
    assert set(data.results) <= set(outputs)
    worst = min(data.results, key=lambda k: data.results[k].value)
    assert outputs[worst] == "fully_connected" and "sensitive" in worst
    assert data.results[worst].value <= data.thresholds[0].value


def _run(argv, capsys):
    status = main(argv)
    err = capsys.readouterr().err
    return status, [line for line in err.splitlines() if line.startswith("Error:")], err


BAD_INPUT = [
    "missing",
    "corrupt",
    "shape",
    "no-data",
    "no-labels",
    "labels-outside-classes",
    "nan-calib",
    "nan-data",
    "layer",
    "model-name",
]


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_error_line(case, sensitive, small_digits, tmp_path, capsys):
    """One ``Error:`` line naming the file and the first bad sample, before any conversion."""
    model, train = str(sensitive["model"]), str(sensitive["train"])
    argv = ["analyze", model, "--calib", train]
    if case == "missing":
        argv[1] = str(tmp_path / "nope.keras")
    elif case == "corrupt":
        (tmp_path / "bad.keras").write_bytes(b"not a zip")
        argv[1] = str(tmp_path / "bad.keras")
    elif case == "shape":
        np.savez(tmp_path / "wrong.npz", x=np.zeros((5, 16, 16, 1), np.float32))
        argv[3] = str(tmp_path / "wrong.npz")
    elif case == "no-data":
        argv += ["--fix", "-o", str(tmp_path / "out.tflite")]
    elif case == "no-labels":
        np.savez(tmp_path / "x.npz", x=np.zeros((5, 8, 8, 1), np.float32))
        argv += ["--data", str(tmp_path / "x.npz"), "--fix", "-o", str(tmp_path / "out.tflite")]
    elif case == "labels-outside-classes":
        test = small_digits[1].take(30)
        np.savez(tmp_path / "labels.npz", x=test.x, y=np.where(np.arange(30) < 4, test.y, 10))
        argv += [
            "--data",
            str(tmp_path / "labels.npz"),
            "--fix",
            "-o",
            str(tmp_path / "out.tflite"),
        ]
    elif case == "nan-calib":
        np.savez(tmp_path / "nan.npz", x=np.full((20, 8, 8, 1), np.nan, np.float32))
        argv[3] = str(tmp_path / "nan.npz")
    elif case == "nan-data":
        test = small_digits[1].take(30)
        x = test.x.copy()
        x[7, 2, 2, 0] = np.inf
        np.savez(tmp_path / "inf.npz", x=x, y=test.y)
        argv += ["--data", str(tmp_path / "inf.npz"), "--fix", "-o", str(tmp_path / "out.tflite")]
    elif case in ("layer", "model-name"):
        from tfedge.core.loading import load_model

        own = load_model(model).model.name
        name = "nope" if case == "layer" else own
        argv = [
            "convert",
            model,
            "--calib",
            train,
            "--int16",
            name,
            "-o",
            str(tmp_path / "o.tflite"),
        ]
    status, errors, err = _run(argv, capsys)
    assert status == 1, err
    assert len(errors) == 1 and "Traceback" not in err, err
    expected = {
        "missing": "nope.keras",
        "corrupt": "bad.keras",
        "shape": "16, 16, 1",
        "no-data": "--data",
        "no-labels": "labels",
        "labels-outside-classes": "labels.npz) label 4 is 10 but the model has 10 classes",
        "nan-calib": "nan.npz) sample 0 holds NaN",
        "nan-data": "inf.npz) sample 7 holds infinite",
        "layer": "no layer named 'nope'",
        "model-name": "is the model's own name, not one of its layers",
    }[case]
    assert expected in errors[0], errors[0]
    assert "calibrating" not in err, "the data should be refused before any conversion"
    assert not list(tmp_path.glob("*.tflite"))


def test_import_tfedge_does_not_import_tensorflow():
    code = (
        "import sys, tfedge; tfedge.__version__; print('tensorflow' in sys.modules); "
        "from tfedge.commands.analyze import analyze; print(tfedge.analyze is analyze)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
