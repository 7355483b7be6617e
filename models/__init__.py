"""tfedge.models: Keras compression wrappers (pruning, QAT, clustering, distillation, factorization)."""
