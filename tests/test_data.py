"""Data in every accepted form, and model files of every accepted kind."""

import numpy as np
import pytest

from tfedge.core.data import Dataset, load_data
from tfedge.core.errors import DataError, InputFileError
from tfedge.core.loading import detect_format, load_model


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, digits):
    """The first 30 test digits written as 8-bit PNGs, one sub-folder per class."""
    from tfedge.core.backend import tf

    root = tmp_path_factory.mktemp("images")
    test = digits[1]
    for i in range(30):
        folder = root / f"class_{test.y[i]}"
        folder.mkdir(exist_ok=True)
        pixels = tf.constant((test.x[i] * 255).round().astype(np.uint8))
        (folder / f"{i:03d}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    return root


def test_npz_round_trip(digits, tmp_path):
    path = digits[1].save(tmp_path / "d.npz")
    data = load_data(path, input_shape=(16, 16, 1))
    assert data.x.dtype == np.float32 and data.x.shape == (397, 16, 16, 1)
    assert np.array_equal(data.y, digits[1].y)


def test_npz_without_labels_is_fine_for_calibration(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.rand(5, 4).astype(np.float32))
    data = load_data(path, input_shape=(4,))
    assert data.y is None and len(data) == 5
    with pytest.raises(DataError, match="no labels"):
        load_data(path, require_labels=True)


def test_image_folder_classes_are_sorted_folder_names(image_folder):
    data = load_data(image_folder, input_shape=(16, 16, 1))
    assert data.x.shape[1:] == (16, 16, 1)
    assert data.class_names == sorted(p.name for p in image_folder.iterdir())
    assert data.x.max() > 200  # raw 0-255 pixels, as image_dataset_from_directory gives
    first_class = data.class_names[0]
    assert (data.y == 0).sum() == len(list((image_folder / first_class).iterdir()))


def test_image_folder_is_resized_to_the_model_input(image_folder):
    data = load_data(image_folder, input_shape=(32, 32, 3))
    assert data.x.shape[1:] == (32, 32, 3)


@pytest.mark.parametrize(
    "source",
    [
        "arrays",
        "tuple",
        "dict",
        "dataset",
        "tf_batched",
        "tf_unbatched",
        "tf_x_only",
    ],
)
def test_python_forms(source):
    from tfedge.core.backend import tf

    x = np.random.rand(12, 16, 16, 1).astype(np.float32)
    y = np.arange(12) % 10
    sources = {
        "arrays": x,
        "tuple": (x, y),
        "dict": {"x": x, "y": y},
        "dataset": Dataset(x, y),
        "tf_batched": tf.data.Dataset.from_tensor_slices((x, y)).batch(5),
        "tf_unbatched": tf.data.Dataset.from_tensor_slices((x, y)),
        "tf_x_only": tf.data.Dataset.from_tensor_slices(x).batch(4),
    }
    data = load_data(sources[source], input_shape=(16, 16, 1))
    assert data.x.shape == (12, 16, 16, 1)
    assert np.allclose(data.x, x)
    if source in ("arrays", "tf_x_only"):
        assert data.y is None
    else:
        assert np.array_equal(data.y, y)


def test_channel_axis_is_added_and_one_hot_labels_folded():
    x = np.random.rand(6, 16, 16).astype(np.float32)
    y = np.eye(10)[np.arange(6)]
    data = load_data((x, y), input_shape=(16, 16, 1))
    assert data.x.shape == (6, 16, 16, 1)
    assert list(data.y) == list(range(6))


@pytest.mark.parametrize(
    ("make", "error", "needle"),
    [
        (lambda p: p / "missing.npz", InputFileError, "not found"),
        (lambda p: _write(p / "t.npz", b"text"), InputFileError, "not an .npz"),
        (lambda p: _npz(p / "a.npz", images=np.zeros((2, 4))), DataError, "expected 'x'"),
        (lambda p: _npz(p / "b.npz", x=np.zeros((2, 5))), DataError, "shape"),
        (lambda p: _npz(p / "c.npz", x=np.zeros((2, 4)), y=np.zeros(3)), DataError, "labels"),
        (lambda p: _npz(p / "d.npz", x=np.zeros((0, 4))), DataError, "empty"),
        (lambda p: (p / "empty_dir").mkdir() or p / "empty_dir", DataError, "sub-folders"),
    ],
)
def test_bad_data(make, error, needle, tmp_path):
    with pytest.raises(error, match=needle):
        load_data(make(tmp_path), input_shape=(4,))


def _write(path, content):
    path.write_bytes(content)
    return path


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_keras2_and_keras3_files_are_told_apart(trained_digits_cnn, tmp_path):
    from tfedge.core.backend import keras3

    k2 = tmp_path / "k2.keras"
    trained_digits_cnn.save(k2)
    h5 = tmp_path / "k2.h5"
    trained_digits_cnn.save(h5)
    k3_model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
    k3 = tmp_path / "k3.keras"
    k3_model.save(k3)
    assert detect_format(k2) == ("keras", 2)
    assert detect_format(h5) == ("h5", 2)
    assert detect_format(k3) == ("keras", 3)
    loaded = load_model(k3)
    assert loaded.keras_version == 3
    x = np.random.rand(3, 4).astype(np.float32)
    assert np.allclose(loaded.model.predict(x, verbose=0), k3_model.predict(x, verbose=0))
    reloaded = load_model(h5).model
    assert reloaded.count_params() == trained_digits_cnn.count_params()


def test_weights_only_h5_is_refused(trained_digits_cnn, tmp_path):
    path = tmp_path / "weights.h5"
    trained_digits_cnn.save_weights(path)
    with pytest.raises(InputFileError, match="weights only"):
        detect_format(path)


def test_directory_without_saved_model_is_refused(tmp_path):
    with pytest.raises(InputFileError, match="saved_model.pb"):
        detect_format(tmp_path)


@pytest.mark.parametrize(
    "x, y, message",
    [
        (np.full((3, 4), np.nan), None, "sample 0 holds NaN"),
        (np.array([[0.0, 1.0], [np.inf, 0.0]]), None, "sample 1 holds infinite"),
        (np.ones((3, 4)), np.array([0.0, 1.5, 2.0]), "label 1 is 1.5, not a class id"),
        (np.ones((3, 4)), np.array([0, -1, 2]), "label 1 is -1; class ids start at 0"),
        (np.ones((3, 4)), np.array([0, 1, 12]), "label 2 is 12 but the model has 10 classes"),
    ],
)
def test_bad_values_name_the_first_bad_index(x, y, message):
    with pytest.raises(DataError, match=message):
        load_data((x, y) if y is not None else x, num_classes=10, name="--data")


def test_bad_values_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.ones((5, 4), np.float32), y=np.array([0, 1, 2, 3, 1]))
    with pytest.raises(DataError, match=r"--data \(.*bad.npz\) label 2 is 2 .* binary"):
        load_data(path, num_classes=1, name="--data")
    assert load_data(path, num_classes=4).y.tolist() == [0, 1, 2, 3, 1]
