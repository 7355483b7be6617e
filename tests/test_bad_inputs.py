"""A battery of bad inputs through the real command line: one ``Error:`` line, exit 1, inputs intact.

Each case is a class of mistake a user makes (labels the model cannot predict, a file of the wrong
kind, a broken profile, a Lambda holding code...), run with ``tfedge.cli.main`` on small real
models and data, checked for the message that names the problem.
"""

import hashlib
import re

import numpy as np
import pytest

from tfedge.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A small Keras 3 classifier (8 features, 3 classes), its int8 model, and data files."""
    from tfedge.converters import convert
    from tfedge.core.backend import keras3

    folder = tmp_path_factory.mktemp("bad-inputs")
    model = keras3.Sequential(
        [keras3.Input((8,)), keras3.layers.Dense(6, name="fc"), keras3.layers.Dense(3, name="out")],
        name="tiny",
    )
    model.save(folder / "model.keras")
    rng = np.random.default_rng(0)
    x = rng.random((60, 8), dtype=np.float32)
    np.savez(folder / "good.npz", x=x, y=np.arange(60) % 3)
    (folder / "model.tflite").write_bytes(convert(model, calib=x))
    np.savez(folder / "labels7.npz", x=x, y=np.arange(60) % 7)
    np.savez(folder / "float_labels.npz", x=x, y=(np.arange(60) % 3) + 0.5)
    np.savez(folder / "negative.npz", x=x, y=-(np.arange(60) % 3))
    nan = x.copy()
    nan[17, 2] = np.nan
    np.savez(folder / "nan.npz", x=nan, y=np.arange(60) % 3)
    np.savez(folder / "shape.npz", x=rng.random((60, 9), dtype=np.float32), y=np.arange(60) % 3)
    np.savez(folder / "empty.npz", x=np.zeros((0, 8), np.float32), y=np.zeros(0, np.int64))
    np.savez(folder / "strings.npz", x=np.array([["a"] * 8] * 4), y=np.arange(4) % 3)
    np.savez(folder / "noy.npz", x=x)
    (folder / "text.npz").write_text("not a zip")
    (folder / "bad_target.yaml").write_text("mode: [\n")
    (folder / "target_mode.yaml").write_text("mode: int3\n")
    (folder / "labels2.txt").write_text("a\nb\n")
    (folder / "binary_labels.txt").write_bytes(bytes(range(256)))
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (folder / "huge.json").write_text(
        '{"results": [{"model": "a.tflite", "accuracy": 1' + "0" * 400 + "}]}"
    )
    (folder / "inf.json").write_text(
        '{"results": [{"model": "a.tflite", "latency_ms": {"p50": Infinity}}]}'
    )
    (folder / "devices.bin").write_bytes(bytes(range(128, 256)) * 4)
    images = folder / "broken_images"
    for label in ("0", "1"):
        (images / label).mkdir(parents=True)
        (images / label / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 20)
    from tfedge.core.backend import tf

    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": tf.train.Feature(
                    float_list=tf.train.FloatList(value=x[0].tolist())
                ),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1])),
            }
        )
    )
    with tf.io.TFRecordWriter(str(folder / "shard.tfrecord")) as writer:
        for _ in range(4):
            writer.write(example.SerializeToString())
    return folder


CASES = {
    "optimize labels beyond the classes": (
        "optimize model.keras --train labels7.npz --val good.npz --prune 0.5 --epochs 1 -o out",
        "label 3 is 3 but the model has 3 classes",
    ),
    "--auto labels beyond the classes": (
        "optimize model.keras --train good.npz --val labels7.npz --auto --tolerance 0.01 -o out",
        r"--val \(labels7.npz\) label 3 is 3",
    ),
    "optimize without validation labels": (
        "optimize model.keras --train good.npz --val noy.npz --qat -o out",
        "has no labels",
    ),
    "bench labels beyond the classes": (
        "bench model.tflite --data labels7.npz --runs 1",
        "labels range 0..6 but the model model.tflite has 3 classes",
    ),
    "bench float labels": ("bench model.tflite --data float_labels.npz", "label 0 is 0.5"),
    "bench negative labels": ("bench model.tflite --data negative.npz", "label 1 is -1"),
    "bench NaN inputs": ("bench model.tflite --data nan.npz", "sample 17 holds NaN"),
    "bench wrong shape": ("bench model.tflite --data shape.npz", "shape \\[9\\]"),
    "bench empty set": ("bench model.tflite --data empty.npz", "is empty"),
    "bench strings": ("bench model.tflite --data strings.npz", "expected numbers"),
    "bench a text file as data": ("bench model.tflite --data text.npz", "not an .npz"),
    "convert NaN calibration": (
        "convert model.keras --calib nan.npz -o m.tflite",
        "sample 17 holds NaN",
    ),
    "convert empty calibration": ("convert model.keras --calib empty.npz -o m.tflite", "empty"),
    "convert broken target YAML": (
        "convert model.keras --calib good.npz --target bad_target.yaml -o m.tflite",
        "not valid YAML: line 2, column 1",
    ),
    "convert target with a bad mode": (
        "convert model.keras --calib good.npz --target target_mode.yaml -o m.tflite",
        "mode 'int3' is not one of",
    ),
    "convert too few labels": (
        "convert model.keras --calib good.npz --labels labels2.txt -o m.tflite",
        "2 labels were given",
    ),
    "convert a binary label file": (
        "convert model.keras --calib good.npz --labels binary_labels.txt -o m.tflite",
        "not UTF-8",
    ),
    "convert a .tflite as the model": (
        "convert model.tflite --calib good.npz -o m2.tflite",
        "model.tflite",
    ),
    "inspect a Keras file": ("inspect model.keras", "not a TFLite flatbuffer"),
    "compare a Keras file": ("compare model.tflite model.keras", "model.keras"),
    "report of JSON nested 100,000 deep": ("report deep.json -o r.html", "nests .* too deeply"),
    "report of a 400-digit accuracy": ("report huge.json -o r.html", "expected a fraction"),
    "report of an infinite latency": ("report inf.json -o r.html", "expected a finite number"),
    "bench a binary devices file": (
        "bench model.tflite --devices-file devices.bin",
        "devices file devices.bin is not UTF-8",
    ),
    "bench TFRecords with a label feature they lack": (
        "bench model.tflite --data shard.tfrecord#label=foo --runs 1",
        "expected the label in 'foo'",
    ),
}


def _digest(folder) -> dict:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
        if path.is_file()
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_error_line(files, case, capsys, monkeypatch):
    command, needle = CASES[case]
    monkeypatch.chdir(files)
    before = _digest(files)
    assert main(command.split()) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err and "unexpected failure" not in err, err
    assert re.search(needle, errors[0]), errors[0]
    assert _digest(files) == before
    assert not (files / "m.tflite").exists() and not (files / "out" / "model.tflite").exists()
    assert not (files / "r.html").exists()


@pytest.mark.parametrize("command", ["convert model.keras --calib broken_images -o m.tflite"])
def test_a_broken_image_is_one_clean_line_on_the_terminal(files, command):
    """libjpeg prints its own line on the process's stderr (so a real process is run), and
    TensorFlow's message carries its graph internals: neither reaches the user."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "tfedge", *command.split()],
        cwd=files,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("Error: cannot decode image"), done.stderr
    assert "function_node" not in done.stderr and "[Op:" not in done.stderr, done.stderr


def test_compare_does_not_call_two_architectures_one_source_model(files, capsys, monkeypatch):
    """Same layer names, another width: the tensor names match, their shapes do not."""
    from tfedge.converters import convert
    from tfedge.core.backend import keras3

    other = keras3.Sequential(
        [keras3.Input((8,)), keras3.layers.Dense(5, name="fc"), keras3.layers.Dense(3, name="out")],
        name="tiny",
    )
    calib = np.random.default_rng(1).random((20, 8), dtype=np.float32)
    (files / "other.tflite").write_bytes(convert(other, calib=calib))
    monkeypatch.chdir(files)
    assert main(["compare", "model.tflite", "other.tflite", "--samples", "8"]) == 0
    out = capsys.readouterr().out
    assert "tensors matched by name" not in out and "first divergence" not in out, out
    assert "do not come from the same source model" in out
