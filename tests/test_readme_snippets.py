"""Every ```python block of README.md runs as written, and every `tfedge.x.y` path in it imports.

Each block is executed with ``exec`` in a fresh namespace, with the working directory a temporary
folder that a fixture fills with the files the block names (a model, ``.npz`` sets, TFRecord
shards, a bench JSON), all built from the bundled digits: no network, no device. The three blocks
of "In your own training code" are run (with their own checks) by ``tests/test_readme_own_loop.py``;
:func:`test_every_python_block_is_run` fails on a block that neither file runs.
"""

import importlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
OWN_LOOP_SECTION = "## In your own training code"  # run by tests/test_readme_own_loop.py


@dataclass(frozen=True)
class Block:
    """One ```python block: its first code line in README.md, its ``## `` section, its code."""

    line: int
    section: str
    code: str

    def run(self) -> dict:
        """Execute the block as written in a fresh namespace; returns the namespace."""
        namespace: dict = {}
        exec(compile(self.code, f"README.md:{self.line}", "exec"), namespace)
        return namespace


def readme_blocks() -> list[Block]:
    """Every ```python block of README.md, in order."""
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
        before = text[: match.start()]
        sections = re.findall(r"^## .*$", before, re.M)
        blocks.append(
            Block(before.count("\n") + 2, sections[-1] if sections else "", match.group(1))
        )
    return blocks


#: what identifies each block this file runs -> the test that runs it.
RUNNERS = {
    "stream_data(": "test_streaming_snippet",
    "bench([": "test_python_api_snippet",
}


def the_block(key: str) -> Block:
    """The one README block containing ``key`` (a :data:`RUNNERS` key)."""
    found = [block for block in readme_blocks() if key in block.code]
    assert len(found) == 1, f"{len(found)} README python blocks contain {key!r}, expected 1"
    return found[0]


def test_every_python_block_is_run():
    blocks = readme_blocks()
    assert len(blocks) >= 5
    for block in blocks:
        keys = [key for key in RUNNERS if key in block.code]
        if block.section == OWN_LOOP_SECTION:
            assert not keys, f"README.md:{block.line} is run twice"
            continue
        assert len(keys) == 1, (
            f"README.md:{block.line} ({block.section}) is run by {len(keys)} tests here: "
            f"add a fixture and a test that run it, keyed in RUNNERS"
        )
    assert len({the_block(key).line for key in RUNNERS}) == len(RUNNERS)


# --- the streaming block (### Data): TFRecord shards at 96x96x3, two classes -------------------


@pytest.fixture
def shards_folder(tmp_path, monkeypatch, digits):
    """``shards/*.tfrecord`` (400 digits as JPEG, label: digit >= 5) and a compiled Keras 3
    ``model.keras`` taking 96x96x3 with 2 classes, in the working directory."""
    import keras

    from tfedge.core.backend import tf

    train, _ = digits
    (tmp_path / "shards").mkdir()
    pixels = np.round(train.x[:400] * 255).astype(np.uint8)
    for shard in range(2):
        path = tmp_path / "shards" / f"train-{shard:05d}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for i in range(shard * 200, shard * 200 + 200):
                feature = {
                    "image/encoded": tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[tf.io.encode_jpeg(pixels[i]).numpy()])
                    ),
                    "image/class/label": tf.train.Feature(
                        int64_list=tf.train.Int64List(value=[int(train.y[i] >= 5)])
                    ),
                }
                example = tf.train.Example(features=tf.train.Features(feature=feature))
                writer.write(example.SerializeToString())
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((96, 96, 3)),
            keras.layers.Conv2D(4, 3, strides=4, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(tmp_path / "model.keras")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_streaming_snippet(shards_folder, monkeypatch):
    import tfedge.core.streams as streams

    # Stream even this small set (as one larger than memory would), so the block's batches,
    # sample and tf.data view are the DataStream's.
    monkeypatch.setattr(streams, "IN_MEMORY_BYTES", 0)
    block = the_block("stream_data(")
    before = (shards_folder / "model.keras").read_bytes()
    namespace = block.run()
    stream, calib = namespace["stream"], namespace["calib"]
    assert isinstance(stream, streams.DataStream)
    assert len(stream) == 400
    x, y = namespace["x"], namespace["y"]  # the last batch of the loop: 400 = 6 x 64 + 16
    assert x.shape == (16, 96, 96, 3) and x.dtype == np.float32
    assert y.dtype == np.int64 and set(np.unique(y)) <= {0, 1}
    assert calib.x.shape == (300, 96, 96, 3) and 0 <= calib.x.min() and calib.x.max() <= 255
    history = namespace["model"].history.history
    assert len(history["loss"]) == 1 and np.isfinite(history["loss"][0])
    assert (shards_folder / "model.keras").read_bytes() == before  # the block does not save


# --- the Python API block (### Nothing lost): convert, bench, report, compare --------------------


@pytest.fixture
def digits_folder(tmp_path, monkeypatch, digits):
    """``model.keras`` (the digits CNN, 1 epoch), ``train.npz``, ``test.npz``,
    ``model_f32.tflite`` and ``results.json`` (``bench --json`` of the float model), in the
    working directory."""
    from tfedge.commands.bench import bench
    from tfedge.converters import convert
    from tfedge.models.zoo import build, train

    train_data, test_data = digits
    model = train(build("digits_cnn"), train_data, epochs=1)
    model.save(tmp_path / "model.keras")
    train_data.save(tmp_path / "train.npz")
    test_data.save(tmp_path / "test.npz")
    (tmp_path / "model_f32.tflite").write_bytes(convert(model, mode="float32"))
    monkeypatch.chdir(tmp_path)
    bench(["model_f32.tflite"], data="test.npz", runs=5, json_path="results.json")
    return tmp_path


def test_python_api_snippet(digits_folder):
    from ai_edge_litert.interpreter import Interpreter

    namespace = the_block("bench([").run()
    blob = (digits_folder / "model.tflite").read_bytes()
    assert blob == namespace["blob"]
    interpreter = Interpreter(model_content=blob)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    (row,) = namespace["report"]["results"]
    assert row["model"].endswith("model.tflite") and "error" not in row, row
    float_row = json.loads((digits_folder / "results.json").read_text())["results"][0]
    assert row["accuracy"] >= float_row["accuracy"] - 0.05, (row, float_row)
    page = (digits_folder / "report.html").read_text(encoding="utf-8")
    assert '<table id="results">' in page and "model_f32.tflite" in page  # build_report's page
    diff = namespace["diff"]
    assert diff["outputs"][0]["top1_agreement"] >= 0.9, diff["outputs"]
    assert "first_divergence" in diff


# --- every `tfedge.x.y` path written in backticks ---------------------------------------------


def readme_dotted_paths() -> list[str]:
    """The ``tfedge.x...`` dotted names inside README.md's inline code spans (outside blocks)."""
    text = re.sub(r"^```.*?^```", "", README.read_text(encoding="utf-8"), flags=re.S | re.M)
    spans = re.findall(r"`([^`\n]+)`", text)
    return sorted({p for span in spans for p in re.findall(r"\btfedge(?:\.[A-Za-z_]\w*)+", span)})


def resolve(path: str):
    """Import the longest module prefix of ``path`` and ``getattr`` the rest."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            target = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not module_name.startswith(exc.name):
                raise  # the module exists but one of its own imports is missing
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return target
    raise ModuleNotFoundError(path)


def test_readme_dotted_paths_are_found():
    paths = readme_dotted_paths()
    assert "tfedge.core.loading.load_model" in paths and "tfedge.MOVED" in paths
    assert len(paths) >= 10


@pytest.mark.parametrize("path", readme_dotted_paths())
def test_readme_dotted_path_imports(path):
    assert resolve(path) is not None


@pytest.mark.parametrize("block", readme_blocks(), ids=lambda block: f"README.md:{block.line}")
def test_blocks_use_the_current_module_paths(block):
    import tfedge

    # An old path still imports (tfedge.MOVED), so running the block would not notice it.
    imported = re.findall(r"^\s*(?:from|import) (tfedge(?:\.\w+)*)", block.code, re.M)
    old = {
        name: tfedge.MOVED[name.removeprefix("tfedge.")]
        for name in imported
        if name.removeprefix("tfedge.") in tfedge.MOVED
    }
    assert not old, f"README.md:{block.line} imports old paths (old: new): {old}"
