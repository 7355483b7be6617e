"""The bias-scale pass on real conversions.

TensorFlow's converter quantizes a bias with the wrong scale only for some QAT models (a Keras 3
PQAT model whose GlobalAveragePooling2D feeds a Dense, after 20 epochs of training), so these tests
make the mismatch themselves on a real fully-int8 model: each bias is stored at a tenth of its
scale (its int32 values ten times larger), which leaves its float values as they were. LiteRT's
kernels ignore a bias's scale, so the file then computes something else; the pass must give back
a model that computes what the original did.
"""

import numpy as np
import pytest

from tfedge.converters.bias_scales import BIASED_OPS, bias_scale_errors, rescale_biases
from tfedge.converters.flatbuffer import opcode_names, pack_model, rewrite, unpack_model


def _biases(model):
    names = opcode_names(model)
    graph = model.subgraphs[0]
    for op in graph.operators:
        slots = BIASED_OPS.get(names[op.opcodeIndex])
        if slots is not None and len(op.inputs) > slots[2] and op.inputs[slots[2]] >= 0:
            yield graph.tensors[op.inputs[slots[2]]]


def _misscaled(blob: bytes, factor: float = 10.0) -> bytes:
    model = unpack_model(blob)
    for tensor in _biases(model):
        buffer = model.buffers[tensor.buffer]
        values = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), np.int32)
        buffer.data = np.frombuffer((values * int(factor)).astype(np.int32).tobytes(), np.uint8)
        tensor.quantization.scale = [s / factor for s in tensor.quantization.scale]
    return pack_model(model)


@pytest.fixture(scope="module")
def int8_blob(digits_tflite):
    return digits_tflite["int8"].read_bytes()


def test_a_converted_model_has_consistent_bias_scales(int8_blob):
    assert bias_scale_errors(unpack_model(int8_blob)) == []
    assert rewrite(int8_blob, rescale_biases) == int8_blob  # nothing to do, the bytes as they were


def test_a_misscaled_bias_is_found_and_requantized(int8_blob, digits, raw_outputs):
    x = digits[1].x[:40]
    broken = _misscaled(int8_blob)
    names = bias_scale_errors(unpack_model(broken))
    assert len(names) == len(list(_biases(unpack_model(int8_blob)))) >= 3
    expected = raw_outputs(int8_blob, x)
    assert np.abs(raw_outputs(broken, x) - expected).max() > 3  # the kernel reads it wrong
    fixed = rewrite(broken, rescale_biases)
    assert bias_scale_errors(unpack_model(fixed)) == []
    assert np.array_equal(raw_outputs(fixed, x), expected)
