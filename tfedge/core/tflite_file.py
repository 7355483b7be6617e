"""Read a ``.tflite`` flatbuffer into plain Python objects, without TensorFlow.

The file is parsed with the flatbuffer schema that ships with ``ai-edge-litert``
(``ai_edge_litert.schema_py_generated``), an install requirement of the host package; the
device-side runner does not use this module. Every offset read from the file is checked against
its size, and any failure of the parser becomes :class:`tfedge.core.errors.InputFileError`, so a
truncated, corrupt or foreign file gives one clear error and never a traceback from the
flatbuffer library.

Example:
    >>> from tfedge.core.tflite_file import read_model, op_names
    >>> model = read_model("model.tflite")  # doctest: +SKIP
    >>> names = op_names()
    >>> [op_name(model, op, names) for op in model.graphs[0].operators]  # doctest: +SKIP
    ['CONV_2D', 'MAX_POOL_2D', 'RESHAPE', 'FULLY_CONNECTED']
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import numpy as np
from ai_edge_litert import schema_py_generated as _schema

from tfedge.core.errors import InputFileError, missing_file

__all__ = [
    "Model",
    "Graph",
    "Operator",
    "Tensor",
    "read_model",
    "op_names",
    "op_name",
    "dtype_name",
    "buffer_bytes",
    "const_values",
    "weight_values",
    "NUMPY_DTYPES",
    "STATE_OPS",
    "state_names",
    "custom_ops",
]

_IDENTIFIER = b"TFL3"

# TensorType enum of schema.fbs, by value.
_DTYPE_NAMES = (
    "float32 float16 int32 uint8 int64 string bool int16 complex64 int8 float64 complex128 uint64 "
    "resource variant uint32 uint16 int4 bfloat16 int2 uint4 float8_e4m3fn float8_e5m2"
).split()

NUMPY_DTYPES = {
    "float32": "<f4",
    "float16": "<f2",
    "float64": "<f8",
    "int32": "<i4",
    "uint8": "u1",
    "int64": "<i8",
    "bool": "u1",
    "int16": "<i2",
    "int8": "i1",
    "uint64": "<u8",
    "uint32": "<u4",
    "uint16": "<u2",
    "bfloat16": "<u2",  # compared bit-wise
}

# BuiltinOperator enum of schema.fbs (values 0..209), used when ai_edge_litert is not installed.
_CUSTOM = 32  # BuiltinOperator.CUSTOM

# BuiltinOptions members whose fields the EdgeTPU rules read: {type: {key: (field, fmt, default)}}.
_OPTION_FIELDS = {
    1: {"fused_activation": (3, "<b", 0), "dilation_w": (4, "<i", 1), "dilation_h": (5, "<i", 1)},
    2: {"fused_activation": (4, "<b", 0), "dilation_w": (5, "<i", 1), "dilation_h": (6, "<i", 1)},
    5: {"fused_activation": (5, "<b", 0)},  # Pool2DOptions
    8: {"fused_activation": (0, "<b", 0), "weights_format": (1, "<b", 0)},  # FullyConnected
    10: {"axis": (0, "<i", 0), "fused_activation": (1, "<b", 0)},  # ConcatenationOptions
    59: {"axis": (1, "<i", 0)},  # PackOptions
}

_NOT_TFLITE_HINT = (
    "Pass a .tflite file written by the TFLite converter; a Keras (.keras, .h5) model or a "
    "SavedModel must be converted first, e.g. `tfedge convert MODEL -o model.tflite`."
)

_CORRUPT_HINT = (
    "The file is damaged or was cut short (an interrupted copy?); convert or copy it again."
)


class _Corrupt(Exception):
    """Internal: the flatbuffer does not hold together (turned into InputFileError)."""


@dataclass
class Tensor:
    """One tensor of a subgraph: type code, shape, buffer and quantization."""

    index: int
    name: str
    type: int
    shape: tuple
    signature: tuple | None
    buffer: int
    scale: tuple = ()
    zero_point: tuple = ()
    quantized_dimension: int = 0
    sparse: bool = False
    variable: bool = False

    @property
    def dtype(self) -> str:
        return dtype_name(self.type)


@dataclass
class Operator:
    """One operator of a subgraph: its operator code and tensor indices."""

    index: int
    opcode_index: int
    inputs: tuple
    outputs: tuple
    options_type: int = 0
    options: dict = field(default_factory=dict)


@dataclass
class Graph:
    """One subgraph: tensors, inputs, outputs and operators in execution order."""

    name: str
    tensors: list
    inputs: tuple
    outputs: tuple
    operators: list


@dataclass
class Model:
    """A parsed ``.tflite``: the raw bytes, operator codes, subgraphs, buffers and metadata."""

    data: bytes
    version: int
    description: str
    opcodes: list  # [(builtin_code, custom_code or None)]
    graphs: list
    buffers: list  # [(start, length) or None]
    metadata: list  # [(name, buffer_index)]
    signatures: list  # [signature_key]
    label: str = "<bytes>"  # the path it was read from


def dtype_name(code: int) -> str:
    return _DTYPE_NAMES[code] if 0 <= code < len(_DTYPE_NAMES) else f"unknown({code})"


def op_names() -> list:
    """Builtin operator names indexed by their code in the schema (``names[3] == "CONV_2D"``)."""
    by_value = {v: k for k, v in vars(_schema.BuiltinOperator).items() if not k.startswith("_")}
    names = [f"BUILTIN_{i}" for i in range(max(by_value) + 1)]
    for code, name in by_value.items():
        names[code] = name
    return names


def _options(options_type: int, get) -> dict:
    spec = _OPTION_FIELDS.get(options_type)
    if not spec:
        return {}
    return {key: get(slot, fmt, default) for key, (slot, fmt, default) in spec.items()}


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _ints(obj, name: str) -> tuple:
    if getattr(obj, name + "Length")() == 0:
        return ()
    return tuple(int(x) for x in getattr(obj, name + "AsNumpy")())


def _parse_litert(data: bytes) -> Model:
    m = _schema.Model.GetRootAs(data, 0)
    opcodes = []
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        opcodes.append((code, _text(oc.CustomCode()) if oc.CustomCode() is not None else None))
    buffers = []
    for i in range(m.BuffersLength()):
        b = m.Buffers(i)
        if b is not None and b.DataLength() > 0:
            start = b._tab.Vector(b._tab.Offset(4))
            buffers.append((start, b.DataLength()))
        elif b is not None and b.Offset() > 1:
            buffers.append((b.Offset(), b.Size()))
        else:
            buffers.append(None)
    graphs = []
    for gi in range(m.SubgraphsLength()):
        g = m.Subgraphs(gi)
        tensors = []
        for index in range(g.TensorsLength()):
            t = g.Tensors(index)
            q = t.Quantization()
            tensors.append(
                Tensor(
                    index=index,
                    name=_text(t.Name()),
                    type=t.Type(),
                    shape=_ints(t, "Shape"),
                    signature=None if t.ShapeSignatureIsNone() else _ints(t, "ShapeSignature"),
                    buffer=t.Buffer(),
                    scale=tuple(float(x) for x in q.ScaleAsNumpy())
                    if q and q.ScaleLength()
                    else (),
                    zero_point=_ints(q, "ZeroPoint") if q else (),
                    quantized_dimension=q.QuantizedDimension() if q else 0,
                    sparse=t.Sparsity() is not None,
                    variable=bool(t.IsVariable()),
                )
            )
        operators = []
        for index in range(g.OperatorsLength()):
            op = g.Operators(index)
            options_type = op.BuiltinOptionsType()
            tab = op.BuiltinOptions() if options_type else None
            options = {}
            if tab is not None:

                def get(slot, fmt, default, tab=tab):
                    o = tab.Offset(4 + 2 * slot)
                    return struct.unpack_from(fmt, tab.Bytes, tab.Pos + o)[0] if o else default

                options = _options(options_type, get)
            operators.append(
                Operator(
                    index=index,
                    opcode_index=op.OpcodeIndex(),
                    inputs=_ints(op, "Inputs"),
                    outputs=_ints(op, "Outputs"),
                    options_type=options_type,
                    options=options,
                )
            )
        graphs.append(
            Graph(_text(g.Name()), tensors, _ints(g, "Inputs"), _ints(g, "Outputs"), operators)
        )
    metadata = []
    for i in range(m.MetadataLength()):
        md = m.Metadata(i)
        metadata.append((_text(md.Name()), md.Buffer()))
    signatures = [_text(m.SignatureDefs(i).SignatureKey()) for i in range(m.SignatureDefsLength())]
    return Model(
        data=data,
        version=m.Version(),
        description=_text(m.Description()),
        opcodes=opcodes,
        graphs=graphs,
        buffers=buffers,
        metadata=metadata,
        signatures=signatures,
    )


def _read_bytes(path_or_bytes) -> tuple[str, bytes]:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return "<bytes>", bytes(path_or_bytes)
    if not isinstance(path_or_bytes, (str, os.PathLike)):
        raise TypeError(
            f"inspect_model() takes a path or the bytes of a .tflite file, "
            f"not {type(path_or_bytes).__name__}"
        )
    path = os.fspath(path_or_bytes)
    if os.path.isdir(path):
        looks_saved = os.path.exists(os.path.join(path, "saved_model.pb"))
        raise InputFileError(
            f"{path} is a directory, not a TFLite flatbuffer"
            + (" (it looks like a SavedModel)" if looks_saved else ""),
            hint=_NOT_TFLITE_HINT,
        )
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise missing_file("model", path, "check the path to the .tflite file") from None
    except OSError as e:
        raise InputFileError(
            f"cannot read model file {path}: {e.strerror or e}",
            hint="Check the file's permissions.",
        ) from None
    return path, data


def _sniff(data: bytes) -> str:
    """A short guess at what a non-TFLite file is, for the error message."""
    if data[:4] == b"PK\x03\x04":
        return "it is a zip archive, such as a Keras 3 .keras file"
    if data[:8] == b"\x89HDF\r\n\x1a\n":
        return "it is an HDF5 file, such as a Keras .h5 model"
    head = data[:256]
    try:
        head.decode("utf-8")
        if head and all(c >= 32 or c in b"\t\r\n" for c in head):
            return "it is a text file"
    except UnicodeDecodeError:
        pass
    return f"its file identifier is {bytes(data[4:8])!r}, not {_IDENTIFIER!r}"


def _parse(label: str, data: bytes) -> Model:
    if len(data) < 8:
        raise InputFileError(
            f"{label} is not a TFLite flatbuffer (only {len(data)} bytes; a model has at least 8)",
            hint=_NOT_TFLITE_HINT,
        )
    if data[4:8] != _IDENTIFIER:
        raise InputFileError(
            f"{label} is not a TFLite flatbuffer ({_sniff(data)})", hint=_NOT_TFLITE_HINT
        )
    try:
        model = _parse_litert(data)
        _validate(model)
    except _Corrupt as e:
        raise InputFileError(
            f"{label} is not a TFLite flatbuffer (truncated or corrupt: {e})",
            hint=_CORRUPT_HINT,
        ) from None
    except Exception as e:  # anything the generated parser raises on damaged data
        raise InputFileError(
            f"{label} is not a TFLite flatbuffer (truncated or corrupt: {type(e).__name__}: {e})",
            hint=_CORRUPT_HINT,
        ) from None
    return model


def _validate(model: Model) -> None:
    """Check that every index and byte range in the parsed model points where it may."""
    n = len(model.data)
    if not model.graphs:
        raise _Corrupt("the model has no subgraph")
    for i, ext in enumerate(model.buffers):
        if ext is not None and (ext[0] < 0 or ext[1] < 0 or ext[0] + ext[1] > n):
            raise _Corrupt(f"buffer {i} ends at byte {ext[0] + ext[1]}, past the end ({n})")
    for code, _custom in model.opcodes:
        if code < 0:
            raise _Corrupt(f"negative operator code {code}")
    for gi, g in enumerate(model.graphs):
        nt = len(g.tensors)
        for t in g.tensors:
            if not 0 <= t.buffer < max(len(model.buffers), 1):
                raise _Corrupt(f"tensor {t.index} of subgraph {gi} names missing buffer {t.buffer}")
            if any(d < -1 for d in t.shape) or (t.signature and any(d < -1 for d in t.signature)):
                raise _Corrupt(f"tensor {t.index} of subgraph {gi} has shape {list(t.shape)}")
        for idx in g.inputs + g.outputs:
            if not 0 <= idx < nt:
                raise _Corrupt(f"subgraph {gi} names missing tensor {idx} as input/output")
        for op in g.operators:
            if not 0 <= op.opcode_index < len(model.opcodes):
                raise _Corrupt(f"operator {op.index} of subgraph {gi} has no operator code")
            for idx in op.inputs + op.outputs:
                if not -1 <= idx < nt:
                    raise _Corrupt(
                        f"operator {op.index} of subgraph {gi} names missing tensor {idx}"
                    )
    for name, b in model.metadata:
        if not 0 <= b < len(model.buffers):
            raise _Corrupt(f"metadata {name!r} names missing buffer {b}")


def op_name(model: Model, op: Operator, names: list) -> str:
    code, custom = model.opcodes[op.opcode_index]
    if code == _CUSTOM:
        return custom or "CUSTOM"
    return names[code] if code < len(names) else f"BUILTIN_{code}"


#: Operators of resource variables: a model with them keeps state from one invocation to the next.
STATE_OPS = frozenset({"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE"})


def state_names(model: Model) -> list:
    """The state a model keeps between invocations: its resource variables and variable tensors.

    Resource variables (``VAR_HANDLE`` / ``READ_VARIABLE`` / ``ASSIGN_VARIABLE``, as in streaming
    keyword-spotting models) are named by the tensor their ``VAR_HANDLE`` writes; variable
    tensors (an LSTM's state) by their own name. Empty for a stateless model.

    Example:
        >>> state_names(read_model("streaming_kws.tflite"))  # doctest: +SKIP
        ['state']
    """
    names = op_names()
    handles = [
        [
            g.tensors[o].name
            for op in g.operators
            if op_name(model, op, names) == "VAR_HANDLE"
            for o in op.outputs
            if o >= 0
        ]
        for g in model.graphs
    ]
    # An initializer subgraph (CALL_ONCE) opens the main subgraph's variables again under other
    # tensor names: name them as the main subgraph does.
    found = handles[0] or [name for graph in handles for name in graph]
    found += [t.name for g in model.graphs for t in g.tensors if t.variable]
    return list(dict.fromkeys(found))


def custom_ops(model: Model) -> list:
    """The custom operators a model uses, by their custom code, sorted.

    Example:
        >>> custom_ops(read_model("selfie_segmentation.tflite"))  # doctest: +SKIP
        ['Convolution2DTransposeBias']
    """
    return sorted({custom or "CUSTOM" for code, custom in model.opcodes if code == _CUSTOM})


def buffer_bytes(model: Model, t: Tensor):
    ext = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
    if ext is None or ext[1] == 0:
        return None
    return memoryview(model.data)[ext[0] : ext[0] + ext[1]]


def const_values(model: Model, t: Tensor):
    """The values of a constant integer/float tensor as a numpy array (None if not constant)."""
    raw = buffer_bytes(model, t)
    fmt = NUMPY_DTYPES.get(t.dtype)
    if raw is None or fmt is None:
        return None
    dtype = np.dtype(fmt)
    if len(raw) % dtype.itemsize:
        return None
    return np.frombuffer(raw, dtype)


def weight_values(model: Model, t: Tensor):
    """(values, zero_points, groups, elements) of a weight tensor, or None if it cannot be read.

    ``values`` has one row per quantization group: one per channel for per-axis quantization
    (``groups`` channels), else a single row; ``zero_points`` has one entry per row (None when
    the tensor is not quantized); ``elements`` is the tensor's element count.
    """
    raw = buffer_bytes(model, t)
    if raw is None:
        return None
    count = int(np.prod(t.shape, dtype=np.int64)) if t.shape else 1
    if t.dtype in ("int4", "uint4"):
        packed = np.frombuffer(raw, np.uint8)
        lo, hi = packed & 0x0F, packed >> 4
        values = np.stack([lo, hi], axis=1).reshape(-1).astype(np.int8)
        if t.dtype == "int4":
            values = np.where(values > 7, values - 16, values).astype(np.int8)
    else:
        fmt = NUMPY_DTYPES.get(t.dtype)
        if fmt is None or len(raw) % np.dtype(fmt).itemsize:
            return None
        values = np.frombuffer(raw, np.dtype(fmt))
        if t.dtype == "bfloat16":
            values = np.where((values & 0x7FFF) == 0, 0, values)  # +0/-0 both zero
    if t.sparse:
        return values, None, 1, count
    values = values[:count]
    if values.size != count or count == 0:
        return None
    zp = np.asarray(t.zero_point, dtype=np.int64) if t.zero_point else None
    rank = len(t.shape)
    if len(t.scale) > 1 and rank and 0 <= t.quantized_dimension < rank:
        channels = t.shape[t.quantized_dimension]
        if channels == len(t.scale):
            values = np.moveaxis(values.reshape(t.shape), t.quantized_dimension, 0)
            values = values.reshape(channels, -1)
            if zp is not None and zp.size != channels:
                zp = np.full(channels, zp[0] if zp.size else 0)
            return values, zp, channels, count
    return values.reshape(1, -1), zp[:1] if zp is not None and zp.size else None, 1, count


def read_model(path_or_bytes) -> Model:
    """Parse a ``.tflite`` file (a path, or its bytes) and check that it holds together.

    Raises:
        InputFileError: the file is missing, unreadable, not a TFLite flatbuffer, or truncated
            or corrupt.

    Example:
        >>> model = read_model("model.tflite")  # doctest: +SKIP
        >>> len(model.graphs[0].operators)  # doctest: +SKIP
        4
    """
    label, data = _read_bytes(path_or_bytes)
    model = _parse(label, data)
    model.label = label
    return model
