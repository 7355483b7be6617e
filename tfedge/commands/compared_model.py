"""One ``.tflite`` model in the LiteRT interpreter for ``tfedge compare``: fed float samples, read back as float.

Example:
    >>> model = ComparedModel(Path("model_int8.tflite"), "A", preserve=False)  # doctest: +SKIP
    >>> model.feed(sample); model.value(model.outputs[0]).shape  # doctest: +SKIP
    (10,)
"""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
from pathlib import Path

import numpy as np

from tfedge.core.errors import InputFileError, first_line

__all__ = ["ComparedModel", "LOAD_HINT", "numeric", "type_name", "quant_step"]

LOAD_HINT = "check the file with `tfedge inspect`; it may be cut short or need a newer LiteRT"


CUSTOM_HINT = (
    "compare runs models on LiteRT's own kernels; run this one in the framework that registers "
    "its custom operators (e.g. MediaPipe)"
)


class ComparedModel:
    """One ``.tflite`` model in the LiteRT interpreter, fed float samples, read back as float.

    A stateful model (``state`` names its variables) gets a fresh interpreter before every
    sample but the first: LiteRT's ``reset_all_variables()`` does not reset resource variables.
    """

    def __init__(self, path: Path, label: str, preserve: bool, state=(), custom=()):
        from ai_edge_litert.interpreter import OpResolverType

        self.path, self.label, self.state, self.fresh = path, label, list(state), True
        self.options = {}
        if preserve:
            # The default XNNPACK delegate runs fused subgraphs whose inner tensors are never
            # written; the built-in kernels keep every tensor.
            self.options = {
                "experimental_preserve_all_tensors": True,
                "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            }
        try:
            self._load()
            # inside the try: a damaged tensor name fails here (UnicodeDecodeError)
            self.inputs = self.interpreter.get_input_details()
            self.outputs = self.interpreter.get_output_details()
        except Exception as exc:
            if custom:
                raise InputFileError(
                    f"model {label} ({path}) uses custom operators LiteRT has no kernel for "
                    f"({', '.join(custom)}): {first_line(exc, 200)}",
                    CUSTOM_HINT,
                ) from None
            raise InputFileError(
                f"model {label} ({path}) does not load in LiteRT: {first_line(exc, 200)}",
                LOAD_HINT,
            ) from None
        if len(self.inputs) != 1:
            raise InputFileError(
                f"model {label} ({path}) has {len(self.inputs)} inputs; compare feeds "
                "single-input models",
                "export a single-input model",
            )
        self.input = self.inputs[0]
        if not numeric(self.input):
            raise InputFileError(
                f"model {label} ({path}) takes {type_name(self.input)} input "
                f"({self.input['name']}); compare feeds numbers",
                "compare models whose input is a numeric tensor",
            )
        self.batch = int(self.input["shape"][0]) if len(self.input["shape"]) else 1

    def _load(self) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(self.path), **self.options)
        self.interpreter.allocate_tensors()

    def feed(self, sample: np.ndarray) -> None:
        if self.state and not self.fresh:
            self._load()  # the same file loaded before: same tensor indices
        self.fresh = False
        detail = self.input
        shape = tuple(int(d) for d in detail["shape"])
        x = np.asarray(sample, dtype=np.float64).reshape((1, *shape[1:]))
        if self.batch > 1:
            x = np.concatenate([x, np.zeros((self.batch - 1, *shape[1:]))])
        dtype = np.dtype(detail["dtype"])
        if dtype.kind in "iu":
            scale, zero_point = detail["quantization"]
            if scale:
                x = np.round(x / scale) + zero_point
            info = np.iinfo(dtype)
            x = np.clip(x, info.min, info.max)
        try:
            self.interpreter.set_tensor(detail["index"], x.astype(dtype))
            self.interpreter.invoke()
        except Exception as exc:  # a damaged model that loads but cannot run
            raise InputFileError(
                f"model {self.label} ({self.path}) fails to run in LiteRT: {first_line(exc, 200)}",
                LOAD_HINT,
            ) from None

    def value(self, detail: dict) -> np.ndarray:
        """The first sample of a tensor as float64, dequantized with its scale and zero point."""
        raw = self.interpreter.get_tensor(detail["index"])
        values = np.asarray(raw)[:1].astype(np.float64) if raw.ndim else raw.astype(np.float64)
        scale, zero_point = detail.get("quantization", (0.0, 0))
        if scale and np.dtype(detail["dtype"]).kind in "iu":
            values = (values - zero_point) * scale
        return values.reshape(-1)

    def input_range(self) -> tuple[float, float] | None:
        dtype = np.dtype(self.input["dtype"])
        scale, zero_point = self.input["quantization"]
        if dtype.kind not in "iu" or not scale:
            return None
        info = np.iinfo(dtype)
        return (info.min - zero_point) * scale, (info.max - zero_point) * scale


def numeric(detail: dict) -> bool:
    """Whether a tensor holds numbers to compare (not strings, not resource handles).

    Example:
        >>> import numpy as np
        >>> numeric({"dtype": np.int8}), numeric({"dtype": np.object_})
        (True, False)
    """
    return np.dtype(detail["dtype"]).kind in "biuf"


def type_name(detail: dict) -> str:
    """A tensor's element type for a message: ``string``, ``resource`` or the numpy name.

    Example:
        >>> import numpy as np
        >>> type_name({"dtype": np.bytes_}), type_name({"dtype": np.int8})
        ('string', 'int8')
    """
    dtype = np.dtype(detail["dtype"])
    return {"S": "string", "U": "string", "O": "resource"}.get(dtype.kind, dtype.name)


def quant_step(detail: dict) -> float:
    """One quantization step of an integer tensor (its scale); 0.0 for a float tensor.

    Example:
        >>> import numpy as np
        >>> quant_step({"dtype": np.int8, "quantization": (0.5, 3)})
        0.5
    """
    scale, _ = detail.get("quantization", (0.0, 0))
    return float(scale) if scale and np.dtype(detail["dtype"]).kind in "iu" else 0.0
