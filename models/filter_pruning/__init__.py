"""Filter (channel) pruning that really shrinks the graph, for a measured int8 speed-up.

Each Conv2D / SeparableConv2D / Conv2DTranspose / Conv1D output filter (and, in a model without
convolutions, each hidden Dense unit) is ranked (L1 or L2 norm of its
weights, or a first-order Taylor estimate of the loss change), the lowest ``ratio`` are removed, and
the functional model is REBUILT with fewer channels: the kept weights are carried over, and every
layer downstream is made consistent:

* BatchNormalization and PReLU: their per-channel arrays are sliced.
* DepthwiseConv2D: its channels are sliced, so the removal flows through it to the next layer
  (``depth_multiplier`` > 1 included).
* Conv2D / SeparableConv2D / Conv2DTranspose / Dense: their input channels are sliced; a Dense after
  ``Flatten`` (or a 1-D ``Reshape``) loses the rows of the removed channels in the flattened
  ``H*W*C`` order.
* Pooling, global pooling, activations, dropout, padding, cropping, up-sampling, scalar Rescaling and
  a ``Reshape`` that keeps the channel axis pass the removal through.
* Residual ``Add`` (and Subtract / Multiply / Average / Maximum / Minimum): the tensors combined
  must keep the same channels, so their producers form one GROUP that is pruned identically, ranked
  by the group's summed score. ``Concatenate`` on the channel axis keeps each part's own pruning.
* Anything else that consumes a tensor (a nested model, a Lambda, LayerNormalization, a shared
  layer, a model output) freezes the channels of that tensor: its producers are left unpruned.

With BatchNormalization right after a convolution, the norm criteria rank the BN-folded filter
(``|gamma| / sqrt(var + eps)`` times the filter norm), since the BN rescales each channel.

Example:
    >>> from tfedge.core.digits import load_digits
    >>> from tfedge.models.zoo import build, train
    >>> data, test = load_digits()
    >>> model = train(build("resnet8"), data, epochs=5)  # doctest: +SKIP
    >>> small = prune_filters(model, data, test, ratio=0.5, epochs=5)  # doctest: +SKIP
    >>> small.count_params() < model.count_params() / 3  # doctest: +SKIP
    True
"""

from tfedge.models.filter_pruning.analysis import FilterGroup, filter_groups
from tfedge.models.filter_pruning.scoring import CRITERIA
from tfedge.models.filter_pruning.stage import prune_filters
from tfedge.models.filter_pruning.surgery import PruningPlan, shrink

__all__ = ["CRITERIA", "FilterGroup", "PruningPlan", "filter_groups", "shrink", "prune_filters"]
