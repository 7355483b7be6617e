"""The one place where tfedge imports TensorFlow and Keras.

Every other module takes ``tf``, ``keras`` (Keras 2, the ``tf_keras`` package that tfmot needs) and
``keras3`` (TensorFlow 2.21's own ``tf.keras``, used only to read Keras 3 files) from here.
Importing this module keeps TensorFlow's C++ and Python log noise off the terminal.

Example:
    >>> from tfedge.core.backend import keras, tf
    >>> model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
"""

import logging
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
# Take GPU memory as needed, not all of it at start: the search's fine-tunes run in a second
# TensorFlow process beside this one.
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")

from tfedge.core.console import quiet  # noqa: E402

# TensorFlow's C++ side logs (oneDNN, CUDA probing) before absl is set up, whatever the env says.
with quiet():
    import absl.logging
    import keras as keras3
    import tensorflow as tf
    import tf_keras as keras

absl.logging.set_verbosity(absl.logging.ERROR)


def _split_cpu(count: int) -> None:
    """Expose the CPU as ``count`` logical devices (must run before TensorFlow initializes them)."""
    cpus = tf.config.list_physical_devices("CPU")
    if cpus and count > 1:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )


# TFEDGE_LOGICAL_CPUS=2 lets MirroredStrategy spread fine-tuning over 2 CPU replicas (tests, demos).
if os.environ.get("TFEDGE_LOGICAL_CPUS", "").isdigit():
    _split_cpu(int(os.environ["TFEDGE_LOGICAL_CPUS"]))

tf.get_logger().setLevel(logging.ERROR)
tf.autograph.set_verbosity(0)

__all__ = [
    "tf",
    "keras",
    "keras3",
    "tfmot",
    "is_keras3_model",
    "is_keras2_model",
    "keras2_safe_mode",
]


def tfmot():
    """Return the ``tensorflow_model_optimization`` module (imported on first use; it is slow)."""
    import tensorflow_model_optimization

    return tensorflow_model_optimization


def keras2_safe_mode(safe: bool = True):
    """A context in which tf_keras refuses to rebuild a ``Lambda`` holding Python bytecode.

    tf_keras applies its ``safe_mode`` only to the ``.keras`` format; an ``.h5`` file or a Keras 2
    SavedModel with a ``lambda`` in a Lambda layer runs that code when the model is rebuilt.
    Keras 2 has no public switch for those formats, so this is tfedge's one use of tf_keras's
    private ``SafeModeScope`` (``tests/test_loading_safety.py`` fails on an upgrade that moves it).

    Example:
        >>> with keras2_safe_mode():  # doctest: +SKIP
        ...     keras.models.load_model("model.h5")
    """
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    return SafeModeScope(safe)


def is_keras3_model(model) -> bool:
    """True when ``model`` is a Keras 3 (``keras`` / ``tf.keras`` in TF 2.21) model."""
    return isinstance(model, keras3.Model)


def is_keras2_model(model) -> bool:
    """True when ``model`` is a Keras 2 (``tf_keras``) model."""
    return isinstance(model, keras.Model)
