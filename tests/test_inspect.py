"""tfedge.core.inspector on real models converted by the TFLite converter, and on broken files."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest

from tfedge.core.errors import InputFileError
from tfedge.core.inspector import format_table, inspect_model

DESIGN_KEYS = {
    "model",
    "size_bytes",
    "ops",
    "fully_integer",
    "float_ops",
    "input",
    "output",
    "static_shapes",
    "weight_sparsity",
    "unique_weight_values_max",
    "edgetpu",
}


def convert(model, mode="int8", io="int8"):
    """Convert a tf_keras model with the TFLite converter: int8 (full integer), dynamic or float."""
    from tfedge.core.backend import tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode in ("int8", "dynamic"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "int8":
        shape = [1, *model.input_shape[1:]]

        def representative():
            rng = np.random.default_rng(0)
            for _ in range(8):
                yield [rng.random(shape, dtype=np.float32)]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io != "float32":
            converter.inference_input_type = getattr(tf, io)
            converter.inference_output_type = getattr(tf, io)
    return converter.convert()


def small_cnn(batch=1):
    from tfedge.core.backend import keras

    inputs = keras.Input((8, 8, 1), batch_size=batch)
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def mlp(kernels=None):
    """64 -> 32 -> 10 Dense model; ``kernels`` replaces the two kernels (biases stay)."""
    from tfedge.core.backend import keras

    inputs = keras.Input((64,), batch_size=1)
    x = keras.layers.Dense(32, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    if kernels is not None:
        for layer, kernel in zip(model.layers[1:], kernels, strict=True):
            layer.set_weights([kernel, np.full(layer.units, 0.05, np.float32)])
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Real .tflite files: ``{name: path}``."""
    from tfedge.core.backend import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("inspect")
    blobs = {
        "float32": convert(small_cnn(), "float"),
        "int8": convert(small_cnn()),
        "dynamic_batch": convert(small_cnn(batch=None)),
        "dynamic_range": convert(mlp(), "dynamic"),
        "int8_float_io": convert(mlp(), "int8", io="float32"),
        "uint8": convert(mlp(), "int8", io="uint8"),
    }
    # An operator the Edge TPU lacks, between two it has.
    inputs = keras.Input((16,), batch_size=1)
    x = keras.layers.LeakyReLU()(keras.layers.Dense(8)(inputs))
    blobs["leaky_relu"] = convert(keras.Model(inputs, keras.layers.Dense(4)(x)))
    # Batch 2: the second convolution's output [2, 4, 4, 4] has 4 dimensions larger than 1.
    inputs = keras.Input((6, 6, 1), batch_size=2)
    x = keras.layers.Conv2D(4, 1)(keras.layers.Conv2D(1, 3)(inputs))
    blobs["four_dims"] = convert(keras.Model(inputs, x))
    # 80 % of every Dense kernel set to exact zeros.
    pruned = []
    for shape in ((64, 32), (32, 10)):
        kernel = rng.normal(0, 0.3, shape).astype(np.float32)
        flat = kernel.reshape(-1)
        flat[rng.permutation(flat.size)[: int(round(0.8 * flat.size))]] = 0.0
        pruned.append(kernel)
    blobs["pruned"] = convert(mlp(pruned))
    # Every Dense kernel drawn from 16 values (weight clustering).
    centroids = np.linspace(-0.6, 0.6, 16).astype(np.float32)
    clustered = [rng.choice(centroids, shape) for shape in ((64, 32), (32, 10))]
    blobs["clustered"] = convert(mlp(clustered))
    blobs["clustered_float"] = convert(mlp(clustered), "float")
    paths = {}
    for name, blob in blobs.items():
        paths[name] = out / f"{name}.tflite"
        paths[name].write_bytes(blob)
    return paths


@pytest.fixture(scope="module")
def infos(models):
    return {name: inspect_model(path) for name, path in models.items()}


def test_import_does_not_import_tensorflow():
    code = "import tfedge.core.inspector, tfedge.core.edgetpu, sys; assert 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inspect_does_not_import_tensorflow(models):
    code = (
        "import sys; from tfedge.core.inspector import inspect_model; "
        f"inspect_model({str(models['int8'])!r}); assert 'tensorflow' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["float32", "int8", "dynamic_range", "pruned"])
def test_design_keys_and_json(infos, models, name):
    info = infos[name]
    assert DESIGN_KEYS <= set(info)
    assert info["model"] == str(models[name])
    assert info["size_bytes"] == models[name].stat().st_size
    assert {"compatible", "unsupported", "mapped_ops", "cpu_ops"} <= set(info["edgetpu"])
    for entry in info["input"] + info["output"]:
        assert {"name", "dtype", "shape", "scale", "zero_point"} <= set(entry)
    assert json.loads(json.dumps(info)) == info
    assert "tensors" not in info


def test_int8_model(infos):
    info = infos["int8"]
    assert info["ops"] == {"CONV_2D": 1, "MAX_POOL_2D": 1, "RESHAPE": 1, "FULLY_CONNECTED": 1}
    assert info["fully_integer"] is True
    assert info["float_ops"] == []
    assert info["static_shapes"] is True
    (inp,) = info["input"]
    (out,) = info["output"]
    assert (inp["dtype"], inp["shape"]) == ("int8", [1, 8, 8, 1])
    assert (out["dtype"], out["shape"]) == ("int8", [1, 10])
    assert inp["scale"] > 0 and -128 <= inp["zero_point"] <= 127
    assert info["edgetpu"]["compatible"] is True
    assert info["edgetpu"]["unsupported"] == []
    assert (info["edgetpu"]["mapped_ops"], info["edgetpu"]["cpu_ops"]) == (4, 0)
    assert "min_runtime_version" in info["metadata_names"]
    assert info["min_runtime_version"]


def test_float32_model(infos):
    info = infos["float32"]
    assert info["fully_integer"] is False
    assert info["float_ops"] == ["CONV_2D", "MAX_POOL_2D", "RESHAPE", "FULLY_CONNECTED"]
    assert info["input"][0]["dtype"] == "float32"
    assert (info["input"][0]["scale"], info["input"][0]["zero_point"]) == (0.0, 0)
    assert info["weight_sparsity"] < 0.05
    assert info["edgetpu"]["compatible"] is False
    assert "not quantized" in info["edgetpu"]["unsupported"]


def test_dynamic_range_model_is_not_fully_integer(infos):
    info = infos["dynamic_range"]
    assert info["ops"] == {"FULLY_CONNECTED": 2}
    assert info["float_ops"] == ["FULLY_CONNECTED"]
    assert info["fully_integer"] is False
    assert info["input"][0]["dtype"] == "float32"
    # the int8 weights are still found and read
    assert info["unique_weight_values_max"] > 16


def test_float_io_model_lists_quantize_and_dequantize(infos):
    info = infos["int8_float_io"]
    assert info["fully_integer"] is False
    assert info["float_ops"] == ["QUANTIZE", "DEQUANTIZE"]
    tpu = info["edgetpu"]
    assert tpu["compatible"] is False
    assert "float input/output" in tpu["unsupported"]
    # the float/int8 conversions at the edges do not split the graph
    assert (tpu["mapped_ops"], tpu["cpu_ops"]) == (2, 2)
    assert tpu["first_cpu_op"] is None


def test_uint8_io(infos):
    info = infos["uint8"]
    assert info["fully_integer"] is True
    assert info["input"][0]["dtype"] == info["output"][0]["dtype"] == "uint8"
    assert info["edgetpu"]["compatible"] is True


def test_dynamic_batch(infos):
    info = infos["dynamic_batch"]
    assert info["static_shapes"] is False
    assert info["input"][0]["shape"] == [1, 8, 8, 1]
    assert info["input"][0]["shape_signature"] == [-1, 8, 8, 1]
    assert info["fully_integer"] is True
    assert "dynamic shapes" in info["edgetpu"]["unsupported"]
    assert info["edgetpu"]["compatible"] is False


def test_op_the_edgetpu_lacks(infos):
    info = infos["leaky_relu"]
    assert info["ops"] == {"FULLY_CONNECTED": 2, "LEAKY_RELU": 1}
    assert info["fully_integer"] is True
    tpu = info["edgetpu"]
    assert tpu["compatible"] is False
    assert tpu["unsupported"] == ["LEAKY_RELU"]
    assert tpu["first_cpu_op"]["op"] == "LEAKY_RELU"
    assert (tpu["mapped_ops"], tpu["cpu_ops"]) == (1, 2)


def test_four_non_1_dimensions(infos):
    tpu = infos["four_dims"]["edgetpu"]
    assert tpu["compatible"] is False
    assert "tensor with more than 3 dimensions larger than 1" in tpu["unsupported"]
    assert tpu["first_cpu_op"]["op"] == "CONV_2D"
    assert tpu["first_cpu_op"]["index"] == 1
    assert (tpu["mapped_ops"], tpu["cpu_ops"]) == (1, 1)


def test_pruned_sparsity(infos):
    assert infos["pruned"]["weight_sparsity"] == pytest.approx(0.8, abs=0.02)
    assert infos["int8"]["weight_sparsity"] < 0.05


@pytest.mark.parametrize("name", ["clustered", "clustered_float"])
def test_clustered_unique_values(infos, name):
    assert 1 < infos[name]["unique_weight_values_max"] <= 16


def test_unclustered_has_many_unique_values(infos):
    assert infos["uint8"]["unique_weight_values_max"] > 16


def test_detail_lists_tensors_operators_weights(models):
    info = inspect_model(models["int8"], detail=True)
    tensors = {t["name"]: t for t in info["tensors"]}
    inp = tensors[info["input"][0]["name"]]
    assert inp["dtype"] == "int8" and inp["shape"] == [1, 8, 8, 1]
    assert inp["quantization"]["per_axis"] is False
    assert len(inp["quantization"]["scale"]) == 1
    filters = [t for t in info["tensors"] if t["constant"] and t["dtype"] == "int8"]
    assert filters and all(t["quantization"]["per_axis"] for t in filters)
    conv_filter = next(t for t in filters if len(t["shape"]) == 4)
    assert len(conv_filter["quantization"]["scale"]) == conv_filter["shape"][0] == 4
    assert [op["op"] for op in info["operators"]] == list(info["ops"])
    assert {w["op"] for w in info["weights"]} == {"CONV_2D", "FULLY_CONNECTED"}
    assert json.loads(json.dumps(info)) == info


def test_bytes_input(models):
    info = inspect_model(models["int8"].read_bytes())
    assert info["model"] == "<bytes>"
    assert info["ops"]["CONV_2D"] == 1


def test_tflite_metadata_is_reported(models, tmp_path):
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(models["int8"].read_bytes(), 0)
    buffer = schema.BufferT()
    buffer.data = list(b"\x1c\x00\x00\x00M001")
    model.buffers.append(buffer)
    meta = schema.MetadataT()
    meta.name = "TFLITE_METADATA"
    meta.buffer = len(model.buffers) - 1
    model.metadata.append(meta)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path = tmp_path / "with_metadata.tflite"
    path.write_bytes(bytes(builder.Output()))
    info = inspect_model(path)
    assert "TFLITE_METADATA" in info["metadata_names"]
    assert info["has_tflite_metadata"] is True
    assert info["ops"] == inspect_model(models["int8"])["ops"]


def test_format_table(infos):
    text = format_table(infos["leaky_relu"])
    assert "LEAKY_RELU" in text and "FULLY_CONNECTED" in text
    assert "Fully integer     yes" in text
    assert "not compatible" in text
    assert "first unsupported" in text
    text = format_table(infos["dynamic_range"])
    assert "Fully integer     no (float: FULLY_CONNECTED)" in text
    assert "float32" in text
    text = format_table(infos["dynamic_batch"])
    assert "[?, 8, 8, 1]" in text and "Static shapes     no" in text


# ---- broken input ------------------------------------------------------------------------


def assert_not_tflite(excinfo, *words):
    message = str(excinfo.value)
    assert "is not a TFLite flatbuffer (" in message
    for word in words:
        assert word in message
    assert excinfo.value.hint


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
def test_truncated_file(models, tmp_path, fraction):
    data = models["int8"].read_bytes()
    path = tmp_path / "cut.tflite"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(InputFileError) as excinfo:
        inspect_model(path)
    assert_not_tflite(excinfo, str(path))


def test_every_truncation_and_random_damage_gives_input_file_error(models):
    data = models["leaky_relu"].read_bytes()
    for cut in range(0, len(data), 7):
        with pytest.raises(InputFileError):
            inspect_model(data[:cut])
    rng = random.Random(0)
    for _ in range(300):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            damaged[rng.randrange(8, len(damaged))] = rng.randrange(256)
        try:
            inspect_model(bytes(damaged))  # damage in weights may leave a readable model
        except InputFileError as e:
            assert "is not a TFLite flatbuffer" in str(e)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"hello, this is a text file\nnot a model\n", ["text file"]),
        (b"PK\x03\x04" + b"\0" * 60, ["zip"]),
        (b"\x89HDF\r\n\x1a\n" + b"\0" * 60, ["HDF5"]),
        (b"\x10\0\0\0ABCD" + b"\0" * 60, ["identifier"]),
        (b"TFL3", ["4 bytes"]),
        (b"", ["0 bytes"]),
        (b"\xff\xff\xff\x7fTFL3" + b"\0" * 32, ["truncated or corrupt"]),
    ],
)
def test_not_a_tflite_file(tmp_path, content, words):
    path = tmp_path / "model.tflite"
    path.write_bytes(content)
    with pytest.raises(InputFileError) as excinfo:
        inspect_model(path)
    assert_not_tflite(excinfo, *words)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputFileError, match="model not found: "):
        inspect_model(tmp_path / "nope.tflite")
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"")
    with pytest.raises(InputFileError, match="SavedModel"):
        inspect_model(tmp_path / "saved")


def test_wrong_argument_type():
    with pytest.raises(TypeError):
        inspect_model(42)
