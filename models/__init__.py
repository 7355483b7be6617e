"""tfedge.models: Keras compression wrappers (pruning, QAT, clustering, distillation, factorization)."""

from tfedge.models.registry import custom_objects

__all__ = ["custom_objects"]
