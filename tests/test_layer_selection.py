"""``--int16`` / ``--keep-float`` select layers by their exact names, and say what they selected.

The models are built to trip a loose matcher: the model's own name is a prefix of every tensor
name, ``dense`` and ``dense_1`` are both layers (Keras 3 traces ``dense`` under the scope
``dense_1``), a shared layer is called twice, a nested model has layers named like the outer
ones, and there are two outputs (which the converter names ``Identity`` and ``Identity_1``).
Every conversion and interpreter is real.
"""

import numpy as np
import pytest

from tfedge.cli import main
from tfedge.converters import convert, convert_file
from tfedge.converters.tensor_names import LayerMatcher, format_selection, output_layers
from tfedge.core.errors import ConversionError
from tfedge.core.inspector import inspect_model

FLAVOURS = ["tf_keras", "keras3"]


def _api(flavour):
    from tfedge.core.backend import keras, keras3

    return keras if flavour == "tf_keras" else keras3


def sequential(flavour):
    """A Sequential model named ``digitnet`` with layers ``dense`` and ``dense_1``."""
    K = _api(flavour)
    K.utils.set_random_seed(0)
    L = K.layers
    return K.Sequential(
        [
            K.Input((8, 8, 1)),
            L.Conv2D(4, 3, activation="relu", name="conv"),
            L.Flatten(name="flat"),
            L.Dense(16, activation="relu", name="dense"),
            L.Dropout(0.1, name="drop"),
            L.Dense(16, activation="relu", name="dense_1"),
            L.Dense(10, name="logits"),
        ],
        name="digitnet",
    )


def functional(flavour):
    """Two outputs, a shared layer called twice and a nested model with its own ``dense``."""
    K = _api(flavour)
    K.utils.set_random_seed(0)
    L = K.layers
    inner = K.Sequential(
        [K.Input((8,)), L.Dense(8, name="dense"), L.Dense(8, name="dense_1")], name="inner"
    )
    inputs = K.Input((8,))
    shared = L.Dense(8, activation="relu", name="shared")
    x = inner(shared(shared(inputs)))
    a = L.Dense(4, name="head_a")(x)
    b = L.Dense(3, activation="relu", name="head_b")(x)
    return K.Model(inputs, [a, b], name="outer")


EXPECTED = {
    # operator types, in graph order, of each layer in the float conversion
    "sequential": {
        "conv": ["CONV_2D"],
        "flat": ["RESHAPE"],
        "dense": ["FULLY_CONNECTED"],
        "drop": [],
        "dense_1": ["FULLY_CONNECTED"],
        "logits": ["FULLY_CONNECTED"],
    },
    "functional": {
        "shared": ["FULLY_CONNECTED", "FULLY_CONNECTED"],
        "inner": ["FULLY_CONNECTED", "FULLY_CONNECTED"],
        "head_a": ["FULLY_CONNECTED"],
        "head_b": ["FULLY_CONNECTED"],
    },
}
BUILD = {"sequential": sequential, "functional": functional}


@pytest.fixture(scope="module")
def calib():
    return np.random.default_rng(0).uniform(0, 1, (40, 8, 8, 1)).astype(np.float32)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("kind", sorted(BUILD))
def test_tensorflow_tensor_names_still_map_to_their_keras_layers(kind, flavour):
    """The guard for TensorFlow's naming conventions, which LayerMatcher alone reads.

    If this fails after a TensorFlow or Keras upgrade, the converter names tensors differently
    (``model/layer/Op``, Keras 3's ``layer_N`` scopes, ``Identity_N`` outputs): fix
    ``converters/tensor_names.py`` (LayerMatcher), not the callers.
    """
    model = BUILD[kind](flavour)
    blob = convert(model, mode="float32")
    matcher = LayerMatcher.of(model)
    found = matcher.operators(blob)
    ops = inspect_model(blob, detail=True)["operators"]
    kinds = {layer: [ops[i]["op"] for i in indexes] for layer, indexes in found.items()}
    expected = {layer: kinds_ for layer, kinds_ in EXPECTED[kind].items()}
    assert kinds == {**{layer: [] for layer in matcher.layers}, **expected}, (
        f"TensorFlow's tensor names no longer map to the Keras layers of a {flavour} {kind} "
        f"model: names {[t['name'] for t in inspect_model(blob, detail=True)['tensors']]}"
    )
    owned = {i for indexes in found.values() for i in indexes}
    assert owned == set(range(len(ops))), "an operator belongs to no layer"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_output_layers_come_from_public_keras(flavour):
    assert output_layers(sequential(flavour)) == ["logits"]
    assert output_layers(functional(flavour)) == ["head_a", "head_b"]


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("option", ["int16", "keep_float"])
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("digitnet", "'digitnet' is the model's own name"),
        ("dens", "no layer named 'dens'"),
        ("Dense", "no layer named 'Dense'"),
        ("drop", "layer 'drop' became no operator of its own"),
        ("x" * 500, "no layer named 'xxxx"),
    ],
)
def test_a_name_that_is_not_a_layer_is_refused_with_the_layers_listed(
    flavour, option, name, expected, calib
):
    with pytest.raises(ConversionError) as err:
        convert(sequential(flavour), calib=calib, calib_samples=10, **{option: [name]})
    message = str(err.value)
    assert expected in message, message
    assert "'conv', 'flat', 'dense', 'dense_1', 'logits'" in message, message
    assert len(message) < 400, message
    assert err.value.option == option


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_keep_float_of_dense_1_keeps_that_layer_float_and_no_other(flavour, calib, tmp_path):
    result = convert_file(
        sequential(flavour), tmp_path / "m.tflite", calib=calib, keep_float=["dense_1"]
    )
    assert result.selected == [
        {"option": "keep_float", "layer": "dense_1", "operators": 1, "ops": ["FULLY_CONNECTED"]}
    ]
    assert format_selection(result.selected) == [
        "keep-float: layer dense_1: 1 operator (FULLY_CONNECTED)"
    ]
    info = inspect_model(result.blob, detail=True)
    dtypes = {t["index"]: t["dtype"] for t in info["tensors"] if t["subgraph"] == 0}
    fc = [op for op in info["operators"] if op["op"] == "FULLY_CONNECTED"]
    assert [dtypes[op["outputs"][0]] for op in fc] == ["int8", "float32", "int8"]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_int16_says_which_operators_it_selected(flavour, calib, tmp_path):
    result = convert_file(sequential(flavour), tmp_path / "m.tflite", calib=calib, int16=["dense"])
    assert result.info["fully_integer"]
    (entry,) = result.selected
    assert entry["layer"] == "dense" and entry["ops"] == ["FULLY_CONNECTED"]
    assert entry["reader_layers"] == ["dense_1"]
    assert format_selection(result.selected) == [
        "int16: layer dense: 1 operator (FULLY_CONNECTED), and 1 that reads its output "
        "(FULLY_CONNECTED, of dense_1)"
    ]
    # The recipe reached exactly those operators (ai-edge-quantizer's scopes): the layer and its
    # reader compute in int16, the rest in int8.
    info = inspect_model(result.blob, detail=True)
    dtypes = {t["index"]: t["dtype"] for t in info["tensors"] if t["subgraph"] == 0}
    computed = [
        (op["op"], dtypes[op["outputs"][0]])
        for op in info["operators"]
        if op["op"] not in ("QUANTIZE", "DEQUANTIZE")
    ]
    assert computed == [
        ("CONV_2D", "int8"),
        ("RESHAPE", "int8"),
        ("FULLY_CONNECTED", "int16"),
        ("FULLY_CONNECTED", "int16"),
        ("FULLY_CONNECTED", "int8"),
    ], computed


@pytest.mark.parametrize("flag", ["--int16", "--keep-float"])
def test_the_command_line_refuses_the_model_name_in_one_error_line(flag, tmp_path, capsys):
    path = tmp_path / "digitnet.keras"
    sequential("keras3").save(path)
    np.savez(tmp_path / "calib.npz", x=np.zeros((5, 8, 8, 1), np.float32))
    out = tmp_path / "x.tflite"
    argv = ["convert", str(path), "--calib", str(tmp_path / "calib.npz"), flag, "digitnet"]
    assert main([*argv, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"Error: {flag}: no layer named 'digitnet'"), errors[0]
    assert not out.exists()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_layer_errors_name_every_operator_by_its_keras_layer(flavour, calib):
    """The guard for what ``tfedge analyze`` reads from TensorFlow's QuantizationDebugger: its
    debug model pairs every int8 operator with a float twin through a NumericVerify operator
    (int8 output first, float second), and its plain model keeps the converter's names.

    If this fails after a TensorFlow upgrade, fix ``_run_debug_model`` / ``_original_names`` in
    ``converters/layer_errors.py``.
    """
    from tfedge.converters.layer_errors import layer_errors

    rows = layer_errors(sequential(flavour), calib, calib_samples=20)
    assert [(row["name"], row["op"]) for row in rows] == [
        ("conv", "CONV_2D"),
        ("flat", "RESHAPE"),
        ("dense", "FULLY_CONNECTED"),
        ("dense_1", "FULLY_CONNECTED"),
        ("logits", "FULLY_CONNECTED"),
    ], [(row["name"], row["tensor"], row["op"]) for row in rows]
    for row in rows:  # an untrained model's int8 error is about its output rounding
        assert 0 <= row["rmse_over_scale"] < 1.5 and row["cosine"] > 0.9, row


def test_keep_float_of_every_layer_is_refused_as_a_float_model(calib):
    layers = list(EXPECTED["sequential"])
    layers.remove("drop")
    with pytest.raises(ConversionError, match="covers every operator of the model") as err:
        convert(sequential("keras3"), calib=calib, calib_samples=10, keep_float=layers)
    assert "--mode float32" in err.value.hint
