"""Keep the zeros and the shared values of earlier stages while a later stage trains.

A pruned kernel's zeros and a clustered kernel's few distinct values are only worth something if
they reach the int8 model. A later stage that trains the kernels again (QAT after pruning or
clustering) holds them with :class:`HoldStructure`: after every training step each kernel is
projected back onto its structure — its zeros set to zero again, and each group of weights that
shared one value set to the group's mean. The groups are read from the kernel itself when the
stage starts, so the projection also fits a kernel that BatchNorm folding has scaled per output
channel (each channel then keeps its own set of values).

This does not rely on tfmot's collaborative quantizers (PQAT/CQAT): those only guard the layers
whose quantize config carries a weight quantizer, and tfmot's layout transforms give a Conv2D
followed by an activation a no-op config, so a DS-CNN's convolutions trained their zeros away.

Example:
    >>> hold = HoldStructure(qat_model, clusters=True)  # doctest: +SKIP
    >>> qat_model.fit(x, y, callbacks=[hold])  # doctest: +SKIP
    >>> hold.project()  # doctest: +SKIP
"""

import numpy as np

from tfedge.core.backend import keras, tf

__all__ = ["HoldStructure", "kernel_variables"]


def kernel_variables(model) -> list:
    """The trainable kernels (variables of rank >= 2) of a model, wrapped layers included.

    Example:
        >>> [v.name for v in kernel_variables(model)]  # doctest: +SKIP
        ['conv1/kernel:0', 'logits/kernel:0']
    """
    seen, out = set(), []
    for variable in model.trainable_weights:
        if len(variable.shape) >= 2 and id(variable) not in seen:
            seen.add(id(variable))
            out.append(variable)
    return out


class _Held:
    """One kernel's structure: a zero mask and, for shared values, the group of every weight."""

    def __init__(self, variable, zeros: bool, clusters: bool):
        self.variable = variable
        values = variable.numpy()
        self.mask = None
        self.groups = None
        self.count = 0
        if zeros and (values == 0).any():
            self.mask = tf.constant((values != 0).astype(values.dtype))
        if clusters:
            unique, inverse = np.unique(values.reshape(-1), return_inverse=True)
            # Only kernels with far fewer values than weights were clustered; in the others every
            # weight is its own group and projecting would do nothing but cost time.
            if unique.size <= values.size // 2:
                self.groups = tf.constant(inverse.astype(np.int32))
                self.count = int(unique.size)

    @property
    def active(self) -> bool:
        return self.mask is not None or self.groups is not None

    def project(self):
        value = self.variable
        if self.groups is not None:
            flat = tf.reshape(value, [-1])
            means = tf.math.unsorted_segment_mean(flat, self.groups, self.count)
            value = tf.reshape(tf.gather(means, self.groups), self.variable.shape)
        if self.mask is not None:
            value = value * self.mask
        self.variable.assign(value)


class HoldStructure(keras.callbacks.Callback):
    """Hold every kernel's zeros (and, with ``clusters``, its shared values) while a model trains.

    Args:
        model: the model about to be trained (its kernels hold the structure to keep now).
        zeros: keep zero weights at zero.
        clusters: keep weights that share a value sharing one (the value itself may train).

    Example:
        >>> model.fit(x, y, callbacks=[HoldStructure(model, clusters=True)])  # doctest: +SKIP
    """

    def __init__(self, model, zeros: bool = True, clusters: bool = False):
        super().__init__()
        held = (_Held(v, zeros, clusters) for v in kernel_variables(model))
        self.held = [h for h in held if h.active]

    def project(self):
        """Put every held kernel back onto its structure now."""
        for held in self.held:
            held.project()

    def on_train_batch_end(self, batch, logs=None):
        self.project()

    def on_train_end(self, logs=None):
        self.project()
