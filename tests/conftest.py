"""Shared fixtures: the bundled digits, a trained reference CNN and its real conversions."""

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def digits():
    """``(train, test)`` :class:`tfedge.data.Dataset` of the bundled digits at 16x16x1."""
    from tfedge.digits import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory):
    """A session-wide folder for models and data files the tests share."""
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def trained_digits_cnn(digits):
    """The digits reference CNN (tf_keras), trained 10 epochs (about 98 % test accuracy)."""
    from tfedge.models.zoo import build, train

    train_data, _ = digits
    return train(build("digits_cnn"), train_data, epochs=10)


@pytest.fixture(scope="session")
def digits_cnn_path(trained_digits_cnn, artifacts):
    """The trained digits CNN saved as a Keras 2 ``.keras`` file."""
    path = artifacts / "digits_cnn.keras"
    trained_digits_cnn.save(path)
    return path


@pytest.fixture(scope="session")
def test_npz(digits, artifacts):
    """The 397 test digits as an ``.npz`` with ``x`` and ``y``."""
    return digits[1].save(artifacts / "digits_test.npz")


@pytest.fixture(scope="session")
def train_npz(digits, artifacts):
    """The 1400 training digits as an ``.npz`` with ``x`` and ``y``."""
    return digits[0].save(artifacts / "digits_train.npz")


@pytest.fixture(scope="session")
def digits_tflite(trained_digits_cnn, digits, artifacts):
    """The trained digits CNN converted by tfedge: ``{"int8": path, "float32": path}``."""
    from tfedge.converters import convert

    paths = {}
    for mode in ("int8", "float32"):
        path = artifacts / f"digits_{mode}.tflite"
        path.write_bytes(convert(trained_digits_cnn, mode=mode, calib=digits[0]))
        paths[mode] = path
    return paths


def keras_accuracy(model, data) -> float:
    """Top-1 accuracy of a Keras model on a Dataset."""
    predictions = np.asarray(model.predict(data.x, verbose=0))
    return float((predictions.argmax(axis=-1) == data.y).mean())


@pytest.fixture(scope="session")
def accuracy_of():
    """The ``keras_accuracy(model, data)`` helper as a fixture."""
    return keras_accuracy


def litert_accuracy(blob: bytes, data, tmp_path, name: str = "model.tflite") -> float:
    """Top-1 accuracy of a .tflite model with the real LiteRT interpreter (tfedge's runner).

    ``data`` is a :class:`tfedge.data.Dataset` or an ``(x, y)`` pair.
    """
    from tfedge.runner import bench_models

    path = tmp_path / name
    path.write_bytes(blob)
    x, y = (data.x, data.y) if hasattr(data, "x") else data
    ((kind, row),) = list(bench_models([str(path)], data=(x, y), warmup=0, runs=1))
    assert kind == "result", row
    return row["accuracy"]


def litert_outputs(blob: bytes, x: np.ndarray) -> np.ndarray:
    """The raw int8 output of an int8 .tflite model for each sample of ``x`` (as int32)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=blob)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    rows = []
    for sample in x:
        q = np.clip(np.round(sample / scale + zero), -128, 127).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], q[np.newaxis])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].astype(np.int32))
    return np.stack(rows)


@pytest.fixture(scope="session")
def raw_outputs():
    """The ``litert_outputs(blob, x)`` helper as a fixture."""
    return litert_outputs


@pytest.fixture(scope="session")
def tflite_accuracy():
    """The ``litert_accuracy(blob, data, tmp_path)`` helper as a fixture."""
    return litert_accuracy


def pytest_collection_modifyitems(session, config, items):
    """Run the emulated-Pi tests last, and start the Pi's (cached, minutes-long) build right away.

    The ``pi`` fixture's own ``pi-device.sh up`` waits on the script's lock for this background
    build, so the other tests run while debootstrap works.
    """
    device = [item for item in items if item.get_closest_marker("device")]
    if not device:
        return
    items[:] = [item for item in items if not item.get_closest_marker("device")] + device
    if os.environ.get("TFEDGE_SKIP_DEVICE") == "1" or os.geteuid() != 0:
        return
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    log = open(root / ".pytest-device-up.log", "w")  # noqa: SIM115 (kept open for the child)
    config._tfedge_device_up = subprocess.Popen(
        ["bash", "scripts/pi-device.sh", "up"], cwd=root, stdout=log, stderr=subprocess.STDOUT
    )


def pytest_unconfigure(config):
    proc = getattr(config, "_tfedge_device_up", None)
    if proc is not None and proc.poll() is None:
        proc.wait(timeout=1800)
