"""The filter pruning stage: shrink the model, then fine-tune it (optionally distilling)."""

import tfedge.models.training as training
from tfedge.core.backend import keras
from tfedge.models.filter_pruning.surgery import shrink
from tfedge.models.graph import as_functional, stage_data

__all__ = ["prune_filters"]

DEFAULT_EPOCHS = 10


def prune_filters(
    model,
    train,
    val=None,
    *,
    epochs: int | None = None,
    teacher=None,
    strategy=None,
    ratio=0.5,
    criterion: str = "l1",
    skip=(),
    min_filters: int = 1,
    round_to: int = 1,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    taylor_batches: int = 8,
    dense: bool | None = None,
    temperature: float = 1.0,
    alpha: float = 0.5,
) -> keras.Model:
    """Filter pruning stage: rank, remove and rebuild (:func:`shrink`), then fine-tune.

    Args:
        model: a tf_keras functional or Sequential model (trained).
        train: labelled training data (a :class:`tfedge.core.data.Dataset`, ``(x, y)``, an ``.npz``...).
        val: labelled validation data; the best fine-tuning epoch on it is kept (optional).
        epochs: fine-tuning epochs (default 10; 0 skips fine-tuning).
        teacher: a model to distil from while fine-tuning (typically the unpruned model).
        strategy: None, ``"mirrored"`` or a ``tf.distribute.Strategy`` for fine-tuning.
        ratio: fraction of filters removed per group (or ``{layer glob: fraction}``).
        criterion: ``l1``, ``l2`` or ``taylor``.
        skip: layer names / glob patterns left unpruned.
        min_filters: the fewest filters a group keeps.
        round_to: round kept filter counts to a multiple of this.
        batch_size: fine-tuning (and Taylor) batch size.
        learning_rate: the fine-tuning learning rate (cosine-decayed).
        taylor_batches: batches the Taylor criterion looks at.
        dense: also remove hidden Dense units (None: only in a model without convolutions).
        temperature: the distillation temperature (with a teacher). Lower than the other
            stages' 4: a freshly shrunk model starts far from its teacher, and a teacher that is
            not very confident gives near-uniform targets at T=4 that bring it back slowly (a
            Keras 3 residual CNN: 79 % after 10 epochs at T=4, 93 % at T=2, 97 % at T=1).
        alpha: the true-label weight in distillation (with a teacher).

    Returns:
        The smaller tf_keras model, fine-tuned, ready for :func:`tfedge.converters.convert`.

    Example:
        >>> small = prune_filters(model, train, val, ratio=0.5, teacher=model)  # doctest: +SKIP
    """
    functional = as_functional(model)
    strategy = training.resolve_strategy(strategy)
    train = stage_data(train, functional, "train")
    val = stage_data(val, functional, "val")
    with training.strategy_scope(strategy):
        result, _ = shrink(
            functional,
            ratio,
            criterion,
            data=train,
            skip=skip,
            min_filters=min_filters,
            round_to=round_to,
            taylor_batches=taylor_batches,
            batch_size=batch_size,
            dense=dense,
        )
    return training.fine_tune_rebuilt(
        result,
        train,
        val,
        epochs=DEFAULT_EPOCHS if epochs is None else int(epochs),
        desc="fine-tuning pruned filters",
        teacher=teacher,
        strategy=strategy,
        batch_size=batch_size,
        learning_rate=learning_rate,
        temperature=temperature,
        alpha=alpha,
    )
