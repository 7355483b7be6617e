"""The reference zoo: every model builds, trains, converts fully-int8 at its expected size; recipes load."""

import pytest

from tfedge.core.errors import OptimizationError
from tfedge.models import zoo

QUICK_EPOCHS = 3
ACCURACY_FLOOR = 0.8  # int8 top-1 after QUICK_EPOCHS (the full recipes reach 0.97-1.0)
EXPECTED_KEYS = {"float_accuracy", "int8_accuracy", "int8_size_bytes", "int8_p50_ms", "tolerance"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_zoo_model_trains_and_converts_fully_int8(name, digits):
    from tfedge.converters import convert
    from tfedge.core.inspector import inspect_model
    from tfedge.devices.runner import bench_models

    train, test = digits
    expected = zoo.expected(name)
    settings = dict(zoo.train_settings(name), epochs=QUICK_EPOCHS)
    model = zoo.train(zoo.build(name), train, **settings)
    assert model.count_params() == expected["params"]
    blob = convert(model, calib=train.take(100, seed=0))
    info = inspect_model(blob)
    assert info["fully_integer"] and info["static_shapes"]
    size = len(blob)
    tolerance = expected["tolerance"]["size"]
    assert abs(size - expected["int8_size_bytes"]) <= tolerance * expected["int8_size_bytes"]

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.tflite"
        path.write_bytes(blob)
        [(kind, row)] = list(bench_models([str(path)], data=(test.x, test.y), runs=5, warmup=1))
    assert kind == "result"
    assert row["accuracy"] >= ACCURACY_FLOOR


@pytest.mark.parametrize(
    "name, kwargs, input_shape, classes",
    [
        ("ds_cnn", {"input_shape": (49, 10, 1), "width": 32, "classes": 12}, (49, 10, 1), 12),
        ("resnet8", {"input_shape": (32, 32, 3), "width": 8}, (32, 32, 3), 10),
        ("resnet8_32", {"width": 8}, (16, 16, 1), 10),
        ("mobilenet", {"input_shape": (32, 32, 3), "width": 0.25}, (32, 32, 3), 10),
        ("digits_cnn", {"width": 8}, (16, 16, 1), 10),
    ],
)
def test_builders_take_input_shape_and_width(name, kwargs, input_shape, classes):
    model = zoo.build(name, **kwargs)
    assert model.input_shape == (None, *input_shape)
    assert model.output_shape == (None, classes)
    assert model.count_params() < zoo.build(name).count_params() or name == "ds_cnn"


def test_residual_and_separable_structure():
    resnet = zoo.build("resnet8")
    kinds = [type(layer).__name__ for layer in resnet.layers]
    assert kinds.count("Add") == 3 and kinds.count("BatchNormalization") == 7
    assert zoo.build("resnet8_32").get_layer("upsample").output_shape == (None, 32, 32, 1)
    mobilenet = zoo.build("mobilenet", width=1.0)
    assert mobilenet.get_layer("pw5").filters == 256
    assert mobilenet.get_layer("dw1_relu").max_value == 6.0
    ds = [type(layer).__name__ for layer in zoo.build("ds_cnn").layers]
    assert ds.count("DepthwiseConv2D") == 4


def test_unknown_model_lists_the_zoo():
    with pytest.raises(OptimizationError, match="resnet8") as info:
        zoo.build("resnet50")
    assert "unknown zoo model" in str(info.value)


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_recipe_and_expected_figures(name):
    from tfedge.commands.optimize import STAGES, load_recipe

    recipe = load_recipe(zoo.recipe_path(name))
    assert recipe["model"]["name"] == name
    assert all(stage["name"] in STAGES for stage in recipe["stages"])
    assert set(zoo.train_settings(name)) == {"epochs", "batch_size", "learning_rate"}
    assert recipe["convert"] == {"mode": "int8"}
    expected = zoo.expected(name)
    assert EXPECTED_KEYS <= set(expected)
    assert 0.9 <= expected["int8_accuracy"] <= 1.0
    assert expected["tolerance"] == {"accuracy": 0.02, "size": 0.1, "latency": 0.5}


def test_compute_bound_reference_is_measured_slow_enough():
    assert zoo.expected("resnet8_32")["int8_p50_ms"] >= 0.1


def test_missing_recipe_names_the_ones_there():
    with pytest.raises(OptimizationError, match="no recipe") as info:
        zoo.recipe_path("nope")
    assert "resnet8" in info.value.hint
