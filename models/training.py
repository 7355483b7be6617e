"""Shared fine-tuning helpers for the compression stages (pruning, QAT, clustering, distillation).

Every stage fine-tunes the same way: Adam with a cosine-decayed learning rate, a progress bar per
epoch, the best epoch on validation accuracy restored at the end, optional distillation from a
teacher, and an optional ``tf.distribute`` strategy under whose scope everything is built, compiled
and fitted. Copying and flattening models is in :mod:`tfedge.models.cloning`, choosing the layers a
stage works on in :mod:`tfedge.models.layers`. The settings every stage takes are one
:class:`FineTune` value (from :mod:`tfedge.models.fine_tune`, which imports no TensorFlow).

Example:
    >>> from tfedge.models.training import fit, evaluate
    >>> history = fit(model, train, val, epochs=5)  # doctest: +SKIP
    >>> evaluate(model, val)  # doctest: +SKIP
    0.985
"""

import contextlib
import json
import math
import os

import numpy as np

from tfedge.core.backend import keras, tf
from tfedge.core.console import progress, quiet
from tfedge.core.errors import OptimizationError
from tfedge.core.streams import DataStream
from tfedge.models.distiller import Distiller
from tfedge.models.fine_tune import FineTune, defaults_of, with_keywords
from tfedge.models.rebuild import to_keras2

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
    "fit",
    "fine_tune_rebuilt",
    "evaluate",
    "EpochProgress",
    "RestoreBest",
]

DEFAULT_BATCH_SIZE = 32
_PROBABILITY_TOLERANCE = 1e-3


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


def resolve_strategy(strategy):
    """Turn ``None``, ``"default"``, ``"mirrored"``, ``"multiworker"`` (from ``TF_CONFIG``) or a strategy into a strategy or None.

    Example:
        >>> resolve_strategy(None) is None
        True
    """
    if strategy is None or isinstance(strategy, tf.distribute.Strategy):
        return strategy
    if isinstance(strategy, str):
        name = strategy.strip().lower()
        if name in ("", "none", "default"):
            return None
        if name == "mirrored":
            return tf.distribute.MirroredStrategy()
        if name == "multiworker":
            return _multiworker()
    raise OptimizationError(
        f"strategy {strategy!r} is not a tf.distribute strategy; expected None, 'default', "
        "'mirrored', 'multiworker' or a tf.distribute.Strategy instance",
        "pass strategy=tf.distribute.MirroredStrategy() (all local GPUs) or leave it out",
    )


def _multiworker():
    """MultiWorkerMirroredStrategy from the standard ``TF_CONFIG`` (cluster and this task)."""

    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "null")
        workers = config["cluster"]["worker"]
        task = config["task"]
    except (ValueError, TypeError, KeyError) as exc:
        raise OptimizationError(
            f"multiworker needs TF_CONFIG with cluster.worker and task; got "
            f"{os.environ.get('TF_CONFIG')!r} ({type(exc).__name__})",
            'set TF_CONFIG=\'{"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}\' on each machine (its own index)',
        ) from None
    if not isinstance(workers, list) or not workers or task.get("type") not in ("worker", "chief"):
        raise OptimizationError(
            f"TF_CONFIG lists workers {workers!r} and task {task!r}: expected a list of "
            "host:port and a worker task",
            'e.g. {"cluster": {"worker": ["a:2222", "b:2222"]}, "task": {"type": "worker", "index": 0}}',
        )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as exc:  # "Collective ops must be configured at program startup"
        raise OptimizationError(
            f"cannot start MultiWorkerMirroredStrategy: {exc}",
            "create it before anything runs TensorFlow: call resolve_strategy('multiworker') "
            "first in the program (the command line does)",
        ) from None


def worker_count(strategy) -> int:
    """The machines that train together: a MultiWorkerMirroredStrategy's workers, else 1.

    Example:
        >>> worker_count(None)
        1
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    jobs = resolver.cluster_spec().as_dict()
    return max(1, len(jobs.get("chief", [])) + len(jobs.get("worker", [])))


def strategy_scope(strategy):
    """``strategy.scope()``, or a do-nothing context when ``strategy`` is None.

    Example:
        >>> with strategy_scope(None):
        ...     pass
    """
    strategy = resolve_strategy(strategy)
    return contextlib.nullcontext() if strategy is None else strategy.scope()


def check_data(data, name: str, model=None):
    """Check a fine-tuning data set has labels (and inputs the model takes); return it.

    Raises:
        OptimizationError: without labels, or with inputs of the wrong shape.

    Example:
        >>> check_data(train, "training", model) is train  # doctest: +SKIP
        True
    """
    if data is None:
        raise OptimizationError(
            f"{name} data is missing; the stage fine-tunes the model and needs labelled data",
            "pass a tfedge.core.data.Dataset with x (inputs) and y (integer labels)",
        )
    if getattr(data, "y", None) is None or getattr(data, "x", None) is None:
        raise OptimizationError(
            f"{name} data has no labels (y); fine-tuning needs integer class labels",
            "load it with tfedge.core.data.load_data(..., require_labels=True)",
        )
    if model is not None:
        want = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
        got = tuple(data.x.shape[1:])
        if want is not None and (
            len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got))
        ):
            raise OptimizationError(
                f"{name} inputs have shape {list(got)} but the model {model.name!r} expects "
                f"{[d if d is not None else 'any' for d in want]}",
                "give the data the model's input shape",
            )
        output = model.output_shape
        if isinstance(output, list) or len(output) != 2 or (output[-1] or 0) < 1:
            raise OptimizationError(
                f"the model {model.name!r} has output shape {output}; the compression stages "
                "fine-tune classifiers with one output of shape (batch, classes), or (batch, 1) "
                "for a binary classifier (a sigmoid or a logit)",
                "compress a classifier, or fine-tune other models with your own training loop",
            )
    return data


def outputs_probabilities(model, x) -> bool:
    """True when the model outputs probabilities (softmax), False when it outputs logits.

    Decided on a few real inputs: every row non-negative and summing to 1 means probabilities.

    Example:
        >>> outputs_probabilities(model, train.x)  # doctest: +SKIP
        True
    """
    sample = np.asarray(x[:32], dtype=np.float32)
    out = np.asarray(model(sample, training=False), dtype=np.float64)
    if out.ndim != 2:
        return False
    if out.shape[1] == 1:  # binary: a sigmoid's probability, or a logit
        return bool(
            (out >= -_PROBABILITY_TOLERANCE).all() and (out <= 1 + _PROBABILITY_TOLERANCE).all()
        )
    return bool(
        (out >= -_PROBABILITY_TOLERANCE).all()
        and np.allclose(out.sum(axis=1), 1.0, atol=_PROBABILITY_TOLERANCE * out.shape[1])
    )


def is_binary(model) -> bool:
    """True for a binary classifier: one output of shape ``(batch, 1)`` (a sigmoid or a logit).

    Example:
        >>> is_binary(keras.Sequential([keras.layers.Dense(1, "sigmoid", input_shape=(4,))]))
        True
    """
    shape = model.output_shape
    return not isinstance(shape, list) and len(shape) == 2 and shape[-1] == 1


def num_classes(model) -> int:
    """The classes a classifier predicts: its (first) output's width; 1 is a binary classifier.

    This is what :func:`tfedge.core.data.load_data`'s ``num_classes`` checks the labels against.

    Example:
        >>> num_classes(keras.Sequential([keras.layers.Dense(10, input_shape=(4,))]))
        10
    """
    shape = model.output_shape
    shape = shape[0] if isinstance(shape, list) else shape
    count = 1
    for dim in shape[1:]:
        count *= int(dim or 1)
    return count


def accuracy_metric(binary: bool, probabilities: bool):
    """The ``accuracy`` metric for a classifier's outputs: top-1, or thresholded when binary.

    Example:
        >>> accuracy_metric(True, False).threshold
        0.0
    """
    if binary:
        return keras.metrics.BinaryAccuracy(
            name="accuracy", threshold=0.5 if probabilities else 0.0
        )
    return keras.metrics.SparseCategoricalAccuracy(name="accuracy")


def predicted_labels(predictions, probabilities: bool | None = None) -> np.ndarray:
    """Class ids from a classifier's outputs (``(batch, 1)`` outputs are thresholded).

    Example:
        >>> predicted_labels(np.array([[0.2], [0.9]])).tolist()
        [0, 1]
    """
    predictions = np.asarray(predictions)
    if predictions.ndim == 2 and predictions.shape[1] == 1:
        if probabilities is None:
            probabilities = bool(((predictions >= 0) & (predictions <= 1)).all())
        return (predictions[:, 0] > (0.5 if probabilities else 0.0)).astype(np.int64)
    return predictions.reshape(len(predictions), -1).argmax(axis=1)


class EpochProgress(keras.callbacks.Callback):
    """A progress bar with one step per epoch, showing the loss and validation accuracy.

    Args:
        epochs: the number of epochs (the bar's length).
        desc: the bar's label.

    Example:
        >>> model.fit(x, y, epochs=5, verbose=0, callbacks=[EpochProgress(5)])  # doctest: +SKIP
    """

    def __init__(self, epochs: int, desc: str = "fine-tuning"):
        super().__init__()
        self.epochs = epochs
        self.desc = desc
        self.bar = None

    def on_train_begin(self, logs=None):

        self.bar = progress(total=self.epochs, desc=self.desc, unit="epoch")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        shown = {}
        for key in ("loss", "accuracy", "val_accuracy"):
            if key in logs:
                shown[key.replace("accuracy", "acc")] = f"{float(logs[key]):.4f}"
        if self.bar is not None:
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)

    def on_train_end(self, logs=None):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class RestoreBest(keras.callbacks.Callback):
    """Keep the weights of the epoch with the best validation accuracy, restore them at the end.

    Args:
        target: the model whose weights are kept (the student inside a distiller).
        monitor: the log key to maximize.
        start_epoch: ignore epochs before this one (0-based), e.g. while a pruning schedule still
            ramps up the sparsity.
        patience: stop after this many epochs without improvement (None: never stop early).
        initial: a labelled data set to score the starting weights on, so that training that
            only makes the model worse gives the starting weights back (None: do not).
        restore: restore the best weights at the end (False: only track and stop early).
        accept: a predicate ``() -> bool`` asked at the end of each epoch: only epochs it accepts
            compete for "best" (pruning: only epochs whose kernels hold the final sparsity).

    Example:
        >>> best = RestoreBest(model, start_epoch=3)  # doctest: +SKIP
        >>> model.fit(x, y, validation_data=(xv, yv), epochs=10, callbacks=[best])  # doctest: +SKIP
        >>> best.best_epoch, best.best  # doctest: +SKIP
        (7, 0.9874)
    """

    def __init__(
        self,
        target,
        monitor="val_accuracy",
        start_epoch=0,
        patience=None,
        initial=None,
        restore=True,
        accept=None,
    ):
        super().__init__()
        self.accept = accept
        self.target = target
        self.monitor = monitor
        self.start_epoch = start_epoch
        self.patience = patience
        self.initial = initial
        self.restore = restore
        self.best = -np.inf
        self.best_epoch = None
        self.weights = None
        self.history = []

    def on_train_begin(self, logs=None):
        if self.initial is not None and self.start_epoch == 0:
            self.best = evaluate(self.target, self.initial)
            self.best_epoch = -1
            self.weights = self.target.get_weights()

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        value = float(value)
        self.history.append(value)
        if epoch < self.start_epoch or (self.accept is not None and not self.accept()):
            return
        if value >= self.best:
            self.best = value
            self.best_epoch = epoch
            self.weights = self.target.get_weights()
        elif (
            self.patience is not None
            and self.best_epoch is not None
            and epoch - self.best_epoch >= self.patience
        ):
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore and self.weights is not None:
            self.target.set_weights(self.weights)


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
    with quiet():
        trainer.fit(
            **inputs,
            epochs=epochs,
            validation_data=validation,
            callbacks=all_callbacks,
            verbose=0,
        )
    return best


def _streamed(data) -> bool:
    """True for a :class:`~tfedge.core.streams.DataStream` (read in batches, not held in memory)."""

    return isinstance(data, DataStream)


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


def evaluate(model, data, batch_size: int = 256) -> float:
    """Top-1 accuracy of a Keras model on a labelled data set.

    Example:
        >>> evaluate(model, test)  # doctest: +SKIP
        0.9849
    """
    check_data(data, "evaluation")
    probabilities = outputs_probabilities(model, data.x) if is_binary(model) else None
    if _streamed(data):
        correct = total = 0
        for x, y in data.batches(batch_size):
            predictions = model.predict_on_batch(x)
            correct += int((predicted_labels(predictions, probabilities) == y).sum())
            total += len(y)
        return correct / max(total, 1)
    predictions = model.predict(data.x, batch_size=batch_size, verbose=0)
    return float(np.mean(predicted_labels(predictions, probabilities) == data.y))
