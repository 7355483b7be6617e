"""tfedge.models: Keras compression wrappers (pruning, QAT, clustering, distillation, factorization)."""

from tfedge.core.serialization import custom_objects as tfmot_objects
from tfedge.models.distiller import Distiller
from tfedge.models.fake_quant import QUANT_CLASSES
from tfedge.models.search import SearchResult, auto_optimize, run_search
from tfedge.models.wrapping import callbacks, finalize, requested, step, wrap

__all__ = [
    "custom_objects",
    "run_search",
    "auto_optimize",
    "SearchResult",
    "wrap",
    "callbacks",
    "finalize",
    "step",
    "requested",
]


def custom_objects() -> dict:
    """``{name: class}`` for every custom object in models made by tfedge's stages.

    tfmot's wrappers, quantizers and configs (:func:`tfedge.core.serialization.custom_objects`),
    tfedge's own :class:`~tfedge.models.distiller.Distiller` and the Keras 3 fake-quantized
    layers of :func:`wrap` (``qat=True``), which are also registered with Keras 3 by name.

    Example:
        >>> from tfedge.models import custom_objects
        >>> "Distiller" in custom_objects()  # doctest: +SKIP
        True
    """

    quant = {cls.__name__: cls for cls in QUANT_CLASSES.values()}
    quant.update({f"tfedge>{name}": cls for name, cls in quant.items()})
    return {**tfmot_objects(), "Distiller": Distiller, "tfedge>Distiller": Distiller, **quant}


def _register_with_tf_keras() -> None:
    """tfmot's wrappers, quantizers and configs and the Distiller, registered with tf_keras by
    name: a tf_keras model that ``finalize`` returns with QAT (tfmot's quantize wrappers) and
    saves as ``.keras`` then loads with plain ``tf_keras.models.load_model`` in any program that
    imports ``tfedge.models``, as a Keras 3 one does with ``keras.saving.load_model``."""
    from tfedge.core.backend import keras

    registered = keras.utils.get_custom_objects()
    for name, obj in {**tfmot_objects(), "Distiller": Distiller}.items():
        registered.setdefault(name, obj)


_register_with_tf_keras()
