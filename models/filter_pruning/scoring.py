"""The scoring of filter pruning: how much each output channel matters.

``l1`` / ``l2`` rank a filter by the norm of its weights, scaled by the BatchNormalization after
it (``|gamma| / sqrt(var + eps)``); ``taylor`` by the first-order Taylor estimate of the loss
change on training data.
"""

import numpy as np

import tfedge.models.training as training
from tfedge.core.backend import keras, tf
from tfedge.core.errors import OptimizationError

__all__ = ["CRITERIA", "norm_scores", "taylor_scores"]

CRITERIA = ("l1", "l2", "taylor")


def _bn_after(analysis, name):
    node = analysis.by_name[name]
    if len(node.consumers) != 1:
        return None
    consumer = analysis.by_name[node.consumers[0]]
    if consumer.class_name == "BatchNormalization" and consumer.name in analysis.node_inputs:
        spec = analysis.node_inputs[consumer.name][0]
        if spec is not None and spec.segments == ((analysis.producer_space[name], 1),):
            return consumer.layer
    return None


def _bn_scale(bn):
    params = {w.name.split("/")[-1].split(":")[0]: w.numpy() for w in bn.weights}
    gamma = np.abs(params["gamma"]) if "gamma" in params else 1.0
    return gamma / np.sqrt(params["moving_variance"] + bn.epsilon)


def _out_axis(layer):
    """The output-channel axis of a producer's main kernel."""
    return {"Conv2DTranspose": 2, "Conv1D": 2, "Dense": 1}.get(type(layer).__name__, 3)


def _main_kernel(layer):
    if type(layer).__name__ == "SeparableConv2D":
        return layer.pointwise_kernel.numpy()
    return layer.kernel.numpy()


def norm_scores(analysis, name, order):
    """The L1 (``order=1``) or L2 norm of each output filter of ``name``, BN-folded.

    Example:
        >>> from tfedge.models.filter_pruning.analysis import Analysis
        >>> from tfedge.models.zoo import build
        >>> norm_scores(Analysis(build("ds_cnn"), skip=()), "pw1", 1).shape
        (64,)
    """
    layer = analysis.by_name[name].layer
    kernel = _main_kernel(layer)
    axis = _out_axis(layer)
    moved = np.moveaxis(kernel, axis, -1).reshape(-1, kernel.shape[axis])
    scores = np.abs(moved).sum(0) if order == 1 else np.sqrt((moved**2).sum(0))
    bn = _bn_after(analysis, name)
    if bn is not None:
        scores = scores * _bn_scale(bn)
    return scores


def taylor_scores(analysis, names, data, batches, batch_size):
    """|sum over the gate layer's parameters of p * dL/dp| per channel, averaged over batches.

    The gate layer is the BatchNormalization right after the convolution (``gamma * dgamma +
    beta * dbeta``) or the convolution itself (``kernel * dkernel + bias * dbias``): for a layer
    linear in its per-channel parameters, this sum is ``sum(activation * gradient)`` over the
    channel's feature map, Molchanov et al.'s first-order Taylor criterion.

    Example:
        >>> scores = taylor_scores(Analysis(model, ()), ["conv1"], train, 8, 32)  # doctest: +SKIP
        >>> scores["conv1"].shape  # doctest: +SKIP
        (16,)
    """
    if data is None:
        raise OptimizationError(
            "criterion 'taylor' needs training data to compute gradients, and train is None",
            "pass train data, or use criterion='l1'",
        )
    model = analysis.model
    gates = {}
    for name in names:
        gates[name] = _bn_after(analysis, name) or analysis.by_name[name].layer
    variables = []
    for layer in gates.values():
        variables += [w for w in layer.trainable_weights]
    variables = list({id(v): v for v in variables}.values())
    from_logits = not training.outputs_probabilities(model, data.x)
    if training.is_binary(model):
        loss_fn = keras.losses.BinaryCrossentropy(from_logits=from_logits, reduction="sum")
    else:
        loss_fn = keras.losses.SparseCategoricalCrossentropy(
            from_logits=from_logits, reduction="sum"
        )
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.x))
    totals = {name: 0.0 for name in names}
    count = 0
    for b in range(batches):
        index = order[b * batch_size : (b + 1) * batch_size]
        if len(index) == 0:
            break
        x = tf.constant(data.x[index])
        y = tf.constant(data.y[index])
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=False))
        grads = dict(zip([id(v) for v in variables], tape.gradient(loss, variables), strict=True))
        for name, layer in gates.items():
            contribution = 0.0
            for weight in layer.trainable_weights:
                grad = grads.get(id(weight))
                if grad is None:
                    continue
                product = (weight * grad).numpy()
                short = weight.name.split("/")[-1].split(":")[0]
                if product.ndim == 1:
                    contribution = contribution + product
                else:
                    axis = _out_axis(layer) if short != "depthwise_kernel" else None
                    if axis is None:
                        continue
                    if short == "pointwise_kernel":
                        axis = 3
                    moved = np.moveaxis(product, axis, -1)
                    contribution = contribution + moved.reshape(-1, moved.shape[-1]).sum(0)
            totals[name] = totals[name] + np.abs(contribution)
        count += 1
    return {name: totals[name] / max(count, 1) for name in names}
