"""Read and write whole TFLite flatbuffers with the schema's object API (no TensorFlow).

Example:
    >>> from tfedge.converters.flatbuffer import pack_model, unpack_model
    >>> model = unpack_model(open("model.tflite", "rb").read())  # doctest: +SKIP
    >>> blob = pack_model(model)                                   # doctest: +SKIP
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tfedge.core.tflite_file import op_names

__all__ = [
    "TFLITE_IDENTIFIER",
    "AlignedBuffer",
    "pack_model",
    "unpack_model",
    "opcode_names",
    "repackable",
    "rewrite",
]

TFLITE_IDENTIFIER = b"TFL3"
# TFLite's schema asks for `Buffer.data` aligned to 16 bytes (force_align: 16).
_BUFFER_ALIGNMENT = 16


def unpack_model(blob: bytes) -> schema.ModelT:
    """The mutable object form of a ``.tflite`` flatbuffer.

    Example:
        >>> len(unpack_model(blob).subgraphs)  # doctest: +SKIP
        1
    """
    return schema.ModelT.InitFromPackedBuf(bytes(blob), 0)


def pack_model(model: schema.ModelT, size_hint: int = 1024) -> bytes:
    """Serialize a :class:`ModelT` back to flatbuffer bytes, buffer data aligned to 16 bytes.

    Example:
        >>> pack_model(unpack_model(blob))[4:8]  # doctest: +SKIP
        b'TFL3'
    """
    model.buffers = [
        b if isinstance(b, AlignedBuffer) else AlignedBuffer(b) for b in model.buffers or []
    ]
    builder = flatbuffers.Builder(size_hint)
    builder.Finish(model.Pack(builder), TFLITE_IDENTIFIER)
    model.buffers = [b.buffer for b in model.buffers]
    return bytes(builder.Output())


def repackable(model: schema.ModelT) -> bool:
    """False for a model with buffers stored after the flatbuffer (over 2 GB), which a repack breaks.

    Example:
        >>> repackable(unpack_model(blob))  # doctest: +SKIP
        True
    """
    return not any(b.offset or b.size for b in model.buffers or [])


def rewrite(blob: bytes, *passes) -> bytes:
    """Apply in-place passes ``pass(model) -> changed`` to a model, unpacking and repacking once.

    Args:
        blob: a ``.tflite`` flatbuffer.
        passes: functions that edit a :class:`ModelT` and return whether they changed it.

    Returns:
        The repacked model; ``blob`` itself when no pass changed anything, or when the model keeps
        buffers outside the flatbuffer (see :func:`repackable`).

    Example:
        >>> blob = rewrite(blob, integerize_islands, shorten_names)  # doctest: +SKIP
    """
    model = unpack_model(blob)
    if not repackable(model):
        return blob
    changed = [edit(model) for edit in passes]  # every pass runs, whatever the others did
    if not any(changed):
        return blob
    return pack_model(model, len(blob) + 4096)


def opcode_names(model: schema.ModelT) -> list[str]:
    """The builtin operator name of each operator code (``CUSTOM`` for custom ones).

    Example:
        >>> opcode_names(unpack_model(blob))[:2]  # doctest: +SKIP
        ['CONV_2D', 'FULLY_CONNECTED']
    """
    builtin, names = op_names(), []
    for code in model.operatorCodes or []:
        # Codes past 127 live in builtinCode; deprecatedBuiltinCode holds min(code, 127).
        number = max(code.builtinCode or 0, code.deprecatedBuiltinCode or 0)
        names.append(builtin[number] if number < len(builtin) else f"BUILTIN_{number}")
    return names


class AlignedBuffer:
    """Packs a ``BufferT`` like the object API does, but with its data aligned to 16 bytes.

    The generated Python object API ignores the schema's ``force_align: 16`` on ``Buffer.data``;
    the C++ converter honours it, and so does this.
    """

    def __init__(self, buffer: schema.BufferT):
        self.buffer = buffer

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 (the object API's name)
        b = self.buffer
        data = None
        if b.data is not None:
            payload = np.asarray(b.data, dtype=np.uint8).tobytes()
            builder.StartVector(1, len(payload), _BUFFER_ALIGNMENT)
            builder.head -= len(payload)
            builder.Bytes[builder.head : builder.head + len(payload)] = payload
            data = builder.EndVector()
        schema.BufferStart(builder)
        if data is not None:
            schema.BufferAddData(builder, data)
        schema.BufferAddOffset(builder, b.offset)
        schema.BufferAddSize(builder, b.size)
        return schema.BufferEnd(builder)
