"""The convert mode table: convert() gives the bytes of the converter settings each mode stands for.

The reference converters below are configured by hand, as TensorFlow's documentation describes
each mode; :func:`tfedge.converters.convert` must give exactly their bytes (plus tfedge's own
flatbuffer passes), so a table entry that drifts from what its mode means fails here.
"""

import numpy as np
import pytest

import tfedge.models.recipe as recipe
from tfedge.converters import IO_TYPES, MODES, convert
from tfedge.converters.flatbuffer import rewrite
from tfedge.converters.float_islands import integerize_islands
from tfedge.converters.modes import TABLE, mode_of
from tfedge.converters.tensor_names import shorten_names
from tfedge.converters.tflite import _concrete_function, _input_specs
from tfedge.core.backend import keras, tf
from tfedge.core.errors import ConversionError
from tfedge.core.streams import calibration_samples

SAMPLES = 20


@pytest.fixture(scope="module")
def small():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(5, name="dense"),
        ]
    )
    x = np.random.default_rng(0).random((40, 8, 8, 1)).astype(np.float32)
    return model, x


def _by_hand(model, x, mode, io):
    """The TFLite converter configured for ``mode`` without tfedge's table."""
    specs = _input_specs(model)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_concrete_function(model, specs)])
    integer = mode in ("int8", "int16x8")
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if integer:
        data = calibration_samples(x, SAMPLES, input_shape=(8, 8, 1))

        def representative():
            for sample in data.x:
                yield [sample[np.newaxis].astype(np.float32)]

        converter.representative_dataset = representative
    if mode == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = getattr(tf, io)
    if mode == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
    passes = [integerize_islands, shorten_names] if integer else [shorten_names]
    return rewrite(converter.convert(), *passes)


@pytest.mark.parametrize(
    "mode,io",
    [("int8", None), ("int8", "uint8"), ("int16x8", None), ("float16", None),
     ("dynamic", None), ("float32", None)],
)  # fmt: skip
def test_each_mode_converts_to_the_bytes_its_settings_stand_for(small, mode, io):
    model, x = small
    calib = x if mode_of(mode).calibration else None
    blob = convert(model, mode=mode, io=io, calib=calib, calib_samples=SAMPLES)
    assert blob == _by_hand(model, x, mode, io or "int8")


def test_the_table_is_the_list_of_modes_everywhere():
    assert MODES == tuple(m.name for m in TABLE) == recipe.MODES
    assert IO_TYPES == recipe.IO_TYPES
    assert [m.name for m in TABLE if m.io_types and m.io_types[0] != "float32"] == ["int8"]


@pytest.mark.parametrize(
    "mode,io,words",
    [("int16x8", "int8", "does not fit mode int16x8"), ("dynamic", "uint8", "keeps float"),
     ("int8", "int4", "unknown input/output type"), ("int7", None, "unknown mode 'int7'")],
)  # fmt: skip
def test_an_io_type_a_mode_cannot_give_is_refused_in_its_words(small, mode, io, words):
    with pytest.raises(ConversionError, match=words):
        convert(small[0], mode=mode, io=io, calib=small[1])
