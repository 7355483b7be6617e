"""TFLite model metadata for mobile apps: labels, normalization and a description in the model file.

Writes the standard TFLite Support metadata (the public ``metadata_schema.fbs``, schema 1.5.0): a
``ModelMetadata`` flatbuffer stored in a new model buffer under the name ``"TFLITE_METADATA"``, and
the associated files (``labels.txt``) appended to the model as a zip archive, byte for byte the
layout that TFLite Support's ``MetadataPopulator`` writes. TFLite Support's ``MetadataDisplayer``,
the Android metadata extractor, the Task Library and Android Studio's ML model binding read it.
The interpreter ignores both parts: the model runs exactly as before.

Only numpy, ``flatbuffers`` and ``ai_edge_litert``'s schema module are needed: no TensorFlow.

Example:
    >>> from tfedge.converters.metadata import add_metadata, read_labels_file, read_metadata
    >>> labels = read_labels_file("labels.txt")                        # doctest: +SKIP
    >>> model = add_metadata(open("model.tflite", "rb").read(), labels,
    ...                      name="digits", input_mean=0.0, input_std=1.0)  # doctest: +SKIP
    >>> read_metadata(model)["labels"][:3]                              # doctest: +SKIP
    ['0', '1', '2']
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as _tfl

import tfedge.converters.metadata_schema_py_generated as _md
from tfedge.converters.flatbuffer import pack_model
from tfedge.converters.labels import check_labels, read_labels_file
from tfedge.core.errors import ConversionError, InputFileError

__all__ = [
    "METADATA_NAME",
    "LABELS_FILE_NAME",
    "MIN_PARSER_VERSION",
    "add_metadata",
    "read_metadata",
    "read_labels_file",
]

#: Name of the model's ``metadata`` entry holding the ModelMetadata flatbuffer (TFLite Support's).
METADATA_NAME = "TFLITE_METADATA"
#: Name of the packed label file (the associated file of the output tensor).
LABELS_FILE_NAME = "labels.txt"
#: ``min_parser_version`` of what :func:`add_metadata` writes: it uses only schema 1.0.0 fields
#: (TFLite Support's ``GetMinimumMetadataParserVersion`` computes the same; a test checks it).
MIN_PARSER_VERSION = "1.0.0"

_TFLITE_IDENTIFIER = b"TFL3"
_METADATA_IDENTIFIER = b"M001"
# Fixed timestamp of the zip entries, so that the same inputs give the same bytes (zipfile would
# stamp the current local time). 1980-01-01 is the earliest date a zip entry can carry.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_INPUT_KINDS = ("image", "tensor")
# Value range of integer input tensors, for the `stats` of the input tensor metadata.
_INT_RANGES = {
    _tfl.TensorType.INT8: (-128.0, 127.0),
    _tfl.TensorType.UINT8: (0.0, 255.0),
    _tfl.TensorType.INT16: (-32768.0, 32767.0),
}
_TYPE_NAMES = {v: k for k, v in vars(_tfl.TensorType).items() if not k.startswith("_")}


def add_metadata(
    model_bytes: bytes,
    labels: Sequence[str],
    *,
    name: str | None = None,
    description: str | None = None,
    version: str | None = None,
    input_mean: float | Sequence[float] | None = None,
    input_std: float | Sequence[float] | None = None,
    input_kind: str = "image",
    author: str | None = None,
) -> bytes:
    """Return ``model_bytes`` with TFLite Support metadata and a packed ``labels.txt``.

    The model keeps all its operators, tensors, buffers, signatures and other metadata entries
    (``min_runtime_version``, ``CONVERSION_METADATA``): a new buffer and a ``TFLITE_METADATA``
    entry are added (an existing ``TFLITE_METADATA`` is replaced, and associated files packed
    before are dropped), and ``labels.txt`` is appended as an uncompressed zip entry.

    The input tensor metadata carries ``ImageProperties`` (RGB for 3 channels, GRAYSCALE for 1)
    when ``input_kind`` is ``"image"`` and the input is NHWC with 1 or 3 channels, else
    ``FeatureProperties``; a ``NormalizationOptions`` process unit when ``input_mean`` and
    ``input_std`` are given (``(x - mean) / std``, applied before quantization); and ``stats``:
    the value range of an integer input tensor, or for a float image input the range of
    normalized 0..255 pixels. The output tensor metadata names ``labels.txt`` as its
    ``TENSOR_AXIS_LABELS`` file.

    Args:
        model_bytes: a ``.tflite`` model (buffers inside the flatbuffer, i.e. under 2 GB).
        labels: one label per class, in class-id order; their number must equal the size of the
            output's last axis.
        name: model name (``ModelMetadata.name``).
        description: what the model does.
        version: model version string.
        input_mean: normalization mean, one value or one per channel.
        input_std: normalization standard deviation (non-zero), one value or one per channel.
        input_kind: ``"image"`` or ``"tensor"`` (generic features).
        author: who made the model.

    Returns:
        The new model file content.

    Raises:
        InputFileError: ``model_bytes`` is not a TFLite model.
        ConversionError: the label count does not match the output size, the model has not
            exactly one input and one output, or its buffers are stored outside the flatbuffer.
        ValueError: a bad argument (empty or multi-line label, unknown ``input_kind``, only one
            of ``input_mean``/``input_std``, a zero std, wrong number of per-channel values).

    Example:
        >>> from tfedge.converters.metadata import add_metadata
        >>> with open("model.tflite", "rb") as f:  # doctest: +SKIP
        ...     model = add_metadata(f.read(), ["cat", "dog"], name="pets",
        ...                          input_mean=127.5, input_std=127.5)
        >>> open("pets.tflite", "wb").write(model)  # doctest: +SKIP
    """
    labels = check_labels(labels)
    if input_kind not in _INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {_INPUT_KINDS}, got {input_kind!r}.")
    model = _unpack_model(model_bytes)
    subgraph = model.subgraphs[0]
    # (`inputs` / `outputs` are numpy arrays or None: no truth test on them.)
    inputs = [] if subgraph.inputs is None else [int(i) for i in subgraph.inputs]
    outputs = [] if subgraph.outputs is None else [int(i) for i in subgraph.outputs]
    n_in, n_out = len(inputs), len(outputs)
    if n_in != 1 or n_out != 1:
        raise ConversionError(
            f"metadata with labels needs a model with exactly 1 input and 1 output; this one has "
            f"{n_in} input(s) and {n_out} output(s).",
            "Add labels only to classifiers with a single input and a single output.",
        )
    in_tensor = subgraph.tensors[inputs[0]]
    out_tensor = subgraph.tensors[outputs[0]]
    out_shape = _shape(out_tensor)
    classes = out_shape[-1] if out_shape else 1
    if classes < 0:
        raise ConversionError(
            f"the model's output {_tensor_desc(out_tensor)} has a dynamic last axis: the number "
            f"of classes, to check against the {len(labels)} labels, is unknown.",
            "Convert the model with a fixed output size.",
        )
    if classes != len(labels):
        raise ConversionError(
            f"{len(labels)} labels were given but the model's output "
            f"{_tensor_desc(out_tensor)} has {classes} classes on its last axis.",
            f"Give exactly {classes} labels, one per line, in class-id order.",
        )

    metadata = _md.ModelMetadataT()
    metadata.name = name
    metadata.description = description
    metadata.version = version
    metadata.author = author
    metadata.minParserVersion = MIN_PARSER_VERSION
    subgraph_md = _md.SubGraphMetadataT()
    subgraph_md.inputTensorMetadata = [
        _input_tensor_metadata(in_tensor, input_kind, input_mean, input_std)
    ]
    subgraph_md.outputTensorMetadata = [_output_tensor_metadata(len(labels))]
    metadata.subgraphMetadata = [subgraph_md]
    builder = flatbuffers.Builder(1024)
    builder.Finish(metadata.Pack(builder), _METADATA_IDENTIFIER)
    metadata_buf = np.frombuffer(bytes(builder.Output()), dtype=np.uint8)

    # Put the metadata buffer in (replacing an existing TFLITE_METADATA, as MetadataPopulator does).
    model.metadata = list(model.metadata or [])
    model.buffers = list(model.buffers or [])
    entry = next((m for m in model.metadata if _str(m.name) == METADATA_NAME), None)
    if entry is None:
        model.buffers.append(_tfl.BufferT(data=metadata_buf))
        entry = _tfl.MetadataT()
        entry.name = METADATA_NAME
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    else:
        model.buffers[entry.buffer] = _tfl.BufferT(data=metadata_buf)

    # Repack (anything after the flatbuffer, such as associated files packed before, is dropped).
    out = io.BytesIO()
    out.write(pack_model(model, len(model_bytes) + len(metadata_buf) + 4096))
    _append_zip(out, {LABELS_FILE_NAME: ("\n".join(labels) + "\n").encode("utf-8")})
    return out.getvalue()


def read_metadata(model_bytes: bytes) -> dict | None:
    """Read the TFLite Support metadata of a model, with the labels from its packed files.

    Args:
        model_bytes: a ``.tflite`` model.

    Returns:
        ``None`` when the model has no ``TFLITE_METADATA``; else a dict with ``name``,
        ``description``, ``version``, ``author``, ``min_parser_version``, ``input_kind``
        (``"image"`` or ``"tensor"``), ``color_space`` (``"RGB"``, ``"GRAYSCALE"`` or None),
        ``input_mean`` / ``input_std`` (lists of floats, or None), ``input_min`` / ``input_max``
        (the input ``stats``, or None), ``labels_file`` (the output's ``TENSOR_AXIS_LABELS`` file
        name, or None), ``labels`` (its lines, or None when absent), ``associated_files`` (the
        file names the metadata refers to) and ``packed_files`` (those in the appended zip).

    Raises:
        InputFileError: ``model_bytes`` is not a TFLite model, or its metadata is corrupt.

    Example:
        >>> from tfedge.converters.metadata import read_metadata
        >>> meta = read_metadata(open("pets.tflite", "rb").read())  # doctest: +SKIP
        >>> meta["labels"], meta["input_mean"], meta["input_std"]     # doctest: +SKIP
        (['cat', 'dog'], [127.5], [127.5])
    """
    _check_identifier(model_bytes)
    model = _tfl.Model.GetRootAs(model_bytes, 0)
    raw = None
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _str(entry.Name()) == METADATA_NAME:
            raw = model.Buffers(entry.Buffer()).DataAsNumpy()
            break
    if raw is None or isinstance(raw, int):  # DataAsNumpy() returns 0 for an empty buffer.
        return None
    buf = bytes(raw)
    if not _md.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0):
        raise InputFileError(
            f"the model's {METADATA_NAME} buffer is not TFLite metadata (identifier "
            f"{buf[4:8]!r}, expected {_METADATA_IDENTIFIER!r}).",
            "Write the metadata again with `tfedge convert --labels FILE`.",
        )
    try:
        meta = _md.ModelMetadataT.InitFromObj(_md.ModelMetadata.GetRootAs(buf, 0))
    except Exception as e:  # a corrupt flatbuffer fails anywhere inside the generated code
        raise InputFileError(
            f"the model's {METADATA_NAME} buffer ({len(buf)} bytes) is corrupt: "
            f"{type(e).__name__}: {e}.",
            "Write the metadata again with `tfedge convert --labels FILE`.",
        ) from None
    packed = _packed_files(model_bytes)
    result = {
        "name": _str(meta.name),
        "description": _str(meta.description),
        "version": _str(meta.version),
        "author": _str(meta.author),
        "min_parser_version": _str(meta.minParserVersion),
        "input_kind": None,
        "color_space": None,
        "input_mean": None,
        "input_std": None,
        "input_min": None,
        "input_max": None,
        "labels_file": None,
        "labels": None,
        "associated_files": [_str(f.name) for f in _all_associated_files(meta)],
        "packed_files": sorted(packed),
    }
    subgraph = (meta.subgraphMetadata or [None])[0]
    inputs = (subgraph.inputTensorMetadata if subgraph else None) or []
    outputs = (subgraph.outputTensorMetadata if subgraph else None) or []
    if inputs:
        tm = inputs[0]
        if tm.content is not None:
            if tm.content.contentPropertiesType == _md.ContentProperties.ImageProperties:
                result["input_kind"] = "image"
                space = tm.content.contentProperties.colorSpace
                result["color_space"] = {
                    _md.ColorSpaceType.RGB: "RGB",
                    _md.ColorSpaceType.GRAYSCALE: "GRAYSCALE",
                }.get(space)
            else:
                result["input_kind"] = "tensor"
        for unit in tm.processUnits or []:
            if unit.optionsType == _md.ProcessUnitOptions.NormalizationOptions:
                result["input_mean"] = _floats(unit.options.mean)
                result["input_std"] = _floats(unit.options.std)
        if tm.stats is not None:
            result["input_min"] = _floats(tm.stats.min)
            result["input_max"] = _floats(tm.stats.max)
    if outputs:
        for f in outputs[0].associatedFiles or []:
            if f.type == _md.AssociatedFileType.TENSOR_AXIS_LABELS:
                result["labels_file"] = _str(f.name)
                if result["labels_file"] in packed:
                    text = packed[result["labels_file"]].decode("utf-8", errors="replace")
                    result["labels"] = [line.rstrip() for line in text.splitlines() if line.strip()]
                break
    return result


# --------------------------------------------------------------------------------------------
# Helpers.


def _check_identifier(model_bytes) -> None:
    if not isinstance(model_bytes, (bytes, bytearray, memoryview)):
        raise TypeError(f"model_bytes must be bytes, got {type(model_bytes).__name__}.")
    if len(model_bytes) < 8 or not _tfl.Model.ModelBufferHasIdentifier(model_bytes, 0):
        head = bytes(model_bytes[4:8]) if len(model_bytes) >= 8 else bytes(model_bytes)
        raise InputFileError(
            f"not a TFLite model: {len(model_bytes)} bytes, file identifier {head!r} "
            f"(expected {_TFLITE_IDENTIFIER!r}).",
            "Give a .tflite file written by the TFLite converter (`tfedge convert`).",
        )


def _unpack_model(model_bytes) -> _tfl.ModelT:
    _check_identifier(model_bytes)
    model_bytes = bytes(model_bytes)
    try:
        model = _tfl.ModelT.InitFromPackedBuf(model_bytes, 0)
    except Exception as e:  # a corrupt flatbuffer fails anywhere inside the generated code
        raise InputFileError(
            f"cannot parse the TFLite model ({len(model_bytes)} bytes): {type(e).__name__}: {e}.",
            "The file is truncated or corrupt: convert the model again.",
        ) from None
    if not model.subgraphs:
        raise InputFileError("the TFLite model has no subgraph.", "Convert the model again.")
    # Buffers whose data lies after the flatbuffer (offset/size, written by the converter for
    # models over 2 GB or with `_experimental_use_buffer_offset`) would point to the wrong bytes
    # once the flatbuffer is rewritten; TensorFlow's converter skips its own metadata for them too.
    external = [i for i, b in enumerate(model.buffers or []) if b.offset or b.size]
    if external or any(_str(m.name) == "buffer_location" for m in model.metadata or []):
        raise ConversionError(
            f"the model stores {len(external)} buffer(s) outside the flatbuffer (buffer offsets, "
            "as the converter writes models over 2 GB); adding metadata would rewrite the "
            "flatbuffer and leave those offsets pointing to the wrong bytes.",
            "Convert the model without buffer offsets (under 2 GB) to add metadata.",
        )
    return model


def _per_channel(name: str, value, channels: int | None) -> list[float]:
    values = [float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()]
    if not values:
        raise ValueError(f"{name} is empty.")
    if len(values) != 1 and channels is not None and len(values) != channels:
        raise ValueError(
            f"{name} has {len(values)} values; give one, or one per channel ({channels})."
        )
    return values


def _input_tensor_metadata(tensor, input_kind, mean, std) -> _md.TensorMetadataT:
    shape = _shape(tensor)
    is_image = input_kind == "image" and len(shape) == 4 and shape[-1] in (1, 3)
    channels = shape[-1] if shape and shape[-1] > 0 else None
    tm = _md.TensorMetadataT()
    tm.content = _md.ContentT()
    if is_image:
        tm.name = "image"
        tm.description = f"Input image, {_tensor_desc(tensor)}."
        props = _md.ImagePropertiesT()
        props.colorSpace = (
            _md.ColorSpaceType.RGB if shape[-1] == 3 else _md.ColorSpaceType.GRAYSCALE
        )
        tm.content.contentPropertiesType = _md.ContentProperties.ImageProperties
    else:
        tm.name = "input"
        tm.description = f"Input features, {_tensor_desc(tensor)}."
        props = _md.FeaturePropertiesT()
        tm.content.contentPropertiesType = _md.ContentProperties.FeatureProperties
    tm.content.contentProperties = props

    if (mean is None) != (std is None):
        raise ValueError("give both input_mean and input_std, or neither.")
    if mean is not None:
        mean_v = _per_channel("input_mean", mean, channels)
        std_v = _per_channel("input_std", std, channels)
        if any(s == 0 or not np.isfinite(s) for s in std_v) or not all(np.isfinite(mean_v)):
            raise ValueError(f"input_std must be finite and non-zero, got {std_v} (mean {mean_v}).")
        unit = _md.ProcessUnitT()
        unit.optionsType = _md.ProcessUnitOptions.NormalizationOptions
        unit.options = _md.NormalizationOptionsT()
        unit.options.mean = mean_v
        unit.options.std = std_v
        tm.processUnits = [unit]

    # Stats: the range of the values the tensor holds.
    if tensor.type in _INT_RANGES:
        lo, hi = _INT_RANGES[tensor.type]
        stats = ([lo], [hi])
    elif is_image and mean is not None and tensor.type == _tfl.TensorType.FLOAT32:
        # As TFLite Support's image writer: 0..255 pixels after (x - mean) / std.
        n = max(len(mean_v), len(std_v))
        mean_b, std_b = np.broadcast_to(mean_v, n), np.broadcast_to(std_v, n)
        stats = (
            [float((0.0 - m) / s) for m, s in zip(mean_b, std_b, strict=True)],
            [float((255.0 - m) / s) for m, s in zip(mean_b, std_b, strict=True)],
        )
    else:
        stats = None
    if stats is not None:
        tm.stats = _md.StatsT()
        tm.stats.min, tm.stats.max = stats
    return tm


def _output_tensor_metadata(classes: int) -> _md.TensorMetadataT:
    tm = _md.TensorMetadataT()
    tm.name = "probability"
    tm.description = f"Scores of the {classes} labels respectively."
    tm.content = _md.ContentT()
    tm.content.contentPropertiesType = _md.ContentProperties.FeatureProperties
    tm.content.contentProperties = _md.FeaturePropertiesT()
    labels = _md.AssociatedFileT()
    labels.name = LABELS_FILE_NAME
    labels.description = f"Labels for the {classes} categories that the model can recognize."
    labels.type = _md.AssociatedFileType.TENSOR_AXIS_LABELS
    tm.associatedFiles = [labels]
    return tm


def _append_zip(out: io.BytesIO, files: dict[str, bytes]) -> None:
    """Append ``files`` to ``out`` as a zip archive, as TFLite Support's MetadataPopulator does.

    MetadataPopulator opens the model file with ``zipfile.ZipFile(f, "a")``: as the model is not
    a zip, zipfile starts a new archive at the end of the file, with every offset (local headers,
    central directory) counted from the start of the model file, and stores the files
    uncompressed (``ZIP_STORED``, which the Android extractor needs to map them). Mode ``"w"`` at
    the end of the stream writes exactly that, without first searching the model's bytes for a
    zip end record (which a weight buffer could contain by chance).
    """
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for file_name, data in files.items():
            info = zipfile.ZipInfo(file_name, date_time=_ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o600 << 16  # as ZipFile.writestr(name, data)
            zf.writestr(info, data)


def _packed_files(model_bytes) -> dict[str, bytes]:
    """The associated files in the zip appended to the model ({} when there is none)."""
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as zf:
            return {n: zf.read(n) for n in zf.namelist()}
    except (zipfile.BadZipFile, ValueError, OSError):
        return {}


def _all_associated_files(meta: _md.ModelMetadataT) -> list:
    files = list(meta.associatedFiles or [])
    for sg in meta.subgraphMetadata or []:
        files += sg.associatedFiles or []
        for tm in (sg.inputTensorMetadata or []) + (sg.outputTensorMetadata or []):
            files += tm.associatedFiles or []
    return files


def _shape(tensor) -> list[int]:
    sig = tensor.shapeSignature
    shape = tensor.shape
    if sig is not None and len(sig):
        return [int(d) for d in sig]
    return [] if shape is None else [int(d) for d in shape]


def _tensor_desc(tensor) -> str:
    return f"{_TYPE_NAMES.get(tensor.type, tensor.type).lower()} {_shape(tensor)}"


def _str(value) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def _floats(values) -> list[float] | None:
    if values is None:
        return None
    return [float(v) for v in np.asarray(values, dtype=np.float32).ravel()]
