"""Per-operator int8 error against the float model, from TensorFlow's QuantizationDebugger.

The debugger converts the model to int8 with a float twin of every quantized operator fed the same
(dequantized) int8 inputs, so each operator's error is its own, not the sum of the errors before
it. For every operator output we keep the float and int8 values over the calibration samples and
report:

- ``rmse_over_scale``: RMSE of the dequantized int8 output against the float one, in units of the
  output's quantization step. Pure rounding gives about 0.29 (1/sqrt(12)); much more means the
  operator loses more than its output rounding (weights, accumulation, a lookup table).
- ``max_abs_error``: the largest absolute error, in the output's units.
- ``cosine``: mean cosine similarity of the int8 and float outputs, per sample.
- ``sqnr_db``: signal-to-quantization-noise ratio, per output channel (the median over the
  channels that vary), as :class:`tfedge.core.error_stats.ErrorStats` defines it for every
  tfedge report. A layer whose output has one huge channel (an outlier) next to small ones keeps
  a good whole-tensor cosine and rmse/scale, yet its small channels are crushed to a few int8
  steps; the per-channel SQNR is what shows it. Layers are ranked on it.

Example:
    >>> from tfedge.converters.layer_errors import layer_errors
    >>> rows = layer_errors("model.keras", calib="train.npz")  # doctest: +SKIP
    >>> rows[0]["name"], rows[0]["op"], rows[0]["sqnr_db"]  # doctest: +SKIP
    ('conv2d', 'CONV_2D', 38.2)
"""

from __future__ import annotations

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from tfedge.converters.modes import mode_of
from tfedge.converters.tensor_names import LayerMatcher, in_graph_order
from tfedge.converters.tflite import input_shape_of
from tfedge.core.backend import tf
from tfedge.core.console import progress, quiet
from tfedge.core.error_stats import ErrorStats
from tfedge.core.errors import ConversionError, TfedgeError, first_line
from tfedge.core.inspector import inspect_model
from tfedge.core.loading import LoadedModel, load_model
from tfedge.core.streams import calibration_samples

__all__ = ["layer_errors", "DEFAULT_SAMPLES"]

DEFAULT_SAMPLES = 200


def layer_errors(model, calib, *, calib_samples: int = DEFAULT_SAMPLES) -> list[dict]:
    """Measure every int8 operator's own error against its float twin on calibration data.

    Args:
        model: a Keras model (2 or 3), a :class:`~tfedge.core.loading.LoadedModel`, or a path.
        calib: calibration data in any form :func:`tfedge.core.streams.stream_data` accepts.
        calib_samples: how many calibration samples to run (a seeded random choice).

    Returns:
        One dict per quantized operator output, in graph order: ``name`` (Keras layer, matched
        by :class:`~tfedge.converters.tensor_names.LayerMatcher`, else the tensor name), ``tensor`` (the converter's tensor name), ``op``, ``scale``, ``zero_point``,
        ``rmse_over_scale``, ``max_abs_error``, ``cosine``, ``sqnr_db``.

    Raises:
        ConversionError: the model cannot be converted to int8 for the debugger.
        DataError: the calibration data does not fit the model's input.

    Example:
        >>> worst = min(layer_errors(model, calib=x_train), key=lambda r: r["sqnr_db"])  # doctest: +SKIP
    """

    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = load_model(model)
    if isinstance(model, LoadedModel):
        model = model.model
    shape = input_shape_of(model)
    data = calibration_samples(calib, calib_samples, input_shape=shape)
    spec = tf.TensorSpec([1, *shape], tf.float32)

    @tf.function
    def forward(x):
        return model(x, training=False)

    concrete = forward.get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    mode_of("int8").configure(converter, "float32")  # float I/O: the debugger feeds floats

    def samples():
        for x in progress(data.x, desc="calibrating", unit="sample"):
            yield [x[np.newaxis].astype(np.float32)]

    converter.representative_dataset = samples
    failure = None
    with quiet():
        try:
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=samples
            )
            debug_model = debugger.get_debug_quantized_model()
            plain_model = debugger.get_nondebug_quantized_model()
        except TfedgeError:
            raise
        except Exception as exc:
            failure = exc
    if failure is not None:
        raise ConversionError(
            f"the int8 conversion for per-layer analysis failed: {first_line(failure)}",
            "check that `tfedge convert MODEL --calib DATA` works; --debug shows the converter log",
        ) from failure
    pairs, values = _run_debug_model(debug_model, data.x)
    pairs = _original_names(pairs, plain_model)
    matcher = LayerMatcher.of(model)
    result = []
    for (tensor, op, scale, zero_point), errors in zip(pairs, values, strict=True):
        result.append(
            {
                "name": matcher.layer_of(tensor) or tensor,
                "tensor": tensor,
                "op": op,
                "scale": scale,
                "zero_point": zero_point,
                **_metrics(errors, scale),
            }
        )
    return result


def _original_names(pairs, plain_model: bytes):
    """Name each pair after the tensor of the plain int8 model (the debug model renames tensors:
    ``Identity`` becomes ``Identity2``), matched in graph order by operator type."""

    info = inspect_model(plain_model, detail=True)
    names = {t["index"]: t["name"] for t in info["tensors"] if t["subgraph"] == 0}
    ops = [op for op in info["operators"] if op["subgraph"] == 0]
    found = in_graph_order([op for _, op, _, _ in pairs], ops)
    return [
        (name if index is None else names[ops[index]["outputs"][0]], op, scale, zero_point)
        for (name, op, scale, zero_point), index in zip(pairs, found, strict=True)
    ]


def _run_debug_model(debug_model: bytes, x: np.ndarray):
    """Run the debugger's model (every int8 operator beside its float twin, fed the same
    dequantized inputs, compared by a NumericVerify operator) and keep both sides of each pair.

    Read with ``experimental_preserve_all_tensors``: without it the interpreter reuses the float
    twins' memory and a value read after ``invoke`` may belong to a later operator.
    """

    info = inspect_model(debug_model, detail=True)
    tensors = {t["index"]: t for t in info["tensors"] if t["subgraph"] == 0}
    ops = [op for op in info["operators"] if op["subgraph"] == 0]
    producer = {out: op["op"] for op in ops for out in op["outputs"]}
    pairs, indexes = [], []
    for op in ops:
        if op["op"] != "NumericVerify":
            continue
        quant, float_ = op["inputs"][:2]
        params = tensors[quant]["quantization"] or {}
        if not params.get("scale"):
            continue
        name = tensors[quant]["name"]
        pairs.append(
            (
                name,
                producer.get(quant, "?"),
                float(params["scale"][0]),
                int(params["zero_point"][0]),
            )
        )
        indexes.append((float_, quant))
    with quiet():
        interpreter = Interpreter(model_content=debug_model, experimental_preserve_all_tensors=True)
        interpreter.allocate_tensors()
    (detail,) = interpreter.get_input_details()
    kept = [ErrorStats() for _ in indexes]
    for sample in progress(x, desc="int8 vs float, per layer", unit="sample"):
        feed = sample[np.newaxis].astype(np.float32)
        if detail["dtype"] != np.float32:
            scale, zero = detail["quantization"]
            info_ = np.iinfo(detail["dtype"])
            feed = np.clip(np.round(feed / scale + zero), info_.min, info_.max).astype(
                detail["dtype"]
            )
        interpreter.set_tensor(detail["index"], feed)
        interpreter.invoke()
        for (float_, quant), errors, pair in zip(indexes, kept, pairs, strict=True):
            floats = interpreter.get_tensor(float_).astype(np.float64)
            quants = interpreter.get_tensor(quant).astype(np.float64)
            errors.add(floats, (quants - pair[3]) * pair[2])
    return pairs, kept


def _metrics(errors: ErrorStats, scale: float) -> dict:
    """``rmse_over_scale``, ``max_abs_error``, ``cosine`` and per-channel ``sqnr_db``."""
    return {
        "rmse_over_scale": round(errors.rmse / scale, 6) if scale else None,
        "max_abs_error": round(errors.max_abs, 6),
        "cosine": round(errors.cosine, 6),
        "sqnr_db": round(errors.sqnr_db(), 3),
    }
