"""Choose the layers a compression stage works on: ``skip=("first", "last")``, names or layer types.

Example:
    >>> from tfedge.models.layers import select_layers
    >>> select_layers(model, skip=("first", "last"))  # doctest: +SKIP
    ['conv2', 'dense1']
"""

from tfedge.core.errors import OptimizationError

__all__ = ["select_layers", "skipped_layers", "kernel_layers"]


def _matches(layer, item) -> bool:
    if isinstance(item, type):
        return isinstance(layer, item)
    return item == layer.name or item == type(layer).__name__


def kernel_layers(model) -> list:
    """The layers with a trainable kernel (a weight of rank >= 2): convolutions, dense, RNNs.

    Example:
        >>> [layer.name for layer in kernel_layers(model)]  # doctest: +SKIP
        ['conv1', 'conv2', 'fc1', 'logits']
    """
    return [
        layer
        for layer in model.layers
        if any(len(weight.shape) >= 2 for weight in layer.trainable_weights)
    ]


def skipped_layers(model, skip, candidates=None) -> set:
    """The names ``skip`` refers to in ``model``.

    Args:
        model: a flat functional or Sequential model.
        skip: ``"first"`` / ``"last"`` (the first and last of ``candidates``), layer names, layer
            class names (``"DepthwiseConv2D"``) or layer classes.
        candidates: the layers "first" and "last" count among (default: the layers with a
            kernel, see :func:`kernel_layers`).

    Raises:
        OptimizationError: when ``skip`` names an unknown layer or has a bad entry.

    Example:
        >>> sorted(skipped_layers(model, ("first", "Dense")))  # doctest: +SKIP
        ['conv1', 'fc1', 'logits']
    """
    if skip is None:
        skip = ()
    if isinstance(skip, (str, type)):
        skip = (skip,)
    if candidates is None:
        candidates = kernel_layers(model)
    skipped = set()
    for item in skip:
        if item == "first":
            skipped.update(layer.name for layer in candidates[:1])
        elif item == "last":
            skipped.update(layer.name for layer in candidates[-1:])
        elif isinstance(item, (str, type)):
            hits = [layer.name for layer in model.layers if _matches(layer, item)]
            if not hits:
                names = ", ".join(layer.name for layer in model.layers)
                raise OptimizationError(
                    f"skip names {getattr(item, '__name__', item)!r}, which is neither a layer nor "
                    f"a layer type of the model {model.name!r}",
                    f"use 'first', 'last', a layer type (e.g. 'Dense') or one of: {names}",
                )
            skipped.update(hits)
        else:
            raise OptimizationError(
                f"skip entry {item!r} is a {type(item).__name__}; expected 'first', 'last', a "
                "layer name, a layer type name or a layer class",
                "e.g. skip=('first', 'last', 'DepthwiseConv2D')",
            )
    return skipped


def select_layers(model, skip=("first", "last"), eligible=None) -> list[str]:
    """Names of the layers a stage wraps: the eligible layers with weights, minus ``skip``.

    Args:
        model: a flat functional or Sequential model.
        skip: what to leave alone: ``"first"`` / ``"last"`` (the first and last layer with a
            kernel: usually the input conv and the classifier), layer names, layer class names
            (``"DepthwiseConv2D"``) or layer classes.
        eligible: a predicate ``layer -> bool`` (default: every layer with trainable weights).

    Returns:
        The selected layer names, in model order.

    Raises:
        OptimizationError: when ``skip`` names an unknown layer or has a bad entry.

    Example:
        >>> select_layers(model, skip=("first", "last"))  # doctest: +SKIP
        ['conv2', 'fc1']
    """
    layers = [
        layer
        for layer in model.layers
        if layer.trainable_weights and (eligible is None or eligible(layer))
    ]
    skipped = skipped_layers(model, skip)
    return [layer.name for layer in layers if layer.name not in skipped]
