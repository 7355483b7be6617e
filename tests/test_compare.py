"""`tfedge compare`: two real conversions through LiteRT, side by side, down to the operator."""

import json

import numpy as np
import pytest

from tfedge.cli import main
from tfedge.commands.compare import compare
from tfedge.core.errors import DataError, InputFileError

pytestmark = pytest.mark.slow


def run_cli(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def perturbed_fc1(trained_digits_cnn, digits, tmp_path_factory):
    """The digits CNN as int8, and the same model with its ``fc1`` weights changed, as int8.

    Both are calibrated on the same data, so every tensor before ``fc1`` is bit-identical.
    """
    from tfedge.converters import convert
    from tfedge.core.backend import keras

    root = tmp_path_factory.mktemp("compare")
    clone = keras.models.clone_model(trained_digits_cnn)
    clone.set_weights(trained_digits_cnn.get_weights())
    fc1 = clone.get_layer("fc1")
    kernel, bias = fc1.get_weights()
    noise = np.random.default_rng(0).normal(0, kernel.std() * 0.5, kernel.shape)
    fc1.set_weights([kernel + noise.astype(kernel.dtype), bias])
    paths = {}
    for name, model in (("original", trained_digits_cnn), ("perturbed", clone)):
        paths[name] = root / f"{name}_int8.tflite"
        paths[name].write_bytes(convert(model, mode="int8", calib=digits[0]))
    return paths


def test_float32_vs_int8_of_the_same_model(digits_tflite, test_npz, digits):
    result = compare(digits_tflite["float32"], digits_tflite["int8"], data=test_npz)
    assert result["samples"] == 397
    (out,) = result["outputs"]
    assert out["top1_agreement"] >= 0.97
    assert out["sqnr_db"] > 20 and 0 < out["mean_abs_diff"] <= out["max_abs_diff"] < 0.5
    assert abs(result["accuracy"]["a"] - result["accuracy"]["b"]) <= 0.02
    assert result["accuracy"]["a"] > 0.9  # outputs were dequantized/compared on the right classes
    assert result["same_model"] and len(result["tensors"]) >= 6
    ops = [t["op"] for t in result["tensors"]]
    assert "CONV_2D" in ops and "FULLY_CONNECTED" in ops
    assert all(t["step"] for t in result["tensors"])  # B is int8: one quantization step each
    assert result["first_divergence"] is not None


def test_first_divergence_is_the_changed_layer(perturbed_fc1, test_npz):
    result = compare(perturbed_fc1["original"], perturbed_fc1["perturbed"], data=test_npz)
    first = result["first_divergence"]
    assert first is not None and "fc1" in first["name"], first
    assert first["op"] == "FULLY_CONNECTED"
    before = result["tensors"][: result["tensors"].index(first)]
    assert before and all(t["identical"] and t["max_abs_diff"] == 0 for t in before)
    assert result["outputs"][0]["top1_agreement"] < 1.0 or result["outputs"][0]["max_abs_diff"] > 0


def test_a_model_against_itself_is_identical(digits_tflite, test_npz):
    result = compare(digits_tflite["int8"], digits_tflite["int8"], data=test_npz, samples=50)
    (out,) = result["outputs"]
    assert out["identical"] and out["max_abs_diff"] == 0 and out["sqnr_db"] == 300.0
    assert out["top1_agreement"] == 1.0 and result["samples"] == 50
    assert result["first_divergence"] is None and all(t["identical"] for t in result["tensors"])


def test_models_of_different_keras_models_have_no_layer_match(digits_tflite, digits, tmp_path):
    from tfedge.converters import convert
    from tfedge.models.zoo import build

    other = tmp_path / "ds_cnn_int8.tflite"
    other.write_bytes(convert(build("ds_cnn"), mode="int8", calib=digits[0].take(100)))
    result = compare(digits_tflite["int8"], other, samples=20)
    assert not result["same_model"] and result["first_divergence"] is None
    assert "random" in result["inputs"] and result["samples"] == 20
    assert result["outputs"][0]["top1_agreement"] is not None


def test_compare_command_prints_and_writes_json(perturbed_fc1, test_npz, capsys, tmp_path):
    out = tmp_path / "cmp.json"
    status, printed, err = run_cli(
        capsys,
        "compare",
        perturbed_fc1["original"],
        perturbed_fc1["perturbed"],
        "--data",
        test_npz,
        "--json",
        out,
    )
    assert status == 0, err
    assert "first divergence at operator" in printed and "fc1" in printed
    assert "top-1 agree" in printed and "XNNPACK" not in printed + err
    saved = json.loads(out.read_text())
    assert "fc1" in saved["first_divergence"]["name"]


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-compare")
    (root / "text.tflite").write_text("not a model")
    np.savez(root / "wrong_shape.npz", x=np.zeros((4, 8, 8, 3), np.float32))
    return root


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing", "not found"),
        ("text", "not a TFLite model"),
        ("keras", "tfedge convert"),
        ("outputs", "output 0 has shape"),
        ("data shape", "shape"),
        ("labels", "classes"),
    ],
)
def test_bad_compare_input(
    case, needle, bad, digits_tflite, digits_cnn_path, binary_digits, capsys
):
    a, b = digits_tflite["int8"], digits_tflite["float32"]
    extra = []
    if case == "missing":
        b = bad / "missing.tflite"
    elif case == "text":
        b = bad / "text.tflite"
    elif case == "keras":
        b = digits_cnn_path
    elif case == "outputs":
        b = binary_digits["tflite"]
    elif case == "data shape":
        extra = ["--data", bad / "wrong_shape.npz"]
    elif case == "labels":
        # one-output binary labels (0/1) fit; a 10-class model's test digits (0..9) do not
        a = b = binary_digits["tflite"]
        np.savez(bad / "digits_labels.npz", x=digits_tflite_x(), y=np.arange(10).repeat(3))
        extra = ["--data", bad / "digits_labels.npz"]
    status, _, err = run_cli(capsys, "compare", a, b, *extra)
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 1 and lines[0].startswith("Error: ") and "Traceback" not in err, err
    assert sum(line.startswith("Error:") for line in lines) == 1
    assert needle.lower() in err.lower(), err


def digits_tflite_x():
    from tfedge.core.digits import load_digits

    return load_digits()[1].x[:30]


def test_library_errors_are_typed(digits_tflite, binary_digits, tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        compare(tmp_path / "a.tflite", digits_tflite["int8"])
    with pytest.raises(DataError, match=r"labels range 99\.\.99 but the models have 10 classes"):
        compare(
            digits_tflite["int8"],
            digits_tflite["float32"],
            data=(digits_tflite_x(), np.full(30, 99)),
        )
