"""Real-size reference models: MLPerf Tiny's four at their published sizes, and MobileNetV2 1.0.

The builders follow the MLPerf Tiny v1.x reference training code layer for layer (kernel sizes,
strides, biases, batch norms, pooling), so their parameter counts are the published ones; the
int8 sizes are those of a fully-int8 conversion by tfedge. Nothing is downloaded: every model
starts from random weights (only costs are measured on them; accuracies come from the digits).

==================  ===============  =========  =======  ==========  =========  =============
name                task             input      classes  parameters  int8 file  MLPerf's file
==================  ===============  =========  =======  ==========  =========  =============
``kws_ds_cnn``      keyword spotting 49x10x1    12       24,908      41.4 KB    about 53 KB
``vww_mobilenet``   visual wake w.   96x96x3    2        221,794     288.7 KB   about 325 KB
``ic_resnet8``      image classes    32x32x3    10       78,666      91.9 KB    about 96 KB
``ad_autoencoder``  anomalies        640        640      269,992     287.9 KB   about 270 KB
``mobilenet_v2``    ImageNet         224x224x3  1,000    3,538,984   3.94 MB    about 3.8 MB
==================  ===============  =========  =======  ==========  =========  =============

The parameter counts are the reference architectures' exactly. tfedge's fully-int8 files (int8
input and output, batch 1) lie within 25 % of the published reference files: those differ in
their I/O and operator choices (the keyword-spotting reference is the furthest off, 22 % larger).

MLPerf Tiny's ResNet-8 is the zoo's own ``resnet8`` at 32x32x3 (``tfedge.models.zoo.ic_resnet8``);
``tfedge.models.zoo.REFERENCE`` names all five for ``zoo.build``.

Example:
    >>> from tfedge.models.reference import kws_ds_cnn
    >>> kws_ds_cnn().count_params()
    24908
"""

from tfedge.core.backend import keras

__all__ = [
    "kws_ds_cnn",
    "vww_mobilenet",
    "ad_autoencoder",
    "mobilenet_v2",
    "PUBLISHED",
]

L = keras.layers


def _l2():
    return keras.regularizers.l2(1e-4)


def kws_ds_cnn(input_shape=(49, 10, 1), classes=12) -> keras.Model:
    """MLPerf Tiny's keyword-spotting DS-CNN (small) on 49x10 MFCC features, 12 classes.

    A 10x4 convolution of stride 2 (64 channels), four depthwise-separable blocks (3x3 depthwise
    and 1x1 pointwise, each with batch norm and ReLU), dropout, a 25x5 average pool and a softmax.

    Example:
        >>> kws_ds_cnn().output_shape
        (None, 12)
    """
    inputs = keras.Input(input_shape, name="mfcc")
    x = L.Conv2D(
        64, (10, 4), strides=(2, 2), padding="same", kernel_regularizer=_l2(), name="conv1"
    )(inputs)
    x = L.BatchNormalization(name="conv1_bn")(x)
    x = L.Activation("relu", name="conv1_relu")(x)
    x = L.Dropout(0.2, name="dropout1")(x)
    for index in range(1, 5):
        x = L.DepthwiseConv2D(3, padding="same", kernel_regularizer=_l2(), name=f"dw{index}")(x)
        x = L.BatchNormalization(name=f"dw{index}_bn")(x)
        x = L.Activation("relu", name=f"dw{index}_relu")(x)
        x = L.Conv2D(64, 1, padding="same", kernel_regularizer=_l2(), name=f"pw{index}")(x)
        x = L.BatchNormalization(name=f"pw{index}_bn")(x)
        x = L.Activation("relu", name=f"pw{index}_relu")(x)
    x = L.Dropout(0.4, name="dropout2")(x)
    x = L.AveragePooling2D(pool_size=(int(x.shape[1]), int(x.shape[2])), name="pool")(x)
    x = L.Flatten(name="flatten")(x)
    outputs = L.Dense(classes, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="kws_ds_cnn")


def vww_mobilenet(input_shape=(96, 96, 3), classes=2, alpha=0.25) -> keras.Model:
    """MLPerf Tiny's visual-wake-words MobileNetV1 (alpha 0.25) at 96x96x3, person or not.

    A 3x3 convolution of stride 2, thirteen depthwise-separable blocks (with biases, batch norm and
    ReLU, as MLPerf's reference), an average pool over the last feature map and a softmax.

    Example:
        >>> vww_mobilenet().count_params()
        221794
    """
    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
    blocks += [(512, 1)] * 5 + [(1024, 2), (1024, 1)]

    def conv_block(x, filters, kernel, strides, name, depthwise=False):
        if depthwise:
            layer = L.DepthwiseConv2D(
                kernel, strides=strides, padding="same", kernel_regularizer=_l2(), name=name
            )
        else:
            layer = L.Conv2D(
                filters,
                kernel,
                strides=strides,
                padding="same",
                kernel_regularizer=_l2(),
                name=name,
            )
        x = L.BatchNormalization(name=f"{name}_bn")(layer(x))
        return L.Activation("relu", name=f"{name}_relu")(x)

    inputs = keras.Input(input_shape, name="image")
    x = conv_block(inputs, int(32 * alpha), 3, 2, "conv1")
    for index, (filters, strides) in enumerate(blocks, start=1):
        x = conv_block(x, None, 3, strides, f"dw{index}", depthwise=True)
        x = conv_block(x, int(filters * alpha), 1, 1, f"pw{index}")
    x = L.AveragePooling2D(pool_size=(int(x.shape[1]), int(x.shape[2])), name="pool")(x)
    x = L.Flatten(name="flatten")(x)
    outputs = L.Dense(classes, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs, name="vww_mobilenet")


def ad_autoencoder(inputs: int = 640, width: int = 128, code: int = 8) -> keras.Model:
    """MLPerf Tiny's anomaly-detection fully connected autoencoder on 640 inputs (5 frames x 128
    mel bins): four dense layers of 128 (batch norm, ReLU), an 8-wide bottleneck, four of 128 and
    a linear reconstruction; the anomaly score is the reconstruction error.

    Example:
        >>> ad_autoencoder().count_params()
        269992
    """
    x = features = keras.Input((inputs,), name="features")
    for index, units in enumerate([width] * 4 + [code] + [width] * 4, start=1):
        x = L.Dense(units, name=f"dense{index}")(x)
        x = L.BatchNormalization(name=f"dense{index}_bn")(x)
        x = L.Activation("relu", name=f"dense{index}_relu")(x)
    outputs = L.Dense(inputs, name="reconstruction")(x)
    return keras.Model(features, outputs, name="ad_autoencoder")


def mobilenet_v2(input_shape=(224, 224, 3), classes=1000, alpha=1.0) -> keras.Model:
    """MobileNetV2 (alpha 1.0) at 224x224x3 with 1,000 classes, Keras' own, from random weights.

    Example:
        >>> mobilenet_v2().count_params()  # doctest: +SKIP
        3538984
    """
    return keras.applications.MobileNetV2(
        input_shape=input_shape, alpha=alpha, classes=classes, weights=None
    )


# The published figures: the reference architectures' parameters and the approximate sizes of the
# published int8 .tflite files (MLPerf Tiny v1.x's reference models; MobileNetV2 1.0 224's int8).
PUBLISHED = {
    "kws_ds_cnn": {"params": 24_908, "int8_bytes": 53_000},
    "vww_mobilenet": {"params": 221_794, "int8_bytes": 325_000},
    "ic_resnet8": {"params": 78_666, "int8_bytes": 96_000},
    "ad_autoencoder": {"params": 269_992, "int8_bytes": 270_000},
    "mobilenet_v2": {"params": 3_538_984, "int8_bytes": 3_800_000},
}
