"""Tests of tfedge.converters.metadata on real converted models.

Our own reader checks the round trip; TFLite Support 0.4.4 (MetadataDisplayer, MetadataPopulator
and the Task Library's ImageClassifier, in their own venv: see scripts/tflite-support-venv.sh)
is the independent reader.
"""

import io
import json
import os
import struct
import subprocess
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as tfl
from ai_edge_litert.interpreter import Interpreter

from tfedge.converters.metadata import (
    LABELS_FILE_NAME,
    METADATA_NAME,
    MIN_PARSER_VERSION,
    add_metadata,
    read_labels_file,
    read_metadata,
)
from tfedge.core.backend import keras, tf
from tfedge.core.errors import ConversionError, InputFileError

REPO = Path(__file__).resolve().parents[1]
SUPPORT_VENV = REPO / ".venv-tflite-support"
SUPPORT_SCRIPT = REPO / "scripts" / "tflite-support-venv.sh"

LABELS = ["zéro", "one", "two", "three", "four"]  # one non-ASCII label: labels.txt is UTF-8
MEAN, STD = 127.5, 127.5
H = W = 8


def _rng_images(n, channels=3, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, H, W, channels)).astype(np.float32)


def _keras_classifier(channels=3, classes=len(LABELS)):
    """A tiny classifier of images normalized to (pixel - MEAN) / STD."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.layers.Conv2D(4, 3, activation="relu", input_shape=(H, W, channels)),
            keras.layers.Flatten(),
            keras.layers.Dense(classes),
            keras.layers.Softmax(),
        ]
    )


def _convert(model, mode):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode == "int8":
        calib = (_rng_images(32, model.input_shape[-1], seed=1) - MEAN) / STD

        def representative():
            for i in range(len(calib)):
                yield [calib[i : i + 1]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return bytes(converter.convert())


@pytest.fixture(scope="module")
def tiny_models():
    """{mode: (model without metadata, model with metadata)} for a tiny RGB classifier."""
    keras_model = _keras_classifier()
    out = {}
    for mode in ("float32", "int8"):
        plain = _convert(keras_model, mode)
        with_md = add_metadata(
            plain,
            LABELS,
            name="tiny",
            description="A tiny test classifier.",
            version="1.2",
            author="tfedge tests",
            input_mean=MEAN,
            input_std=STD,
        )
        out[mode] = (plain, with_md)
    return out


def _run(model_bytes, inputs):
    interpreter = Interpreter(model_content=model_bytes)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    results = []
    for x in inputs:
        interpreter.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"]).copy())
    return np.stack(results)


def _quantized_inputs(model_bytes, images):
    """Images as the model's input tensor takes them: normalized, then quantized if integer."""
    detail = Interpreter(model_content=model_bytes).get_input_details()[0]
    x = (images - MEAN) / STD
    if detail["dtype"] == np.float32:
        return x
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(detail["dtype"])


def _zip_layout(data: bytes) -> dict:
    """How the associated files are packed: what TFLite Support's readers depend on."""
    eocd = data.rfind(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack("<II", data[eocd + 12 : eocd + 20])
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
    return {
        "eocd_at_end": eocd == len(data) - 22,
        "offsets_from_file_start": cd_offset == eocd - cd_size,
        "entries": [
            {
                "name": i.filename,
                "local_header_at_offset": data[i.header_offset : i.header_offset + 4]
                == b"PK\x03\x04",
                "compress_type": i.compress_type,
                "flag_bits": i.flag_bits,
                "create_system": i.create_system,
                "create_version": i.create_version,
                "extract_version": i.extract_version,
                "external_attr": i.external_attr,
                "internal_attr": i.internal_attr,
                "extra": i.extra.hex(),
                "file_size": i.file_size,
                "compress_size": i.compress_size,
                "crc": i.CRC,
            }
            for i in infos
        ],
    }


# --------------------------------------------------------------------------------------------
# Our reader, the model and the interpreter.


@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_round_trip_with_our_reader(tiny_models, mode):
    plain, with_md = tiny_models[mode]
    assert read_metadata(plain) is None
    meta = read_metadata(with_md)
    assert meta["name"] == "tiny"
    assert meta["description"] == "A tiny test classifier."
    assert meta["version"] == "1.2"
    assert meta["author"] == "tfedge tests"
    assert meta["min_parser_version"] == MIN_PARSER_VERSION
    assert meta["input_kind"] == "image" and meta["color_space"] == "RGB"
    assert meta["input_mean"] == [MEAN] and meta["input_std"] == [STD]
    if mode == "int8":
        assert (meta["input_min"], meta["input_max"]) == ([-128.0], [127.0])
    else:  # 0..255 pixels after normalization, as TFLite Support's image writer says
        assert (meta["input_min"], meta["input_max"]) == ([-1.0], [1.0])
    assert meta["labels_file"] == LABELS_FILE_NAME
    assert meta["labels"] == LABELS
    assert meta["associated_files"] == [LABELS_FILE_NAME]
    assert meta["packed_files"] == [LABELS_FILE_NAME]


@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_interpreter_gives_identical_outputs(tiny_models, mode):
    plain, with_md = tiny_models[mode]
    inputs = _quantized_inputs(plain, _rng_images(8, seed=2))
    before, after = _run(plain, inputs), _run(with_md, inputs)
    assert before.dtype == after.dtype
    np.testing.assert_array_equal(before, after)
    assert np.ptp(before) > 0  # a real computation, not a constant


@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_model_is_kept_intact(tiny_models, mode):
    plain, with_md = tiny_models[mode]
    a = tfl.ModelT.InitFromPackedBuf(plain, 0)
    b = tfl.ModelT.InitFromPackedBuf(with_md, 0)
    assert tfl.Model.ModelBufferHasIdentifier(with_md, 0)
    assert (b.version, b.description) == (a.version, a.description)
    assert len(b.buffers) == len(a.buffers) + 1
    for i, (x, y) in enumerate(zip(a.buffers, b.buffers[: len(a.buffers)], strict=True)):
        assert (x.data is None) == (y.data is None), i
        if x.data is not None:
            np.testing.assert_array_equal(x.data, y.data)
    names_a = [(m.name, m.buffer) for m in a.metadata]
    names_b = [(m.name, m.buffer) for m in b.metadata]
    assert {n for n, _ in names_a} >= {b"min_runtime_version", b"CONVERSION_METADATA"}
    assert names_b[:-1] == names_a
    assert names_b[-1] == (METADATA_NAME.encode(), len(b.buffers) - 1)
    assert [c.builtinCode for c in b.operatorCodes] == [c.builtinCode for c in a.operatorCodes]
    sa, sb = a.subgraphs[0], b.subgraphs[0]
    assert [o.opcodeIndex for o in sb.operators] == [o.opcodeIndex for o in sa.operators]
    assert [t.name for t in sb.tensors] == [t.name for t in sa.tensors]
    assert len(b.signatureDefs) == len(a.signatureDefs)
    # Buffer data aligned to 16 bytes, as the schema's force_align asks.
    raw = tfl.Model.GetRootAs(with_md, 0)
    for i in range(raw.BuffersLength()):
        buf = raw.Buffers(i)
        if not buf.DataIsNone():
            assert buf._tab.Vector(buf._tab.Offset(4)) % 16 == 0, i


def test_zip_layout_and_determinism(tiny_models):
    plain, with_md = tiny_models["int8"]
    layout = _zip_layout(with_md)
    assert layout["eocd_at_end"] and layout["offsets_from_file_start"]
    (entry,) = layout["entries"]
    assert entry["name"] == LABELS_FILE_NAME and entry["local_header_at_offset"]
    assert entry["compress_type"] == zipfile.ZIP_STORED
    with zipfile.ZipFile(io.BytesIO(with_md)) as zf:
        assert zf.read(LABELS_FILE_NAME) == ("\n".join(LABELS) + "\n").encode()
    # The zip starts right after the flatbuffer.
    with zipfile.ZipFile(io.BytesIO(with_md)) as zf:
        start = zf.infolist()[0].header_offset
    assert tfl.Model.ModelBufferHasIdentifier(with_md[:start], 0)
    assert read_metadata(with_md[:start])["labels"] is None  # the labels live in the zip only
    # Byte for byte what MetadataPopulator._populate_associated_files does (zipfile append mode
    # on the model file, writestr(name, data)), with the zip entry's clock fixed as ours is.
    populated = io.BytesIO(with_md[:start])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zipfile.time, "localtime", lambda *_: (1980, 1, 1, 0, 0, 0, 1, 1, -1))
        with zipfile.ZipFile(populated, "a") as zf:
            zf.writestr(LABELS_FILE_NAME, ("\n".join(LABELS) + "\n").encode())
    assert populated.getvalue() == with_md
    again = add_metadata(
        plain,
        LABELS,
        name="tiny",
        description="A tiny test classifier.",
        version="1.2",
        author="tfedge tests",
        input_mean=MEAN,
        input_std=STD,
    )
    assert again == with_md


def test_adding_twice_replaces_the_metadata(tiny_models):
    plain, with_md = tiny_models["float32"]
    new_labels = ["a", "b", "c", "d", "e"]
    twice = add_metadata(with_md, new_labels, name="second")
    model = tfl.ModelT.InitFromPackedBuf(twice, 0)
    assert [m.name for m in model.metadata].count(METADATA_NAME.encode()) == 1
    assert len(model.buffers) == len(tfl.ModelT.InitFromPackedBuf(plain, 0).buffers) + 1
    meta = read_metadata(twice)
    assert meta["name"] == "second" and meta["labels"] == new_labels
    assert meta["input_mean"] is None and meta["input_std"] is None
    assert meta["packed_files"] == [LABELS_FILE_NAME]
    inputs = _quantized_inputs(plain, _rng_images(3, seed=3))
    np.testing.assert_array_equal(_run(plain, inputs), _run(twice, inputs))


def test_grayscale_and_feature_inputs():
    gray = _convert(_keras_classifier(channels=1), "float32")
    meta = read_metadata(add_metadata(gray, LABELS, input_mean=[0.0], input_std=[255.0]))
    assert (meta["input_kind"], meta["color_space"]) == ("image", "GRAYSCALE")
    assert meta["input_min"] == [0.0] and meta["input_max"] == [1.0]
    # input_kind="tensor": FeatureProperties, even for an image-shaped input.
    meta = read_metadata(add_metadata(gray, LABELS, input_kind="tensor"))
    assert (meta["input_kind"], meta["color_space"]) == ("tensor", None)
    assert meta["input_mean"] is None and meta["input_min"] is None
    # A non-image input (features, shape [1, 6]) gets FeatureProperties.
    keras.utils.set_random_seed(0)
    dense = keras.Sequential([keras.layers.Dense(3, input_shape=(6,))])
    meta = read_metadata(
        add_metadata(_convert(dense, "float32"), ["x", "y", "z"], input_mean=[0] * 6, input_std=1)
    )
    assert meta["input_kind"] == "tensor" and meta["labels"] == ["x", "y", "z"]
    assert meta["input_mean"] == [0.0] * 6 and meta["input_std"] == [1.0]


# --------------------------------------------------------------------------------------------
# Errors.


def test_label_count_mismatch(tiny_models):
    plain, _ = tiny_models["int8"]
    with pytest.raises(ConversionError) as e:
        add_metadata(plain, LABELS[:4])
    assert "4 labels" in e.value.message and "5 classes" in e.value.message
    assert "int8 [" in e.value.message and e.value.hint


def test_missing_and_empty_label_file(tmp_path):
    with pytest.raises(InputFileError) as e:
        read_labels_file(tmp_path / "nope.txt")
    assert "nope.txt" in e.value.message and "label file not found: " in e.value.message
    assert "one class label per line" in e.value.hint
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\t\n")
    with pytest.raises(InputFileError) as e:
        read_labels_file(empty)
    assert "holds no label" in e.value.message
    with pytest.raises(InputFileError, match="is a directory"):
        read_labels_file(tmp_path)
    binary = tmp_path / "labels.bin"
    binary.write_bytes(b"cat\n\xff\xfe\n")
    with pytest.raises(InputFileError, match="not UTF-8"):
        read_labels_file(binary)


def test_read_labels_file_strips(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffcat  \r\n\r\ndog\t\n hot dog\n\n".encode())
    assert read_labels_file(path) == ["cat", "dog", " hot dog"]


def test_bad_arguments(tiny_models):
    plain, _ = tiny_models["float32"]
    with pytest.raises(InputFileError, match="not a TFLite model"):
        add_metadata(b"not a model at all", LABELS)
    with pytest.raises(InputFileError, match="not a TFLite model"):
        read_metadata(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(ValueError, match="both input_mean and input_std"):
        add_metadata(plain, LABELS, input_mean=0.5)
    with pytest.raises(ValueError, match="non-zero"):
        add_metadata(plain, LABELS, input_mean=0.5, input_std=0)
    with pytest.raises(ValueError, match="one per channel"):
        add_metadata(plain, LABELS, input_mean=[1, 2], input_std=1)
    with pytest.raises(ValueError, match="input_kind"):
        add_metadata(plain, LABELS, input_kind="audio")
    with pytest.raises(ValueError, match="single line"):
        add_metadata(plain, ["a", "b\nc", "d", "e", "f"])
    with pytest.raises(ValueError, match="empty"):
        add_metadata(plain, [])


def test_buffers_outside_the_flatbuffer_are_refused():
    keras.utils.set_random_seed(0)
    converter = tf.lite.TFLiteConverter.from_keras_model(
        keras.Sequential([keras.layers.Dense(3, input_shape=(4,))])
    )
    converter._experimental_use_buffer_offset = True  # what the converter does above 2 GB
    model = bytes(converter.convert())
    assert any(b.offset for b in tfl.ModelT.InitFromPackedBuf(model, 0).buffers)
    with pytest.raises(ConversionError, match="outside the flatbuffer"):
        add_metadata(model, ["a", "b", "c"])


# --------------------------------------------------------------------------------------------
# The independent reader: TFLite Support 0.4.4 in its own venv.

_SUPPORT_SNIPPET = textwrap.dedent(
    """
    import io, json, shutil, struct, sys, zipfile
    import numpy as np
    from tflite_support import metadata as md
    from tensorflow_lite_support.metadata.cc.python import _pywrap_metadata_version

    model_path, plain_path, labels_path, ref_path, image_path = sys.argv[1:6]
    displayer = md.MetadataDisplayer.with_model_file(model_path)
    result = {
        "metadata": json.loads(displayer.get_metadata_json()),
        "packed_files": displayer.get_packed_associated_file_list(),
        "labels_txt": displayer.get_associated_file_buffer("labels.txt").decode("utf-8"),
        "min_parser_version": _pywrap_metadata_version.GetMinimumMetadataParserVersion(
            displayer.get_metadata_buffer()),
    }
    # The reference packing: MetadataPopulator writes the same metadata and labels.txt into the
    # model without metadata.
    shutil.copy(plain_path, ref_path)
    populator = md.MetadataPopulator.with_model_file(ref_path)
    populator.load_metadata_buffer(displayer.get_metadata_buffer())
    populator.load_associated_files([labels_path])
    populator.populate()
    # The Task Library (C++ metadata extractor, as on Android) classifies an image with our
    # labels and normalization.
    if image_path != "-":
        from tflite_support.task import core, processor, vision
        options = vision.ImageClassifierOptions(
            base_options=core.BaseOptions(file_name=model_path),
            classification_options=processor.ClassificationOptions(max_results=100))
        classifier = vision.ImageClassifier.create_from_options(options)
        image = vision.TensorImage.create_from_array(np.load(image_path))
        categories = classifier.classify(image).classifications[0].categories
        result["task_library"] = [
            [c.index, c.category_name, c.score] for c in categories]
    print("RESULT" + json.dumps(result))
    """
)


def _support_env():
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    }


@pytest.fixture(scope="session")
def tflite_support_python():
    """The Python of .venv-tflite-support, made by scripts/tflite-support-venv.sh if needed."""
    start = time.monotonic()
    try:
        proc = subprocess.run(
            ["bash", str(SUPPORT_SCRIPT), str(SUPPORT_VENV)],
            capture_output=True,
            text=True,
            timeout=900,
            env=_support_env(),
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"{SUPPORT_SCRIPT.name} did not finish in 900 s (no network?)")
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if ln.strip()]
        reason = " | ".join(lines[-3:]) or f"exit status {proc.returncode}"
        pytest.skip(f"cannot create {SUPPORT_VENV.name}: {reason}")
    print(f"{SUPPORT_VENV.name} ready in {time.monotonic() - start:.1f} s")
    return SUPPORT_VENV / "bin" / "python"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_tflite_support_reads_our_metadata(tiny_models, mode, tflite_support_python, tmp_path):
    plain, with_md = tiny_models[mode]
    model_path, plain_path = tmp_path / "model.tflite", tmp_path / "plain.tflite"
    model_path.write_bytes(with_md)
    plain_path.write_bytes(plain)
    labels_path = tmp_path / LABELS_FILE_NAME
    labels_path.write_bytes(("\n".join(LABELS) + "\n").encode())
    ref_path = tmp_path / "reference.tflite"
    image = _rng_images(1, seed=4)[0].round().astype(np.uint8)
    image_arg = "-"
    if mode == "float32":  # the Task Library takes float32 or uint8 inputs, not int8
        np.save(tmp_path / "image.npy", image)
        image_arg = str(tmp_path / "image.npy")
    proc = subprocess.run(
        [
            str(tflite_support_python),
            "-c",
            _SUPPORT_SNIPPET,
            *map(str, (model_path, plain_path, labels_path, ref_path)),
            image_arg,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_support_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    result = json.loads(line[len("RESULT") :])

    meta = result["metadata"]
    assert (meta["name"], meta["description"], meta["version"], meta["author"]) == (
        "tiny",
        "A tiny test classifier.",
        "1.2",
        "tfedge tests",
    )
    assert meta["min_parser_version"] == MIN_PARSER_VERSION == result["min_parser_version"]
    (subgraph,) = meta["subgraph_metadata"]
    (inp,) = subgraph["input_tensor_metadata"]
    assert inp["content"]["content_properties_type"] == "ImageProperties"
    assert inp["content"]["content_properties"]["color_space"] == "RGB"
    (unit,) = inp["process_units"]
    assert unit["options_type"] == "NormalizationOptions"
    assert unit["options"] == {"mean": [MEAN], "std": [STD]}
    (out,) = subgraph["output_tensor_metadata"]
    (labels_file,) = out["associated_files"]
    assert labels_file["name"] == LABELS_FILE_NAME
    assert labels_file["type"] == "TENSOR_AXIS_LABELS"
    assert result["packed_files"] == [LABELS_FILE_NAME]
    assert result["labels_txt"].splitlines() == LABELS

    # Our packing is MetadataPopulator's (zip entry timestamps aside), and its output reads
    # back the same with our reader.
    reference = ref_path.read_bytes()
    assert _zip_layout(with_md) == _zip_layout(reference)
    ours, theirs = read_metadata(with_md), read_metadata(reference)
    assert ours == theirs

    if mode == "float32":
        expected = _run(plain, _quantized_inputs(plain, image[None].astype(np.float32)))[0, 0]
        got = {index: (name, score) for index, name, score in result["task_library"]}
        assert sorted(got) == list(range(len(LABELS)))
        for index, (name, score) in got.items():
            assert name == LABELS[index]
            assert score == pytest.approx(float(expected[index]), abs=1e-5)
