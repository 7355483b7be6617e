"""``tfedge analyze``: which layers lose accuracy in int8, and the fix that brings it back.

Every operator of the fully-int8 conversion is compared with its float twin on the calibration
data (TensorFlow's QuantizationDebugger, see :mod:`tfedge.converters.layer_errors`) and named by
its Keras layer. With ``fix=True`` the candidate fixes are converted and measured with LiteRT on
``data``: plain int8, the worst layers with int16 activations (ai-edge-quantizer, still fully
integer), the worst layers kept float, and the whole model int16x8.

Example:
    >>> import tfedge
    >>> report = tfedge.analyze("model.keras", calib="train.npz")  # doctest: +SKIP
    >>> [row["name"] for row in report["worst"][:3]]  # doctest: +SKIP
    ['dense_1', 'dense_2', 'conv2d']
"""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tfedge.converters import convert, convert_file
from tfedge.converters.tflite import input_shape_of
from tfedge.core.console import progress
from tfedge.core.errors import DataError, TfedgeError
from tfedge.core.files import write_atomically
from tfedge.core.loading import LoadedModel, load_model
from tfedge.core.streams import stream_data
from tfedge.devices.runner import bench_models

__all__ = ["analyze", "explorer_node_data", "TOLERANCE", "WORST_K"]

TOLERANCE = 0.01  # a fix keeps the accuracy when it is within 1 point of the float model
WORST_K = (1, 2, 3)
_NO_ERROR_OPS = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "MAX_POOL_2D", "CONCATENATION"}
# Model Explorer colours a node by the first threshold its value is at or under.
_THRESHOLDS = [
    {"value": 10, "bgColor": "#d93025"},
    {"value": 20, "bgColor": "#f29900"},
    {"value": 30, "bgColor": "#fdd663"},
    {"value": 1000, "bgColor": "#81c995"},
]


def analyze(
    model,
    calib,
    *,
    data=None,
    fix: bool = False,
    output=None,
    json_path=None,
    explorer=None,
    calib_samples: int = 200,
    runs: int = 50,
) -> dict:
    """Per-layer int8 error of a Keras model, and optionally the fix that keeps its accuracy.

    A fix *keeps the accuracy* when its LiteRT top-1 accuracy on ``data`` is within 1 point
    (:data:`TOLERANCE`) of the float32 model's. The chosen fix is the least intrusive one that
    keeps the accuracy and keeps the model fully integer (candidates in this order: plain int8;
    int16 activations for the worst 1, 2, then 3 layers; those layers kept float; the whole model
    int16x8). When no fully-integer fix keeps the accuracy, the first one that does is chosen and
    the report says which property it gives up (full int8, the EdgeTPU); when none does, the most
    accurate one.

    Args:
        model: a ``.keras``/``.h5`` file, a SavedModel directory, or a Keras model.
        calib: calibration data (``.npz``, image folder, arrays).
        data: labelled evaluation data; needed with ``fix``.
        fix: try the candidate fixes and choose one.
        output: where to write the chosen model (``.tflite``) when ``fix`` is set.
        json_path: where to write the report as JSON.
        explorer: where to write the per-operator SQNR as Model Explorer node data.
        calib_samples: calibration samples for the analysis and the conversions.
        runs: timed LiteRT runs per candidate (for ``p50_ms``).

    Returns:
        ``{"model", "layers": [...], "worst": [...]}``: one record per int8 operator (``name``:
        Keras layer, ``op``, ``rmse_over_scale``, ``max_abs_error``, ``cosine``, ``sqnr_db``,
        ``tensor``), ``worst`` sorted by ``sqnr_db`` (lowest first). With ``fix``: also
        ``float_accuracy``, ``fixes`` (``fix``, ``layers``, ``accuracy``, ``size_bytes``,
        ``p50_ms``, ``fully_integer``, ``edgetpu_compatible``, ``keeps_accuracy``, and for the
        int16 / keep_float fixes ``selected``: the operators each layer covered, as
        :attr:`tfedge.converters.Conversion.selected`), ``chosen``
        (a ``fix`` name) and ``verdict`` (one sentence).

    Raises:
        InputFileError: a missing or corrupt model or data file.
        DataError: data that does not fit the model, or ``fix`` without labelled ``data``.
        ConversionError: the model cannot be converted to int8.

    Example:
        >>> report = analyze("model.keras", "train.npz", data="test.npz", fix=True,
        ...                  output="fixed.tflite")  # doctest: +SKIP
        >>> report["chosen"], report["verdict"]  # doctest: +SKIP
        ('int16:dense_1', 'int16:dense_1 keeps the accuracy ...')
    """
    from tfedge.converters.layer_errors import layer_errors

    if fix and data is None:
        raise DataError(
            "--fix needs labelled evaluation data (--data) to measure each fix's accuracy",
            "pass --data DATA (an .npz with x and y, or an image folder)",
        )
    if fix and output is None:
        raise TfedgeError("--fix needs -o OUT.tflite for the chosen model", "add -o fixed.tflite")
    label = str(model) if isinstance(model, (str, os.PathLike)) else getattr(model, "name", "model")
    keras_model = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    if isinstance(keras_model, LoadedModel):
        keras_model = keras_model.model
    shape = input_shape_of(keras_model)
    # The checks every command shares (tfedge.core.data): shapes, NaN or infinite inputs, labels the
    # model cannot predict; each names the data and its first bad sample, before any conversion.
    # The set is read here once; every conversion below takes it as read.
    calib = stream_data(calib, input_shape=shape, name="calibration data")
    evaluation = None
    if data is not None:
        evaluation = stream_data(
            data,
            input_shape=shape,
            name="--data",
            require_labels=fix,
            num_classes=_num_classes(keras_model),
        )

    rows = layer_errors(keras_model, calib, calib_samples=calib_samples)
    worst = sorted(rows, key=lambda r: r["sqnr_db"])
    report = {"model": label, "calib_samples": calib_samples, "layers": rows, "worst": worst}
    if explorer is not None:
        from tfedge.converters import convert

        int8 = convert(keras_model, calib=calib, calib_samples=calib_samples)
        _write_json(explorer, explorer_node_data(rows, int8))
    if fix:
        report.update(_fix(keras_model, calib, evaluation, worst, calib_samples, runs, output))
    if json_path is not None:
        _write_json(json_path, report)
    return report


def explorer_node_data(rows: Sequence[dict], int8_model) -> dict:
    """Per-operator SQNR (dB) as Model Explorer node data for ``tfedge convert``'s int8 model.

    The format is Model Explorer's ``GraphNodeData`` (what ai-edge-quantizer's validation writes):
    ``{"name", "results": {output tensor name: {"value"}}, "thresholds"}``; Model Explorer matches
    each key with a node's output tensor. The analysis runs on the debugger's own conversion, so
    its rows are matched to ``int8_model``'s operators in graph order by operator type (the
    converter is the same; tfedge only shortens tensor names). Red is under 10 dB.

    Args:
        rows: the ``layers`` records of :func:`analyze`.
        int8_model: the int8 ``.tflite`` (path or bytes) the overlay is for.

    Example:
        >>> data = explorer_node_data(report["layers"], "model_int8.tflite")  # doctest: +SKIP
        >>> data["results"]["sequential/dense/MatMul_1"]  # doctest: +SKIP
        {'value': -3.1}
    """
    from tfedge.converters.tensor_names import in_graph_order
    from tfedge.core.inspector import inspect_model

    operators = inspect_model(int8_model, detail=True)
    names = {(t["subgraph"], t["index"]): t["name"] for t in operators["tensors"]}
    ops = [op for op in operators["operators"] if op["subgraph"] == 0]
    results = {}
    for row, index in zip(rows, in_graph_order([row["op"] for row in rows], ops), strict=True):
        for tensor in ops[index]["outputs"] if index is not None else ():
            results[names[(0, tensor)]] = {"value": row["sqnr_db"]}
    return {"name": "int8 SQNR (dB)", "results": results, "thresholds": _THRESHOLDS}


def _num_classes(keras_model) -> int | None:
    """The model's output width (its class count), None when it is not known."""
    outputs = getattr(keras_model, "outputs", None) or []
    if not outputs:
        return None
    width = tuple(outputs[0].shape)[-1:]
    return int(width[0]) if width and width[0] is not None else None


def _worst_layers(worst: Sequence[dict], count: int, known: set) -> list[str]:
    names = []
    for row in worst:
        if row["op"] in _NO_ERROR_OPS or row["name"] not in known or row["name"] in names:
            continue
        names.append(row["name"])
        if len(names) == count:
            break
    return names


def _layers_with_operators(keras_model, float_blob) -> list[str]:
    from tfedge.converters.tensor_names import LayerMatcher

    found = LayerMatcher.of(keras_model).operators(float_blob)
    return [name for name, ops in found.items() if ops]


def _candidates(keras_model, worst, float_blob) -> list[tuple[str, list, dict]]:
    from tfedge.converters.mixed_precision import with_readers
    from tfedge.converters.tensor_names import LayerMatcher

    matcher = LayerMatcher.of(keras_model)
    with_operators = {name for name, ops in matcher.operators(float_blob).items() if ops}
    found = [("int8", [], {})]
    int16, float_ = [], []
    for count in WORST_K:
        layers = _worst_layers(worst, count, set(matcher.layers))
        if not layers or any(layers == seen for _, seen, _ in int16):
            continue
        int16.append((f"int16:{','.join(layers)}", layers, {"int16": layers}))
        keep = with_readers(float_blob, layers, matcher)
        if set(keep) >= with_operators:
            continue  # every layer float is the float32 model, measured already
        if not any(keep == seen for _, seen, _ in float_):
            float_.append((f"keep_float:{','.join(keep)}", keep, {"keep_float": keep}))
    return found + int16 + float_ + [("int16x8", [], {"mode": "int16x8"})]


def _fix(keras_model, calib, evaluation, worst, calib_samples, runs, output) -> dict:
    from tfedge.core.inspector import inspect_model

    float_blob = convert(keras_model, mode="float32")
    candidates = _candidates(keras_model, worst, float_blob)
    fixes, blobs = [], {}
    with tempfile.TemporaryDirectory(prefix="tfedge-analyze-") as tmp:
        from tfedge.devices.arrays import to_arrays

        arrays = to_arrays(evaluation, tmp)  # a large set streams through LiteRT from disk

        def measure(name, blob):
            path = Path(tmp) / "candidate.tflite"
            write_atomically(path, blob)
            ((kind, row),) = list(bench_models([str(path)], data=arrays, warmup=5, runs=runs))
            if kind != "result":
                raise TfedgeError(
                    f"{name}: LiteRT cannot run it: {row['message']}", row.get("hint")
                )
            return row

        def candidate(options):
            """The candidate's bytes and what its int16 / keep_float selection covered."""
            path = Path(tmp) / "converted.tflite"
            result = convert_file(
                keras_model, path, calib=calib, calib_samples=calib_samples, **options
            )
            return result.blob, result.selected

        float_row = measure("float32", float_blob)
        float_accuracy = float_row["accuracy"]
        for name, layers, options in progress(candidates, desc="trying fixes", unit="fix"):
            record = {"fix": name, "layers": layers}
            try:
                try:
                    blob, selected = candidate(options)
                except TfedgeError:
                    if name != "int16x8":
                        raise
                    # TF's int16x8 stops at some operators (Keras 3's NEG): every layer int16
                    # through ai-edge-quantizer is the same precision, and keeps int8 I/O.
                    layers = _layers_with_operators(keras_model, float_blob)
                    record.update(layers=layers, via="ai-edge-quantizer (--int16 every layer)")
                    blob, selected = candidate({"int16": layers})
                if selected:
                    record["selected"] = selected
                row = measure(name, blob)
            except TfedgeError as exc:
                record["error"] = exc.message
                fixes.append(record)
                continue
            info = inspect_model(blob)
            accuracy = row["accuracy"]
            record.update(
                {
                    "accuracy": accuracy,
                    "size_bytes": len(blob),
                    "size_gzip_bytes": row.get("size_gzip_bytes"),
                    "p50_ms": row["latency_ms"]["p50"],
                    "fully_integer": bool(info["fully_integer"]),
                    "edgetpu_compatible": bool((info.get("edgetpu") or {}).get("compatible")),
                    "keeps_accuracy": accuracy >= float_accuracy - TOLERANCE - 1e-9,
                }
            )
            fixes.append(record)
            blobs[name] = blob
    chosen, verdict = _choose(fixes, float_accuracy)
    if chosen is not None:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(out, blobs[chosen])
    return {"float_accuracy": float_accuracy, "fixes": fixes, "chosen": chosen, "verdict": verdict}


def _choose(fixes, float_accuracy) -> tuple[str | None, str]:
    measured = [f for f in fixes if "accuracy" in f]
    if not measured:
        return None, "no candidate could be converted and run"
    target = f"within 1 point of float ({float_accuracy * 100:.2f} %)"
    keeping = [f for f in measured if f["keeps_accuracy"]]
    integer = [f for f in keeping if f["fully_integer"]]
    if integer:
        best = integer[0]
        tail = "" if best["edgetpu_compatible"] else "; it does not run on the EdgeTPU"
        if best["fix"] == "int8":
            return "int8", f"plain int8 already keeps the accuracy ({target}): no fix needed"
        return best["fix"], (
            f"{best['fix']} keeps the accuracy ({best['accuracy'] * 100:.2f} %, {target}) "
            f"and the model fully integer{tail}"
        )
    if keeping:
        best = keeping[0]
        return best["fix"], (
            f"no fully-integer fix keeps the accuracy; {best['fix']} does "
            f"({best['accuracy'] * 100:.2f} %, {target}) but breaks full int8"
            + ("" if best["edgetpu_compatible"] else " and the EdgeTPU")
        )
    best = max(measured, key=lambda f: f["accuracy"])
    return best["fix"], (
        f"no fix keeps the accuracy {target}; the most accurate is {best['fix']} "
        f"({best['accuracy'] * 100:.2f} %)"
        + ("" if best["fully_integer"] else ", which breaks full int8")
    )


def _write_json(path, payload) -> None:
    write_atomically(path, json.dumps(payload, indent=2) + "\n")
