"""The float-island pass on real conversions.

TensorFlow's quantizer leaves a DEQUANTIZE -> float SPLIT -> QUANTIZE island only now and then
(one run in a few, on an unrolled LSTM), so these tests build the island themselves: they take a
real fully-int8 model and rewrite one of its integer SPLITs the way the quantizer does when it
fails, one output dead. The pass must give back an integer model that computes what the island did.
"""

import copy

import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from tfedge.converters import convert
from tfedge.converters.flatbuffer import opcode_names, pack_model, unpack_model
from tfedge.converters.float_islands import integerize_float_islands
from tfedge.core.backend import keras, tf
from tfedge.core.inspector import inspect_model


@pytest.fixture(scope="module")
def split_model_int8(digits):
    """A real int8 model whose SPLIT has one dead output (the 4th quarter is never read)."""
    train, _ = digits
    keras.utils.set_random_seed(0)
    L = keras.layers
    inputs = keras.Input((16, 16, 1))
    x = L.Conv2D(8, 3, activation="relu")(inputs)
    x = L.Reshape((14 * 14, 8))(x)
    parts = L.Lambda(lambda t: tf.split(t, 4, axis=-1), name="quarters")(x)
    pooled = [L.GlobalAveragePooling1D()(part) for part in parts[:3]]
    model = keras.Model(inputs, L.Dense(10, activation="softmax")(L.Concatenate()(pooled)))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(train.x, train.y, epochs=2, verbose=0)
    blob = convert(model, calib=train, calib_samples=100)
    assert inspect_model(blob)["ops"]["SPLIT"] == 1
    return blob


def _islandify(blob: bytes, rescale: float) -> bytes:
    """Turn the int8 SPLIT into DEQUANTIZE -> float SPLIT -> QUANTIZE, as the quantizer can.

    ``rescale`` multiplies the scale of each QUANTIZE's output, so that the rewrite must keep a
    requantization (``!= 1``) or may drop it (``1``).
    """
    model = unpack_model(blob)
    names = opcode_names(model)
    graph = model.subgraphs[0]
    position, split = next(
        (i, op) for i, op in enumerate(graph.operators) if names[op.opcodeIndex] == "SPLIT"
    )

    def opcode(builtin):
        for index, code in enumerate(model.operatorCodes):
            if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
                return index
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = builtin
        code.version = 1 if builtin == schema.BuiltinOperator.DEQUANTIZE else 2
        model.operatorCodes.append(code)
        return len(model.operatorCodes) - 1

    def float_twin(index):
        twin = copy.deepcopy(graph.tensors[index])
        twin.type = schema.TensorType.FLOAT32
        twin.quantization = None
        twin.name = twin.name + b"/float"
        twin.buffer = 0
        graph.tensors.append(twin)
        return len(graph.tensors) - 1

    def operator(code, inputs, outputs):
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = code, list(inputs), list(outputs)
        return op

    data = int(split.inputs[1])
    floating_in = float_twin(data)
    floating_out = [float_twin(int(o)) for o in split.outputs]
    quantizers = []
    for int_out, float_out in zip(split.outputs, floating_out):
        if any(int_out in op.inputs for op in graph.operators):  # the dead output gets none
            graph.tensors[int_out].quantization.scale = [
                float(graph.tensors[int_out].quantization.scale[0]) * rescale
            ]
            quantizers.append(
                operator(opcode(schema.BuiltinOperator.QUANTIZE), [float_out], [int_out])
            )
    split.inputs = [int(split.inputs[0]), floating_in]
    split.outputs = floating_out
    dequantize = operator(opcode(schema.BuiltinOperator.DEQUANTIZE), [data], [floating_in])
    graph.operators[position : position + 1] = [dequantize, split, *quantizers]
    return pack_model(model)


@pytest.mark.parametrize("rescale", [1.0, 2.0])
def test_an_island_becomes_integer_and_computes_the_same(
    split_model_int8, digits, rescale, raw_outputs
):
    island = _islandify(split_model_int8, rescale)
    assert inspect_model(island)["float_ops"] == ["DEQUANTIZE", "SPLIT", "QUANTIZE"]

    fixed = integerize_float_islands(island)
    info = inspect_model(fixed)
    assert info["fully_integer"]
    assert info["ops"].get("DEQUANTIZE", 0) == 0
    # Same scale: the QUANTIZEs go; another scale: they stay as int8 -> int8 requantizations.
    assert info["ops"].get("QUANTIZE", 0) == (0 if rescale == 1.0 else 3)
    x = digits[1].x[:60]
    expected = raw_outputs(island, x)
    assert np.abs(raw_outputs(fixed, x) - expected).max() <= (0 if rescale == 1.0 else 1)
    if rescale == 1.0:
        assert np.array_equal(raw_outputs(fixed, x), raw_outputs(split_model_int8, x))


def test_a_model_without_islands_is_returned_as_is(split_model_int8, digits_tflite):
    assert integerize_float_islands(split_model_int8) is split_model_int8
    float_model = digits_tflite["float32"].read_bytes()
    assert integerize_float_islands(float_model) is float_model  # float by design: no DEQUANTIZE


def test_an_island_feeding_a_float_operator_is_left_alone(split_model_int8):
    island = unpack_model(_islandify(split_model_int8, 1.0))
    names = opcode_names(island)
    graph = island.subgraphs[0]
    quantize = next(op for op in graph.operators if names[op.opcodeIndex] == "QUANTIZE")
    quantize.opcodeIndex = names.index("DEQUANTIZE")  # now a float -> ? op the pass can't own
    blob = pack_model(island)
    assert integerize_float_islands(blob) is blob
