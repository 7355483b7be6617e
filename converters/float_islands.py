"""Make integer the float islands TFLite's int8 quantizer leaves around a few operators.

TensorFlow 2.21's quantizer is not deterministic on operators with several outputs when one of
them is dead. An unrolled LSTM's first step splits its gates, and the forget gate's output is
unused there: the state it would scale is a constant zero. From one run to the next, that SPLIT
comes out either int8 or as a float island: DEQUANTIZE -> float SPLIT -> QUANTIZE. Data-movement
operators (split, reshape, slice, transpose) only copy values. The integer form of such an island
is therefore exact: the operator reads the int8 tensor, and its outputs keep the input's scale,
as the quantizer gives them when it succeeds. Each QUANTIZE stays as an int8 -> int8
requantization to the scale its consumers were calibrated for, or is dropped when the scales match.

Keras 3's LayerNormalization negates its mean, and TFLite has no int8 NEG: the quantizer leaves
DEQUANTIZE -> NEG -> QUANTIZE, every time. That island becomes an int8 MUL by a constant -1.

Example:
    >>> from tfedge.converters.float_islands import integerize_float_islands
    >>> blob = integerize_float_islands(blob)  # doctest: +SKIP
"""

from __future__ import annotations

import copy

from ai_edge_litert import schema_py_generated as schema

from tfedge.converters.flatbuffer import opcode_names, rewrite

__all__ = ["MOVEMENT_OPS", "integerize_float_islands", "integerize_islands"]

#: Operators that only move values, with the index of their data input (the others are shapes,
#: axes or indices). Their int8 kernels need the output scale equal to the input's.
MOVEMENT_OPS = {
    "SPLIT": 1,
    "SPLIT_V": 0,
    "UNPACK": 0,
    "RESHAPE": 0,
    "SQUEEZE": 0,
    "EXPAND_DIMS": 0,
    "TRANSPOSE": 0,
    "SLICE": 0,
    "STRIDED_SLICE": 0,
}
_INTEGER_TYPES = (schema.TensorType.INT8, schema.TensorType.UINT8, schema.TensorType.INT16)


def integerize_float_islands(blob: bytes) -> bytes:
    """Rewrite each float island of a converted model as integer operators.

    Args:
        blob: a converted ``.tflite`` flatbuffer.

    Returns:
        The model with those islands integer; ``blob`` itself (the same object) when it has none.

    Example:
        >>> fixed = integerize_float_islands(converter.convert())  # doctest: +SKIP
    """
    return rewrite(blob, integerize_islands)


def integerize_islands(model: schema.ModelT) -> bool:
    """:func:`integerize_float_islands` on an unpacked model, in place; True if it changed it.

    Example:
        >>> rewrite(blob, integerize_islands)  # doctest: +SKIP
    """
    names = opcode_names(model)
    changed = False
    for graph in model.subgraphs or []:
        changed |= _rewrite_graph(model, graph, names)
    return changed


def _rewrite_graph(model, graph, names) -> bool:
    changed = False
    for op in list(graph.operators):
        if op not in graph.operators:
            continue
        if names[op.opcodeIndex] == "NEG":
            changed |= _rewrite_negation(model, graph, names, op)
            continue
        slot = MOVEMENT_OPS.get(names[op.opcodeIndex])
        if slot is None or slot >= len(op.inputs):
            continue
        changed |= _rewrite_island(graph, names, op, slot)
    return changed


def _integer_source(graph, names, floating: int):
    """The DEQUANTIZE that makes float tensor ``floating`` from a per-tensor integer one, or None."""
    tensors = graph.tensors
    if floating < 0 or tensors[floating].type != schema.TensorType.FLOAT32:
        return None
    dequantize = _producer(graph, floating)
    if dequantize is None or names[dequantize.opcodeIndex] != "DEQUANTIZE":
        return None
    source = tensors[dequantize.inputs[0]]
    if source.type not in _INTEGER_TYPES or not _per_tensor(source):
        return None
    return dequantize


def _rewrite_negation(model, graph, names, op) -> bool:
    """DEQUANTIZE -> float NEG -> QUANTIZE (Keras 3's LayerNormalization) as an int8 MUL by -1.

    TFLite has no int8 NEG; multiplying by a constant -1 (scale 1) computes the same value and
    requantizes it to the scale the QUANTIZE was calibrated for, in one integer operator.
    """
    tensors = graph.tensors
    floating, out = int(op.inputs[0]), int(op.outputs[0])
    dequantize = _integer_source(graph, names, floating)
    if dequantize is None or tensors[dequantize.inputs[0]].type != schema.TensorType.INT8:
        return False
    quantizers = _consumers(graph, out)
    if not quantizers or out in set(graph.outputs or []):
        return False
    for quantize in quantizers:
        if names[quantize.opcodeIndex] != "QUANTIZE":
            return False
        target = tensors[quantize.outputs[0]]
        if target.type != schema.TensorType.INT8 or not _per_tensor(target):
            return False
    minus_one = _int8_constant(model, graph, -1, b"neg_one")
    mul = _opcode(model, names, schema.BuiltinOperator.MUL, "MUL", version=2)
    position = graph.operators.index(op)
    replacements = []
    for quantize in quantizers:
        product = schema.OperatorT()
        product.opcodeIndex = mul
        product.inputs = [int(dequantize.inputs[0]), minus_one]
        product.outputs = [int(quantize.outputs[0])]
        product.builtinOptionsType = schema.BuiltinOptions.MulOptions
        product.builtinOptions = schema.MulOptionsT()
        replacements.append(product)
        graph.operators.remove(quantize)
    graph.operators[position : position + 1] = replacements
    if not _consumers(graph, floating):
        graph.operators.remove(dequantize)
    return True


def _int8_constant(model, graph, value: int, name: bytes) -> int:
    buffer = schema.BufferT()
    buffer.data = [value & 0xFF]
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.shape = [1]
    tensor.type = schema.TensorType.INT8
    tensor.buffer = len(model.buffers) - 1
    tensor.name = name
    tensor.quantization = schema.QuantizationParametersT()
    tensor.quantization.scale = [1.0]
    tensor.quantization.zeroPoint = [0]
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _opcode(model, names, builtin: int, name: str, version: int) -> int:
    if name in names:
        index = names.index(name)
        model.operatorCodes[index].version = max(model.operatorCodes[index].version, version)
        return index
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = version
    model.operatorCodes.append(code)
    names.append(name)
    return len(model.operatorCodes) - 1


def _rewrite_island(graph, names, op, slot) -> bool:
    tensors = graph.tensors
    floating = op.inputs[slot]
    dequantize = _integer_source(graph, names, floating)
    if dequantize is None:
        return False
    source = tensors[dequantize.inputs[0]]
    graph_outputs = set(graph.outputs or [])
    requantizers = []
    for out in op.outputs:
        if tensors[out].type != schema.TensorType.FLOAT32 or out in graph_outputs:
            return False
        for consumer in _consumers(graph, out):
            target = tensors[consumer.outputs[0]]
            if names[consumer.opcodeIndex] != "QUANTIZE" or target.type != source.type:
                return False
            requantizers.append(consumer)

    op.inputs = [int(i) for i in op.inputs]  # the object API may hand out read-only arrays
    op.inputs[slot] = int(dequantize.inputs[0])
    for out in op.outputs:
        tensors[out].type = source.type
        tensors[out].quantization = copy.deepcopy(source.quantization)
    for quantize in requantizers:
        if _same_scale(tensors[quantize.outputs[0]], source):
            _replace_uses(graph, int(quantize.outputs[0]), int(quantize.inputs[0]))
            graph.operators.remove(quantize)
    if not _consumers(graph, floating):
        graph.operators.remove(dequantize)
    return True


def _producer(graph, tensor):
    return next((op for op in graph.operators if tensor in op.outputs), None)


def _consumers(graph, tensor):
    return [op for op in graph.operators if tensor in op.inputs]


def _per_tensor(tensor) -> bool:
    q = tensor.quantization
    return q is not None and q.scale is not None and len(q.scale) == 1


def _same_scale(a, b) -> bool:
    qa, qb = a.quantization, b.quantization
    return (
        _per_tensor(a)
        and float(qa.scale[0]) == float(qb.scale[0])
        and int(qa.zeroPoint[0]) == int(qb.zeroPoint[0])
    )


def _replace_uses(graph, old: int, new: int) -> None:
    for op in graph.operators:
        op.inputs = [new if i == old else int(i) for i in op.inputs]
    graph.outputs = [new if i == old else int(i) for i in graph.outputs]
