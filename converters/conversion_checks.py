"""What a failed or incomplete conversion is told: the operators in the way, float left behind.

Example:
    >>> from tfedge.converters.conversion_checks import _conversion_error
    >>> _conversion_error(RuntimeError("'tf.Erf' op is neither a custom op nor a flex op"), "", "int8").message
    'cannot convert to int8: these operators are in the way: Erf'
"""

import re

from tfedge.converters.modes import Mode
from tfedge.core.errors import ConversionError, first_line

_OP_PATTERNS = (
    r"'(?:tf|tfl)\.(\w+)' op",
    r"op: '?(\w+)'?",
    r"operation '(?:tf|tfl)\.(\w+)'",
    r"Quantization not yet supported for op: '?(\w+)'?",
    r"(\w+) op is neither a custom op nor a flex op",
)


def _conversion_error(exc, log: str, mode: str) -> ConversionError:
    text = f"{exc}\n{log}"
    ops = []
    for pattern in _OP_PATTERNS:
        for name in re.findall(pattern, text):
            if name not in ops and name not in ("is", "the", "a"):
                ops.append(name)
    if ops:
        return ConversionError(
            f"cannot convert to {mode}: these operators are in the way: {', '.join(ops)}",
            "try --mode int16x8 or --mode dynamic, keep those layers float with --keep-float "
            "LAYER, or replace them with TFLite builtin ops",
        )
    return ConversionError(
        f"the TFLite converter failed ({mode}): {first_line(exc, 400)}",
        "run with --debug to see the converter's log",
    )


def _check(info: dict, spec: Mode, io: str, keep_float) -> None:
    """Fail when a fully integer conversion left float operators or dynamic shapes behind."""
    if not spec.fully_integer or keep_float:
        return
    if not info["static_shapes"]:
        raise ConversionError(
            "the int8 model still has dynamic shapes",
            "fix every input dimension (input_shape=...) and avoid shape-dependent ops",
        )
    float_ops = list(info["float_ops"])
    if io == "float32":
        float_ops = [op for op in float_ops if op not in ("QUANTIZE", "DEQUANTIZE")]
    if float_ops:
        raise ConversionError(
            f"the converted model is not fully integer: float operators {', '.join(sorted(set(float_ops)))}",
            "use --mode int16x8 or --mode dynamic, or replace those layers",
        )
