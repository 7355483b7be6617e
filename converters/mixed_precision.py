"""Mixed int8/int16x8 activations and int4 weights, by ai-edge-quantizer recipes on a float ``.tflite``.

TensorFlow's converter quantizes a whole model one way. ai-edge-quantizer (LiteRT's maintained
quantizer) takes the float ``.tflite`` and a recipe that selects operators by a regex over their
output tensor names, so single layers can get int16 activations (int16x8 kernels) while the rest
stays int8, and weights can be int4. The quantizer puts a QUANTIZE (requantize) operator wherever
an int8 tensor meets an int16 operator.

What a layer given int16 means here: the layer's operators *and the operators that read its
output* (through pass-through operators such as RESHAPE) run in int16x8, so the wide-range output
is never squeezed back to int8 before it is used; their results are requantized to int8 for the
int8 operators after them. Input and output stay int8 (a QUANTIZE is added where an int16
operator touches the model's input or output), so the model is still fully integer; LiteRT runs
it, the EdgeTPU does not (it has no int16 kernels).

Layers are named exactly (:class:`~tfedge.converters.tensor_names.LayerMatcher`): a name that is
not a layer with operators of its own (the model's own name, a prefix, a folded BatchNorm) is
refused with the model's layers listed, and :func:`int16_selection` says which operators a
selection covers.

Example:
    >>> from tfedge.converters import convert
    >>> blob = convert("model.keras", calib="train.npz", int16=["dense_2"])  # doctest: +SKIP
    >>> blob = convert("model.keras", calib="train.npz", weights="int4")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter
from ai_edge_quantizer import qtyping, quantizer
from ai_edge_quantizer.utils.tfl_flatbuffer_utils import get_op_scope

from tfedge.converters.flatbuffer import opcode_names, rewrite, unpack_model
from tfedge.converters.float_islands import integerize_islands
from tfedge.converters.tensor_names import LayerMatcher
from tfedge.core.console import progress, quiet
from tfedge.core.errors import ConversionError, first_line
from tfedge.core.streams import calibration_samples

__all__ = [
    "WEIGHT_TYPES",
    "check_mixed_options",
    "quantize_mixed",
    "int16_selection",
    "with_readers",
]

WEIGHT_TYPES = ("int8", "int4")
SIGNATURE = "serving_default"
# Operators that only move or reshape values: an int16 output read through them stays int16
# until the next operator that computes.
_PASS_THROUGH = {
    "RESHAPE",
    "SQUEEZE",
    "EXPAND_DIMS",
    "TRANSPOSE",
    "MAX_POOL_2D",
    "PAD",
    "PADV2",
    "STRIDED_SLICE",
    "SLICE",
    "GATHER",
    "SPLIT",
    "CONCATENATION",
    "PACK",
    "UNPACK",
}


def int16_selection(blob: bytes, int16: Sequence[str], matcher: LayerMatcher) -> dict[str, dict]:
    """What ``int16=`` selects in a float ``.tflite``: each layer's operators and their readers.

    Args:
        blob: the float32 ``.tflite``.
        int16: Keras layer names, matched exactly (:class:`LayerMatcher`).
        matcher: the model's layer matcher.

    Returns:
        ``{layer: {"operators": [index, ...], "ops": [type, ...], "readers": [index, ...],
        "reader_ops": [type, ...], "reader_layers": [name, ...]}}``: the layer's own operators and
        those that read its output (through pass-through operators), which run int16 too.

    Raises:
        ConversionError: a name that is not a layer of the model with operators (the error lists
            the layers that are).

    Example:
        >>> int16_selection(float_blob, ["sensitive"], LayerMatcher.of(model))  # doctest: +SKIP
        {'sensitive': {'operators': [2], 'ops': ['FULLY_CONNECTED'], 'readers': [3], ...}}
    """
    chosen = matcher.select(blob, int16, "int16")
    model = unpack_model(blob)
    kinds = opcode_names(model)
    ops = model.subgraphs[0].operators or []
    owner = {op: layer for layer, indexes in matcher.operators(blob).items() for op in indexes}
    result = {}
    for layer, own in chosen.items():
        readers = sorted(_readers(model, set(own)) - set(own))
        result[layer] = {
            "operators": own,
            "ops": [kinds[ops[i].opcodeIndex] for i in own],
            "readers": readers,
            "reader_ops": [kinds[ops[i].opcodeIndex] for i in readers],
            "reader_layers": list(dict.fromkeys(owner[i] for i in readers if i in owner)),
        }
    return result


def with_readers(blob: bytes, layers: Sequence[str], matcher: LayerMatcher) -> list[str]:
    """``layers`` and the Keras layers that read their outputs (through pass-through operators).

    What must change precision together so that a wide-range output is not requantized to int8
    before it is used (``--keep-float`` of a layer alone leaves its readers int8).

    Example:
        >>> with_readers(float_blob, ["dense_1"], LayerMatcher.of(model))  # doctest: +SKIP
        ['dense_1', 'dense_2']
    """
    found = matcher.operators(blob)
    owner = {op: layer for layer, ops in found.items() for op in ops}
    start = {op for layer in layers for op in found.get(layer, [])}
    chosen = _readers(unpack_model(blob), start)
    extra = [owner[op] for op in sorted(chosen) if op in owner]
    return list(dict.fromkeys([*layers, *extra]))


def _readers(model: schema.ModelT, operators: set[int]) -> set[int]:
    """``operators`` and the operators that read their outputs, through pass-through operators."""
    graph = model.subgraphs[0]
    kinds = opcode_names(model)
    ops = graph.operators or []
    readers: dict[int, list[int]] = {}
    for index, op in enumerate(ops):
        for tensor in op.inputs if op.inputs is not None else []:
            readers.setdefault(int(tensor), []).append(index)
    chosen = set(operators)
    todo = list(operators)
    while todo:
        for tensor in ops[todo.pop()].outputs:
            for reader in readers.get(int(tensor), []):
                if reader in chosen:
                    continue
                chosen.add(reader)
                if kinds[ops[reader].opcodeIndex] in _PASS_THROUGH:
                    todo.append(reader)
    return chosen


def _int16_scopes(blob: bytes, operators: set[int]) -> list[str]:
    """ai-edge-quantizer's scopes of ``operators`` and of the operators that read their outputs.

    The quantizer matches a recipe's regex against an operator's scope, which its own
    ``tfl_flatbuffer_utils.get_op_scope`` computes (today: the output tensor names joined by
    ``;``); the scopes come from that function, so a change of format reaches this code too.
    """

    model = unpack_model(blob)
    graph = model.subgraphs[0]
    ops = graph.operators or []
    return [get_op_scope(ops[index], graph.tensors) for index in sorted(_readers(model, operators))]


def _scope_regex(scopes: Sequence[str]) -> str:
    """A recipe regex that matches exactly these operator scopes."""
    return "^(?:" + "|".join(re.escape(scope) for scope in dict.fromkeys(scopes)) + ")$"


def _add_signature(model: schema.ModelT) -> bool:
    """Give a model without signatures a ``serving_default`` one (ai-edge-quantizer runs by signature)."""
    if model.signatureDefs:
        return False
    graph = model.subgraphs[0]

    def entry(index):
        item = schema.TensorMapT()
        item.name = graph.tensors[index].name
        item.tensorIndex = int(index)
        return item

    signature = schema.SignatureDefT()
    signature.signatureKey = SIGNATURE.encode()
    signature.subgraphIndex = 0
    signature.inputs = [entry(i) for i in graph.inputs]
    signature.outputs = [entry(i) for i in graph.outputs]
    model.signatureDefs = [signature]
    return True


def _int8_io(model: schema.ModelT) -> bool:
    """Make int16 model inputs and outputs int8, with a QUANTIZE (requantize) next to them.

    The int8 tensor keeps the int16 tensor's range: scale x 32767 / 127, zero point 0.
    """
    graph = model.subgraphs[0]
    changed = False
    quantize = None
    for index, code in enumerate(model.operatorCodes or []):
        if max(code.builtinCode or 0, code.deprecatedBuiltinCode or 0) == (
            schema.BuiltinOperator.QUANTIZE
        ):
            quantize = index
    for kind in ("inputs", "outputs"):
        ends = [int(i) for i in (getattr(graph, kind) if getattr(graph, kind) is not None else [])]
        for position, index in enumerate(ends):
            tensor = graph.tensors[int(index)]
            if tensor.type != schema.TensorType.INT16 or tensor.quantization is None:
                continue
            if quantize is None:
                code = schema.OperatorCodeT()
                code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.QUANTIZE
                code.version = 1
                model.operatorCodes.append(code)
                quantize = len(model.operatorCodes) - 1
            twin = schema.TensorT()
            twin.shape = list(tensor.shape)
            twin.shapeSignature = tensor.shapeSignature
            twin.type = schema.TensorType.INT8
            buffer = schema.BufferT()
            model.buffers.append(buffer)
            twin.buffer = len(model.buffers) - 1
            twin.name = tensor.name
            tensor.name = tensor.name + b"_int16"
            params = schema.QuantizationParametersT()
            params.scale = [float(s) * 32767.0 / 127.0 for s in tensor.quantization.scale]
            params.zeroPoint = [0 for _ in params.scale]
            twin.quantization = params
            graph.tensors.append(twin)
            new = len(graph.tensors) - 1
            op = schema.OperatorT()
            op.opcodeIndex = quantize
            if kind == "inputs":
                op.inputs, op.outputs = [new], [int(index)]
                graph.operators.insert(0, op)
            else:
                op.inputs, op.outputs = [int(index)], [new]
                graph.operators.append(op)
            ends[position] = new
            for signature in model.signatureDefs or []:
                for item in getattr(signature, kind) or []:
                    if int(item.tensorIndex) == int(index):
                        item.tensorIndex = new
            changed = True
        setattr(graph, kind, ends)
    return changed


def check_mixed_options(mode, keep_float, labels, target, calib) -> None:
    """Refuse what ``int16=`` / ``weights="int4"`` (ai-edge-quantizer) do not combine with.

    Example:
        >>> check_mixed_options("int8", (), None, None, "train.npz")
    """
    clash = [
        flag
        for flag, given in (
            (f"--mode {mode}", mode != "int8"),
            ("--keep-float", bool(keep_float)),
            ("--labels", labels is not None),
            ("--target", target is not None),
        )
        if given
    ]
    if clash:
        raise ConversionError(
            f"--int16 and --weights int4 make an int8 model through ai-edge-quantizer and do not "
            f"combine with {', '.join(clash)}",
            "drop those options, or convert without --int16/--weights int4",
        )
    if calib is None:
        raise ConversionError(
            "--int16 and --weights int4 need calibration data to choose activation ranges",
            "pass --calib DATA (a few hundred representative inputs: .npz or an image folder)",
        )


def _int16_negations(model: schema.ModelT) -> bool:
    """DEQUANTIZE(int16) -> float NEG -> QUANTIZE as an int16 MUL by a constant -1, then QUANTIZE.

    Keras 3's LayerNormalization negates its mean and LiteRT has no integer NEG, so the quantizer
    leaves that operator float; :mod:`tfedge.converters.float_islands` rewrites the int8 islands,
    this the int16 ones (a layer given int16). The QUANTIZE after it becomes an integer
    requantization of the product.
    """
    names = opcode_names(model)
    graph = model.subgraphs[0]
    tensors = graph.tensors
    producer = {int(out): op for op in graph.operators for out in op.outputs}
    changed = False
    for op in list(graph.operators):
        if names[op.opcodeIndex] != "NEG":
            continue
        dequantize = producer.get(int(op.inputs[0]))
        if dequantize is None or names[dequantize.opcodeIndex] != "DEQUANTIZE":
            continue
        source = tensors[int(dequantize.inputs[0])]
        if source.type != schema.TensorType.INT16 or len(source.quantization.scale) != 1:
            continue
        readers = [o for o in graph.operators if int(op.outputs[0]) in [int(i) for i in o.inputs]]
        if not readers or any(names[r.opcodeIndex] != "QUANTIZE" for r in readers):
            continue
        minus_one = schema.TensorT()
        minus_one.shape, minus_one.type, minus_one.name = [1], schema.TensorType.INT16, b"neg_one16"
        buffer = schema.BufferT()
        buffer.data = list(np.array([-1], "<i2").tobytes())
        model.buffers.append(buffer)
        minus_one.buffer = len(model.buffers) - 1
        minus_one.quantization = schema.QuantizationParametersT()
        minus_one.quantization.scale, minus_one.quantization.zeroPoint = [1.0], [0]
        product = copy.deepcopy(source)
        product.buffer = 0
        product.name = tensors[int(op.outputs[0])].name + b"_int16"
        tensors.extend([minus_one, product])
        mul = schema.OperatorT()
        mul.opcodeIndex = _opcode(model, "MUL", schema.BuiltinOperator.MUL)
        mul.inputs = [int(dequantize.inputs[0]), len(tensors) - 2]
        mul.outputs = [len(tensors) - 1]
        mul.builtinOptionsType = schema.BuiltinOptions.MulOptions
        mul.builtinOptions = schema.MulOptionsT()
        graph.operators[graph.operators.index(op)] = mul
        for reader in readers:
            reader.inputs = [len(tensors) - 1]
        dead = int(dequantize.outputs[0])
        if not any(dead in [int(i) for i in o.inputs] for o in graph.operators):
            graph.operators.remove(dequantize)
        names = opcode_names(model)
        changed = True
    return changed


def _opcode(model: schema.ModelT, name: str, builtin: int) -> int:
    names = opcode_names(model)
    if name in names:
        index = names.index(name)
        model.operatorCodes[index].version = max(model.operatorCodes[index].version or 1, 3)
        return index
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = 3
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def quantize_mixed(
    float_blob: bytes,
    calib,
    *,
    int16: Sequence[str] = (),
    weights: str = "int8",
    matcher: LayerMatcher | None = None,
    calib_samples: int = 300,
) -> bytes:
    """Quantize a float ``.tflite`` fully integer: int8 activations, int16 for ``int16`` layers.

    Args:
        float_blob: the float32 ``.tflite`` (tfedge's ``convert(mode="float32")``).
        calib: calibration data in any form :func:`tfedge.core.streams.stream_data` accepts.
        int16: Keras layer names (exact) whose operators, and the operators that read their
            output, get int16 activations (int16x8 kernels).
        weights: ``int8`` or ``int4`` (channel-wise, symmetric) for the weights of every
            operator that has them.
        matcher: the Keras model's :class:`~tfedge.converters.tensor_names.LayerMatcher`
            (needed with ``int16``).
        calib_samples: how many calibration samples to use (a seeded random choice).

    Returns:
        The ``.tflite`` bytes, int8 input and output.

    Raises:
        ConversionError: a name that is not a layer of the model (the error lists the layers),
            an unknown weight type, or an operator
            the LiteRT interpreter cannot run with these types (named).

    Example:
        >>> blob = quantize_mixed(float_blob, "train.npz", int16=["dense_2"])  # doctest: +SKIP
    """
    if weights not in WEIGHT_TYPES:
        raise ConversionError(
            f"unknown weight type {str(weights)[:40]!r}; expected one of {', '.join(WEIGHT_TYPES)}",
            option="weights",
        )

    blob = rewrite(float_blob, _add_signature)
    interpreter_inputs = unpack_model(blob).signatureDefs[0].inputs
    if len(interpreter_inputs) != 1:
        raise ConversionError(
            f"the model has {len(interpreter_inputs)} inputs; calibration data feeds single-input models"
        )
    input_name = interpreter_inputs[0].name.decode()
    graph = unpack_model(blob).subgraphs[0]
    shape = tuple(int(d) for d in graph.tensors[int(graph.inputs[0])].shape[1:])
    data = calibration_samples(calib, calib_samples, input_shape=shape)

    scopes = []
    if int16:
        if matcher is None:
            raise ConversionError(
                "int16= selects Keras layers and needs the Keras model's layer names",
                "pass matcher=LayerMatcher.of(model), or use tfedge.converters.convert(model, int16=...)",
                option="int16",
            )
        chosen = int16_selection(blob, int16, matcher)
        scopes = _int16_scopes(blob, {i for entry in chosen.values() for i in entry["operators"]})

    engine = quantizer.Quantizer(blob)
    # The first recipe stays for operators the int16 one does not support (int8, not float).
    # int4 skips the quantizer's own support table (it would leave such operators float without a
    # word): every weight is int4 and the LiteRT interpreter says which operator it cannot run.
    engine.update_quantization_recipe(".*", "*", _static_config(qtyping, 8, weights))
    if scopes:
        engine.update_quantization_recipe(
            _scope_regex(scopes), "*", _static_config(qtyping, 16, weights)
        )
    samples = [
        {input_name: x[np.newaxis].astype(np.float32)}
        for x in progress(data.x, desc="calibrating", unit="sample")
    ]
    failure = None
    with quiet() as log:
        try:
            calibration = engine.calibrate({SIGNATURE: samples}, num_threads=1)
            result = engine.quantize(
                calibration, enable_progress_bar=False, enable_progress_report=False
            )
        except Exception as exc:  # the quantizer raises plain ValueError/RuntimeError
            failure = exc
    if failure is not None:
        raise ConversionError(
            f"ai-edge-quantizer failed: {first_line(failure)}",
            "run with --debug to see its log" + (f"\n{log.text[-400:]}" if log.text else ""),
        ) from failure
    blob = rewrite(bytes(result.quantized_model), integerize_islands, _int16_negations, _int8_io)
    _check_runs(blob, weights)
    return blob


def _static_config(qtyping, activation_bits: int, weights: str):
    """ai-edge-quantizer's static (integer) config: int8 activations asymmetric, int16 symmetric."""
    return qtyping.OpQuantizationConfig(
        activation_tensor_config=qtyping.TensorQuantizationConfig(
            num_bits=activation_bits, symmetric=activation_bits == 16
        ),
        weight_tensor_config=qtyping.TensorQuantizationConfig(
            num_bits=4 if weights == "int4" else 8,
            symmetric=True,
            granularity=qtyping.QuantGranularity.CHANNELWISE,
        ),
        compute_precision=qtyping.ComputePrecision.INTEGER,
        explicit_dequantize=False,
        skip_checks=weights == "int4",
    )


def _check_runs(blob: bytes, weights: str) -> None:
    """Load and run the model once in LiteRT; name the operator it has no kernel for."""

    failure = None
    with quiet():
        try:
            interpreter = Interpreter(model_content=blob)
            interpreter.allocate_tensors()
            for detail in interpreter.get_input_details():
                interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
            interpreter.invoke()
        except Exception as exc:
            failure = exc
    if failure is None:
        return
    text = " ".join(str(failure).split())
    found = re.findall(r"Node number \d+ \((\w+)\)", text)
    ops = ", ".join(dict.fromkeys(found)) or "(not named by the interpreter)"
    detail = text.split("Node number", 1)[0].strip()[:200]
    if weights == "int4":
        raise ConversionError(
            f"LiteRT has no int4-weight kernel for {ops}; the interpreter says: {detail}",
            "use --weights int8 for this model (int4 weights run in CONV_2D, DEPTHWISE_CONV_2D "
            "and FULLY_CONNECTED)",
        )
    raise ConversionError(
        f"LiteRT cannot run {ops} with int16 activations; the interpreter says: {detail}",
        "leave that layer out of --int16, or use --mode int16x8 for the whole model",
    )
