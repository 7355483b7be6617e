"""tfedge.converters: Keras / SavedModel to TFLite (int8, int16x8, float16, dynamic, float32).

Example:
    >>> from tfedge.converters import convert
    >>> blob = convert("model.keras", calib="calib.npz")  # doctest: +SKIP
"""

from tfedge.converters.tflite import (
    DEFAULT_CALIB_SAMPLES,
    IO_TYPES,
    MODES,
    Conversion,
    convert,
    convert_file,
    input_shape_of,
)

__all__ = [
    "convert",
    "convert_file",
    "Conversion",
    "input_shape_of",
    "MODES",
    "IO_TYPES",
    "DEFAULT_CALIB_SAMPLES",
]
