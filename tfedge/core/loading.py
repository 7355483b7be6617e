"""Load a user's model: a ``.keras`` or ``.h5`` file (Keras 2 or Keras 3) or a SavedModel directory.

The file is checked before TensorFlow sees it, so a missing, truncated or mislabelled file gives a
clear :class:`~tfedge.core.errors.InputFileError` instead of a deep traceback.

Example:
    >>> loaded = load_model("model.keras")  # doctest: +SKIP
    >>> loaded.keras_version, loaded.model.input_shape  # doctest: +SKIP
    (3, (None, 16, 16, 1))
"""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
import importlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py

from tfedge.core.console import quiet
from tfedge.core.errors import InputFileError, missing_file
from tfedge.core.serialization import custom_objects

__all__ = ["LoadedModel", "load_model", "detect_format", "MODEL_HINT"]

MODEL_HINT = "pass a .keras or .h5 file saved by Keras (2 or 3), or a SavedModel directory"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass
class LoadedModel:
    """A loaded model and where it came from.

    Attributes:
        model: the Keras model (``tf_keras`` for Keras 2 files, ``keras`` for Keras 3 files), or the
            object from ``tf.saved_model.load`` for a plain SavedModel.
        path: the file or directory it was read from.
        format: ``"keras"``, ``"h5"`` or ``"savedmodel"``.
        keras_version: 2 or 3 for Keras models, None for a plain SavedModel.
    """

    model: object
    path: str
    format: str
    keras_version: int | None

    @property
    def is_keras(self) -> bool:
        return self.keras_version is not None


def _major(version: str | None) -> int | None:
    if not version:
        return None
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def detect_format(path) -> tuple[str, int | None]:
    """Tell what a model path holds without TensorFlow: its format and the Keras major version.

    Raises:
        InputFileError: when the path is missing, empty, or not a model file.

    Example:
        >>> detect_format("model.keras")  # doctest: +SKIP
        ('keras', 3)
    """
    path = Path(path)
    if not path.exists():
        raise missing_file("model", path, MODEL_HINT)
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            keras_version = 2 if (path / "keras_metadata.pb").is_file() else None
            return "savedmodel", keras_version
        raise InputFileError(
            f"{path} is a directory without saved_model.pb, so it is not a SavedModel", MODEL_HINT
        )
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise InputFileError(f"model file {path} is empty (0 bytes)", MODEL_HINT)
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head[4:8] == b"TFL3" or suffix == ".tflite":
        raise InputFileError(
            f"{path} is a TFLite model; this command needs the Keras model it came from",
            "use `tfedge inspect` or `tfedge bench` for .tflite files, or pass the .keras/.h5 file",
        )
    if suffix == ".keras" or zipfile.is_zipfile(path):
        return "keras", _keras_zip_version(path)
    if suffix in (".h5", ".hdf5") or head == HDF5_SIGNATURE:
        if head != HDF5_SIGNATURE:
            raise InputFileError(
                f"{path} is not an HDF5 file (it does not start with the HDF5 signature)",
                MODEL_HINT,
            )
        return "h5", _h5_version(path)
    raise InputFileError(
        f"cannot tell what {path} holds (suffix {suffix or 'none'!r}); expected .keras, .h5 or a "
        "SavedModel directory",
        MODEL_HINT,
    )


def _keras_zip_version(path: Path) -> int:
    if not zipfile.is_zipfile(path):
        raise InputFileError(
            f"{path} is not a Keras archive: a .keras file is a zip, and this one is not "
            "(a text file renamed, or a truncated download?)",
            MODEL_HINT,
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names:
                raise InputFileError(
                    f"{path} is a zip without config.json, so not a Keras model archive", MODEL_HINT
                )
            bad = archive.testzip()
            if bad is not None:
                raise InputFileError(
                    f"{path} is corrupt: entry {bad!r} fails its CRC check", MODEL_HINT
                )
            metadata = {}
            if "metadata.json" in names:
                metadata = json.loads(archive.read("metadata.json"))
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, EOFError) as exc:
        raise InputFileError(f"{path} is a damaged Keras archive: {exc}", MODEL_HINT) from exc
    return _major(metadata.get("keras_version")) or 3


def _h5_version(path: Path) -> int:

    try:
        with h5py.File(path, "r") as handle:
            if "model_config" not in handle.attrs:
                raise InputFileError(
                    f"{path} is an HDF5 file without a model_config: it holds weights only, not a model",
                    "save the whole model with model.save('model.h5') (or .keras)",
                )
            version = handle.attrs.get("keras_version")
    except InputFileError:
        raise
    except Exception as exc:
        raise InputFileError(f"{path} is a damaged HDF5 file: {exc}", MODEL_HINT) from exc
    if isinstance(version, bytes):
        version = version.decode()
    return _major(version) or 2


def load_model(path, custom_objects: dict | None = None, safe_mode: bool = True) -> LoadedModel:
    """Load a Keras (2 or 3) model file or a SavedModel directory, uncompiled.

    Args:
        path: a ``.keras`` / ``.h5`` file or a SavedModel directory.
        custom_objects: extra classes the model needs (tfedge's own wrappers are always known).
        safe_mode: refuse a ``Lambda`` layer that holds Python code (a ``lambda`` saved as
            bytecode), in every format, as Keras 3 does for ``.keras`` files: loading it would
            run code from the file. Pass False only for a file you trust.

    Returns:
        A :class:`LoadedModel`.

    Raises:
        InputFileError: for a missing, corrupt or unreadable model.

    Example:
        >>> load_model("digits.keras").model.summary()  # doctest: +SKIP
    """
    fmt, keras_version = detect_format(path)
    from tfedge.core.backend import keras, keras2_safe_mode, keras3, tf

    objects = dict(_tfedge_custom_objects())
    objects.update(custom_objects or {})
    path = str(path)
    try:
        with quiet(), keras2_safe_mode(safe_mode):
            if fmt == "savedmodel":
                if keras_version == 2:
                    model = keras.models.load_model(path, custom_objects=objects, compile=False)
                else:
                    model = tf.saved_model.load(path)
            elif keras_version == 3:
                _register_tfedge_layers(path)
                model = keras3.saving.load_model(
                    path, custom_objects=custom_objects, compile=False, safe_mode=safe_mode
                )
            else:
                with _tfmot_scope():
                    model = keras.models.load_model(
                        path, custom_objects=objects, compile=False, safe_mode=safe_mode
                    )
    except InputFileError:
        raise
    except Exception as exc:
        if "deserialization of a" in str(exc) and "lambda" in str(exc):  # Keras 2 and 3 words
            raise InputFileError(
                f"the model {path} has a Lambda layer holding Python code (a saved `lambda`); "
                "tfedge does not run code from model files",
                "rebuild that layer as a custom layer class registered with "
                "keras.saving.register_keras_serializable, or, for a file you trust, load it in "
                "Python with tfedge.core.loading.load_model(path, safe_mode=False)",
            ) from exc
        message = str(exc).strip().splitlines()
        detail = message[0] if message else type(exc).__name__
        raise InputFileError(
            f"cannot load the model {path}: {detail[:300]}",
            "check the file is complete; a model with custom layers needs them registered "
            "(keras.saving.register_keras_serializable) or passed as custom_objects",
        ) from exc
    return LoadedModel(model=model, path=path, format=fmt, keras_version=keras_version)


# The module that defines (and registers with Keras 3 as ``tfedge>...``) the fake-quantized
# layers of a Keras 3 QAT model. It belongs to tfedge.models, above this floor (a lazy import up a
# layer, the one this floor makes): it is imported only for a file whose config holds its layers.
KERAS3_LAYERS_MODULE = "tfedge.models.fake_quant"


def _register_tfedge_layers(path: str) -> None:
    """Import tfedge's Keras 3 layers when the ``.keras`` file at ``path`` uses them."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return  # not a .keras archive (or no config): Keras reports what is wrong
    if b'"tfedge>' in config:
        importlib.import_module(KERAS3_LAYERS_MODULE)


def _tfedge_custom_objects() -> dict:

    return custom_objects()


class _tfmot_scope:
    """tfmot's quantize and cluster scopes, entered only when tfmot's wrappers may be in the file."""

    def __enter__(self):
        self._scopes = []
        from tfedge.core.backend import tfmot

        mot = tfmot()
        scopes = (
            mot.quantization.keras.quantize_scope,
            mot.clustering.keras.cluster_scope,
            mot.sparsity.keras.prune_scope,
        )
        for scope in scopes:
            ctx = scope()
            ctx.__enter__()
            self._scopes.append(ctx)
        return self

    def __exit__(self, *exc):
        for ctx in reversed(self._scopes):
            ctx.__exit__(*exc)
        return False
