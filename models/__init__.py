"""tfedge.models: Keras compression wrappers (pruning, QAT, clustering, distillation, factorization)."""

from tfedge.models.search import SearchResult, auto_optimize

__all__ = ["custom_objects", "auto_optimize", "SearchResult"]


def custom_objects() -> dict:
    """``{name: class}`` for every custom object in models made by tfedge's stages.

    tfmot's wrappers, quantizers and configs (:func:`tfedge.serialization.custom_objects`) and
    tfedge's own :class:`~tfedge.models.distiller.Distiller`.

    Example:
        >>> from tfedge.models import custom_objects
        >>> "Distiller" in custom_objects()  # doctest: +SKIP
        True
    """
    from tfedge.models.distiller import Distiller
    from tfedge.serialization import custom_objects as tfmot_objects

    return {**tfmot_objects(), "Distiller": Distiller, "tfedge>Distiller": Distiller}
