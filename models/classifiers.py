"""What a fine-tuned classifier is: its data checked, its outputs read (logits or probabilities).

Example:
    >>> from tfedge.models.classifiers import evaluate, predicted_labels
    >>> predicted_labels(np.array([[0.1, 0.9], [0.8, 0.2]])).tolist()  # doctest: +SKIP
    [1, 0]
    >>> evaluate(model, val)  # doctest: +SKIP
    0.985
"""

import numpy as np

from tfedge.core.backend import keras
from tfedge.core.errors import OptimizationError
from tfedge.core.streams import DataStream

__all__ = [
    "check_data",
    "outputs_probabilities",
    "is_binary",
    "num_classes",
    "accuracy_metric",
    "predicted_labels",
    "evaluate",
]

_PROBABILITY_TOLERANCE = 1e-3


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


def _streamed(data) -> bool:
    """True for a :class:`~tfedge.core.streams.DataStream` (read in batches, not held in memory)."""

    return isinstance(data, DataStream)


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
