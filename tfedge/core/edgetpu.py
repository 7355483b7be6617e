"""What the Coral EdgeTPU can run: the operator table and the mapping prediction.

Knowledge taken from Coral's page "TensorFlow models on the Edge TPU" (coral.ai/docs/edgetpu/
models-intro, operations table of compiler 16) and from real ``edgetpu_compiler`` logs:

- the model must be fully 8-bit quantized (int8/uint8 tensors; int32 only for constant biases,
  shapes and axes), with static shapes, and no tensor may have more than 3 dimensions larger
  than 1;
- only the operators of :data:`SUPPORTED_OPS` map to the EdgeTPU, each with its documented
  limitations; everything else runs on the CPU;
- the compiler maps the graph in execution order up to the first operator it cannot map: that
  operator and every one after it run on the CPU, even those it supports;
- a QUANTIZE of a float model input and a DEQUANTIZE of a model output run on the CPU without
  splitting the graph (float I/O costs two CPU conversions, nothing more);
- dynamic shapes, or a model with no quantized tensor, make the compiler refuse the model.

Operators seen on some EdgeTPU lists but absent from Coral's table (EXP, FLOOR, HARD_SWISH,
SQRT, GREATER/LESS comparisons...) are predicted to run on the CPU.

The compiler itself is driven by :mod:`tfedge.converters.edgetpu_compiler`; the runtime delegate
is loaded by the device-side runner. This module does not import TensorFlow.

Example:
    >>> from tfedge.core.inspector import inspect_model
    >>> inspect_model("model_int8.tflite")["edgetpu"]["compatible"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

__all__ = ["SUPPORTED_OPS", "EDGETPU_CUSTOM_OP", "MAPPED_STATUS", "predict_mapping"]

#: Operators the EdgeTPU compiler can map, with the limitations Coral documents for them.
SUPPORTED_OPS = {
    "ADD": "",
    "AVERAGE_POOL_2D": "no fused activation function",
    "CONCATENATION": "no fused activation function; a constant input is allowed only with "
    "exactly 2 inputs and must be all zeros (a zero-padding)",
    "CONV_2D": "the same dilation in x and y",
    "DEPTHWISE_CONV_2D": "the same dilation in x and y",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": "default weights format only; one-dimensional output",
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "unidirectional LSTM only",
    "MAXIMUM": "",
    "MAX_POOL_2D": "no fused activation function",
    "MEAN": "no reduction over the batch dimension; a reduction over channels needs a "
    "multiple of 4 channels",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "no packing along the batch dimension",
    "PAD": "no padding of the batch dimension",
    "PRELU": "constant alpha whose only dimension larger than 1 is the innermost",
    "QUANTIZE": "",
    "REDUCE_MAX": "not over the batch dimension",
    "REDUCE_MIN": "not over the batch dimension",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "some reshapes of large tensors stay on the CPU",
    "RESIZE_BILINEAR": "3-D input/output; may stay on the CPU to avoid a loss of precision",
    "RESIZE_NEAREST_NEIGHBOR": "3-D input/output; may stay on the CPU to avoid a loss of precision",
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "1-D input of at most 16,000 elements",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "no splitting along the batch dimension",
    "SQUARED_DIFFERENCE": "",
    "SQUEEZE": "",
    "STRIDED_SLICE": "",
    "SUB": "",
    "SUM": "not over the batch dimension",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}

#: The custom operator that holds the part of a compiled model the EdgeTPU runs.
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"

_INT8 = ("int8", "uint8")
_CONST_OK = ("int8", "uint8", "int32")
#: The status the compiler's operation log gives an operator that runs on the EdgeTPU.
MAPPED_STATUS = "Mapped to Edge TPU"
_AFTER = "Runs on the CPU: after the first operation that cannot be mapped"
_EDGE = "Runs on the CPU: float input/output conversion"


# --------------------------------------------------------------------------------------------
# Mapping prediction
# --------------------------------------------------------------------------------------------


def _non1(shape) -> int:
    return sum(1 for d in shape if d != 1)


def _op_problems(op: dict, tensors: dict) -> list:
    """Why one operator of the main subgraph cannot be mapped ([] when it can)."""
    name = op["op"]
    if name == EDGETPU_CUSTOM_OP:
        return []
    problems = []
    if name not in SUPPORTED_OPS:
        problems.append(f"{name} is not supported by the EdgeTPU")
    ins = [tensors[i] for i in op.get("inputs", []) if i >= 0 and i in tensors]
    outs = [tensors[i] for i in op.get("outputs", []) if i >= 0 and i in tensors]
    for t in ins + outs:
        allowed = _CONST_OK if t.get("constant") else _INT8
        if t["dtype"] not in allowed:
            kind = "constant" if t.get("constant") else "tensor"
            problems.append(
                f"{name} works on {t['dtype']} {kind} '{t['name']}' (the EdgeTPU computes "
                f"in int8/uint8 only)"
            )
            break
    for t in ins + outs:
        if not t.get("constant") and _non1(t["shape"]) > 3:
            problems.append(
                f"{name} uses tensor '{t['name']}' of shape {t['shape']}: more than 3 "
                f"dimensions larger than 1"
            )
            break
    params = op.get("params") or {}
    if params.get("fused_activation", "NONE") not in ("NONE", 0) and name in (
        "AVERAGE_POOL_2D",
        "MAX_POOL_2D",
        "CONCATENATION",
    ):
        problems.append(f"{name} has a fused {params['fused_activation']} activation")
    dilation = (params.get("dilation_w", 1), params.get("dilation_h", 1))
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D") and dilation[0] != dilation[1]:
        problems.append(
            f"{name} has different dilations in x ({dilation[0]}) and y ({dilation[1]})"
        )
    if name == "FULLY_CONNECTED" and outs and _non1(outs[0]["shape"]) > 1:
        problems.append(f"FULLY_CONNECTED output {outs[0]['shape']} is not one-dimensional")
    if name == "SOFTMAX" and ins:
        shape = ins[0]["shape"]
        size = 1
        for d in shape:
            size *= max(d, 1)
        if _non1(shape) > 1 or size > 16000:
            problems.append(f"SOFTMAX input {shape} is not 1-D with at most 16,000 elements")
    if name == "CONCATENATION" and params.get("constant_inputs"):
        if len(op.get("inputs", [])) != 2 or not params.get("constant_inputs_zero"):
            problems.append(
                "CONCATENATION has a constant input that is not a 2-input all-zeros padding"
            )
    if name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN") and ins:
        rank = len(ins[0]["shape"])
        axes = params.get("axis")
        if axes is not None and rank > 1:
            axes = {a % rank for a in axes}
            if 0 in axes:
                problems.append(f"{name} reduces over the batch dimension")
            elif name == "MEAN" and rank - 1 in axes and ins[0]["shape"][-1] % 4:
                problems.append("MEAN reduces over a channel count that is not a multiple of 4")
    if name == "PAD" and params.get("paddings"):
        if any(params["paddings"][0]):
            problems.append("PAD pads the batch dimension")
    if name == "PACK" and params.get("axis") == 0 and ins and len(ins[0]["shape"]) >= 1:
        problems.append("PACK packs along the batch dimension")
    if name == "SPLIT" and params.get("axis") == 0:
        problems.append("SPLIT splits along the batch dimension")
    if name == "PRELU":
        alpha = tensors.get(op["inputs"][1]) if len(op.get("inputs", [])) > 1 else None
        if not params.get("alpha_constant", True) or (
            alpha is not None and _non1(alpha["shape"][:-1]) > 0
        ):
            problems.append("PRELU alpha is not constant with only its innermost dimension > 1")
    return problems


def _predict(info: dict) -> dict:
    tensors = {t["index"]: t for t in info["tensors"] if t.get("subgraph", 0) == 0}
    ops = [op for op in info["operators"] if op.get("subgraph", 0) == 0]
    others = [op for op in info["operators"] if op.get("subgraph", 0) != 0]
    inputs = {e["index"] for e in info.get("input", []) if "index" in e}
    outputs = {e["index"] for e in info.get("output", []) if "index" in e}

    def is_edge(op):
        if op["op"] == "QUANTIZE" and op.get("inputs"):
            t = tensors.get(op["inputs"][0])
            return op["inputs"][0] in inputs and t is not None and t["dtype"] not in _INT8
        if op["op"] == "DEQUANTIZE" and op.get("outputs"):
            return all(o in outputs for o in op["outputs"])
        return False

    reasons, tokens = [], []
    blocked = None
    if not info.get("static_shapes", True):
        tokens.append("dynamic shapes")
        reasons.append(
            "dynamic shapes: a shape signature has -1 (e.g. a free batch dimension); the compiler "
            "refuses the model — convert with a fixed batch of 1"
        )
        blocked = "dynamic shapes"
    has_int8 = any(t["dtype"] in _INT8 and not t.get("constant") for t in tensors.values())
    compiled = any(op["op"] == EDGETPU_CUSTOM_OP for op in ops)
    if not has_int8 and not compiled and ops:
        tokens.append("not quantized")
        reasons.append(
            "not quantized: no int8/uint8 tensor; the compiler refuses the model — convert it "
            "with full integer quantization (--mode int8)"
        )
        blocked = blocked or "not quantized"
    float_io = [
        e for e in info.get("input", []) + info.get("output", []) if e["dtype"] not in _INT8
    ]
    if float_io:
        tokens.append("float input/output")
        names = ", ".join(f"{e.get('name', '?')} ({e['dtype']})" for e in float_io)
        reasons.append(
            f"float input/output: {names}; the QUANTIZE/DEQUANTIZE at the model's edges run on "
            f"the CPU — convert with --io int8 or uint8"
        )

    statuses = []  # (op name, status) in execution order
    unsupported_ops = []
    first = None
    mapped = cpu = 0
    not_int8 = four_d = False
    for op in ops:
        problems = _op_problems(op, tensors)
        edge = is_edge(op)
        if not edge and any("int8/uint8 only" in p for p in problems):
            not_int8 = True
        if any("more than 3 dimensions" in p for p in problems):
            four_d = True
        if blocked:
            status = f"Runs on the CPU: model not compilable ({blocked})"
            if first is None:
                first = {"index": op["index"], "op": op["op"], "reason": blocked}
        elif edge:
            status = _EDGE
        elif first is not None:
            status = _AFTER
        elif problems:
            status = "Runs on the CPU: " + "; ".join(problems)
            first = {"index": op["index"], "op": op["op"], "reason": "; ".join(problems)}
        else:
            status = MAPPED_STATUS
        if problems and not edge and op["op"] not in unsupported_ops:
            unsupported_ops.append(op["op"])
            reasons.append(f"{op['op']} (operator {op['index']}): {'; '.join(problems)}")
        if status == MAPPED_STATUS:
            mapped += 1
        else:
            cpu += 1
        statuses.append((op["op"], status))
    for op in others:
        cpu += 1
        statuses.append((op["op"], "Runs on the CPU: not in the main subgraph"))
    if others:
        reasons.append(f"{len(others)} operators in other subgraphs (control flow) run on the CPU")
    if not_int8:
        tokens.append("not fully int8")
    if four_d:
        tokens.append("tensor with more than 3 dimensions larger than 1")
    if first is not None and not blocked:
        after = sum(1 for _, s in statuses if s == _AFTER)
        if after:
            reasons.append(
                f"{after} operators after {first['op']} (operator {first['index']}) run on the "
                f"CPU too: the compiler maps only up to the first unsupported operation"
            )

    table: dict = {}
    for name, status in statuses:
        table[(name, status)] = table.get((name, status), 0) + 1
    unsupported = tokens + unsupported_ops
    return {
        "compatible": not unsupported and cpu == 0 and mapped > 0,
        "unsupported": unsupported,
        "mapped_ops": mapped,
        "cpu_ops": cpu,
        "first_cpu_op": first,
        "reasons": reasons,
        "ops": [{"op": n, "count": c, "status": s} for (n, s), c in table.items()],
    }


def predict_mapping(info_or_model: dict) -> dict:
    """Predict how ``edgetpu_compiler`` would split a model between the EdgeTPU and the CPU.

    Args:
        info_or_model: a dict from :func:`tfedge.core.inspector.inspect_model` made with
            ``detail=True`` (one without the detail is answered from its own ``"edgetpu"``
            entry, which ``inspect_model`` fills with this function).

    Returns:
        ``{"compatible", "unsupported", "mapped_ops", "cpu_ops", "first_cpu_op", "reasons",
        "ops"}``: ``compatible`` is true when every operator maps and the model needs nothing
        changed (int8/uint8 I/O included); ``unsupported`` lists the global problems
        (``"dynamic shapes"``, ``"not quantized"``, ``"float input/output"``,
        ``"not fully int8"``, ``"tensor with more than 3 dimensions larger than 1"``) and then
        the names of the operators that cannot be mapped; ``first_cpu_op`` is
        ``{"index", "op", "reason"}`` of the operator where the graph leaves the EdgeTPU (the
        first operator when the compiler would refuse the whole model; None if all map);
        ``reasons`` explains each item in a sentence; ``ops`` is the predicted
        ``[{"op", "count", "status"}]`` table, in the format of the compiler's own log
        (:func:`tfedge.converters.edgetpu_compiler.compile_model`).

    Example:
        >>> m = predict_mapping(inspect_model("model_int8.tflite", detail=True))  # doctest: +SKIP
        >>> m["compatible"], m["mapped_ops"], m["cpu_ops"]  # doctest: +SKIP
        (True, 4, 0)
    """
    if not isinstance(info_or_model, dict):
        raise TypeError(
            "predict_mapping() takes an inspect_model() dict (for a .tflite path, read "
            f"inspect_model(path)['edgetpu']), not {type(info_or_model).__name__}"
        )
    if "operators" in info_or_model and "tensors" in info_or_model:
        return _predict(info_or_model)
    if isinstance(info_or_model.get("edgetpu"), dict):
        return dict(info_or_model["edgetpu"])
    raise ValueError(
        "predict_mapping() needs the tensors and operators of the model: pass the .tflite path "
        "or inspect_model(path, detail=True)"
    )
