"""Keras / SavedModel to ``.tflite``: fully-int8 by default, or int16x8, float16, dynamic, float32.

``int8`` means fully integer: int8 weights and activations, int8 (or uint8) input and output, batch
fixed to 1 so every shape is static, and no float operator left. When that cannot be done the
conversion fails and names the operators in the way.

Example:
    >>> from tfedge.converters import convert
    >>> blob = convert("digits.keras", calib="digits.npz")  # doctest: +SKIP
    >>> open("digits_int8.tflite", "wb").write(blob)  # doctest: +SKIP
"""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfedge.converters.conversion_checks import _check, _conversion_error
from tfedge.converters.keep_float import _convert_keeping_float
from tfedge.converters.modes import INTEGER_MODES, IO_TYPES, MODES, mode_of
from tfedge.converters.tracing import (
    _concrete_function,
    _input_specs,
    _refuse_loops,
    _resolve,
    _unrolled,
    input_shape_of,
)
from tfedge.core.console import progress, quiet
from tfedge.core.errors import ConversionError, TfedgeError
from tfedge.core.files import write_atomically
from tfedge.core.streams import calibration_samples, stream_data

__all__ = [
    "MODES",
    "IO_TYPES",
    "DEFAULT_CALIB_SAMPLES",
    "Conversion",
    "convert",
    "convert_file",
    "input_shape_of",
]

DEFAULT_CALIB_SAMPLES = 300


@dataclass
class Conversion:
    """What :func:`convert_file` did: the model written, its inspection, and the target's steps.

    Attributes:
        blob: the ``.tflite`` bytes.
        mode: the conversion mode used (a target may fix it).
        info: :func:`tfedge.core.inspector.inspect_model` of ``blob`` (EdgeTPU mapping included).
        target: the :class:`~tfedge.converters.targets.Target` profile, or None.
        path: where the model was written (None before it is).
        compiled: :func:`~tfedge.converters.edgetpu_compiler.compile_model`'s result when the
            target compiles and the compiler ran.
        compile_skipped: why a target's compilation was skipped (the compiler is not
            installed), with how to install it; None otherwise.
        selected: what ``int16=`` / ``keep_float=`` selected, one dict per layer: ``option``
            (``int16`` or ``keep_float``), ``layer``, ``operators`` (their count), ``ops``
            (their types) and, for int16, ``readers`` (the operators that read the layer's
            output and run int16 too) and ``reader_layers``;
            :func:`~tfedge.converters.tensor_names.format_selection` words it.
    """

    blob: bytes
    mode: str
    info: dict
    target: object = None
    path: Path | None = None
    compiled: dict | None = None
    compile_skipped: str | None = None
    selected: list[dict] = field(default_factory=list)


def convert(
    model,
    *,
    mode: str = "int8",
    calib=None,
    io: str | None = None,
    calib_samples: int = DEFAULT_CALIB_SAMPLES,
    keep_float: Sequence[str] = (),
    int16: Sequence[str] = (),
    weights: str = "int8",
    input_shape: Sequence[int] | None = None,
    labels=None,
    mean=None,
    std=None,
    target=None,
) -> bytes:
    """Convert a Keras model (2 or 3), a model file or a SavedModel to TFLite.

    Keras 3 models are converted directly. When that cannot give a fully integer model (Keras 3
    writes some layers with operators TFLite has no int8 kernel for, e.g. the NEG of its
    LayerNormalization), the model is rebuilt as tf_keras (same layers, same weights, outputs
    checked) and converted again; the first error stands if that fails too.

    Args:
        model: a Keras model, a :class:`~tfedge.core.loading.LoadedModel`, or a path to a ``.keras`` /
            ``.h5`` file or a SavedModel directory.
        mode: ``int8`` (fully integer, the default), ``int16x8`` (int16 activations, int8 weights),
            ``float16`` (float16 weights), ``dynamic`` (int8 weights, float activations) or
            ``float32``.
        calib: calibration data for the integer modes, in any form :func:`tfedge.core.streams.stream_data`
            accepts. A set read already (the :class:`~tfedge.core.data.Dataset` or
            :class:`~tfedge.core.streams.DataStream` that ``stream_data`` returns) is used as
            it is, so a caller that converts many times reads its data once.
        io: input/output type: ``int8`` (default for int8), ``uint8`` or ``float32``.
        calib_samples: how many calibration samples to use (a seeded random choice).
        keep_float: layer names to leave in float (the model is then not fully integer).
        int16: layer names for int16 activations in an otherwise int8 model (the layer and the
            operators that read its output run int16x8; int8 I/O, still fully integer): see
            :mod:`tfedge.converters.mixed_precision`. TFLite's converter has no per-layer int16,
            so this goes through ai-edge-quantizer.
        weights: ``int8`` (default) or ``int4`` (channel-wise, through ai-edge-quantizer; int8
            activations); an operator LiteRT has no int4 kernel for is named in the error.
        input_shape: the input shape without batch, for models whose non-batch dims are unknown.
        labels: a labels file or list: embeds TFLite metadata (labels, input normalization).
        mean: the metadata's input normalization mean (one value or one per channel): the app
            feeds ``(pixel - mean) / std``. Inferred from the calibration data's range when not
            given: [0, 1] data means pixels / 255, [-1, 1] means (pixels - 127.5) / 127.5.
        std: the normalization's standard deviation (see ``mean``).
        target: a target profile name or file (e.g. ``edgetpu``) that fixes mode/io and checks.

    Returns:
        The ``.tflite`` flatbuffer bytes.

    Raises:
        ConversionError: unknown mode, missing calibration data, or an operator that cannot be
            converted as asked (named in the message).

    Example:
        >>> blob = convert(keras_model, calib=(x_train, y_train))  # doctest: +SKIP
    """
    options = dict(
        mode=mode,
        calib=calib,
        io=io,
        calib_samples=calib_samples,
        keep_float=keep_float,
        int16=int16,
        weights=weights,
        input_shape=input_shape,
        labels=labels,
        mean=mean,
        std=std,
        target=target,
    )
    return _conversion(model, options).blob


def convert_file(model, output, **options) -> Conversion:
    """Convert, write ``output`` (atomically), and compile it when the target says so.

    This is ``tfedge convert``: it takes :func:`convert`'s keyword arguments, inspects the model
    once, and for a target with ``compile: true`` (``edgetpu``) runs ``edgetpu_compiler`` next
    to ``output`` when it is installed (else ``compile_skipped`` says how to install it and
    the uncompiled model is kept).

    Example:
        >>> result = convert_file("model.keras", "model.tflite", calib="train.npz")  # doctest: +SKIP
        >>> result.info["fully_integer"], result.path  # doctest: +SKIP
        (True, PosixPath('model.tflite'))
    """
    result = _conversion(model, _with_defaults(options))
    path = write_atomically(output, result.blob)
    result.path = path
    if result.target is not None and result.target.compile:
        from tfedge.converters.edgetpu_compiler import CompilerNotFoundError, compile_model

        try:
            result.compiled = compile_model(path, path.parent)
        except CompilerNotFoundError as exc:
            result.compile_skipped = f"{exc.message}; kept the uncompiled model {path}" + (
                f"\n{exc.hint}" if exc.hint else ""
            )
    return result


def _with_defaults(options: dict) -> dict:
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(convert).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"convert_file() got unexpected keyword arguments {unknown}")
    return {**defaults, **options}


def _conversion(model, options: dict) -> Conversion:
    """Convert with :func:`convert`'s ``options``; a Keras 3 model that fails is retried as tf_keras."""
    options = dict(options)
    int16, weights = options.pop("int16"), options.pop("weights")
    if int16 or weights != "int8":
        import tfedge.converters.mixed_precision as mixed
        from tfedge.converters.tensor_names import LayerMatcher
        from tfedge.core.inspector import inspect_model

        mixed.check_mixed_options(
            *(options[k] for k in ("mode", "keep_float", "labels", "target", "calib"))
        )
        resolved = _resolve(model)
        matcher = LayerMatcher.of(resolved)
        float_blob = convert(resolved, mode="float32", input_shape=options["input_shape"])
        selected = [
            {
                "option": "int16",
                "layer": layer,
                "operators": len(entry["operators"]),
                "ops": entry["ops"],
                "readers": len(entry["readers"]),
                "reader_ops": entry["reader_ops"],
                "reader_layers": entry["reader_layers"],
            }
            for layer, entry in mixed.int16_selection(float_blob, int16, matcher).items()
        ]
        blob = mixed.quantize_mixed(
            float_blob,
            options["calib"],
            int16=int16,
            weights=weights,
            matcher=matcher,
            calib_samples=options["calib_samples"],
        )
        return Conversion(blob=blob, mode="int8", info=inspect_model(blob), selected=selected)
    if options.get("target") is not None:
        from tfedge.converters.targets import load_target

        options["target"] = load_target(options["target"])  # loaded once, for both tries
    mode = options["mode"]
    try:
        return _convert(model, **options)
    except ConversionError as first:
        if mode not in INTEGER_MODES or first.option == "keep_float":
            raise  # a --keep-float name that is no layer is one on the rebuild too
        # Some Keras 3 layers (LayerNormalization's NEG, for one) only quantize fully from their
        # tf_keras twin: retry with the rebuild when there is one.
        from tfedge.core.backend import is_keras3_model
        from tfedge.models.rebuild import to_keras2

        resolved = _resolve(model)
        if not is_keras3_model(resolved):
            raise
        try:
            return _convert(to_keras2(resolved), **options)
        except (TfedgeError, ValueError, TypeError):
            raise first from None


def _convert(
    model,
    *,
    mode: str = "int8",
    calib=None,
    io: str | None = None,
    calib_samples: int = DEFAULT_CALIB_SAMPLES,
    keep_float: Sequence[str] = (),
    input_shape: Sequence[int] | None = None,
    labels=None,
    mean=None,
    std=None,
    target=None,
) -> Conversion:
    """Convert once (see :func:`convert` for the arguments)."""
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from tfedge.core.loading import detect_format

        detect_format(model)  # a bad model file is reported before any other option
    profile = None
    if target is not None:
        from tfedge.converters.targets import load_target

        profile = load_target(target)
        mode, io = profile.resolve(mode, io)
    spec = mode_of(mode)
    io = spec.resolve_io(io)
    if spec.calibration and calib is None:
        raise ConversionError(
            f"mode {mode} needs calibration data to choose activation ranges",
            "give a few hundred representative inputs (.npz or an image folder) as the "
            "calibration data",
            option="calib",
        )

    from tfedge.core.backend import tf

    keras_model = _resolve(model)
    specs = _input_specs(keras_model, input_shape)
    if spec.calibration:
        keras_model = _unrolled(keras_model)
    concrete = _concrete_function(keras_model, specs)
    if spec.calibration:
        _refuse_loops(concrete, mode)

    # No trackable object: with a Keras 3 model it leaves READ_VARIABLE ops behind; without it the
    # converter freezes the variables the function captured (``keras_model`` keeps them alive).
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
    spec.configure(converter, io, keep_float)
    representative = None
    guess_normalization = labels is not None and mean is None and std is None
    if calib is not None and (spec.calibration or guess_normalization):
        # Read once (a path is parsed here; a set read already passes through) for the
        # calibration and the normalization guess alike.
        calib = stream_data(calib, input_shape=tuple(specs[0].shape[1:]), name="calibration data")
    if spec.calibration:
        data = calibration_samples(calib, calib_samples, input_shape=tuple(specs[0].shape[1:]))
        if len(specs) != 1:
            raise ConversionError(
                f"the model has {len(specs)} inputs; calibration data feeds single-input models",
                "convert a single-input model, or call tfedge.converters.convert from Python",
            )

        def representative():
            for sample in progress(data.x, desc="calibrating", unit="sample", total=len(data)):
                yield [sample[np.newaxis].astype(np.float32)]

        converter.representative_dataset = representative

    failure = None
    selected = []
    with quiet() as log:
        try:
            if keep_float:
                from tfedge.converters.tensor_names import LayerMatcher

                matcher = LayerMatcher.of(keras_model)
                blob, selected = _convert_keeping_float(
                    converter, representative, keep_float, matcher
                )
            else:
                blob = converter.convert()
        except TfedgeError:
            raise
        except Exception as exc:
            failure = exc
    if failure is not None:  # raised here: the converter's log is in log.text once quiet() ends
        raise _conversion_error(failure, log.text, mode) from failure
    from tfedge.converters.bias_scales import rescale_biases
    from tfedge.converters.flatbuffer import rewrite
    from tfedge.converters.float_islands import integerize_islands
    from tfedge.converters.tensor_names import shorten_names

    passes = [rescale_biases, shorten_names]
    if spec.calibration and not keep_float:
        passes.insert(0, integerize_islands)
    blob = rewrite(blob, *passes)
    if labels is not None:
        from tfedge.converters.metadata import add_metadata, read_labels_file

        names = read_labels_file(labels) if not isinstance(labels, (list, tuple)) else list(labels)
        if guess_normalization and calib is not None:
            mean, std = _normalization_from(calib)
        blob = add_metadata(
            blob, names, name=getattr(keras_model, "name", None), input_mean=mean, input_std=std
        )
    from tfedge.core.inspector import inspect_model

    info = inspect_model(blob)
    _check(info, spec, io, keep_float)
    if profile is not None:
        profile.check(blob, info)
    return Conversion(blob=blob, mode=mode, info=info, target=profile, selected=selected)


def _normalization_from(data):
    """Guess how raw 0-255 pixels map to the model's input from the calibration data's range."""
    low, high = np.inf, -np.inf
    for x, _ in data.batches():  # the whole set's range, one batch at a time
        low, high = min(low, float(x.min())), max(high, float(x.max()))
    if low >= 0.0 and high <= 1.0:
        return [0.0], [255.0]
    if low >= -1.0 and high <= 1.0:
        return [127.5], [127.5]
    if low >= 0.0 and high <= 255.0:
        return [0.0], [1.0]
    return None, None
