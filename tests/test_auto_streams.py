"""`tfedge optimize --auto` streams its data: TFRecord shards, never read whole into memory."""

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow

SHAPE = (8, 8, 1)
CLASSES = 3
COUNT = 240


def _example(tf, pixels, label):
    encoded = tf.io.encode_jpeg(pixels).numpy()
    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """240 8x8 grey JPEG images of 3 classes (each a brightness) in 4 TFRecord shards."""
    from tfedge.core.backend import tf

    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, COUNT)
    x = (rng.integers(0, 60, (COUNT, *SHAPE)) + 80 * y[:, None, None, None]).astype(np.uint8)
    folder = tmp_path_factory.mktemp("shards")
    for shard in range(4):
        with tf.io.TFRecordWriter(str(folder / f"part-{shard}.tfrecord")) as writer:
            for i in range(shard * 60, shard * 60 + 60):
                writer.write(_example(tf, x[i], y[i]))
    return f"{folder}/*.tfrecord"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """The zoo's digits CNN at 8x8x1 with 3 classes (2 filters), saved as ``.keras``."""
    from tfedge.models.zoo import build

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    build("digits_cnn", input_shape=SHAPE, classes=CLASSES, width=2).save(path)
    return path


@pytest.fixture
def streamed(monkeypatch):
    """Every set streams, and reading one whole fails the test."""
    from tfedge.core.streams import DataStream

    def whole(self):
        raise AssertionError(f"{self.name} ({self.source}) was read whole into memory")

    monkeypatch.setattr("tfedge.core.streams.IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(DataStream, "read", whole)
    monkeypatch.setattr(DataStream, "_whole_if_under", lambda self, limit: None)


def test_the_evaluator_streams_and_splits_as_in_memory(shards, model_file, tmp_path, streamed):
    from tfedge.commands.evaluator import RecipeEvaluator, split_confirmation
    from tfedge.core.data import load_data
    from tfedge.core.streams import DataStream, stream_data

    evaluator = RecipeEvaluator(model_file, shards, shards, out_dir=tmp_path / "a")
    try:
        assert isinstance(evaluator.train, DataStream)
        assert isinstance(evaluator.val, DataStream) and isinstance(evaluator.confirm, DataStream)
        assert len(evaluator.val) + len(evaluator.confirm) == COUNT
        # The same split as the set in memory gives, written batch by batch.
        whole = stream_data(shards, input_shape=SHAPE, in_memory_bytes=0)
        xs, ys = zip(*whole.batches(), strict=True)
        memory = load_data((np.concatenate(xs), np.concatenate(ys)))
        for streamed_part, memory_part in zip(
            (evaluator.val, evaluator.confirm), split_confirmation(memory), strict=True
        ):
            got = np.load(streamed_part.source)
            assert np.array_equal(got["x"], memory_part.x)
            assert np.array_equal(got["y"], memory_part.y)
        # The figures of post-training int8 come from the streamed parts.
        row = evaluator({"stages": []})
        assert 0 <= row["accuracy"] <= 1
        correct = evaluator.confirm_correct({"recipe": {"stages": []}, "figures": row})
        assert len(correct) == len(evaluator.confirm)
    finally:
        evaluator.close()
    # A study's data is named by its files, not by the split's new files: a second run joins it.
    again = RecipeEvaluator(model_file, shards, shards, out_dir=tmp_path / "b")
    assert again.fingerprint == evaluator.fingerprint
    assert again.fingerprint["val"] != again.fingerprint["confirm"]


def test_auto_runs_on_tfrecord_shards(shards, model_file, tmp_path, streamed, capsys):
    from tfedge.cli import main

    out = tmp_path / "auto"
    argv = ["optimize", str(model_file), "--train", shards, "--val", shards, "--auto"]
    argv += ["--tolerance", "0.9", "--trials", "2", "--epochs", "1", "--runs", "5"]
    assert main([*argv, "-o", str(out)]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["candidates"] and (out / "model.tflite").is_file()
    assert (out / "val.npz").is_file() and (out / "confirm.npz").is_file()
    assert not list((out / "cache").glob("train-*.npz"))  # the fine-tunes stream the shards


def test_the_screen_streams_its_share_from_a_file_it_writes_once(shards, tmp_path, streamed):
    from tfedge.commands.stage_worker import fraction_of
    from tfedge.core.streams import DataStream, stream_data

    stream = stream_data(shards, input_shape=SHAPE, require_labels=True, in_memory_bytes=0)
    share = fraction_of(stream, 0.25, folder=tmp_path, in_memory_bytes=0)
    assert isinstance(share, DataStream) and len(share) == COUNT // 4
    (written,) = tmp_path.glob("screen-*.npz")
    # A seeded choice of positions: the marked samples of the whole stream, in its order.
    xs, ys = zip(*stream.batches(), strict=True)
    select = np.zeros(COUNT, bool)
    select[np.random.default_rng(0).choice(COUNT, COUNT // 4, replace=False)] = True
    with np.load(written) as got:
        assert np.array_equal(got["x"], np.concatenate(xs)[select])
        assert np.array_equal(got["y"], np.concatenate(ys)[select])
    # Another process of the same search reads the file already written.
    before = written.stat().st_mtime_ns
    assert len(fraction_of(stream, 0.25, folder=tmp_path, in_memory_bytes=0)) == COUNT // 4
    assert written.stat().st_mtime_ns == before
    # A share that fits the in-memory limit is taken in memory, as before.
    small = fraction_of(stream, 0.25, folder=tmp_path, in_memory_bytes=2**30)
    assert not isinstance(small, DataStream) and len(small) == COUNT // 4


def test_a_screen_here_fine_tunes_on_the_streamed_share(shards, model_file, tmp_path, streamed):
    from tfedge.commands.evaluator import RecipeEvaluator
    from tfedge.models.search import SCREEN

    evaluator = RecipeEvaluator(model_file, shards, shards, out_dir=tmp_path, isolate=False)
    try:
        row = evaluator({"stages": [{"name": "qat"}]}, fidelity=dict(SCREEN))
    finally:
        evaluator.close()
    assert 0 <= row["accuracy"] <= 1 and row["fidelity"] == SCREEN
    (share,) = (tmp_path / "cache").glob("screen-*.npz")
    with np.load(share) as got:
        assert len(got["y"]) == int(COUNT * SCREEN["data_fraction"])
