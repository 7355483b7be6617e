"""Reference models, trainable on the bundled digits in seconds (all tf_keras).

Besides the digits reference CNN, the zoo holds small versions of the MLPerf Tiny families, sized for
the bundled 16x16x1 digits (every builder takes ``input_shape``, ``classes`` and ``width``):

* ``ds_cnn``: the keyword-spotting depthwise-separable CNN (conv, then depthwise + pointwise blocks).
* ``resnet8``: the image-classification ResNet-8 (three residual stacks with batch norm and adds).
* ``mobilenet``: MobileNetV1 (depthwise + pointwise + BN + ReLU6) with a width multiplier.
* ``resnet8_32``: ResNet-8 on the digits upsampled to 32x32 inside the model, a compute-bound
  reference (its int8 model takes well over 100 us per image on one thread of a server core).

Each has a recipe ``models/recipes/<name>.yaml`` and expected figures in ``models/expected.json``.
``build`` also builds the real-size references of :mod:`tfedge.models.reference` (MLPerf Tiny's
four at their published sizes and MobileNetV2 1.0 at 224x224), by name.

Example:
    >>> from tfedge.models.zoo import build
    >>> model = build("digits_cnn")
    >>> model.output_shape
    (None, 10)
"""

import json
from pathlib import Path

from tfedge.core.backend import keras
from tfedge.core.errors import OptimizationError
from tfedge.models.recipe import load_recipe
from tfedge.models.reference import ad_autoencoder, kws_ds_cnn, mobilenet_v2, vww_mobilenet

__all__ = [
    "build",
    "ZOO",
    "REFERENCE",
    "ic_resnet8",
    "train",
    "digits_cnn",
    "ds_cnn",
    "resnet8",
    "resnet8_32",
    "mobilenet",
    "recipe_path",
    "expected",
    "train_settings",
]

L = keras.layers
# The digits give ~44 steps per epoch: a faster BN moving average than Keras' 0.99 keeps the
# inference statistics in step with the weights during short trainings.
BN_MOMENTUM = 0.9


def digits_cnn(input_shape=(16, 16, 1), classes=10, width=16) -> keras.Model:
    """The digits reference CNN: two conv blocks and a small dense head (about 40k parameters)."""
    inputs = keras.Input(input_shape, name="image")
    x = L.Conv2D(width, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = L.MaxPooling2D(2, name="pool1")(x)
    x = L.Conv2D(width * 2, 3, padding="same", activation="relu", name="conv2")(x)
    x = L.MaxPooling2D(2, name="pool2")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(64, activation="relu", name="fc1")(x)
    outputs = L.Dense(classes, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def _conv_bn(x, filters, kernel, strides, name, activation="relu"):
    x = L.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=name)(x)
    x = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    if activation == "relu6":
        return L.ReLU(6.0, name=f"{name}_relu")(x)
    if activation:
        return L.Activation(activation, name=f"{name}_relu")(x)
    return x


def ds_cnn(input_shape=(16, 16, 1), classes=10, width=64, blocks=4) -> keras.Model:
    """MLPerf Tiny's keyword-spotting DS-CNN, sized for 16x16 inputs.

    A strided 3x3 convolution, then ``blocks`` depthwise-separable blocks (3x3 depthwise + BN + ReLU,
    1x1 pointwise + BN + ReLU) of ``width`` channels, dropout, global average pooling and a dense
    classifier.

    Args:
        input_shape: the input (H, W, C).
        classes: output classes.
        width: channels of every block (64 in MLPerf Tiny's DS-CNN small).
        blocks: how many depthwise-separable blocks.

    Example:
        >>> ds_cnn(width=32).count_params() < 10_000
        True
    """
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn(inputs, width, 3, 2, "conv1")
    for index in range(1, blocks + 1):
        x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{index}")(x)
        x = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"dw{index}_bn")(x)
        x = L.Activation("relu", name=f"dw{index}_relu")(x)
        x = _conv_bn(x, width, 1, 1, f"pw{index}")
    x = L.Dropout(0.2, name="dropout")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    outputs = L.Dense(classes, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="ds_cnn")


def _resnet8_body(inputs, x, classes, width, name) -> keras.Model:
    l2 = keras.regularizers.l2(1e-4)

    def conv(y, filters, kernel, strides, layer_name):
        return L.Conv2D(
            filters,
            kernel,
            strides=strides,
            padding="same",
            kernel_initializer="he_normal",
            kernel_regularizer=l2,
            name=layer_name,
        )(y)

    x = conv(x, width, 3, 1, "conv1")
    x = L.BatchNormalization(momentum=BN_MOMENTUM, name="conv1_bn")(x)
    x = L.Activation("relu", name="conv1_relu")(x)
    for stack, filters in enumerate((width, width * 2, width * 4), start=1):
        strides = 1 if stack == 1 else 2
        y = conv(x, filters, 3, strides, f"stack{stack}_conv1")
        y = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"stack{stack}_bn1")(y)
        y = L.Activation("relu", name=f"stack{stack}_relu1")(y)
        y = conv(y, filters, 3, 1, f"stack{stack}_conv2")
        y = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"stack{stack}_bn2")(y)
        shortcut = x if stack == 1 else conv(x, filters, 1, strides, f"stack{stack}_shortcut")
        x = L.Add(name=f"stack{stack}_add")([shortcut, y])
        x = L.Activation("relu", name=f"stack{stack}_relu2")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    outputs = L.Dense(classes, activation="softmax", kernel_regularizer=l2, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def resnet8(input_shape=(16, 16, 1), classes=10, width=16) -> keras.Model:
    """MLPerf Tiny's image-classification ResNet-8: three residual stacks with BN and adds.

    Stacks of ``width``, ``2*width`` and ``4*width`` channels (16/32/64 in MLPerf Tiny); the second
    and third halve the resolution and take a strided 1x1 convolution as shortcut.

    Args:
        input_shape: the input (H, W, C).
        classes: output classes.
        width: channels of the first stack.

    Example:
        >>> resnet8().count_params() > 70_000
        True
    """
    inputs = keras.Input(input_shape, name="image")
    return _resnet8_body(inputs, inputs, classes, width, "resnet8")


def resnet8_32(input_shape=(16, 16, 1), classes=10, width=32, size=32) -> keras.Model:
    """ResNet-8 on its inputs upsampled to ``size`` x ``size`` (nearest): the compute-bound reference.

    The 16x16 digits upsampled to MLPerf Tiny's 32x32, with stacks of 32/64/128 channels (twice
    MLPerf's width), cost about 48 M multiply-adds, so the int8 latency is dominated by the
    convolutions (about 0.28 ms on one AVX-512 server thread): the model on which filter pruning's
    speed-up is measured (``benchmarks/bench_filter_pruning.py``).

    Args:
        input_shape: the input (H, W, C); ``size`` must be a multiple of H and W.
        classes: output classes.
        width: channels of the first stack (16 is MLPerf Tiny's ResNet-8).
        size: the side the input is upsampled to.

    Example:
        >>> resnet8_32().layers[1].output_shape
        (None, 32, 32, 1)
    """
    inputs = keras.Input(input_shape, name="image")
    factor = (size // int(input_shape[0]), size // int(input_shape[1]))
    x = L.UpSampling2D(factor, name="upsample")(inputs) if factor != (1, 1) else inputs
    return _resnet8_body(inputs, x, classes, width, "resnet8_32")


def mobilenet(
    input_shape=(16, 16, 1),
    classes=10,
    width=0.5,
    blocks=((64, 1), (128, 2), (128, 1), (256, 2), (256, 1)),
) -> keras.Model:
    """MobileNetV1 (as in MLPerf Tiny's visual wake words), shortened for 16x16 inputs.

    A 3x3 convolution of ``32*width`` channels, then depthwise (3x3 + BN + ReLU6) and pointwise
    (1x1 + BN + ReLU6) blocks, global average pooling, dropout and a dense classifier.

    Args:
        input_shape: the input (H, W, C).
        classes: output classes.
        width: the width multiplier (alpha) applied to every layer's channels.
        blocks: ``(pointwise filters, depthwise stride)`` of each block before the multiplier.

    Example:
        >>> mobilenet(width=0.25).count_params() < 30_000
        True
    """

    def scaled(filters):
        return max(8, int(filters * width))

    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn(inputs, scaled(32), 3, 1, "conv1", activation="relu6")
    for index, (filters, strides) in enumerate(blocks, start=1):
        x = L.DepthwiseConv2D(
            3, strides=strides, padding="same", use_bias=False, name=f"dw{index}"
        )(x)
        x = L.BatchNormalization(momentum=BN_MOMENTUM, name=f"dw{index}_bn")(x)
        x = L.ReLU(6.0, name=f"dw{index}_relu")(x)
        x = _conv_bn(x, scaled(filters), 1, 1, f"pw{index}", activation="relu6")
    x = L.GlobalAveragePooling2D(name="pool")(x)
    x = L.Dropout(0.2, name="dropout")(x)
    outputs = L.Dense(classes, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="mobilenet")


ZOO = {
    "digits_cnn": digits_cnn,
    "ds_cnn": ds_cnn,
    "resnet8": resnet8,
    "resnet8_32": resnet8_32,
    "mobilenet": mobilenet,
}


def ic_resnet8(input_shape=(32, 32, 3), classes=10) -> keras.Model:
    """MLPerf Tiny's image-classification ResNet-8 at its real size: 32x32x3 (CIFAR-10), 10 classes.

    Example:
        >>> ic_resnet8().count_params()
        78666
    """
    model = resnet8(input_shape=input_shape, classes=classes, width=16)
    return keras.Model(model.inputs, model.outputs, name="ic_resnet8")


# The real-size references (see tfedge.models.reference), built by name with ``build``.
REFERENCE = {
    "kws_ds_cnn": kws_ds_cnn,
    "vww_mobilenet": vww_mobilenet,
    "ic_resnet8": ic_resnet8,
    "ad_autoencoder": ad_autoencoder,
    "mobilenet_v2": mobilenet_v2,
}

HERE = Path(__file__).resolve().parent


def recipe_path(name: str) -> Path:
    """The recipe ``models/recipes/<name>.yaml`` of a zoo model.

    Example:
        >>> recipe_path("resnet8").name
        'resnet8.yaml'
    """

    path = HERE / "recipes" / f"{name}.yaml"
    if not path.is_file():
        raise OptimizationError(
            f"no recipe for {name!r} in {path.parent}",
            f"recipes exist for: {', '.join(sorted(p.stem for p in path.parent.glob('*.yaml')))}",
        )
    return path


def expected(name: str | None = None) -> dict:
    """The expected figures of ``models/expected.json`` (all models, or one).

    Each entry holds ``float_accuracy``, ``int8_accuracy``, ``int8_size_bytes``, ``int8_p50_ms`` and
    ``tolerance`` (``accuracy``: absolute, ``size`` and ``latency``: relative).

    Example:
        >>> expected("resnet8")["tolerance"]["accuracy"]
        0.02
    """
    figures = json.loads((HERE / "expected.json").read_text())
    return figures if name is None else figures[name]


def build(name: str, **kwargs) -> keras.Model:
    """Build a zoo model by name (``digits_cnn``, ``ds_cnn``, ``resnet8``, ``resnet8_32``, ``mobilenet``).

    Args:
        name: the zoo name.
        **kwargs: the builder's arguments (``input_shape``, ``classes``, ``width``...).

    Raises:
        OptimizationError: for an unknown name (the message lists the zoo).

    Example:
        >>> build("mobilenet", input_shape=(32, 32, 3), width=0.25).input_shape
        (None, 32, 32, 3)
    """

    builders = {**ZOO, **REFERENCE}
    if name not in builders:
        raise OptimizationError(
            f"unknown zoo model {name!r}; expected one of {', '.join(sorted(builders))}",
            "the digits references train in seconds; the real-size ones (kws_ds_cnn, "
            "vww_mobilenet, ic_resnet8, ad_autoencoder, mobilenet_v2) are for measuring costs",
        )
    return builders[name](**kwargs)


def train(
    model: keras.Model,
    train_data,
    val_data=None,
    epochs: int = 20,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    seed: int = 0,
) -> keras.Model:
    """Compile and fit a zoo model on a :class:`tfedge.core.data.Dataset` (quietly, seeded)."""
    keras.utils.set_random_seed(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    validation = (val_data.x, val_data.y) if val_data is not None else None
    model.fit(
        train_data.x,
        train_data.y,
        epochs=epochs,
        batch_size=batch_size,
        validation_data=validation,
        verbose=0,
    )
    return model


def train_settings(name: str) -> dict:
    """How the zoo trains ``name`` from scratch (``epochs``, ``batch_size``, ``learning_rate``).

    They are the ``model`` section of the model's recipe (``model: {name, epochs, ...}``).

    Example:
        >>> train_settings("resnet8")["epochs"]
        20
    """

    model = load_recipe(recipe_path(name))["model"]
    return {k: v for k, v in model.items() if k != "name"} if isinstance(model, dict) else {}
