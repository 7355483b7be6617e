"""The runner's per-sample answers (``keep_top1``): what the search's confirmation is built on."""

import numpy as np
import pytest

from tfedge.devices.runner import bench_models


def _top1_row(path, data):
    ((kind, row),) = list(bench_models([str(path)], data=data, warmup=0, runs=1, keep_top1=True))
    assert kind == "result", row
    return row


@pytest.mark.parametrize("mode", ["int8", "float32"])
def test_top1_agrees_with_the_accuracy(digits_tflite, digits, mode):
    test = digits[1]
    row = _top1_row(digits_tflite[mode], (test.x, test.y))
    top1 = np.asarray(row["top1"])
    assert top1.shape == (len(test),) and set(top1) <= set(range(10))
    assert np.mean(top1 == test.y) == pytest.approx(row["accuracy"], abs=1e-6)
    plain = list(bench_models([str(digits_tflite[mode])], data=(test.x, test.y), runs=1))
    assert "top1" not in plain[0][1]  # only when asked for


def test_top1_of_a_binary_classifier_is_its_thresholded_output(tmp_path):
    """One sigmoid output: the class is 1 above 0.5, as the accuracy counts it."""
    from tfedge.converters import convert
    from tfedge.core.backend import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(1, activation="sigmoid")], name="binary"
    )
    model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy")
    model.fit(x, y, epochs=30, verbose=0)
    path = tmp_path / "binary.tflite"
    path.write_bytes(convert(model, calib=x))
    row = _top1_row(path, (x, y))
    top1 = np.asarray(row["top1"])
    assert set(top1) == {0, 1}
    assert np.mean(top1 == y) == pytest.approx(row["accuracy"], abs=1e-6)
    assert row["accuracy"] > 0.9
