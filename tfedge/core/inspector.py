"""What a ``.tflite`` file holds, without TensorFlow: operators, I/O, quantization, weights, EdgeTPU fit.

The file is read by :mod:`tfedge.core.tflite_file`; this module turns it into the facts ``tfedge
inspect`` prints (and ``--json`` writes), and asks :mod:`tfedge.core.edgetpu` for the EdgeTPU verdict.

Example:
    >>> from tfedge.core.inspector import inspect_model, format_table
    >>> info = inspect_model("model.tflite")  # doctest: +SKIP
    >>> info["fully_integer"], info["ops"]  # doctest: +SKIP
    (True, {'CONV_2D': 1, 'MAX_POOL_2D': 1, 'RESHAPE': 1, 'FULLY_CONNECTED': 1})
    >>> print(format_table(info))  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter

import numpy as np

import tfedge.core.edgetpu as edgetpu
from tfedge.core.errors import shape_text
from tfedge.core.tflite_file import (
    Graph,
    Model,
    Operator,
    Tensor,
    buffer_bytes,
    const_values,
    custom_ops,
    op_name,
    op_names,
    read_model,
    state_names,
    weight_values,
)

__all__ = ["inspect_model", "format_table", "FLOAT_DTYPES", "WEIGHT_OPS"]

#: Tensor types that hold floating-point numbers: an operator touching one is a float operator.
FLOAT_DTYPES = frozenset(
    {
        "float32",
        "float16",
        "float64",
        "bfloat16",
        "complex64",
        "complex128",
        "float8_e4m3fn",
        "float8_e5m2",
    }
)

#: Operators whose second input is a weight filter (the tensors ``weight_sparsity`` looks at).
WEIGHT_OPS = frozenset(
    {
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "FULLY_CONNECTED",
        "TRANSPOSE_CONV",
        "CONV_3D",
        "CONV_3D_TRANSPOSE",
    }
)

_ACTIVATIONS = ("NONE", "RELU", "RELU_N1_TO_1", "RELU6", "TANH", "SIGN_BIT")

# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------


def _quant_entry(t: Tensor) -> dict | None:
    if not t.scale and not t.zero_point:
        return None
    return {
        "scale": list(t.scale),
        "zero_point": list(t.zero_point),
        "quantized_dimension": t.quantized_dimension,
        "per_axis": len(t.scale) > 1,
    }


def _io_entry(t: Tensor) -> dict:
    return {
        "name": t.name,
        "index": t.index,
        "dtype": t.dtype,
        "shape": [1 if d == -1 else d for d in t.shape],
        "shape_signature": list(t.signature) if t.signature else list(t.shape),
        "scale": float(t.scale[0]) if t.scale else 0.0,
        "zero_point": int(t.zero_point[0]) if t.zero_point else 0,
        "per_axis": len(t.scale) > 1,
    }


def _analyze_weight(model: Model, t: Tensor):
    """(zeros, elements, max unique values per quantization group) of one weight tensor."""
    read = weight_values(model, t)
    if read is None:
        return None
    values, zp, groups, count = read
    if t.sparse:  # sparse-encoded: only non-zero blocks are stored (symmetric, zero point 0)
        nonzero = int(np.count_nonzero(values))
        stored_unique = np.unique(values).size
        zeros = count - nonzero
        return zeros, count, stored_unique + (1 if zeros and not (values == 0).any() else 0)
    if zp is not None and np.issubdtype(values.dtype, np.integer):
        zeros = int((values.astype(np.int64) == zp.reshape(-1, 1)).sum())
    else:
        zeros = int((values == 0).sum())
    unique = max(np.unique(row).size for row in values) if groups else 0
    return zeros, count, unique


def _analyze(model: Model, label: str, detail: bool) -> dict:
    names = op_names()
    ops: Counter = Counter()
    float_ops: list = []
    float_ops_seen: set = set()
    op_entries, tensor_entries = [], []
    weights, seen_weights = [], set()
    static = True
    fully_integer = True

    for gi, g in enumerate(model.graphs):
        producers = {}
        for op in g.operators:
            for o in op.outputs:
                if o >= 0:
                    producers[o] = op
        for t in g.tensors:
            if t.signature and -1 in t.signature:
                static = False
            raw = buffer_bytes(model, t)
            tensor_entries.append(
                {
                    "subgraph": gi,
                    "index": t.index,
                    "name": t.name,
                    "dtype": t.dtype,
                    "shape": list(t.shape),
                    "shape_signature": list(t.signature) if t.signature else list(t.shape),
                    "constant": raw is not None,
                    "buffer": t.buffer,
                    "size_bytes": len(raw) if raw is not None else 0,
                    "variable": t.variable,
                    "sparse": t.sparse,
                    "quantization": _quant_entry(t),
                }
            )
        for op in g.operators:
            name = op_name(model, op, names)
            ops[name] += 1
            used = [g.tensors[i] for i in op.inputs + op.outputs if i >= 0]
            if any(t.dtype in FLOAT_DTYPES for t in used):
                fully_integer = False
                if name not in float_ops_seen:
                    float_ops_seen.add(name)
                    float_ops.append(name)
            if name in WEIGHT_OPS and len(op.inputs) > 1 and op.inputs[1] >= 0:
                t = g.tensors[op.inputs[1]]
                for _ in range(3):  # follow DEQUANTIZE / DENSIFY back to the stored constant
                    producer = producers.get(t.index)
                    if buffer_bytes(model, t) is not None or producer is None:
                        break
                    if op_name(model, producer, names) not in ("DEQUANTIZE", "DENSIFY"):
                        break
                    if not producer.inputs or producer.inputs[0] < 0:
                        break
                    t = g.tensors[producer.inputs[0]]
                if (gi, t.index) not in seen_weights and buffer_bytes(model, t) is not None:
                    seen_weights.add((gi, t.index))
                    result = _analyze_weight(model, t)
                    if result is not None:
                        weights.append((gi, t, name, *result))
            op_entries.append(
                {
                    "subgraph": gi,
                    "index": op.index,
                    "op": name,
                    "inputs": list(op.inputs),
                    "outputs": list(op.outputs),
                    "params": _op_params(model, g, op, name),
                }
            )

    main = model.graphs[0]
    for idx in main.inputs + main.outputs:
        if main.tensors[idx].dtype in FLOAT_DTYPES:
            fully_integer = False

    zeros = sum(w[3] for w in weights)
    elements = sum(w[4] for w in weights)
    metadata_names = [name for name, _ in model.metadata]
    info = {
        "model": label,
        "size_bytes": len(model.data),
        "ops": dict(ops),
        "fully_integer": fully_integer,
        "float_ops": float_ops,
        "input": [_io_entry(main.tensors[i]) for i in main.inputs],
        "output": [_io_entry(main.tensors[i]) for i in main.outputs],
        "static_shapes": static,
        "weight_sparsity": round(zeros / elements, 6) if elements else 0.0,
        "unique_weight_values_max": max((w[5] for w in weights), default=0),
        "edgetpu": None,  # filled below
        "metadata_names": metadata_names,
        "min_runtime_version": _metadata_text(model, "min_runtime_version"),
        "has_tflite_metadata": "TFLITE_METADATA" in metadata_names,
        "edgetpu_compiled": "edgetpu-custom-op" in ops,
        "subgraphs": len(model.graphs),
        "operators": sum(ops.values()),
        "signatures": model.signatures,
        "schema_version": model.version,
        "description": model.description,
        "state": state_names(model),
        "custom_ops": custom_ops(model),
    }
    detail_info = {
        "tensors": tensor_entries,
        "operators": op_entries,
        "weights": [
            {
                "subgraph": gi,
                "tensor": t.index,
                "name": t.name,
                "op": op_name,
                "dtype": t.dtype,
                "shape": list(t.shape),
                "elements": n,
                "zeros": z,
                "sparsity": round(z / n, 6) if n else 0.0,
                "unique_values": u,
                "per_axis": len(t.scale) > 1,
            }
            for gi, t, op_name, z, n, u in weights
        ],
    }

    info["edgetpu"] = edgetpu.predict_mapping({**info, **detail_info})
    info["weights"] = detail_info["weights"]  # per weight tensor: sparsity, distinct values
    if detail:
        info.update(detail_info)
    return info


def _op_params(model: Model, g: Graph, op: Operator, name: str) -> dict:
    """Operator attributes the EdgeTPU rules need: fused activation, dilation, axes, paddings."""
    params = dict(op.options)
    if "fused_activation" in params:
        a = params["fused_activation"]
        params["fused_activation"] = _ACTIVATIONS[a] if 0 <= a < len(_ACTIVATIONS) else str(a)

    def const(i):
        if i >= len(op.inputs) or op.inputs[i] < 0:
            return None
        values = const_values(model, g.tensors[op.inputs[i]])
        return None if values is None else values.tolist()

    if name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD"):
        params["axis"] = const(1)
    elif name in ("PAD", "PADV2", "MIRROR_PAD"):
        pads = const(1)
        params["paddings"] = (
            None if pads is None else [pads[i : i + 2] for i in range(0, len(pads), 2)]
        )
    elif name == "SPLIT":
        axis = const(0)
        params["axis"] = axis[0] if axis else None
    elif name == "CONCATENATION":
        consts = [
            const_values(model, g.tensors[i]) for i in op.inputs if i >= 0 and g.tensors[i].buffer
        ]
        consts = [c for c in consts if c is not None]
        params["constant_inputs"] = len(consts)
        params["constant_inputs_zero"] = all(not np.any(c) for c in consts)
    elif name == "PRELU":
        alpha = g.tensors[op.inputs[1]] if len(op.inputs) > 1 and op.inputs[1] >= 0 else None
        params["alpha_constant"] = alpha is not None and buffer_bytes(model, alpha) is not None
    return params


def _metadata_text(model: Model, key: str):
    for name, b in model.metadata:
        if name == key:
            ext = model.buffers[b]
            if ext is None:
                return None
            raw = bytes(model.data[ext[0] : ext[0] + ext[1]])
            return raw.split(b"\0", 1)[0].decode("ascii", "replace") or None
    return None


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def inspect_model(path_or_bytes, detail: bool = False) -> dict:
    """Describe a ``.tflite`` model: operators, I/O, integer-ness, shapes, weights, EdgeTPU fit.

    Reads the flatbuffer only; nothing is run and TensorFlow is not imported.

    Args:
        path_or_bytes: path of a ``.tflite`` file (str or ``os.PathLike``), or its bytes.
        detail: also return every tensor (``"tensors"``: name, dtype, shape, shape signature,
            quantization scale/zero point, per-axis or not), every operator (``"operators"``) and
            every weight tensor's statistics (``"weights"``).

    Returns:
        A JSON-serialisable dict with the keys of ``tfedge inspect --json``:

        - ``model`` (the path, or ``"<bytes>"``), ``size_bytes``;
        - ``ops``: builtin operator name (custom operators by their custom code) -> count;
        - ``fully_integer``: no operator reads or writes a float tensor, model I/O included;
        - ``float_ops``: the operators that do, by name, in order of first appearance;
        - ``input`` / ``output``: one ``{name, index, dtype, shape, shape_signature, scale,
          zero_point, per_axis}`` per tensor (``scale`` 0.0 and ``zero_point`` 0 when not
          quantized; ``shape`` has 1 where the signature has -1, as the interpreter reports it);
        - ``static_shapes``: no tensor has -1 in its shape signature;
        - ``weight_sparsity``: fraction of exact zeros (quantized: values equal to the zero point)
          over the constant filters of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED,
          TRANSPOSE_CONV, CONV_3D and CONV_3D_TRANSPOSE (through a DEQUANTIZE for float16 models);
        - ``unique_weight_values_max``: the largest number of distinct values in one quantization
          group of one such filter (the whole tensor, or one channel for per-axis quantization,
          where each channel has its own scale), 0 when the model has no such filter;
        - ``weights``: one entry per such filter: ``name``, ``op``, ``dtype``, ``shape``,
          ``elements``, ``zeros``, ``sparsity`` and ``unique_values`` (the most distinct values
          in one quantization group), plus ``subgraph``, ``tensor`` (index) and ``per_axis``;
        - ``edgetpu``: :func:`tfedge.core.edgetpu.predict_mapping` of the model;
        - extras: ``metadata_names``, ``min_runtime_version``, ``has_tflite_metadata``,
          ``edgetpu_compiled``, ``subgraphs``, ``operators``, ``signatures``,
          ``schema_version``, ``description``;
        - ``state``: the resource variables (and variable tensors) the model keeps from one
          invocation to the next, by name; empty for a stateless model;
        - ``custom_ops``: the custom (not built-in) operators, by custom code.

    Raises:
        InputFileError: the file is missing, unreadable, not a TFLite flatbuffer, or truncated
            or corrupt.

    Example:
        >>> info = inspect_model("model_int8.tflite")  # doctest: +SKIP
        >>> info["fully_integer"], info["input"][0]["dtype"]  # doctest: +SKIP
        (True, 'int8')
        >>> info["edgetpu"]["compatible"], info["float_ops"]  # doctest: +SKIP
        (True, [])
    """
    model = read_model(path_or_bytes)
    return _analyze(model, model.label, detail)


def _fmt_shape(entry: dict) -> str:
    return shape_text(entry.get("shape_signature") or entry["shape"])


def _fmt_io(entry: dict) -> str:
    text = f"{entry['dtype']:<8} {_fmt_shape(entry):<18}"
    if entry.get("scale"):
        text += f" scale {entry['scale']:.6g}  zero point {entry['zero_point']}"
    return f"{text}  {entry.get('name', '')}".rstrip()


_MAX_REASONS = 8


def format_table(info: dict) -> str:
    """Render :func:`inspect_model`'s dict as a short human-readable report.

    Args:
        info: the dict returned by :func:`inspect_model`.

    Returns:
        Plain text (no colour codes): size, inputs and outputs, an operator table, and the
        verdicts (fully integer, static shapes, weights, EdgeTPU) with their reasons.

    Example:
        >>> print(format_table(inspect_model("model.tflite")))  # doctest: +SKIP
        Model             model.tflite (2,648 bytes)
        ...
    """
    lines = [f"{'Model':<18}{info['model']} ({info['size_bytes']:,} bytes)"]
    for key, title in (("input", "Input"), ("output", "Output")):
        for i, entry in enumerate(info.get(key, [])):
            label = title if len(info[key]) == 1 else f"{title} {i}"
            lines.append(f"{label:<18}{_fmt_io(entry)}")
    ops = info.get("ops", {})
    lines.append("")
    lines.append(f"{'Operator':<32}{'Count':>6}")
    for name, count in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])):
        flag = "  float" if name in info.get("float_ops", []) else ""
        lines.append(f"{name:<32}{count:>6}{flag}")
    lines.append(f"{'total':<32}{sum(ops.values()):>6}")
    lines.append("")

    def yes(flag):
        return "yes" if flag else "no"

    fi = yes(info["fully_integer"])
    if not info["fully_integer"]:
        culprits = ", ".join(info.get("float_ops") or []) or "float model input/output"
        fi += f" (float: {culprits})"
    lines.append(f"{'Fully integer':<18}{fi}")
    ss = yes(info["static_shapes"])
    if not info["static_shapes"]:
        ss += " (a dimension is -1 in a shape signature, e.g. a dynamic batch)"
    lines.append(f"{'Static shapes':<18}{ss}")
    lines.append(
        f"{'Weight sparsity':<18}{info['weight_sparsity'] * 100:.1f} % zeros; "
        f"at most {info['unique_weight_values_max']} distinct values per weight tensor/channel"
    )
    if info.get("state"):
        lines.append(
            f"{'State':<18}{', '.join(info['state'][:6])} (resource variables: outputs depend on "
            "earlier inputs; bench and compare reset them before every sample)"
        )
    if info.get("custom_ops"):
        lines.append(
            f"{'Custom ops':<18}{', '.join(info['custom_ops'])} (not TFLite built-ins: they run "
            "only where a delegate or the application registers them)"
        )
    if info.get("metadata_names"):
        meta = ", ".join(info["metadata_names"])
        if info.get("min_runtime_version"):
            meta += f" (min runtime {info['min_runtime_version']})"
        lines.append(f"{'Metadata':<18}{meta}")
    tpu = info.get("edgetpu") or {}
    if tpu:
        mapped, cpu = tpu.get("mapped_ops"), tpu.get("cpu_ops")
        verdict = "compatible" if tpu.get("compatible") else "not compatible"
        if mapped is not None:
            verdict += f" ({mapped} ops predicted on the EdgeTPU, {cpu} on the CPU)"
        lines.append(f"{'EdgeTPU':<18}{verdict}")
        reasons = tpu.get("reasons") or tpu.get("unsupported") or []
        for reason in reasons[:_MAX_REASONS]:
            lines.append(f"{'':<18}- {reason}")
        if len(reasons) > _MAX_REASONS:
            lines.append(f"{'':<18}  ... and {len(reasons) - _MAX_REASONS} more")
    return "\n".join(lines)
