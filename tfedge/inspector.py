"""Read a ``.tflite`` file without TensorFlow: operators, I/O, quantization, weights, Edge TPU fit.

The file is parsed with the flatbuffer schema that ships with ``ai-edge-litert``
(``ai_edge_litert.schema_py_generated``). Where that package is missing (an old device with only
``tflite_runtime``), a small bounds-checked reader in this module, written with ``struct`` and numpy
only, reads the same fields. Neither path imports TensorFlow.

Every offset read from the file is checked against its size, and any failure of the parser is turned
into :class:`tfedge.errors.InputFileError`, so a truncated, corrupt or foreign file gives one clear
error and never a traceback from the flatbuffer library.

Example:
    >>> from tfedge.inspector import inspect_model, format_table
    >>> info = inspect_model("model.tflite")  # doctest: +SKIP
    >>> info["fully_integer"], info["ops"]  # doctest: +SKIP
    (True, {'CONV_2D': 1, 'MAX_POOL_2D': 1, 'RESHAPE': 1, 'FULLY_CONNECTED': 1})
    >>> print(format_table(info))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tfedge.errors import InputFileError

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

_IDENTIFIER = b"TFL3"

# TensorType enum of schema.fbs, by value.
_DTYPE_NAMES = (
    "float32 float16 int32 uint8 int64 string bool int16 complex64 int8 float64 complex128 uint64 "
    "resource variant uint32 uint16 int4 bfloat16 int2 uint4 float8_e4m3fn float8_e5m2"
).split()

_NUMPY_DTYPES = {
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
_BUILTIN_OP_NAMES = """
ADD AVERAGE_POOL_2D CONCATENATION CONV_2D DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE
EMBEDDING_LOOKUP FLOOR FULLY_CONNECTED HASHTABLE_LOOKUP L2_NORMALIZATION L2_POOL_2D
LOCAL_RESPONSE_NORMALIZATION LOGISTIC LSH_PROJECTION LSTM MAX_POOL_2D MUL RELU RELU_N1_TO_1
RELU6 RESHAPE RESIZE_BILINEAR RNN SOFTMAX SPACE_TO_DEPTH SVDF TANH CONCAT_EMBEDDINGS
SKIP_GRAM CALL CUSTOM EMBEDDING_LOOKUP_SPARSE PAD UNIDIRECTIONAL_SEQUENCE_RNN GATHER
BATCH_TO_SPACE_ND SPACE_TO_BATCH_ND TRANSPOSE MEAN SUB DIV SQUEEZE
UNIDIRECTIONAL_SEQUENCE_LSTM STRIDED_SLICE BIDIRECTIONAL_SEQUENCE_RNN EXP TOPK_V2 SPLIT
LOG_SOFTMAX DELEGATE BIDIRECTIONAL_SEQUENCE_LSTM CAST PRELU MAXIMUM ARG_MAX MINIMUM LESS NEG
PADV2 GREATER GREATER_EQUAL LESS_EQUAL SELECT SLICE SIN TRANSPOSE_CONV SPARSE_TO_DENSE TILE
EXPAND_DIMS EQUAL NOT_EQUAL LOG SUM SQRT RSQRT SHAPE POW ARG_MIN FAKE_QUANT REDUCE_PROD
REDUCE_MAX PACK LOGICAL_OR ONE_HOT LOGICAL_AND LOGICAL_NOT UNPACK REDUCE_MIN FLOOR_DIV
REDUCE_ANY SQUARE ZEROS_LIKE FILL FLOOR_MOD RANGE RESIZE_NEAREST_NEIGHBOR LEAKY_RELU
SQUARED_DIFFERENCE MIRROR_PAD ABS SPLIT_V UNIQUE CEIL REVERSE_V2 ADD_N GATHER_ND COS WHERE
RANK ELU REVERSE_SEQUENCE MATRIX_DIAG QUANTIZE MATRIX_SET_DIAG ROUND HARD_SWISH IF WHILE
NON_MAX_SUPPRESSION_V4 NON_MAX_SUPPRESSION_V5 SCATTER_ND SELECT_V2 DENSIFY SEGMENT_SUM
BATCH_MATMUL PLACEHOLDER_FOR_GREATER_OP_CODES CUMSUM CALL_ONCE BROADCAST_TO RFFT2D CONV_3D
IMAG REAL COMPLEX_ABS HASHTABLE HASHTABLE_FIND HASHTABLE_IMPORT HASHTABLE_SIZE REDUCE_ALL
CONV_3D_TRANSPOSE VAR_HANDLE READ_VARIABLE ASSIGN_VARIABLE BROADCAST_ARGS
RANDOM_STANDARD_NORMAL BUCKETIZE RANDOM_UNIFORM MULTINOMIAL GELU DYNAMIC_UPDATE_SLICE
RELU_0_TO_1 UNSORTED_SEGMENT_PROD UNSORTED_SEGMENT_MAX UNSORTED_SEGMENT_SUM ATAN2
UNSORTED_SEGMENT_MIN SIGN BITCAST BITWISE_XOR RIGHT_SHIFT STABLEHLO_LOGISTIC STABLEHLO_ADD
STABLEHLO_DIVIDE STABLEHLO_MULTIPLY STABLEHLO_MAXIMUM STABLEHLO_RESHAPE STABLEHLO_CLAMP
STABLEHLO_CONCATENATE STABLEHLO_BROADCAST_IN_DIM STABLEHLO_CONVOLUTION STABLEHLO_SLICE
STABLEHLO_CUSTOM_CALL STABLEHLO_REDUCE STABLEHLO_ABS STABLEHLO_AND STABLEHLO_COSINE
STABLEHLO_EXPONENTIAL STABLEHLO_FLOOR STABLEHLO_LOG STABLEHLO_MINIMUM STABLEHLO_NEGATE
STABLEHLO_OR STABLEHLO_POWER STABLEHLO_REMAINDER STABLEHLO_RSQRT STABLEHLO_SELECT
STABLEHLO_SUBTRACT STABLEHLO_TANH STABLEHLO_SCATTER STABLEHLO_COMPARE STABLEHLO_CONVERT
STABLEHLO_DYNAMIC_SLICE STABLEHLO_DYNAMIC_UPDATE_SLICE STABLEHLO_PAD STABLEHLO_IOTA
STABLEHLO_DOT_GENERAL STABLEHLO_REDUCE_WINDOW STABLEHLO_SORT STABLEHLO_WHILE
STABLEHLO_GATHER STABLEHLO_TRANSPOSE DILATE STABLEHLO_RNG_BIT_GENERATOR REDUCE_WINDOW
STABLEHLO_COMPOSITE STABLEHLO_SHIFT_LEFT STABLEHLO_CBRT STABLEHLO_CASE
""".split()

_CUSTOM = 32  # BuiltinOperator.CUSTOM

# BuiltinOptions members whose fields the Edge TPU rules read: {type: {key: (field, fmt, default)}}.
_OPTION_FIELDS = {
    1: {"fused_activation": (3, "<b", 0), "dilation_w": (4, "<i", 1), "dilation_h": (5, "<i", 1)},
    2: {"fused_activation": (4, "<b", 0), "dilation_w": (5, "<i", 1), "dilation_h": (6, "<i", 1)},
    5: {"fused_activation": (5, "<b", 0)},  # Pool2DOptions
    8: {"fused_activation": (0, "<b", 0), "weights_format": (1, "<b", 0)},  # FullyConnected
    10: {"axis": (0, "<i", 0), "fused_activation": (1, "<b", 0)},  # ConcatenationOptions
    59: {"axis": (1, "<i", 0)},  # PackOptions
}

_ACTIVATIONS = ("NONE", "RELU", "RELU_N1_TO_1", "RELU6", "TANH", "SIGN_BIT")

_NOT_TFLITE_HINT = (
    "Pass a .tflite file written by the TFLite converter; a Keras (.keras, .h5) model or a "
    "SavedModel must be converted first, e.g. `tfedge convert MODEL -o model.tflite`."
)

_CORRUPT_HINT = (
    "The file is damaged or was cut short (an interrupted copy?); convert or copy it again."
)

_schema = ...  # ai_edge_litert.schema_py_generated, None when not installed; loaded on first use


class _Corrupt(Exception):
    """Internal: the flatbuffer does not hold together (turned into InputFileError)."""


# --------------------------------------------------------------------------------------------
# The parsed model, independent of the parser that produced it
# --------------------------------------------------------------------------------------------


@dataclass
class _Tensor:
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
        return _dtype_name(self.type)


@dataclass
class _Operator:
    index: int
    opcode_index: int
    inputs: tuple
    outputs: tuple
    options_type: int = 0
    options: dict = field(default_factory=dict)


@dataclass
class _Graph:
    name: str
    tensors: list
    inputs: tuple
    outputs: tuple
    operators: list


@dataclass
class _Model:
    data: bytes
    version: int
    description: str
    opcodes: list  # [(builtin_code, custom_code or None)]
    graphs: list
    buffers: list  # [(start, length) or None]
    metadata: list  # [(name, buffer_index)]
    signatures: list  # [signature_key]


def _dtype_name(code: int) -> str:
    return _DTYPE_NAMES[code] if 0 <= code < len(_DTYPE_NAMES) else f"unknown({code})"


def _load_schema():
    global _schema
    if _schema is ...:
        try:
            from ai_edge_litert import schema_py_generated
        except Exception:  # not installed, or its native library does not load on this machine
            schema_py_generated = None
        _schema = schema_py_generated
    return _schema


def _op_names() -> list:
    schema = _load_schema()
    if schema is None:
        return _BUILTIN_OP_NAMES
    by_value = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    names = list(_BUILTIN_OP_NAMES)
    for code, name in by_value.items():
        if isinstance(code, int) and code >= len(names):
            names.extend(f"BUILTIN_{i}" for i in range(len(names), code + 1))
        if isinstance(code, int) and code >= 0:
            names[code] = name
    return names


# --------------------------------------------------------------------------------------------
# Parser 1: the bounds-checked fallback reader (struct + numpy only)
# --------------------------------------------------------------------------------------------


class _Table:
    """A flatbuffer table whose every read is checked against the end of the buffer."""

    __slots__ = ("buf", "pos", "vtable", "vtable_len")

    def __init__(self, buf: bytes, pos: int):
        self.buf = buf
        self.pos = pos
        _need(buf, pos, 4)
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        _need(buf, self.vtable, 4)
        self.vtable_len = struct.unpack_from("<H", buf, self.vtable)[0]
        if self.vtable_len < 4 or self.vtable_len % 2:
            raise _Corrupt(f"bad vtable at byte {self.vtable}")
        _need(buf, self.vtable, self.vtable_len)

    def _slot(self, i: int) -> int:
        off = 4 + 2 * i
        if off + 2 > self.vtable_len:
            return 0
        return struct.unpack_from("<H", self.buf, self.vtable + off)[0]

    def scalar(self, i: int, fmt: str, default):
        o = self._slot(i)
        if not o:
            return default
        _need(self.buf, self.pos + o, struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.buf, self.pos + o)[0]

    def _indirect(self, i: int):
        o = self._slot(i)
        if not o:
            return None
        p = self.pos + o
        _need(self.buf, p, 4)
        return p + struct.unpack_from("<I", self.buf, p)[0]

    def table(self, i: int):
        p = self._indirect(i)
        return None if p is None else _Table(self.buf, p)

    def vector(self, i: int, item_size: int):
        """(start, length) of vector field ``i``, or None when absent."""
        p = self._indirect(i)
        if p is None:
            return None
        _need(self.buf, p, 4)
        n = struct.unpack_from("<I", self.buf, p)[0]
        _need(self.buf, p + 4, n * item_size)
        return p + 4, n

    def array(self, i: int, fmt: str) -> tuple:
        v = self.vector(i, struct.calcsize(fmt))
        if v is None or v[1] == 0:
            return ()
        return tuple(np.frombuffer(self.buf, np.dtype(fmt), v[1], v[0]).tolist())

    def tables(self, i: int) -> list:
        v = self.vector(i, 4)
        if v is None:
            return []
        start, n = v
        out = []
        for j in range(n):
            p = start + 4 * j
            out.append(_Table(self.buf, p + struct.unpack_from("<I", self.buf, p)[0]))
        return out

    def string(self, i: int):
        v = self.vector(i, 1)
        if v is None:
            return None
        return bytes(self.buf[v[0] : v[0] + v[1]]).decode("utf-8", "replace")


def _need(buf, pos: int, size: int) -> None:
    if pos < 0 or size < 0 or pos + size > len(buf):
        raise _Corrupt(f"offset {pos} (+{size} bytes) lies outside the file's {len(buf)} bytes")


def _options(options_type: int, get) -> dict:
    spec = _OPTION_FIELDS.get(options_type)
    if not spec:
        return {}
    return {key: get(slot, fmt, default) for key, (slot, fmt, default) in spec.items()}


def _parse_builtin(data: bytes) -> _Model:
    root = _Table(data, struct.unpack_from("<I", data, 0)[0])
    opcodes = []
    for oc in root.tables(1):
        code = max(oc.scalar(0, "<b", 0), oc.scalar(3, "<i", 0))
        opcodes.append((code, oc.string(1)))
    buffers = []
    for b in root.tables(4):
        v = b.vector(0, 1)
        if v is not None and v[1] > 0:
            buffers.append(v)
        elif b.scalar(1, "<Q", 0) > 1:
            buffers.append((b.scalar(1, "<Q", 0), b.scalar(2, "<Q", 0)))
        else:
            buffers.append(None)
    graphs = []
    for g in root.tables(2):
        tensors = []
        for index, t in enumerate(g.tables(0)):
            q = t.table(4)
            sig = t.array(7, "<i")
            tensors.append(
                _Tensor(
                    index=index,
                    name=t.string(3) or "",
                    type=t.scalar(1, "<b", 0),
                    shape=t.array(0, "<i"),
                    signature=sig if t.vector(7, 4) is not None else None,
                    buffer=t.scalar(2, "<I", 0),
                    scale=q.array(2, "<f") if q else (),
                    zero_point=q.array(3, "<q") if q else (),
                    quantized_dimension=q.scalar(6, "<i", 0) if q else 0,
                    sparse=t.table(6) is not None,
                    variable=bool(t.scalar(5, "<B", 0)),
                )
            )
        operators = []
        for index, op in enumerate(g.tables(3)):
            options_type = op.scalar(3, "<B", 0)
            opt = op.table(4) if options_type else None
            operators.append(
                _Operator(
                    index=index,
                    opcode_index=op.scalar(0, "<I", 0),
                    inputs=op.array(1, "<i"),
                    outputs=op.array(2, "<i"),
                    options_type=options_type,
                    options=_options(options_type, opt.scalar) if opt else {},
                )
            )
        graphs.append(
            _Graph(g.string(4) or "", tensors, g.array(1, "<i"), g.array(2, "<i"), operators)
        )
    metadata = [(m.string(0) or "", m.scalar(1, "<I", 0)) for m in root.tables(6)]
    signatures = [s.string(2) or "" for s in root.tables(7)]
    return _Model(
        data=data,
        version=root.scalar(0, "<I", 0),
        description=root.string(3) or "",
        opcodes=opcodes,
        graphs=graphs,
        buffers=buffers,
        metadata=metadata,
        signatures=signatures,
    )


# --------------------------------------------------------------------------------------------
# Parser 2: the schema generated by flatc, as shipped with ai-edge-litert
# --------------------------------------------------------------------------------------------


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _ints(obj, name: str) -> tuple:
    if getattr(obj, name + "Length")() == 0:
        return ()
    return tuple(int(x) for x in getattr(obj, name + "AsNumpy")())


def _parse_litert(data: bytes, schema) -> _Model:
    m = schema.Model.GetRootAs(data, 0)
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
                _Tensor(
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
                _Operator(
                    index=index,
                    opcode_index=op.OpcodeIndex(),
                    inputs=_ints(op, "Inputs"),
                    outputs=_ints(op, "Outputs"),
                    options_type=options_type,
                    options=options,
                )
            )
        graphs.append(
            _Graph(_text(g.Name()), tensors, _ints(g, "Inputs"), _ints(g, "Outputs"), operators)
        )
    metadata = []
    for i in range(m.MetadataLength()):
        md = m.Metadata(i)
        metadata.append((_text(md.Name()), md.Buffer()))
    signatures = [_text(m.SignatureDefs(i).SignatureKey()) for i in range(m.SignatureDefsLength())]
    return _Model(
        data=data,
        version=m.Version(),
        description=_text(m.Description()),
        opcodes=opcodes,
        graphs=graphs,
        buffers=buffers,
        metadata=metadata,
        signatures=signatures,
    )


# --------------------------------------------------------------------------------------------
# Reading and validating
# --------------------------------------------------------------------------------------------


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
        raise InputFileError(
            f"model file {path} does not exist", hint="Check the path to the .tflite file."
        ) from None
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


def _parse(label: str, data: bytes) -> _Model:
    if len(data) < 8:
        raise InputFileError(
            f"{label} is not a TFLite flatbuffer (only {len(data)} bytes; a model has at least 8)",
            hint=_NOT_TFLITE_HINT,
        )
    if data[4:8] != _IDENTIFIER:
        raise InputFileError(
            f"{label} is not a TFLite flatbuffer ({_sniff(data)})", hint=_NOT_TFLITE_HINT
        )
    schema = _load_schema()
    try:
        model = _parse_litert(data, schema) if schema is not None else _parse_builtin(data)
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


def _validate(model: _Model) -> None:
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


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------


def _op_name(model: _Model, op: _Operator, names: list) -> str:
    code, custom = model.opcodes[op.opcode_index]
    if code == _CUSTOM:
        return custom or "CUSTOM"
    return names[code] if code < len(names) else f"BUILTIN_{code}"


def _buffer_bytes(model: _Model, t: _Tensor):
    ext = model.buffers[t.buffer] if t.buffer < len(model.buffers) else None
    if ext is None or ext[1] == 0:
        return None
    return memoryview(model.data)[ext[0] : ext[0] + ext[1]]


def _quant_entry(t: _Tensor) -> dict | None:
    if not t.scale and not t.zero_point:
        return None
    return {
        "scale": list(t.scale),
        "zero_point": list(t.zero_point),
        "quantized_dimension": t.quantized_dimension,
        "per_axis": len(t.scale) > 1,
    }


def _io_entry(t: _Tensor) -> dict:
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


def _const_values(model: _Model, t: _Tensor):
    """The values of a constant integer/float tensor as a numpy array (None if not constant)."""
    raw = _buffer_bytes(model, t)
    fmt = _NUMPY_DTYPES.get(t.dtype)
    if raw is None or fmt is None:
        return None
    dtype = np.dtype(fmt)
    if len(raw) % dtype.itemsize:
        return None
    return np.frombuffer(raw, dtype)


def _weight_values(model: _Model, t: _Tensor):
    """(values, zero_points, groups, elements) of a weight tensor, or None if it cannot be read.

    ``values`` has one row per quantization group: one per channel for per-axis quantization
    (``groups`` channels), else a single row; ``zero_points`` has one entry per row (None when
    the tensor is not quantized); ``elements`` is the tensor's element count.
    """
    raw = _buffer_bytes(model, t)
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
        fmt = _NUMPY_DTYPES.get(t.dtype)
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


def _analyze_weight(model: _Model, t: _Tensor):
    """(zeros, elements, max unique values per quantization group) of one weight tensor."""
    read = _weight_values(model, t)
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


def _analyze(model: _Model, label: str, detail: bool) -> dict:
    names = _op_names()
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
            raw = _buffer_bytes(model, t)
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
            name = _op_name(model, op, names)
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
                    if _buffer_bytes(model, t) is not None or producer is None:
                        break
                    if _op_name(model, producer, names) not in ("DEQUANTIZE", "DENSIFY"):
                        break
                    if not producer.inputs or producer.inputs[0] < 0:
                        break
                    t = g.tensors[producer.inputs[0]]
                if (gi, t.index) not in seen_weights and _buffer_bytes(model, t) is not None:
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
    from tfedge import edgetpu  # no TensorFlow there either

    info["edgetpu"] = edgetpu.predict_mapping({**info, **detail_info})
    if detail:
        info.update(detail_info)
    return info


def _op_params(model: _Model, g: _Graph, op: _Operator, name: str) -> dict:
    """Operator attributes the Edge TPU rules need: fused activation, dilation, axes, paddings."""
    params = dict(op.options)
    if "fused_activation" in params:
        a = params["fused_activation"]
        params["fused_activation"] = _ACTIVATIONS[a] if 0 <= a < len(_ACTIVATIONS) else str(a)

    def const(i):
        if i >= len(op.inputs) or op.inputs[i] < 0:
            return None
        values = _const_values(model, g.tensors[op.inputs[i]])
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
            _const_values(model, g.tensors[i]) for i in op.inputs if i >= 0 and g.tensors[i].buffer
        ]
        consts = [c for c in consts if c is not None]
        params["constant_inputs"] = len(consts)
        params["constant_inputs_zero"] = all(not np.any(c) for c in consts)
    elif name == "PRELU":
        alpha = g.tensors[op.inputs[1]] if len(op.inputs) > 1 and op.inputs[1] >= 0 else None
        params["alpha_constant"] = alpha is not None and _buffer_bytes(model, alpha) is not None
    return params


def _metadata_text(model: _Model, key: str):
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
    """Describe a ``.tflite`` model: operators, I/O, integer-ness, shapes, weights, Edge TPU fit.

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
        - ``edgetpu``: :func:`tfedge.edgetpu.predict_mapping` of the model;
        - extras: ``metadata_names``, ``min_runtime_version``, ``has_tflite_metadata``,
          ``edgetpu_compiled``, ``subgraphs``, ``operators``, ``signatures``,
          ``schema_version``, ``description``.

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
    label, data = _read_bytes(path_or_bytes)
    model = _parse(label, data)
    try:
        return _analyze(model, label, detail)
    except _Corrupt as e:
        raise InputFileError(
            f"{label} is not a TFLite flatbuffer (truncated or corrupt: {e})",
            hint=_CORRUPT_HINT,
        ) from None


def _fmt_shape(entry: dict) -> str:
    sig = entry.get("shape_signature") or entry["shape"]
    return "[" + ", ".join("?" if d == -1 else str(d) for d in sig) + "]"


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
        verdicts (fully integer, static shapes, weights, Edge TPU) with their reasons.

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
            verdict += f" ({mapped} ops predicted on the Edge TPU, {cpu} on the CPU)"
        lines.append(f"{'Edge TPU':<18}{verdict}")
        reasons = tpu.get("reasons") or tpu.get("unsupported") or []
        for reason in reasons[:_MAX_REASONS]:
            lines.append(f"{'':<18}- {reason}")
        if len(reasons) > _MAX_REASONS:
            lines.append(f"{'':<18}  ... and {len(reasons) - _MAX_REASONS} more")
    return "\n".join(lines)
