"""Shared fine-tuning helpers for the compression stages (pruning, QAT, clustering, distillation).

Every stage fine-tunes the same way: Adam with a cosine-decayed learning rate, a progress bar per
epoch, the best epoch on validation accuracy restored at the end, optional distillation from a
teacher, and an optional ``tf.distribute`` strategy under whose scope everything is built, compiled
and fitted. Copying and flattening models is in :mod:`tfedge.models.cloning`, choosing the layers a
stage works on in :mod:`tfedge.models.layers`. The settings every stage takes are one
:class:`FineTune` value (from :mod:`tfedge.models.fine_tune`, which imports no TensorFlow). The
strategies are in :mod:`tfedge.models.strategies`, the classifier checks and :func:`evaluate` in
:mod:`tfedge.models.classifiers`, the callbacks in :mod:`tfedge.models.fit_callbacks`; every name
stays importable from here.

Example:
    >>> from tfedge.models.training import fit, evaluate
    >>> history = fit(model, train, val, epochs=5)  # doctest: +SKIP
    >>> evaluate(model, val)  # doctest: +SKIP
    0.985
"""

import math

from tfedge.core.backend import keras, tf
from tfedge.core.console import quiet
from tfedge.core.errors import OptimizationError
from tfedge.models.classifiers import (
    _streamed,
    accuracy_metric,
    check_data,
    evaluate,
    is_binary,
    num_classes,
    outputs_probabilities,
    predicted_labels,
)
from tfedge.models.distiller import Distiller
from tfedge.models.fine_tune import FineTune, defaults_of, with_keywords
from tfedge.models.fit_callbacks import EpochProgress, RestoreBest
from tfedge.models.rebuild import to_keras2
from tfedge.models.strategies import resolve_strategy, strategy_scope, worker_count

__all__ = [
    "FineTune",
    "defaults_of",
    "with_keywords",
    "DEFAULT_BATCH_SIZE",
    "steps_per_epoch",
    "epochs_for",
    "strategy_scope",
    "resolve_strategy",
    "worker_count",
    "check_data",
    "outputs_probabilities",
    "is_binary",
    "num_classes",
    "accuracy_metric",
    "predicted_labels",
    "fit",
    "fine_tune_rebuilt",
    "evaluate",
    "EpochProgress",
    "RestoreBest",
]

DEFAULT_BATCH_SIZE = 32


def steps_per_epoch(samples: int, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
    """Optimizer steps in one epoch: ``ceil(samples / batch_size)``.

    Example:
        >>> steps_per_epoch(1400, 32)
        44
    """
    return max(1, math.ceil(int(samples) / int(batch_size)))


def epochs_for(
    train,
    steps: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    minimum: int = 2,
    maximum: int = 100,
) -> int:
    """A default epoch count sized by the data: about ``steps`` optimizer steps, within bounds.

    Small data sets get more epochs, large ones fewer, so a stage's default costs about the same
    number of updates whatever the data.

    Args:
        train: the training :class:`~tfedge.core.data.Dataset` (or anything with ``len``).
        steps: the number of optimizer steps wanted.
        batch_size: the batch size.
        minimum: the fewest epochs.
        maximum: the most epochs.

    Example:
        >>> epochs_for(range(1400), steps=600)
        14
    """
    per_epoch = steps_per_epoch(len(train), batch_size)
    return int(min(maximum, max(minimum, round(steps / per_epoch))))


def _learning_rate(learning_rate, total_steps: int, schedule: str):
    if schedule == "constant":
        return learning_rate
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=max(1, total_steps), alpha=0.05
        )
    raise OptimizationError(
        f"learning-rate schedule {schedule!r} is unknown; expected 'cosine' or 'constant'"
    )


def fit(
    model,
    train,
    val=None,
    *,
    epochs: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    learning_rate: float = 1e-3,
    lr_schedule: str = "cosine",
    teacher=None,
    temperature: float = 4.0,
    alpha: float = 0.1,
    strategy=None,
    callbacks=(),
    restore_best: bool = True,
    restore_from: int = 0,
    accept=None,
    keep_initial: bool = False,
    patience: int | None = None,
    desc: str = "fine-tuning",
    seed: int | None = 0,
):
    """Compile and fit a classifier in place, with distillation from ``teacher`` when given.

    The loss is sparse categorical cross-entropy (on probabilities or logits, whichever the model
    outputs); with a teacher it is a :class:`~tfedge.models.distillation.Distiller` loss instead.
    The weights of the best epoch on ``val`` accuracy are restored at the end.

    Args:
        model: the tf_keras model to train (wrapped or not); trained in place.
        train: training :class:`~tfedge.core.data.Dataset` with labels, or a
            :class:`~tfedge.core.streams.DataStream` (fitted from its prefetched ``tf.data`` view).
        val: validation :class:`~tfedge.core.data.Dataset` or stream with labels, or None.
        epochs: the number of epochs.
        batch_size: the batch size.
        learning_rate: Adam's initial learning rate.
        lr_schedule: ``"cosine"`` (decay to 5 % over the run) or ``"constant"``.
        teacher: a model to distill from, or None for plain label training.
        temperature: the distillation temperature.
        alpha: the weight of the true-label loss in distillation (1 - alpha for the teacher's).
        strategy: a ``tf.distribute`` strategy (or its name) to compile and fit under, or None.
            Under a MultiWorkerMirroredStrategy a streamed set is sharded per worker: by file
            for TFRecord shards and image folders, by batch otherwise (see
            :meth:`~tfedge.core.streams.DataStream.as_tf_dataset`).
        callbacks: extra Keras callbacks (e.g. tfmot's ``UpdatePruningStep``).
        restore_best: restore the best epoch's weights at the end (needs ``val``).
        restore_from: only epochs from this one on (0-based) compete for "best".
        accept: a predicate ``() -> bool``: only epochs it accepts compete for "best".
        keep_initial: let the starting weights compete too (for polishing a finished model).
        patience: stop early after this many epochs without improvement (None: never).
        desc: the progress bar's label.
        seed: the random seed (None leaves the global seed alone).

    Returns:
        The :class:`RestoreBest` callback (``best``, ``best_epoch``, ``history``).

    Example:
        >>> fit(model, train, val, epochs=5, teacher=float_model).best  # doctest: +SKIP
        0.987
    """
    check_data(train, "training", model)
    if val is not None:
        check_data(val, "validation", model)
    strategy = resolve_strategy(strategy)
    if teacher is not None:
        teacher = to_keras2(teacher)
    if seed is not None:
        keras.utils.set_random_seed(seed)

    probabilities = outputs_probabilities(model, train.x)
    binary = is_binary(model)
    total_steps = epochs * steps_per_epoch(len(train), batch_size)
    with strategy_scope(strategy):
        optimizer = keras.optimizers.Adam(_learning_rate(learning_rate, total_steps, lr_schedule))
        if teacher is not None:
            trainer = Distiller(
                model,
                teacher,
                temperature=temperature,
                alpha=alpha,
                student_probabilities=probabilities,
                teacher_probabilities=outputs_probabilities(teacher, train.x),
            )
            trainer.compile(optimizer=optimizer, metrics=[accuracy_metric(binary, probabilities)])
        else:
            trainer = model
            if binary:
                loss = keras.losses.BinaryCrossentropy(from_logits=not probabilities)
            else:
                loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)
            trainer.compile(
                optimizer=optimizer, loss=loss, metrics=[accuracy_metric(binary, probabilities)]
            )
    best = RestoreBest(
        model,
        start_epoch=restore_from,
        accept=accept,
        patience=patience,
        initial=val if keep_initial else None,
        restore=restore_best,
    )
    all_callbacks = [*callbacks, EpochProgress(epochs, desc)]
    if val is not None and (restore_best or patience is not None):
        all_callbacks.append(best)
    streamed = _streamed(train) or _streamed(val)
    if streamed:  # a tf.data pipeline with prefetch: the set is never held whole
        workers = worker_count(strategy)
        inputs = {
            "x": train.as_tf_dataset(batch_size, shuffle=True, seed=seed or 0, workers=workers)
        }
        validation = None if val is None else val.as_tf_dataset(batch_size, workers=workers)
    else:
        inputs = {"x": train.x, "y": train.y, "batch_size": batch_size, "shuffle": True}
        validation = None if val is None else (val.x, val.y)
    try:
        with quiet():
            trainer.fit(
                **inputs,
                epochs=epochs,
                validation_data=validation,
                callbacks=all_callbacks,
                verbose=0,
            )
    except (tf.errors.InvalidArgumentError, UnicodeDecodeError) as exc:
        # A streamed set's records decode, and its labels are checked, inside the tf.data graph:
        # find the bad sample with the checked batches, which name it. (The message of a record
        # that does not parse can quote its bytes, which are not text: a UnicodeDecodeError.)
        for data in (train, val) if streamed else ():
            if _streamed(data):
                found = data.locate_error(exc)
                if found is not exc:
                    raise found from None
        raise
    return best


def fine_tune_rebuilt(model, train, val=None, *, epochs: int, desc: str, **fit_options):
    """Fine-tune a model a stage has rebuilt (fewer filters, factorized layers) with :func:`fit`.

    Every layer trains, even when the model it was built from came in frozen (a teacher
    elsewhere); ``epochs=0`` skips the fine-tune.

    Example:
        >>> fine_tune_rebuilt(smaller, train, val, epochs=5, desc="fine-tuning")  # doctest: +SKIP
    """
    model.trainable = True
    if epochs > 0:
        fit(model, train, val, epochs=epochs, desc=desc, **fit_options)
    return model
