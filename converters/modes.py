"""The convert modes as one table: what each one asks of TensorFlow's TFLite converter.

:func:`tfedge.converters.convert` reads :data:`TABLE` and nothing else about a mode, so a new
mode is one :class:`Mode` entry here (the recipe schema in ``models/recipe.py`` keeps its own
copy of the names, since ``models/`` may not import ``converters/``; a test keeps them equal).

Example:
    >>> from tfedge.converters.modes import mode_of
    >>> mode_of("int8").calibration, mode_of("float16").supported_types
    (True, ('float16',))
"""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
from dataclasses import dataclass

from tfedge.core.errors import ConversionError

__all__ = ["Mode", "TABLE", "MODES", "IO_TYPES", "INTEGER_MODES", "mode_of"]

IO_TYPES = ("int8", "uint8", "float32")

_FLOAT_IO = (
    "input/output type {io} needs an integer model, but mode {mode} keeps float activations",
    "use mode int8 for int8/uint8 I/O",
)


@dataclass(frozen=True)
class Mode:
    """One convert mode, as data.

    Attributes:
        name: the mode's name (``--mode``).
        optimize: set ``converter.optimizations = [tf.lite.Optimize.DEFAULT]``.
        supported_types: ``converter.target_spec.supported_types``, as ``tf`` dtype names
            (empty: left as the converter has it).
        supported_ops: ``converter.target_spec.supported_ops``, as ``tf.lite.OpsSet`` names
            (empty: left as the converter has it).
        keep_float_ops: the operator sets when ``keep_float`` names layers (empty: as
            ``supported_ops``).
        io_types: the input/output types the mode accepts; the first is its default. Empty:
            the mode keeps float I/O and the converter's own types (``float32``).
        set_io_type: set ``converter.inference_input_type`` / ``inference_output_type`` to the
            I/O type (the integer I/O of a fully integer model).
        calibration: the mode needs calibration data (it quantizes activations); such a mode
            is also unrolled, refuses loops, integerizes float islands and retries a Keras 3
            model as tf_keras.
        fully_integer: the result is checked to have no float operator and static shapes.
        io_refusal: the message and hint when an I/O type outside ``io_types`` is asked for
            (``{io}`` and ``{mode}`` are filled in).
    """

    name: str
    optimize: bool = True
    supported_types: tuple[str, ...] = ()
    supported_ops: tuple[str, ...] = ()
    keep_float_ops: tuple[str, ...] = ()
    io_types: tuple[str, ...] = ()
    set_io_type: bool = False
    calibration: bool = False
    fully_integer: bool = False
    io_refusal: tuple[str, str] = _FLOAT_IO

    def resolve_io(self, io: str | None) -> str | None:
        """The I/O type this mode converts with, for the one asked (None: the default).

        Raises:
            ConversionError: an I/O type the mode cannot give, with its own wording.
        """
        if io is not None and io not in IO_TYPES:
            raise ConversionError(
                f"unknown input/output type {io!r}; expected one of {', '.join(IO_TYPES)}",
                option="io",
            )
        allowed = self.io_types or ("float32",)
        if io not in (None, *allowed):
            message, hint = self.io_refusal
            raise ConversionError(
                message.format(io=io, mode=self.name), hint.format(io=io, mode=self.name), "io"
            )
        return (io or self.io_types[0]) if self.io_types else io

    def configure(self, converter, io: str | None = None, keep_float=()) -> None:
        """Set a ``tf.lite.TFLiteConverter``'s optimizations, operator sets and I/O types.

        Args:
            converter: the converter to set up (its representative dataset is the caller's).
            io: the I/O type (:meth:`resolve_io`'s answer), for a mode that sets it.
            keep_float: layer names left float: the mode's ``keep_float_ops`` then apply.

        Example:
            >>> mode_of("int8").configure(converter, "int8")  # doctest: +SKIP
        """
        # TensorFlow is imported on first use: importing tfedge (and this table) must not.
        from tfedge.core.backend import tf

        if self.optimize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if self.supported_types:
            converter.target_spec.supported_types = [getattr(tf, t) for t in self.supported_types]
        ops = (keep_float and self.keep_float_ops) or self.supported_ops
        if ops:
            converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, name) for name in ops]
        if self.set_io_type:
            converter.inference_input_type = getattr(tf, io)
            converter.inference_output_type = getattr(tf, io)


TABLE = (
    Mode(
        "int8",
        supported_ops=("TFLITE_BUILTINS_INT8",),
        keep_float_ops=("TFLITE_BUILTINS_INT8", "TFLITE_BUILTINS"),
        io_types=("int8", "uint8", "float32"),
        set_io_type=True,
        calibration=True,
        fully_integer=True,
    ),
    Mode(
        "int16x8",
        supported_ops=("EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8",),
        io_types=("float32",),
        calibration=True,
        io_refusal=(
            "input/output type {io} does not fit mode int16x8, whose input and output are "
            "int16 or float32",
            "leave the input/output type out (float32 I/O) or use mode int8",
        ),
    ),
    Mode("float16", supported_types=("float16",)),
    Mode("dynamic"),
    Mode("float32", optimize=False),
)

MODES = tuple(mode.name for mode in TABLE)
INTEGER_MODES = tuple(mode.name for mode in TABLE if mode.calibration)


def mode_of(name: str) -> Mode:
    """The :class:`Mode` called ``name``.

    Raises:
        ConversionError: an unknown name, listing the known ones.

    Example:
        >>> mode_of("dynamic").optimize
        True
    """
    for mode in TABLE:
        if mode.name == name:
            return mode
    raise ConversionError(
        f"unknown mode {name!r}; expected one of {', '.join(MODES)}",
        "int8 is fully integer (the default); dynamic and float16 keep float activations",
    )
