"""Biases whose int32 scale is not the input scale times the weight scale, requantized to it.

TFLite's integer FULLY_CONNECTED, CONV_2D, DEPTHWISE_CONV_2D and TRANSPOSE_CONV kernels add
the int32 bias to the int32 accumulator as it is: they assume its scale is
``input_scale * weight_scale`` (per output channel) and never read the scale the file gives it.
TensorFlow's converter can break that when a model carries fake-quantized ranges (QAT) for some
tensors and leaves others to calibration: measured here, a Keras 3 QAT model whose
GlobalAveragePooling2D feeds a Dense got a FULLY_CONNECTED bias quantized with the pooling's
calibrated range (scale 0.0159) while the MEAN output, its input, kept its own input's scale
(0.150). The kernel then added every bias 9.4 times too large: 48 % int8 accuracy against 81 %
in Keras. This pass gives such a bias the scale the kernel uses, from its float values, so the
file computes what its scales say.

Example:
    >>> from tfedge.converters.flatbuffer import rewrite
    >>> fixed = rewrite(blob, rescale_biases)  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tfedge.converters.flatbuffer import opcode_names

__all__ = ["BIASED_OPS", "rescale_biases", "bias_scale_errors"]

#: operator -> (input slot, weight slot, bias slot).
BIASED_OPS = {
    "FULLY_CONNECTED": (0, 1, 2),
    "CONV_2D": (0, 1, 2),
    "DEPTHWISE_CONV_2D": (0, 1, 2),
    "TRANSPOSE_CONV": (2, 1, 3),
}
# Relative difference between a bias scale and input x weight scale that counts as a mismatch;
# the converter's own rounding stays far below it.
_TOLERANCE = 1e-3
_INT32 = np.iinfo(np.int32)


def _scales(tensor) -> np.ndarray | None:
    quantization = tensor.quantization
    if quantization is None or quantization.scale is None or len(quantization.scale) == 0:
        return None
    return np.asarray(quantization.scale, np.float64)


def _mismatches(model: schema.ModelT):
    """``(graph, bias tensor index, bias scales, expected scales)`` for every mismatched bias."""
    names = opcode_names(model)
    for graph in model.subgraphs or []:
        for op in graph.operators or []:
            slots = BIASED_OPS.get(names[op.opcodeIndex])
            inputs = [] if op.inputs is None else list(op.inputs)
            if slots is None or max(slots) >= len(inputs) or min(inputs[s] for s in slots) < 0:
                continue
            source, weights, bias = (graph.tensors[inputs[s]] for s in slots)
            if bias.type != schema.TensorType.INT32:
                continue
            in_scale, w_scale, b_scale = _scales(source), _scales(weights), _scales(bias)
            if in_scale is None or w_scale is None or b_scale is None or len(in_scale) != 1:
                continue
            expected = in_scale[0] * w_scale
            if len(b_scale) != len(expected) and 1 not in (len(b_scale), len(expected)):
                continue
            if np.all(np.abs(b_scale - expected) <= _TOLERANCE * np.abs(expected)):
                continue
            yield graph, int(inputs[slots[2]]), b_scale, expected


def bias_scale_errors(model: schema.ModelT) -> list[str]:
    """The names of the biases whose scale is not input scale x weight scale.

    Example:
        >>> bias_scale_errors(unpack_model(blob))  # doctest: +SKIP
        []
    """
    return [
        (graph.tensors[index].name or b"").decode(errors="replace")
        for graph, index, _, _ in _mismatches(model)
    ]


def rescale_biases(model: schema.ModelT) -> bool:
    """Requantize each mismatched int32 bias to input scale x weight scale, in place.

    Returns:
        True if a bias was changed.

    Example:
        >>> rewrite(blob, rescale_biases)  # doctest: +SKIP
    """
    changed = False
    for graph, index, b_scale, expected in list(_mismatches(model)):
        tensor = graph.tensors[index]
        buffer = model.buffers[tensor.buffer]
        if buffer.data is None or len(buffer.data) == 0:
            continue
        values = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), np.int32)
        channels = max(len(values), 1)
        floats = values.astype(np.float64) * np.broadcast_to(b_scale, (channels,))
        scale = np.broadcast_to(expected, (channels,)).astype(np.float64)
        fixed = np.clip(np.round(floats / scale), _INT32.min, _INT32.max).astype(np.int32)
        new = schema.BufferT()
        new.data = np.frombuffer(fixed.tobytes(), np.uint8).copy()
        shared = sum(t.buffer == tensor.buffer for g in model.subgraphs for t in g.tensors) > 1
        if shared:  # another tensor reads the old values: give this one a buffer of its own
            model.buffers.append(new)
            tensor.buffer = len(model.buffers) - 1
        else:
            model.buffers[tensor.buffer] = new
        kept = scale[:1] if max(len(b_scale), len(expected)) == 1 else scale
        tensor.quantization.scale = [float(s) for s in kept]
        tensor.quantization.zeroPoint = [0] * len(kept)
        changed = True
    return changed
