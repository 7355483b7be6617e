"""What the Coral Edge TPU can run: operator table, mapping prediction, compiler and delegate.

Knowledge taken from Coral's page "TensorFlow models on the Edge TPU" (coral.ai/docs/edgetpu/
models-intro, operations table of compiler 16) and from real ``edgetpu_compiler`` logs:

- the model must be fully 8-bit quantized (int8/uint8 tensors; int32 only for constant biases,
  shapes and axes), with static shapes, and no tensor may have more than 3 dimensions larger
  than 1;
- only the operators of :data:`SUPPORTED_OPS` map to the Edge TPU, each with its documented
  limitations; everything else runs on the CPU;
- the compiler maps the graph in execution order up to the first operator it cannot map: that
  operator and every one after it run on the CPU, even those it supports;
- a QUANTIZE of a float model input and a DEQUANTIZE of a model output run on the CPU without
  splitting the graph (float I/O costs two CPU conversions, nothing more);
- dynamic shapes, or a model with no quantized tensor, make the compiler refuse the model.

Operators seen on some Edge TPU lists but absent from Coral's table (EXP, FLOOR, HARD_SWISH,
SQRT, GREATER/LESS comparisons...) are predicted to run on the CPU.

``edgetpu_compiler`` and ``libedgetpu`` come from Coral's own apt repository, not from PyPI:
:func:`find_compiler` and :func:`load_delegate` detect them at run time, and
:func:`compile_model` raises :class:`CompilerNotFoundError` (a
:class:`~tfedge.errors.ConversionError`) with the install commands when the compiler is absent.
This module does not import TensorFlow.

Example:
    >>> from tfedge import edgetpu
    >>> edgetpu.predict_mapping("model_int8.tflite")["compatible"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import subprocess

from tfedge.errors import ConversionError, DeviceError, InputFileError

__all__ = [
    "SUPPORTED_OPS",
    "COMPILER_INSTALL_HINT",
    "RUNTIME_INSTALL_HINT",
    "CompilerNotFoundError",
    "predict_mapping",
    "find_compiler",
    "compile_model",
    "parse_compiler_output",
    "load_delegate",
]

#: Operators the Edge TPU compiler can map, with the limitations Coral documents for them.
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

#: The custom operator that holds the part of a compiled model the Edge TPU runs.
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"

COMPILER_INSTALL_HINT = (
    "edgetpu_compiler comes from Coral's apt repository and runs on x86_64 Debian/Ubuntu only:\n"
    "  curl https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add -\n"
    '  echo "deb https://packages.cloud.google.com/apt coral-edgetpu-stable main" | '
    "sudo tee /etc/apt/sources.list.d/coral-edgetpu.list\n"
    "  sudo apt-get update && sudo apt-get install edgetpu-compiler\n"
    "(on another OS or CPU, run it in an x86_64 Debian container)."
)

RUNTIME_INSTALL_HINT = (
    "Install the Edge TPU runtime from Coral's apt repository "
    "(deb https://packages.cloud.google.com/apt coral-edgetpu-stable main): "
    "`sudo apt-get install libedgetpu1-std`, then plug in the Coral device "
    "(for a USB Accelerator, unplug and replug it after installing)."
)

_INT8 = ("int8", "uint8")
_CONST_OK = ("int8", "uint8", "int32")
_MAPPED = "Mapped to Edge TPU"
_AFTER = "Runs on the CPU: after the first operation that cannot be mapped"
_EDGE = "Runs on the CPU: float input/output conversion"

_DELEGATE_LIBS = {
    "Linux": "libedgetpu.so.1",
    "Darwin": "libedgetpu.1.dylib",
    "Windows": "edgetpu.dll",
}


class CompilerNotFoundError(ConversionError):
    """``edgetpu_compiler`` is not installed (the error's ``hint`` says how to install it)."""


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
        problems.append(f"{name} is not supported by the Edge TPU")
    ins = [tensors[i] for i in op.get("inputs", []) if i >= 0 and i in tensors]
    outs = [tensors[i] for i in op.get("outputs", []) if i >= 0 and i in tensors]
    for t in ins + outs:
        allowed = _CONST_OK if t.get("constant") else _INT8
        if t["dtype"] not in allowed:
            kind = "constant" if t.get("constant") else "tensor"
            problems.append(
                f"{name} works on {t['dtype']} {kind} '{t['name']}' (the Edge TPU computes "
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
            status = _MAPPED
        if problems and not edge and op["op"] not in unsupported_ops:
            unsupported_ops.append(op["op"])
            reasons.append(f"{op['op']} (operator {op['index']}): {'; '.join(problems)}")
        if status == _MAPPED:
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


def predict_mapping(info_or_model) -> dict:
    """Predict how ``edgetpu_compiler`` would split a model between the Edge TPU and the CPU.

    Args:
        info_or_model: a ``.tflite`` path or its bytes, or a dict from
            :func:`tfedge.inspector.inspect_model` made with ``detail=True`` (one without the
            detail is answered from its own ``"edgetpu"`` entry).

    Returns:
        ``{"compatible", "unsupported", "mapped_ops", "cpu_ops", "first_cpu_op", "reasons",
        "ops"}``: ``compatible`` is true when every operator maps and the model needs nothing
        changed (int8/uint8 I/O included); ``unsupported`` lists the global problems
        (``"dynamic shapes"``, ``"not quantized"``, ``"float input/output"``,
        ``"not fully int8"``, ``"tensor with more than 3 dimensions larger than 1"``) and then
        the names of the operators that cannot be mapped; ``first_cpu_op`` is
        ``{"index", "op", "reason"}`` of the operator where the graph leaves the Edge TPU (the
        first operator when the compiler would refuse the whole model; None if all map);
        ``reasons`` explains each item in a sentence; ``ops`` is the predicted
        ``[{"op", "count", "status"}]`` table, in the format of :func:`compile_model`.

    Example:
        >>> m = predict_mapping("model_int8.tflite")  # doctest: +SKIP
        >>> m["compatible"], m["mapped_ops"], m["cpu_ops"]  # doctest: +SKIP
        (True, 4, 0)
    """
    if isinstance(info_or_model, (str, os.PathLike, bytes, bytearray, memoryview)):
        from tfedge.inspector import inspect_model

        return inspect_model(info_or_model)["edgetpu"]
    if not isinstance(info_or_model, dict):
        raise TypeError(
            "predict_mapping() takes a .tflite path, its bytes, or an inspect_model() dict, "
            f"not {type(info_or_model).__name__}"
        )
    if "operators" in info_or_model and "tensors" in info_or_model:
        return _predict(info_or_model)
    if isinstance(info_or_model.get("edgetpu"), dict):
        return dict(info_or_model["edgetpu"])
    raise ValueError(
        "predict_mapping() needs the tensors and operators of the model: pass the .tflite path "
        "or inspect_model(path, detail=True)"
    )


# --------------------------------------------------------------------------------------------
# The compiler
# --------------------------------------------------------------------------------------------


def find_compiler() -> str | None:
    """Path of ``edgetpu_compiler`` on ``PATH``, or None when it is not installed.

    Example:
        >>> find_compiler() or "not installed"  # doctest: +SKIP
        '/usr/bin/edgetpu_compiler'
    """
    return shutil.which("edgetpu_compiler")


_ROW = re.compile(r"^\s*(\S+)\s+(\d+)\s+(\S.*?)\s*$")
_HEADER = re.compile(r"^\s*Operator\s+Count\s+Status\s*$")


def _int(pattern: str, text: str):
    m = re.search(pattern, text, re.MULTILINE)
    return int(m.group(1)) if m else None


def _str(pattern: str, text: str):
    m = re.search(pattern, text, re.MULTILINE)
    return m.group(1).strip() if m else None


def parse_compiler_output(text: str) -> dict:
    """Parse what ``edgetpu_compiler -s`` prints, or the ``*_edgetpu.log`` file it writes.

    Args:
        text: the compiler's stdout (with or without the ``-s`` operator table) or its log.

    Returns:
        ``{"compiler_version", "mapped_ops", "cpu_ops", "total_ops", "subgraphs", "ops",
        "output_model", "log_file", "on_chip_memory", "off_chip_memory"}``; ``ops`` is the
        ``Operator / Count / Status`` table as ``[{"op", "count", "status", "mapped"}]`` (an
        operator can appear in several rows, one per status); numbers the text does not give are
        derived from the table where possible, else None.

    Example:
        >>> log = '''Edge TPU Compiler version 16.0.384591198
        ... Input: m.tflite
        ... Output: m_edgetpu.tflite
        ...
        ... Operator                       Count      Status
        ...
        ... CONV_2D                        2          Mapped to Edge TPU
        ... LEAKY_RELU                     1          Operation not supported
        ... '''
        >>> r = parse_compiler_output(log)
        >>> r["mapped_ops"], r["cpu_ops"], r["ops"][1]["op"]
        (2, 1, 'LEAKY_RELU')
    """
    ops, partial = [], False
    in_table = False
    for line in text.splitlines():
        if _HEADER.match(line):
            in_table = True
            continue
        if not in_table:
            continue
        if not line.strip():
            if ops:
                in_table = False
            continue
        m = _ROW.match(line)
        if m and not line.lstrip().startswith("..."):
            status = m.group(3)
            ops.append(
                {
                    "op": m.group(1),
                    "count": int(m.group(2)),
                    "status": status,
                    "mapped": status.startswith(_MAPPED),
                }
            )
        else:
            partial = partial or "All other operators were mapped" in line
            in_table = False
    mapped = _int(r"Number of operations that will run on Edge TPU:\s*(\d+)", text)
    cpu = _int(r"Number of operations that will run on CPU:\s*(\d+)", text)
    total = _int(r"Total number of operations:\s*(\d+)", text)
    if ops and cpu is None:
        cpu = sum(o["count"] for o in ops if not o["mapped"])
    if mapped is None:
        if ops and not partial:
            mapped = sum(o["count"] for o in ops if o["mapped"])
        elif total is not None:
            mapped = total - (cpu or 0)
            cpu = cpu or 0
    return {
        "compiler_version": _str(r"Edge TPU Compiler version\s+(\S+)", text),
        "mapped_ops": mapped,
        "cpu_ops": cpu,
        "total_ops": total
        if total is not None
        else (mapped + cpu if mapped is not None and cpu is not None else None),
        "subgraphs": _int(r"Number of Edge TPU subgraphs:\s*(\d+)", text),
        "ops": ops,
        "output_model": _str(r"^Output(?: model)?:\s*(.+)$", text),
        "log_file": _str(r"^Operation log:\s*(.+)$", text),
        "on_chip_memory": _str(r"On-chip memory used for caching model parameters:\s*(.+)$", text),
        "off_chip_memory": _str(
            r"Off-chip memory used for streaming uncached model parameters:\s*(.+)$", text
        ),
    }


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower() or "not" in ln.lower():
            return ln
    return lines[-1] if lines else "no output"


def compile_model(
    tflite_path, out_dir, *, timeout: float = 600, compiler: str | None = None
) -> dict:
    """Compile a fully-int8 ``.tflite`` model for the Edge TPU with ``edgetpu_compiler``.

    Runs ``edgetpu_compiler -s -o OUT_DIR MODEL`` and reads its output and operation log.

    Args:
        tflite_path: the int8 ``.tflite`` model.
        out_dir: directory for ``<name>_edgetpu.tflite`` and ``<name>_edgetpu.log`` (created if
            needed).
        timeout: seconds to wait for the compiler.
        compiler: path of the compiler; default: ``edgetpu_compiler`` on ``PATH``.

    Returns:
        :func:`parse_compiler_output`'s dict plus ``compiled_path`` and ``log_path`` (None when
        the compiler wrote no log) and ``output`` (the compiler's full text). ``ops`` comes from
        the log file when there is one (it always lists every operator).

    Raises:
        CompilerNotFoundError: the compiler is not installed (a ``ConversionError``; its
            ``hint`` holds the install commands). Callers that treat compilation as optional catch
            this one and go on without it.
        ConversionError: the compiler failed on the model or timed out.
        InputFileError: ``tflite_path`` does not exist.

    Example:
        >>> r = compile_model("model_int8.tflite", "out")  # doctest: +SKIP
        >>> r["compiled_path"], r["mapped_ops"], r["cpu_ops"]  # doctest: +SKIP
        ('out/model_int8_edgetpu.tflite', 4, 0)
    """
    exe = compiler or find_compiler()
    if exe is None:
        raise CompilerNotFoundError(
            "edgetpu_compiler is not installed (not found on PATH)", hint=COMPILER_INSTALL_HINT
        )
    path = os.fspath(tflite_path)
    if not os.path.isfile(path):
        raise InputFileError(f"model file {path} does not exist", hint="Check the path.")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    cmd = [exe, "-s", "-o", out_dir, path]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ConversionError(
            f"edgetpu_compiler did not finish compiling {path} within {timeout:g} s",
            hint="Pass a longer timeout, or check that the model is fully int8 (tfedge inspect).",
        ) from None
    except OSError as e:
        raise CompilerNotFoundError(
            f"cannot run {exe}: {e.strerror or e}", hint=COMPILER_INSTALL_HINT
        ) from None
    text = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        raise ConversionError(
            f"edgetpu_compiler failed on {path} (exit status {proc.returncode}): "
            f"{_last_error(text)}",
            hint=f"Check that the model is fully int8 with static shapes: `tfedge inspect {path}`.",
        )
    result = parse_compiler_output(text)
    stem = os.path.splitext(os.path.basename(path))[0]
    compiled = os.path.join(out_dir, f"{stem}_edgetpu.tflite")
    if not os.path.isfile(compiled) and result["output_model"]:
        compiled = os.path.join(out_dir, os.path.basename(result["output_model"]))
    if not os.path.isfile(compiled):
        raise ConversionError(
            f"edgetpu_compiler reported success but wrote no compiled model in {out_dir}",
            hint=f"Its output ended with: {_last_error(text)}",
        )
    log_path = os.path.join(out_dir, f"{stem}_edgetpu.log")
    if os.path.isfile(log_path):
        with open(log_path, encoding="utf-8", errors="replace") as f:
            log = parse_compiler_output(f.read())
        if log["ops"]:
            result["ops"] = log["ops"]
            if result["mapped_ops"] is None:
                result["mapped_ops"], result["cpu_ops"] = log["mapped_ops"], log["cpu_ops"]
    else:
        log_path = None
    result.update(compiled_path=compiled, log_path=log_path, output=text)
    return result


# --------------------------------------------------------------------------------------------
# The runtime delegate
# --------------------------------------------------------------------------------------------


def load_delegate(library: str | None = None, options: dict | None = None):
    """Load the Edge TPU delegate for an interpreter (``experimental_delegates=[...]``).

    Uses ``ai_edge_litert.interpreter.load_delegate`` (else ``tflite_runtime``'s).

    Args:
        library: the delegate library; default ``libedgetpu.so.1`` (``libedgetpu.1.dylib`` on
            macOS, ``edgetpu.dll`` on Windows).
        options: delegate options, e.g. ``{"device": "usb:0"}``.

    Returns:
        The delegate object.

    Raises:
        DeviceError: no interpreter package, or the library cannot be loaded (runtime not
            installed, or no Edge TPU plugged in); the ``hint`` says how to fix it.

    Example:
        >>> from ai_edge_litert.interpreter import Interpreter  # doctest: +SKIP
        >>> delegate = load_delegate(options={"device": "usb:0"})  # doctest: +SKIP
        >>> interp = Interpreter("m.tflite", experimental_delegates=[delegate])  # doctest: +SKIP
    """
    lib = library or _DELEGATE_LIBS.get(platform.system(), "libedgetpu.so.1")
    try:
        from ai_edge_litert.interpreter import load_delegate as _load
    except ImportError:
        try:
            from tflite_runtime.interpreter import load_delegate as _load
        except ImportError:
            raise DeviceError(
                "no TFLite interpreter is installed to load the Edge TPU delegate",
                hint="pip install ai-edge-litert",
            ) from None
    try:
        ctypes.CDLL(lib)  # fail here, quietly, rather than inside the interpreter's Delegate
    except OSError as e:
        raise DeviceError(
            f"cannot load the Edge TPU runtime {lib} ({e})", hint=RUNTIME_INSTALL_HINT
        ) from None
    try:
        return _load(lib, options or {})
    except (ValueError, OSError, RuntimeError) as e:
        raise DeviceError(
            f"cannot open the Edge TPU through {lib} ({e})", hint=RUNTIME_INSTALL_HINT
        ) from None
