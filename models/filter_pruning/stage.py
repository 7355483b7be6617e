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
    settings: training.FineTune = training.FineTune(temperature=1.0, alpha=0.5),
    ratio=0.5,
    criterion: str = "l1",
    skip=(),
    min_filters: int = 1,
    round_to: int = 1,
    taylor_batches: int = 8,
    dense: bool | None = None,
    **fine_tune,
) -> keras.Model:
    """Filter pruning stage: rank, remove and rebuild (:func:`shrink`), then fine-tune.

    Args:
        model: a tf_keras functional or Sequential model (trained).
        train: labelled training data (a :class:`tfedge.core.data.Dataset`, ``(x, y)``, an ``.npz``...).
        val: labelled validation data; the best fine-tuning epoch on it is kept (optional).
        settings: how it fine-tunes (:class:`~tfedge.models.training.FineTune`): ``epochs``
            (None: 10; 0 skips fine-tuning), ``batch_size`` (also Taylor's), the ``teacher``
            to distil from (typically the unpruned model), the strategy. Its ``temperature`` is
            1, lower than the other stages' 4: a freshly shrunk model starts far from its
            teacher, and a teacher that is not very confident gives near-uniform targets at
            T=4 that bring it back slowly (a Keras 3 residual CNN: 79 % after 10 epochs at T=4,
            93 % at T=2, 97 % at T=1).
        ratio: fraction of filters removed per group (or ``{layer glob: fraction}``).
        criterion: ``l1``, ``l2`` or ``taylor``.
        skip: layer names / glob patterns left unpruned.
        min_filters: the fewest filters a group keeps.
        round_to: round kept filter counts to a multiple of this.
        taylor_batches: batches the Taylor criterion looks at.
        dense: also remove hidden Dense units (None: only in a model without convolutions).
        **fine_tune: fields of ``settings`` as keywords (``epochs=3``, ``teacher=model``): they
            replace those fields.

    Returns:
        The smaller tf_keras model, fine-tuned, ready for :func:`tfedge.converters.convert`.

    Example:
        >>> small = prune_filters(model, train, val, ratio=0.5, teacher=model)  # doctest: +SKIP
    """
    settings = training.with_keywords(settings, fine_tune, "prune_filters")
    functional = as_functional(model)
    strategy = training.resolve_strategy(settings.strategy)
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
            batch_size=settings.batch_size,
            dense=dense,
        )
    epochs = DEFAULT_EPOCHS if settings.epochs is None else int(settings.epochs)
    return training.fine_tune_rebuilt(
        result,
        train,
        val,
        **settings.fit_options(epochs=epochs, strategy=strategy),
        desc="fine-tuning pruned filters",
    )
