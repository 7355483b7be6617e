"""The README's "In your own training code" snippets, run as written on the digits."""

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _snippets() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## In your own training code", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _int8_kernels(blob: bytes) -> list:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=blob)
    interpreter.allocate_tensors()
    return [
        (op["op_name"], interpreter.get_tensor(op["inputs"][1]))
        for op in interpreter._get_ops_details()
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
    ]


def test_the_section_has_the_three_snippets():
    snippets = _snippets()
    assert len(snippets) == 3
    assert "import keras\n" in snippets[0] and "import tf_keras\n" in snippets[1]
    assert "models.step(m)" in snippets[2]


def test_keras3_snippet(tmp_path, monkeypatch, digits, tflite_accuracy):
    from tfedge.core.backend import is_keras3_model, keras3

    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(_snippets()[0], "README.md (Keras 3)", "exec"), namespace)
    final = namespace["final"]
    assert is_keras3_model(final)
    blob = (tmp_path / "model.tflite").read_bytes()
    kernels = _int8_kernels(blob)
    assert {name for name, _ in kernels} == {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
    for name, kernel in kernels:
        assert np.mean(kernel == 0) >= 0.79, name
    check = namespace["check"]  # the snippet's check_finalized of model.tflite
    assert check["met"] is True, check["notes"]
    assert check["requested"] == {"sparsity": 0.8, "structure": None, "clusters": 16, "qat": True}
    assert check["achieved"]["sparsity"] >= 0.79 and check["achieved"]["unique_values_max"] <= 16
    assert check["fully_integer"] is True
    loaded = keras3.saving.load_model(tmp_path / "compressed.keras")
    assert is_keras3_model(loaded)
    _, test = digits
    float_accuracy = namespace["model"].evaluate(test.x, test.y, verbose=0)[1]
    assert tflite_accuracy(blob, test, tmp_path) >= float_accuracy - 0.06


def test_tf_keras_snippets(tmp_path, monkeypatch, digits, tflite_accuracy):
    from tfedge.core.backend import is_keras2_model
    from tfedge.models.pruning import weight_sparsity

    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(_snippets()[1], "README.md (tf_keras)", "exec"), namespace)
    assert is_keras2_model(namespace["final"])
    blob = (tmp_path / "model.tflite").read_bytes()
    check = namespace["check_finalized"](namespace["final"], blob)
    assert check["met"] is True, check["notes"]
    assert check["requested"]["sparsity"] == 0.8
    assert len(check["layers"]) == 3  # the conv, depthwise and dense kernels, each pruned
    assert all(layer["pruned"] and layer["sparsity"] >= 0.79 for layer in check["layers"])
    for name, kernel in _int8_kernels(blob):
        assert np.mean(kernel == 0) >= 0.79, name  # the depthwise kernel too
    _, test = digits
    float_accuracy = namespace["model"].evaluate(test.x, test.y, verbose=0)[1]
    assert tflite_accuracy(blob, test, tmp_path) >= float_accuracy - 0.03
    exec(compile(_snippets()[2], "README.md (GradientTape)", "exec"), namespace)
    assert weight_sparsity(namespace["final"]) == pytest.approx(0.5, abs=0.005)
