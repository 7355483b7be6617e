"""Data read as a stream of checked batches: TFRecord shards, image folders, npz, tf.data.

Every test writes real files (JPEG, TFRecord, npz) in a temporary folder and forces streaming with
``in_memory_bytes=0`` (or ``tfedge.core.streams.IN_MEMORY_BYTES = 0`` through the command line), so the
small sets here take the same path as a large one.
"""

import re

import numpy as np
import pytest

from tfedge.core.data import Dataset, load_data
from tfedge.core.errors import DataError
from tfedge.core.streams import DataStream, calibration_samples, stream_data

SHAPE = (8, 8, 1)
CLASSES = 3


def _example(tf, pixels, label=None, image_key="image/encoded", label_key="image/class/label"):
    feature = {
        image_key: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[tf.io.encode_jpeg(pixels).numpy()])
        )
    }
    if label is not None:
        feature[label_key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@pytest.fixture(scope="module")
def images():
    """120 8x8 grey images (uint8) of 3 classes, each class a different brightness."""
    rng = np.random.default_rng(0)
    y = np.arange(120) % CLASSES
    x = rng.integers(0, 60, (120, *SHAPE)) + 80 * y[:, None, None, None]
    return x.astype(np.uint8), y.astype(np.int64)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, images):
    """The images as 3 TFRecord shards of 40 records (image/encoded JPEG, image/class/label)."""
    from tfedge.core.backend import tf

    folder = tmp_path_factory.mktemp("shards")
    x, y = images
    for shard in range(3):
        with tf.io.TFRecordWriter(str(folder / f"train-{shard:05d}.tfrecord")) as writer:
            for i in range(shard * 40, shard * 40 + 40):
                writer.write(_example(tf, x[i], y[i]))
    return folder


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory, images):
    """The same images as JPEG files, one sub-folder per class."""
    from tfedge.core.backend import tf

    root = tmp_path_factory.mktemp("jpegs")
    x, y = images
    for i in range(len(x)):
        folder = root / f"class_{y[i]}"
        folder.mkdir(exist_ok=True)
        (folder / f"{i:03d}.jpg").write_bytes(tf.io.encode_jpeg(x[i]).numpy())
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small Keras 3 CNN on 8x8x1 images with 3 classes, saved as ``.keras``."""
    from tfedge.core.backend import keras3

    keras3.utils.set_random_seed(0)
    model = keras3.Sequential(
        [
            keras3.Input(SHAPE),
            keras3.layers.Rescaling(1 / 255.0),
            keras3.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras3.layers.Flatten(),
            keras3.layers.Dense(CLASSES, name="out"),
        ],
        name="tiny_cnn",
    )
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


def _all(stream):
    xs, ys = zip(*stream.batches(), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def test_tfrecord_shards_stream_in_file_order(shards, jpeg_folder, images):
    stream = stream_data(
        str(shards / "*.tfrecord"), input_shape=SHAPE, in_memory_bytes=0, batch_size=16
    )
    assert isinstance(stream, DataStream) and len(stream) == 120 and stream.has_labels
    x, y = _all(stream)
    assert x.dtype == np.float32 and x.shape == (120, *SHAPE)
    assert np.array_equal(y, images[1])
    # The same JPEG bytes decoded the way an image folder is: the same pixels.
    folder = load_data(jpeg_folder, input_shape=SHAPE)
    files = [int(f.stem) for c in sorted(jpeg_folder.iterdir()) for f in sorted(c.iterdir())]
    assert np.array_equal(x[files], folder.x)


def test_tfrecord_other_feature_names_follow_a_hash(tmp_path, images):
    from tfedge.core.backend import tf

    with tf.io.TFRecordWriter(str(tmp_path / "a.tfrecord")) as writer:
        for i in range(10):
            writer.write(_example(tf, images[0][i], images[1][i], "jpeg", "cls"))
    spec = f"{tmp_path}/*.tfrecord#image=jpeg,label=cls"
    x, y = _all(stream_data(spec, input_shape=SHAPE, in_memory_bytes=0))
    assert x.shape == (10, *SHAPE) and np.array_equal(y, images[1][:10])
    unlabelled = stream_data(f"{tmp_path}/*.tfrecord#image=jpeg,label=", in_memory_bytes=0)
    assert not unlabelled.has_labels
    with pytest.raises(DataError, match=r"expected the image in 'image/encoded'"):
        stream_data(f"{tmp_path}/*.tfrecord", in_memory_bytes=0)


def test_jpeg_folder_streams_the_pixels_load_data_reads(jpeg_folder):
    for shape in (SHAPE, (12, 12, 3)):  # as stored, and resized to another model input
        whole = load_data(jpeg_folder, input_shape=shape)
        stream = stream_data(jpeg_folder, input_shape=shape, in_memory_bytes=0, batch_size=32)
        x, y = _all(stream)
        assert np.array_equal(x, whole.x) and np.array_equal(y, whole.y)
        assert stream.class_names == whole.class_names


def test_uncompressed_npz_is_memory_mapped_and_compressed_read_in_chunks(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((300, 4, 3), dtype=np.float32)
    y = rng.integers(0, 5, 300)
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "small.npz", x=x, y=y)
    plain = stream_data(tmp_path / "plain.npz", in_memory_bytes=0, batch_size=64)
    assert isinstance(plain._reader.x, np.memmap)
    packed = stream_data(tmp_path / "small.npz", in_memory_bytes=0, batch_size=64)
    assert not hasattr(packed._reader, "x")
    for stream in (plain, packed):
        got_x, got_y = _all(stream)
        assert np.array_equal(got_x, x) and np.array_equal(got_y, y)
    # A random-access form calibrates on the very samples the in-memory set would give.
    assert np.array_equal(plain.sample(40, seed=0).x, Dataset(x, y).take(40, seed=0).x)
    assert len(packed.sample(40, seed=0)) == 40


@pytest.mark.parametrize("form", ["pairs", "pairs batched", "x only", "dicts batched"])
def test_tf_data_dataset_is_consumed_as_a_stream(form, images):
    from tfedge.core.backend import tf

    x = images[0].astype(np.float32)
    y = images[1]
    dataset = {
        "pairs": tf.data.Dataset.from_tensor_slices((x, y)),
        "pairs batched": tf.data.Dataset.from_tensor_slices((x, y)).batch(7),
        "x only": tf.data.Dataset.from_tensor_slices(x),
        "dicts batched": tf.data.Dataset.from_tensor_slices({"x": x, "y": y}).batch(50),
    }[form]
    stream = stream_data(dataset, input_shape=SHAPE, in_memory_bytes=0, batch_size=32)
    assert len(stream) == 120 and stream.has_labels == (form != "x only")
    got = np.concatenate([b for b, _ in stream.batches()])
    assert np.array_equal(got, x)
    sample = stream.sample(20, seed=3)
    assert len(sample) == 20
    assert np.array_equal(sample.x, stream.sample(20, seed=3).x)  # seeded


def test_an_infinite_tf_data_dataset_is_refused(images):
    from tfedge.core.backend import tf

    endless = tf.data.Dataset.from_tensor_slices(images[0].astype(np.float32)).repeat()
    with pytest.raises(DataError, match="infinite"):
        stream_data(endless, input_shape=SHAPE)


def test_small_sets_are_read_whole_as_before(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((10, 4), np.float32), y=np.arange(10) % 2)
    assert isinstance(stream_data(tmp_path / "d.npz"), Dataset)


def test_a_nan_deep_in_an_npz_names_its_index(tmp_path):
    x = np.zeros((900, 6), np.float32)
    x[700, 3] = np.nan
    np.savez(tmp_path / "deep.npz", x=x, y=np.zeros(900, np.int64))
    stream = stream_data(tmp_path / "deep.npz", in_memory_bytes=0, batch_size=256)
    with pytest.raises(DataError, match=r"deep.npz\) sample 700 holds NaN values"):
        for _ in stream.batches():
            pass


def test_a_bad_label_deep_in_the_shards_is_one_error_line(tmp_path, images, tiny_model, capsys):
    from tfedge.cli import main
    from tfedge.core.backend import tf

    x, y = images
    for shard in range(3):
        with tf.io.TFRecordWriter(str(tmp_path / f"s-{shard}.tfrecord")) as writer:
            for i in range(40):
                label = 12 if (shard, i) == (2, 5) else y[i]
                writer.write(_example(tf, x[i], label))
    args = ["optimize", str(tiny_model), "--train", f"{tmp_path}/s-*.tfrecord", "--val"]
    args += [f"{tmp_path}/s-0.tfrecord", "--prune", "0.5", "--epochs", "1"]
    assert main([*args, "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert re.search(r"label 85 \(.*s-2\.tfrecord record 5\) is 12 but the model has 3", errors[0])
    assert not (tmp_path / "out" / "model.tflite").exists()


def test_convert_calibrates_from_tfrecord_shards_on_the_command_line(shards, tiny_model, tmp_path):
    from tfedge.cli import main
    from tfedge.core.inspector import inspect_model

    out = tmp_path / "m.tflite"
    code = main(
        [
            "convert",
            str(tiny_model),
            "--calib",
            f"{shards}/*.tfrecord",
            "--calib-samples",
            "50",
            "-o",
            str(out),
        ]
    )
    assert code in (0, None) and inspect_model(out)["fully_integer"]


def test_calibration_samples_are_seeded(shards):
    first = calibration_samples(f"{shards}/*.tfrecord", 25, input_shape=SHAPE, seed=0)
    again = calibration_samples(f"{shards}/*.tfrecord", 25, input_shape=SHAPE, seed=0)
    other = calibration_samples(f"{shards}/*.tfrecord", 25, input_shape=SHAPE, seed=1)
    assert np.array_equal(first.x, again.x) and not np.array_equal(first.x, other.x)


def test_fine_tune_and_accuracy_stream_from_tf_data(shards, jpeg_folder):
    from tfedge.core.backend import keras
    from tfedge.models.training import evaluate, fit

    train = stream_data(
        f"{shards}/*.tfrecord", input_shape=SHAPE, in_memory_bytes=0, require_labels=True
    )
    val = stream_data(jpeg_folder, input_shape=SHAPE, in_memory_bytes=0, require_labels=True)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.layers.Rescaling(1 / 255.0, input_shape=SHAPE),
            keras.layers.Flatten(),
            keras.layers.Dense(CLASSES),
        ]
    )
    best = fit(model, train, val, epochs=6, batch_size=16, learning_rate=0.05)
    whole = load_data(jpeg_folder, input_shape=SHAPE)
    assert evaluate(model, val) == pytest.approx(evaluate(model, whole))
    assert best.best > 0.75  # chance is 0.33: the classes differ in brightness
    view = train.as_tf_dataset(16, shuffle=True)
    x, y = next(iter(view))
    assert x.shape == (16, *SHAPE) and y.dtype.name == "int64"


def test_optimize_fine_tunes_from_streamed_shards(
    shards, jpeg_folder, tiny_model, tmp_path, monkeypatch
):
    import json

    import tfedge.core.streams
    from tfedge.cli import main

    monkeypatch.setattr(tfedge.core.streams, "IN_MEMORY_BYTES", 0)
    code = main(
        [
            "optimize",
            str(tiny_model),
            "--train",
            f"{shards}/*.tfrecord",
            "--val",
            str(jpeg_folder),
            "--prune",
            "0.5",
            "--epochs",
            "1",
            "-o",
            str(tmp_path / "out"),
        ]
    )
    assert code in (0, None)
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["results"]
    assert all(row["samples"] == 120 for row in rows)


def test_the_runner_reads_a_large_uncompressed_npz_slice_by_slice(tmp_path):
    from tfedge.devices.runner import NpzArray, _stored_member
    from tfedge.devices.runner import load_data as runner_data

    x = np.random.default_rng(2).random((2100, 8192), dtype=np.float32)  # 69 MB as float32
    np.savez(tmp_path / "big.npz", x=x, y=np.arange(2100) % 4)
    got, y = runner_data(tmp_path / "big.npz")
    assert isinstance(got, NpzArray) and got.shape == x.shape and len(got) == 2100
    assert np.array_equal(got[2000:2100], x[2000:]) and np.array_equal(y, np.arange(2100) % 4)
    assert np.array_equal(np.stack(list(got)[:3]), x[:3])
    np.savez_compressed(tmp_path / "packed.npz", x=x[:10])
    assert _stored_member(tmp_path / "packed.npz", "x") is None  # read whole, as before


def test_a_shuffled_pass_over_shards_is_a_permutation(shards, images):
    stream = stream_data(f"{shards}/*.tfrecord", input_shape=SHAPE, in_memory_bytes=0)
    pairs = list(stream.as_tf_dataset(16, shuffle=True, seed=1).as_numpy_iterator())
    x = np.concatenate([p[0] for p in pairs])
    y = np.concatenate([p[1] for p in pairs])
    ordered, labels = _all(stream)
    assert not np.array_equal(y, labels) and np.array_equal(np.sort(y), np.sort(labels))
    key = [row.tobytes() for row in x]
    assert sorted(key) == sorted(row.tobytes() for row in ordered)


@pytest.mark.parametrize("shuffle", [None, 5])
def test_a_corrupt_record_deep_in_the_shards_is_named(tmp_path, images, shuffle):
    from tfedge.core.backend import tf

    x, y = images
    for shard in range(3):
        with tf.io.TFRecordWriter(str(tmp_path / f"s-{shard}.tfrecord")) as writer:
            for i in range(40):
                record = _example(tf, x[i], y[i])
                if (shard, i) == (2, 30):
                    feature = {
                        "image/encoded": tf.train.Feature(
                            bytes_list=tf.train.BytesList(value=[b"junk"])
                        )
                    }
                    record = tf.train.Example(
                        features=tf.train.Features(feature=feature)
                    ).SerializeToString()
                writer.write(record)
    stream = stream_data(
        f"{tmp_path}/*.tfrecord", input_shape=SHAPE, in_memory_bytes=0, batch_size=16
    )
    with pytest.raises(
        DataError, match=r"sample 110 \(.*s-2\.tfrecord record 30\) cannot be read: Fe"
    ):
        for _ in stream.batches(16, shuffle=shuffle):
            pass


def test_a_file_that_is_not_a_tfrecord_is_named_without_tensorflow_internals(tmp_path):
    from tfedge.core.errors import InputFileError

    (tmp_path / "bad.tfrecord").write_bytes(b"garbage" * 100)
    with pytest.raises(InputFileError) as caught:
        stream_data(str(tmp_path / "bad.tfrecord"), input_shape=(16, 16, 1))
    message = str(caught.value)
    assert "bad.tfrecord" in message and "corrupted record" in message
    assert "function_node" not in message and "[Op:" not in message


@pytest.mark.parametrize("bad", ["label", "record"])
def test_a_bad_sample_met_inside_fit_is_named_like_the_checked_batches(tmp_path, images, bad):
    """Streamed shards train from a tf.data graph pipeline; what fails in it is still named."""
    from tfedge.core.backend import keras, tf
    from tfedge.models.training import fit

    x, y = images
    for shard in range(3):
        with tf.io.TFRecordWriter(str(tmp_path / f"s-{shard}.tfrecord")) as writer:
            for i in range(40):
                if (shard, i) != (2, 5):
                    writer.write(_example(tf, x[i], y[i]))
                elif bad == "label":
                    writer.write(_example(tf, x[i], 12))
                else:
                    writer.write(_example(tf, x[i], y[i])[:-9] + b"truncated")
    # Opened with a batch of 16, which checks only the first 64 samples: 85 is met in fit.
    stream = stream_data(
        f"{tmp_path}/*.tfrecord",
        input_shape=SHAPE,
        in_memory_bytes=0,
        require_labels=True,
        num_classes=CLASSES,
        batch_size=16,
    )
    model = keras.Sequential([keras.layers.Flatten(input_shape=SHAPE), keras.layers.Dense(3)])
    expected = (
        r"label 85 \(.*s-2\.tfrecord record 5\) is 12 but the model has 3"
        if bad == "label"
        else r"sample 85 \(.*s-2\.tfrecord record 5\) cannot be read"
    )
    with pytest.raises(DataError, match=expected):
        fit(model, stream, None, epochs=1, batch_size=16, restore_best=False)


def test_a_stream_of_large_samples_reads_fewer_a_batch(tmp_path):
    from tfedge.core.streams import BATCH_BYTES, DEFAULT_BATCH

    x = np.zeros((600, 64, 64, 3), np.float32)  # 48 KB a sample: 682 fit in BATCH_BYTES
    np.savez(tmp_path / "small.npz", x=x)
    assert stream_data(tmp_path / "small.npz", in_memory_bytes=0).batch_size == DEFAULT_BATCH
    big = np.zeros((100, 224, 224, 3), np.float32)  # 602 KB a sample
    np.savez(tmp_path / "big.npz", x=big)
    stream = stream_data(tmp_path / "big.npz", in_memory_bytes=0)
    assert stream.batch_size == BATCH_BYTES // (4 * 224 * 224 * 3) == 55
    assert [len(b) for b, _ in stream.batches()] == [55, 45]
    assert stream_data(tmp_path / "big.npz", in_memory_bytes=0, batch_size=8).batch_size == 8
