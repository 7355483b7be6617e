"""EdgeTPU: operator rules and mapping prediction on real models (tfedge.core.edgetpu), compiler output
and the compiler driver (tfedge.converters.edgetpu_compiler)."""

import sys
from pathlib import Path

import numpy as np
import pytest

from tfedge.converters.edgetpu_compiler import (
    CompilerNotFoundError,
    compile_model,
    find_compiler,
    parse_compiler_output,
)
from tfedge.core.edgetpu import SUPPORTED_OPS, predict_mapping
from tfedge.core.errors import ConversionError, InputFileError
from tfedge.core.inspector import inspect_model

DATA = Path(__file__).parent / "data"


def convert_int8(model, io="int8"):
    from tfedge.core.backend import tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    shape = [1, *model.input_shape[1:]]

    def representative():
        rng = np.random.default_rng(0)
        for _ in range(8):
            yield [rng.random(shape, dtype=np.float32)]

    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io != "float32":
        converter.inference_input_type = getattr(tf, io)
        converter.inference_output_type = getattr(tf, io)
    return converter.convert()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Real int8 models: a small CNN with softmax, one with LEAKY_RELU, one with a free batch."""
    from tfedge.core.backend import keras

    keras.utils.set_random_seed(0)

    def cnn(batch):
        inputs = keras.Input((8, 8, 1), batch_size=batch)
        x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
        x = keras.layers.AveragePooling2D()(x)
        x = keras.layers.Flatten()(x)
        return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))

    inputs = keras.Input((16,), batch_size=1)
    x = keras.layers.LeakyReLU()(keras.layers.Dense(8)(inputs))
    x = keras.layers.Dense(8, activation="relu")(x)
    leaky = keras.Model(inputs, keras.layers.Dense(4)(x))
    out = tmp_path_factory.mktemp("edgetpu")
    paths = {}
    for name, blob in {
        "cnn": convert_int8(cnn(1)),
        "cnn_float_io": convert_int8(cnn(1), io="float32"),
        "cnn_dynamic_batch": convert_int8(cnn(None)),
        "leaky_relu": convert_int8(leaky),
    }.items():
        paths[name] = out / f"{name}.tflite"
        paths[name].write_bytes(blob)
    return paths


# ---- the operator table -------------------------------------------------------------------


@pytest.mark.parametrize(
    "op",
    ["ADD", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "SOFTMAX", "QUANTIZE", "MEAN"]
    + ["RESIZE_BILINEAR", "TRANSPOSE_CONV", "SQUARED_DIFFERENCE", "PACK", "PRELU", "RSQRT"],
)
def test_documented_ops_are_supported(op):
    assert op in SUPPORTED_OPS


@pytest.mark.parametrize("op", ["LEAKY_RELU", "HARD_SWISH", "EXP", "DEQUANTIZE", "BATCH_MATMUL"])
def test_undocumented_ops_are_not(op):
    assert op not in SUPPORTED_OPS


# ---- prediction on real models ------------------------------------------------------------


def test_int8_cnn_maps_fully(models):
    m = inspect_model(models["cnn"])["edgetpu"]
    assert m["compatible"] is True
    assert m["unsupported"] == []
    assert (m["mapped_ops"], m["cpu_ops"]) == (5, 0)
    assert m["first_cpu_op"] is None
    assert m["ops"][0] == {"op": "CONV_2D", "count": 1, "status": "Mapped to Edge TPU"}


def test_first_unsupported_op_sends_the_rest_to_the_cpu(models):
    m = inspect_model(models["leaky_relu"])["edgetpu"]
    assert m["compatible"] is False
    assert m["unsupported"] == ["LEAKY_RELU"]
    assert m["first_cpu_op"]["op"] == "LEAKY_RELU"
    assert m["first_cpu_op"]["index"] == 1
    # FULLY_CONNECTED, then LEAKY_RELU, then two FULLY_CONNECTED that are supported but follow it
    assert (m["mapped_ops"], m["cpu_ops"]) == (1, 3)
    statuses = [
        (row["op"], row["count"], row["status"] == "Mapped to Edge TPU") for row in m["ops"]
    ]
    assert statuses == [
        ("FULLY_CONNECTED", 1, True),
        ("LEAKY_RELU", 1, False),
        ("FULLY_CONNECTED", 2, False),
    ]
    assert any("first unsupported" in reason for reason in m["reasons"])


def test_float_io_runs_edges_on_cpu_without_splitting(models):
    m = inspect_model(models["cnn_float_io"])["edgetpu"]
    assert m["compatible"] is False
    assert m["unsupported"] == ["float input/output"]
    assert (m["mapped_ops"], m["cpu_ops"]) == (5, 2)
    assert m["first_cpu_op"] is None


def test_dynamic_batch_is_refused(models):
    m = inspect_model(models["cnn_dynamic_batch"])["edgetpu"]
    assert m["compatible"] is False
    assert "dynamic shapes" in m["unsupported"]
    assert m["mapped_ops"] == 0


@pytest.mark.parametrize("name", ["cnn", "leaky_relu", "cnn_float_io"])
def test_predict_accepts_inspect_dicts_of_paths_and_bytes(models, name):
    expected = inspect_model(models[name])["edgetpu"]
    assert inspect_model(str(models[name]))["edgetpu"] == expected
    assert inspect_model(models[name].read_bytes())["edgetpu"] == expected
    assert predict_mapping(inspect_model(models[name], detail=True)) == expected
    assert predict_mapping(inspect_model(models[name])) == expected
    assert sum(row["count"] for row in expected["ops"]) == (
        expected["mapped_ops"] + expected["cpu_ops"]
    )


def test_predict_rejects_other_arguments():
    with pytest.raises(TypeError, match="inspect_model"):
        predict_mapping(3.5)
    with pytest.raises(TypeError, match="inspect_model"):
        predict_mapping("model.tflite")
    with pytest.raises(ValueError, match="detail=True"):
        predict_mapping({"ops": {}})


# ---- operator rules, on one-operator graphs -----------------------------------------------


def one_op(name, inputs, output, params=None, constants=None, dtype="int8"):
    """predict_mapping() of a graph holding one operator; ``constants``: {input index: dtype}."""
    constants = constants or {}
    tensors = [
        {
            "index": i,
            "name": f"t{i}",
            "dtype": constants.get(i, dtype),
            "shape": shape,
            "shape_signature": shape,
            "constant": i in constants,
        }
        for i, shape in enumerate(inputs)
    ]
    out = len(inputs)
    tensors.append(
        {"index": out, "name": "out", "dtype": dtype, "shape": output, "constant": False}
    )
    info = {
        "tensors": tensors,
        "operators": [
            {"index": 0, "op": name, "inputs": list(range(out)), "outputs": [out], "params": params}
        ],
        "input": [{"index": 0, "name": "t0", "dtype": dtype}],
        "output": [{"index": out, "name": "out", "dtype": dtype}],
        "static_shapes": True,
    }
    return predict_mapping(info)


IMG = [1, 8, 8, 4]
CONV_W = {1: "int8", 2: "int32"}


@pytest.mark.parametrize(
    ("name", "inputs", "output", "params", "constants", "mapped"),
    [
        ("ADD", [IMG, IMG], IMG, {}, None, True),
        ("LEAKY_RELU", [IMG], IMG, {}, None, False),
        ("HARD_SWISH", [IMG], IMG, {}, None, False),
        ("CONV_2D", [IMG, [8, 3, 3, 4], [8]], [1, 6, 6, 8], {}, CONV_W, True),
        ("CONV_2D", [IMG, [8, 3, 3, 4], [8]], [1, 6, 6, 8], {"dilation_w": 2}, CONV_W, False),
        ("CONV_2D", [IMG, [8, 3, 3, 4], [8]], [1, 6, 6, 8], {}, {1: "float32"}, False),
        ("MAX_POOL_2D", [IMG], [1, 4, 4, 4], {"fused_activation": "NONE"}, None, True),
        ("MAX_POOL_2D", [IMG], [1, 4, 4, 4], {"fused_activation": "RELU"}, None, False),
        ("FULLY_CONNECTED", [[1, 16], [10, 16]], [1, 10], {}, {1: "int8"}, True),
        ("FULLY_CONNECTED", [[1, 3, 16], [10, 16]], [1, 3, 10], {}, {1: "int8"}, False),
        ("SOFTMAX", [[1, 10]], [1, 10], {}, None, True),
        ("SOFTMAX", [[1, 4, 10]], [1, 4, 10], {}, None, False),
        ("SOFTMAX", [[1, 20000]], [1, 20000], {}, None, False),
        ("MEAN", [IMG, [2]], [1, 4], {"axis": [1, 2]}, {1: "int32"}, True),
        ("MEAN", [IMG, [1]], [8, 8, 4], {"axis": [0]}, {1: "int32"}, False),
        ("MEAN", [[1, 8, 8, 6], [1]], [1, 8, 8], {"axis": [-1]}, {1: "int32"}, False),
        (
            "PAD",
            [IMG, [4, 2]],
            [1, 10, 10, 4],
            {"paddings": [[0, 0], [1, 1], [1, 1], [0, 0]]},
            {1: "int32"},
            True,
        ),
        (
            "PAD",
            [IMG, [4, 2]],
            [3, 8, 8, 4],
            {"paddings": [[1, 1], [0, 0], [0, 0], [0, 0]]},
            {1: "int32"},
            False,
        ),
        (
            "CONCATENATION",
            [IMG, IMG],
            [1, 8, 8, 8],
            {"constant_inputs": 1, "constant_inputs_zero": True},
            {1: "int8"},
            True,
        ),
        (
            "CONCATENATION",
            [IMG, IMG],
            [1, 8, 8, 8],
            {"constant_inputs": 1, "constant_inputs_zero": False},
            {1: "int8"},
            False,
        ),
        ("PACK", [[8, 4], [8, 4]], [2, 8, 4], {"axis": 0}, None, False),
        ("ADD", [[2, 8, 8, 4], [2, 8, 8, 4]], [2, 8, 8, 4], {}, None, False),  # 4 dims > 1
        ("ADD", [IMG, IMG], IMG, {}, None, True),
    ],
)
def test_operator_rules(name, inputs, output, params, constants, mapped):
    m = one_op(name, inputs, output, params, constants)
    assert (m["mapped_ops"] == 1) is mapped
    assert m["compatible"] is mapped
    if not mapped:
        assert name in m["unsupported"]
        assert m["first_cpu_op"]["op"] == name


def test_int16_activations_are_not_int8():
    m = one_op("ADD", [IMG, IMG], IMG, dtype="int16")
    assert "not fully int8" in m["unsupported"]
    assert m["mapped_ops"] == 0


# ---- compiler output ----------------------------------------------------------------------


def test_parse_stdout_with_float_io_table():
    r = parse_compiler_output((DATA / "edgetpu_compiler_stdout_float_io.txt").read_text())
    assert r["compiler_version"] == "16.0.384591198"
    assert (r["mapped_ops"], r["cpu_ops"], r["total_ops"]) == (8, 2, 10)
    assert r["subgraphs"] == 1
    assert r["output_model"] == "digits_int8_float_io_edgetpu.tflite"
    assert r["log_file"] == "out/digits_int8_float_io_edgetpu.log"
    assert r["off_chip_memory"] == "0.00B"
    assert [(o["op"], o["count"], o["mapped"]) for o in r["ops"]] == [
        ("QUANTIZE", 1, False),
        ("CONV_2D", 2, True),
        ("MAX_POOL_2D", 2, True),
        ("RESHAPE", 1, True),
        ("FULLY_CONNECTED", 2, True),
        ("SOFTMAX", 1, True),
        ("DEQUANTIZE", 1, False),
    ]
    assert r["ops"][-1]["status"] == "Operation is working on an unsupported data type"


def test_parse_stdout_listing_only_unmapped_ops():
    r = parse_compiler_output((DATA / "edgetpu_compiler_stdout_unmapped_only.txt").read_text())
    assert (r["mapped_ops"], r["cpu_ops"], r["total_ops"]) == (147, 5, 152)
    assert [o["op"] for o in r["ops"]] == ["CUSTOM", "DEQUANTIZE", "RESHAPE"]
    assert not any(o["mapped"] for o in r["ops"])


def test_parse_stdout_of_fully_mapped_model_without_table():
    r = parse_compiler_output((DATA / "edgetpu_compiler_stdout_all_mapped.txt").read_text())
    assert (r["mapped_ops"], r["cpu_ops"], r["total_ops"]) == (8, 0, 8)
    assert r["ops"] == []
    assert r["output_model"] == "digits_int8_edgetpu.tflite"


def test_parse_operation_log_with_repeated_operators():
    r = parse_compiler_output((DATA / "edgetpu_compiler_v14.log").read_text())
    assert r["compiler_version"] == "14.1.317412892"
    assert r["output_model"] == "yolo_tiny_int8_edgetpu.tflite"
    assert (r["mapped_ops"], r["cpu_ops"], r["total_ops"]) == (19, 6, 25)
    conv = [(o["count"], o["status"]) for o in r["ops"] if o["op"] == "CONV_2D"]
    assert conv == [(11, "Mapped to Edge TPU"), (2, "More than one subgraph is not supported")]


def test_parse_empty_text():
    r = parse_compiler_output("")
    assert r["ops"] == [] and r["mapped_ops"] is None and r["compiler_version"] is None


FAKE_COMPILER = """#!{python}
import os, shutil, sys
if os.environ.get("FAKE_EDGETPU_MODE") == "fail":
    print("Edge TPU Compiler version 16.0.384591198")
    print("ERROR: Model not quantized", file=sys.stderr)
    sys.exit(1)
flag, o, out, model = sys.argv[1:]
assert (flag, o) == ("-s", "-o"), sys.argv
stem = os.path.splitext(os.path.basename(model))[0]
if os.environ.get("FAKE_EDGETPU_MODE") != "no_output":
    shutil.copy(model, os.path.join(out, stem + "_edgetpu.tflite"))
    shutil.copy({log!r}, os.path.join(out, stem + "_edgetpu.log"))
sys.stdout.write(open({stdout!r}).read())
"""


@pytest.fixture
def fake_compiler(tmp_path, monkeypatch):
    """An ``edgetpu_compiler`` on PATH that prints the stored stdout and writes the stored log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "edgetpu_compiler"
    exe.write_text(
        FAKE_COMPILER.format(
            python=sys.executable,
            log=str(DATA / "edgetpu_compiler_v14.log"),
            stdout=str(DATA / "edgetpu_compiler_stdout_float_io.txt"),
        )
    )
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return exe


def test_compile_model_with_fake_compiler(fake_compiler, models, tmp_path):
    assert find_compiler() == str(fake_compiler)
    r = compile_model(models["cnn"], tmp_path / "out")
    assert r["compiled_path"] == str(tmp_path / "out" / "cnn_edgetpu.tflite")
    assert Path(r["compiled_path"]).read_bytes() == models["cnn"].read_bytes()
    assert r["log_path"] == str(tmp_path / "out" / "cnn_edgetpu.log")
    assert (r["mapped_ops"], r["cpu_ops"]) == (8, 2)  # the summary lines of stdout
    assert [o["op"] for o in r["ops"]][:2] == ["CONCATENATION", "MAX_POOL_2D"]  # from the log
    assert "Compilation succeeded" in r["output"]


def test_compile_model_failure(fake_compiler, models, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_EDGETPU_MODE", "fail")
    with pytest.raises(ConversionError, match="Model not quantized") as excinfo:
        compile_model(models["cnn"], tmp_path / "out")
    assert "tfedge inspect" in excinfo.value.hint


def test_compile_model_without_output_file(fake_compiler, models, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_EDGETPU_MODE", "no_output")
    with pytest.raises(ConversionError, match="wrote no compiled model"):
        compile_model(models["cnn"], tmp_path / "out")


def test_compile_model_missing_input(fake_compiler, tmp_path):
    with pytest.raises(InputFileError, match="model not found: "):
        compile_model(tmp_path / "missing.tflite", tmp_path / "out")


def test_compiler_not_installed(models, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_compiler() is None
    with pytest.raises(CompilerNotFoundError) as excinfo:
        compile_model(models["cnn"], tmp_path / "out")
    assert isinstance(excinfo.value, ConversionError)
    assert "edgetpu-compiler" in excinfo.value.hint
    assert "x86_64" in excinfo.value.hint


@pytest.mark.skipif(
    find_compiler() is None,
    reason="edgetpu_compiler is not installed",
)
def test_prediction_matches_the_real_compiler(models, tmp_path):
    for name in ("cnn", "leaky_relu"):
        r = compile_model(models[name], tmp_path / name)
        m = inspect_model(models[name])["edgetpu"]
        assert (r["mapped_ops"], r["cpu_ops"]) == (m["mapped_ops"], m["cpu_ops"])
