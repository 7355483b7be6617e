"""The Keras callbacks every fine-tune runs with: a progress bar per epoch, the best epoch kept.

Example:
    >>> from tfedge.models.fit_callbacks import EpochProgress, RestoreBest
    >>> best = RestoreBest(model)  # doctest: +SKIP
    >>> model.fit(x, y, validation_data=(xv, yv), epochs=5, callbacks=[EpochProgress(5), best])  # doctest: +SKIP
"""

import numpy as np

from tfedge.core.backend import keras
from tfedge.core.console import progress
from tfedge.models.classifiers import evaluate

__all__ = ["EpochProgress", "RestoreBest"]


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
