"""Models tfedge did not write: stateful ones (resource variables) and ones with custom operators.

Real conversions through the TFLite converter, run through the command line. The stateful model
keeps its last input in a ``tf.Variable`` (``VAR_HANDLE`` / ``READ_VARIABLE`` /
``ASSIGN_VARIABLE``, as streaming keyword-spotting models do) and answers ``relu(x - last)``:
started from its initial state (``last = 0``) it answers ``relu(x)``, so results that carried
state from one sample to the next would show. The custom-operator model is a real
``TRANSPOSE_CONV`` model rewritten to MediaPipe's ``Convolution2DTransposeBias``, which LiteRT
runs in its default (XNNPACK) delegate only.
"""

import json
import struct

import numpy as np
import pytest

from tfedge.cli import main

pytestmark = pytest.mark.slow

FEATURES = 4


def run_cli(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("Error:")]


def _convert_function(tf, module, fn, int8: bool) -> bytes:
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], module)
    converter.experimental_enable_resource_variables = True
    if int8:
        rng = np.random.default_rng(0)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [rng.random((1, FEATURES), dtype=np.float32)] for _ in range(32)
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


@pytest.fixture(scope="module")
def stateful(tmp_path_factory):
    """``relu(x - last)`` with ``last`` a resource variable (float32 and int8), a stateless
    ``relu(x)`` twin, and data labelled with ``argmax(x)``."""
    from tfedge.core.backend import tf

    class Delta(tf.Module):
        def __init__(self):
            super().__init__()
            self.last = tf.Variable(tf.zeros([1, FEATURES]), name="last")

        @tf.function(input_signature=[tf.TensorSpec([1, FEATURES], tf.float32)])
        def __call__(self, x):
            out = tf.nn.relu(x - self.last)
            self.last.assign(x)
            return out

    class Plain(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, FEATURES], tf.float32)])
        def __call__(self, x):
            return tf.nn.relu(x)

    root = tmp_path_factory.mktemp("stateful")
    paths = {}
    delta, plain = Delta(), Plain()
    for name, module, int8 in (
        ("float32", delta, False),
        ("int8", delta, True),
        ("stateless", plain, False),
    ):
        paths[name] = root / f"{name}.tflite"
        fn = module.__call__.get_concrete_function()
        paths[name].write_bytes(_convert_function(tf, module, fn, int8))
    x = np.random.default_rng(1).random((40, FEATURES), dtype=np.float32)
    paths["data"] = root / "data.npz"
    np.savez(paths["data"], x=x, y=x.argmax(axis=1))
    return paths


def _as_custom_op(blob: bytes, custom_code: str) -> bytes:
    """The model with its TRANSPOSE_CONV turned into MediaPipe's custom transpose convolution."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(blob, 0)
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.CUSTOM
    code.customCode = custom_code
    model.operatorCodes.append(code)
    (op,) = model.subgraphs[0].operators
    builtin = model.operatorCodes[op.opcodeIndex]
    assert max(builtin.builtinCode, builtin.deprecatedBuiltinCode) == (
        fb.BuiltinOperator.TRANSPOSE_CONV
    )
    op.opcodeIndex = len(model.operatorCodes) - 1
    output_shape, weights, x, bias = op.inputs
    op.inputs = [x, weights, bias]  # MediaPipe's order: input, OHWI weights, bias
    op.builtinOptionsType, op.builtinOptions = 0, None
    op.customOptions = list(struct.pack("<iii", 1, 2, 2))  # padding SAME, stride 2 x 2
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.fixture(scope="module")
def custom_op(tmp_path_factory):
    """A transpose convolution as a built-in TRANSPOSE_CONV, as the custom
    Convolution2DTransposeBias, and as a custom operator no runtime has."""
    from tfedge.core.backend import keras, tf

    model = keras.Sequential(
        [
            keras.Input((4, 4, 2), batch_size=1),
            keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same", name="up"),
        ]
    )
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.get_weights()])
    blob = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    root = tmp_path_factory.mktemp("custom")
    paths = {"builtin": root / "builtin.tflite", "custom": root / "custom.tflite"}
    paths["builtin"].write_bytes(blob)
    paths["custom"].write_bytes(_as_custom_op(blob, "Convolution2DTransposeBias"))
    paths["unknown"] = root / "unknown.tflite"
    paths["unknown"].write_bytes(_as_custom_op(blob, "TfedgeNoSuchOp"))
    return paths


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_inspect_names_the_state(stateful, capsys, kind):
    status, out, err = run_cli(capsys, "inspect", stateful[kind])
    assert status == 0, err
    (line,) = [line for line in out.splitlines() if line.startswith("State")]
    assert "last" in line and "reset them before every sample" in line
    status, out, err = run_cli(capsys, "inspect", stateful[kind], "--json")
    assert status == 0, err
    info = json.loads(out)
    assert info["state"] == ["last"] and info["custom_ops"] == []
    assert {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE"} <= set(info["ops"])
    status, out, _ = run_cli(capsys, "inspect", stateful["stateless"], "--json")
    assert json.loads(out)["state"] == []


@pytest.mark.parametrize("kind", ["float32", "int8"])
def test_bench_resets_the_state_before_every_sample(stateful, capsys, tmp_path, kind):
    results = tmp_path / "bench.json"
    args = ("bench", stateful[kind], "--data", stateful["data"], "--runs", 5, "--warmup", 1)
    status, out, err = run_cli(capsys, *args, "--json", results)
    assert status == 0, err
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "reset before every sample" in notes[0], out
    (row,) = json.loads(results.read_text())["results"]
    assert row["stateful"] is True and row["samples"] == 40
    # from its initial state the model answers relu(x): argmax(x), the label, every time (with
    # the state carried over it answers relu(x - previous x) and misses about half)
    assert row["accuracy"] >= (1.0 if kind == "float32" else 0.95)


def test_bench_of_a_stateless_model_says_nothing_of_state(stateful, capsys, tmp_path):
    results = tmp_path / "bench.json"
    args = ("bench", stateful["stateless"], "--data", stateful["data"], "--runs", 3)
    status, out, err = run_cli(capsys, *args, "--json", results)
    assert status == 0, err
    assert "note:" not in out
    (row,) = json.loads(results.read_text())["results"]
    assert row["stateful"] is False and row["accuracy"] == 1.0


def test_compare_a_stateful_model_with_itself(stateful, capsys, tmp_path):
    out_json = tmp_path / "compare.json"
    args = ("compare", stateful["float32"], stateful["float32"], "--data", stateful["data"])
    status, out, err = run_cli(capsys, *args, "--json", out_json)
    assert status == 0, err
    assert sum(line.startswith("note:") for line in out.splitlines()) == 1, out
    assert "keep state between invocations" in out and "reset before every sample" in out
    result = json.loads(out_json.read_text())
    assert result["outputs"][0]["identical"] and result["accuracy"] == {"a": 1.0, "b": 1.0}
    assert result["same_model"] and result["tensors"]
    # the variable's handle holds no values: it is not among the compared tensors
    assert "VAR_HANDLE" not in {t["op"] for t in result["tensors"]}
    assert all(t["max_abs_diff"] == 0 for t in result["tensors"])


def test_compare_stateful_with_its_stateless_twin(stateful, capsys, tmp_path):
    """Reset before every sample, relu(x - last) is relu(x) exactly."""
    out_json = tmp_path / "compare.json"
    args = ("compare", stateful["float32"], stateful["stateless"], "--data", stateful["data"])
    status, out, err = run_cli(capsys, *args, "--json", out_json)
    assert status == 0, err
    result = json.loads(out_json.read_text())
    assert result["outputs"][0]["max_abs_diff"] == 0
    (note,) = result["notes"]
    assert note.startswith("model A (last) keeps state")


def test_compare_stateful_float32_with_int8(stateful, capsys, tmp_path):
    out_json = tmp_path / "compare.json"
    args = ("compare", stateful["float32"], stateful["int8"], "--data", stateful["data"])
    status, out, err = run_cli(capsys, *args, "--json", out_json)
    assert status == 0, err
    result = json.loads(out_json.read_text())
    (output,) = result["outputs"]
    # per-channel SQNR (each output's variance over the samples is the signal, not its power)
    assert output["sqnr_db"] > 20 and output["top1_agreement"] >= 0.95
    assert result["notes"] and "models A (last) and B (last)" in result["notes"][0]


def test_inspect_and_bench_a_custom_operator(custom_op, capsys):
    status, out, err = run_cli(capsys, "inspect", custom_op["custom"], "--json")
    assert status == 0, err
    assert json.loads(out)["custom_ops"] == ["Convolution2DTransposeBias"]
    status, out, err = run_cli(capsys, "bench", custom_op["custom"], "--runs", 3)
    assert status == 0, err
    assert "custom.tflite" in out


def test_compare_falls_back_to_outputs_for_custom_operators(custom_op, capsys, tmp_path):
    out_json = tmp_path / "compare.json"
    args = ("compare", custom_op["builtin"], custom_op["custom"], "--samples", 8)
    status, out, err = run_cli(capsys, *args, "--json", out_json)
    assert status == 0, err
    (line,) = [line for line in out.splitlines() if line.startswith("per operator")]
    assert "not compared" in line and "Convolution2DTransposeBias" in line
    assert "outputs compared only" in line
    result = json.loads(out_json.read_text())
    assert "model B" in result["layers_skipped"] and result["tensors"] == []
    # the same transpose convolution (XNNPACK runs both): the same outputs up to float rounding
    (output,) = result["outputs"]
    assert output["max_abs_diff"] < 1e-4 and (output["identical"] or output["sqnr_db"] > 80)


@pytest.mark.parametrize("command", ["compare", "bench"])
def test_a_custom_operator_no_runtime_has_is_one_error(custom_op, capsys, command):
    args = {
        "compare": ("compare", custom_op["unknown"], custom_op["builtin"]),
        "bench": ("bench", custom_op["unknown"], "--runs", 1),
    }[command]
    status, _, err = run_cli(capsys, *args)
    assert status == 1 and "Traceback" not in err, err
    (line,) = error_lines(err)
    assert "TfedgeNoSuchOp" in line and "custom op" in line
    assert "tfedge convert" not in err  # the file is fine: it needs the operator's kernel


def test_shapes_in_messages_are_plain_integers(stateful, custom_op, capsys):
    status, _, err = run_cli(capsys, "compare", stateful["float32"], custom_op["builtin"])
    assert status == 1
    (line,) = error_lines(err)
    assert "shape [1, 4] in A but [1, 8, 8, 3] in B" in line and "np.int" not in err


@pytest.mark.parametrize("command", ["inspect", "bench", "compare"])
def test_a_tensor_name_that_is_not_utf8(stateful, capsys, tmp_path, command):
    """A damaged name (found by the mutation fuzzer): LiteRT's details raise UnicodeDecodeError."""
    blob = stateful["int8"].read_bytes()
    assert blob.count(b"serving_default_x:0") == 1
    damaged = tmp_path / "damaged.tflite"
    damaged.write_bytes(blob.replace(b"serving_default_x:0", b"serv\xff\xffg_default_x:0"))
    args = {
        "inspect": ("inspect", damaged),
        "bench": ("bench", damaged, "--runs", 1, "--warmup", 0),
        "compare": ("compare", stateful["int8"], damaged, "--samples", 2),
    }[command]
    status, _, err = run_cli(capsys, *args)
    assert status in (0, 1) and "Traceback" not in err and "unexpected" not in err, err
    if status:
        (line,) = error_lines(err)
        assert "damaged.tflite" in line and "utf-8" in line
        assert "stopped" not in line  # the runner reports the model, it does not crash


@pytest.mark.fuzz
@pytest.mark.parametrize("kind", ["stateful", "custom"])
def test_mutated_stateful_and_custom_models(stateful, custom_op, tmp_path, kind):
    """The mutation fuzzer's property on these models too: exit 0, or one Error line, in a real
    process (a native crash in LiteRT shows as a signal)."""
    import random

    from test_fuzz import MUTANTS, _mutate, run_process

    source = stateful["int8"] if kind == "stateful" else custom_op["custom"]
    rng = random.Random(f"kinds-{kind}")
    blob = source.read_bytes()
    for index in range(max(MUTANTS // 4, 2)):
        path = tmp_path / f"mutant{index}.tflite"
        path.write_bytes(_mutate(blob, rng))
        for argv in (
            ["inspect", path],
            ["bench", path, "--runs", 1, "--warmup", 0],
            ["compare", source, path, "--samples", 2],
        ):
            run_process(argv, [path, source])


def test_compare_refuses_a_string_model_in_one_line(tmp_path, capsys):
    """A model that takes and returns strings: bench runs it, compare says it feeds numbers."""
    from tfedge.core.backend import tf

    class Strings(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1], tf.string)])
        def __call__(self, x):
            return tf.reshape(x, [1, 1])

    module = Strings()
    fn = module.__call__.get_concrete_function()
    path = tmp_path / "strings.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([fn], module).convert())
    status, _, err = run_cli(capsys, "compare", path, path)
    assert status == 1
    (line,) = error_lines(err)
    assert "takes string input" in line and "compare feeds numbers" in line
    status, _, err = run_cli(capsys, "bench", path, "--runs", 2, "--warmup", 0)
    assert status == 0, err
