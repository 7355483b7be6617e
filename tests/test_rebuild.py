"""Keras 3 models rebuilt as tf_keras models: same layers, same weights, same outputs."""

import numpy as np
import pytest

from tfedge.core.backend import is_keras2_model, keras, keras3
from tfedge.core.errors import OptimizationError
from tfedge.models.rebuild import to_keras2

K = keras3
L = keras3.layers


def _randomize_bn(model):
    rng = np.random.default_rng(0)
    for layer in model._flatten_layers():
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([rng.random(w.shape).astype(np.float32) + 0.5 for w in layer.weights])


@pytest.fixture(scope="module")
def keras3_file(tmp_path_factory):
    """A Keras 3 functional model with every layer kind of the brief, a nested functional model and
    a nested Sequential, saved by Keras 3."""
    inner_in = K.Input((16, 16, 8), name="inner_in")
    inner = K.Model(
        inner_in,
        L.BatchNormalization(name="inner_bn")(L.Conv2D(8, 1, name="inner_conv")(inner_in)),
        name="inner",
    )
    head = K.Sequential(
        [
            K.Input((8,)),
            L.Dense(16, activation="relu", name="head_fc"),
            L.Dense(10, activation="softmax", name="head_out"),
        ],
        name="head",
    )
    x = K.Input((16, 16, 1), name="image")
    y = L.Rescaling(0.5, offset=-0.25, name="rescale")(x)
    y = L.Conv2D(8, 3, padding="same", kernel_regularizer="l2", name="conv")(y)
    y = L.BatchNormalization(name="bn")(y)
    y = L.Activation("relu6", name="act")(y)
    a = L.Add(name="add")([y, inner(y)])
    d = L.DepthwiseConv2D(3, padding="same", name="dw")(a)
    s = L.SeparableConv2D(8, 3, padding="same", name="sep")(a)
    c = L.MaxPooling2D(name="pool")(L.Concatenate(name="cat")([d, s]))
    t = L.Conv2DTranspose(4, 2, strides=2, name="deconv")(c)
    u = L.Conv2D(4, 1, name="pw")(L.UpSampling2D(name="upsample")(c))
    v = L.LeakyReLU(0.2, name="leaky")(L.Concatenate(name="cat2")([t, u]))
    g = L.Dropout(0.3, name="drop")(L.GlobalAveragePooling2D(name="gap")(v))
    model = K.Model(x, head(g), name="keras3_net")
    _randomize_bn(model)
    path = tmp_path_factory.mktemp("keras3") / "net.keras"
    model.save(path)
    return path


def test_functional_model_from_a_keras3_file(keras3_file, tmp_path):
    from tfedge.core.loading import load_model

    loaded = load_model(keras3_file)
    assert loaded.keras_version == 3
    model = to_keras2(loaded)
    assert is_keras2_model(model)
    assert [layer.name for layer in model.layers] == [layer.name for layer in loaded.model.layers]
    x = np.random.default_rng(1).random((4, 16, 16, 1), dtype=np.float32)
    np.testing.assert_allclose(model(x).numpy(), np.asarray(loaded.model(x)), atol=1e-5)
    assert model.get_layer("conv").kernel_regularizer is not None
    assert model.get_layer("leaky").alpha == pytest.approx(0.2)
    assert isinstance(model.get_layer("inner"), keras.Model)
    assert isinstance(model.get_layer("head"), keras.Model)
    # and the tf_keras model saves and loads as Keras 2
    model.save(tmp_path / "k2.keras")
    again = load_model(tmp_path / "k2.keras")
    assert again.keras_version == 2
    np.testing.assert_allclose(again.model(x).numpy(), model(x).numpy(), atol=1e-6)


def test_a_path_is_accepted_and_stages_run_on_the_result(keras3_file):
    from tfedge.models.filter_pruning import shrink

    model = to_keras2(str(keras3_file))
    small, plan = shrink(model, ratio=0.5)
    assert small.get_layer("sep").filters == 4
    assert plan.params_after < plan.params_before


def test_sequential(tmp_path):
    from tfedge.core.loading import load_model

    seq = K.Sequential(
        [
            K.Input((16, 16, 1)),
            L.Conv2D(4, 3, activation="relu"),
            L.BatchNormalization(),
            L.Flatten(),
            L.Dense(10, activation="softmax"),
        ]
    )
    _randomize_bn(seq)
    seq.save(tmp_path / "seq.keras")
    model = to_keras2(load_model(tmp_path / "seq.keras").model)
    x = np.random.default_rng(2).random((2, 16, 16, 1), dtype=np.float32)
    np.testing.assert_allclose(model(x).numpy(), np.asarray(seq(x)), atol=1e-5)


def test_a_keras2_model_is_returned_as_it_is(trained_digits_cnn):
    assert to_keras2(trained_digits_cnn) is trained_digits_cnn


def test_subclassed_models_are_refused_with_the_way_out():
    class Net(K.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(3)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 4), np.float32))
    with pytest.raises(OptimizationError, match="subclassed") as info:
        to_keras2(net)
    assert "functional" in info.value.hint and "tfedge convert" in info.value.hint


def test_layers_tf_keras_lacks_are_named():
    @keras3.saving.register_keras_serializable(package="tfedge_tests")
    class Twice(L.Layer):
        def call(self, x):
            return x * 2.0

    inputs = K.Input((4,))
    model = K.Model(inputs, L.Dense(2)(Twice(name="twice")(inputs)))
    with pytest.raises(OptimizationError, match="'twice' \\(Twice\\)") as info:
        to_keras2(model)
    assert "tfedge convert" in info.value.hint


def test_ops_calls_are_refused():
    inputs = K.Input((4,))
    model = K.Model(inputs, L.Dense(2)(keras3.ops.relu(inputs)))
    with pytest.raises(OptimizationError, match="keras.ops call"):
        to_keras2(model)


def test_fold_batch_norms_keeps_outputs_and_drops_foldable_bns():
    from tfedge.models.graph import fold_batch_norms

    K2 = keras.layers
    inputs = keras.Input((8, 8, 2))
    x = K2.BatchNormalization(name="bn_c")(K2.Conv2D(4, 3, use_bias=False, name="c")(inputs))
    x = K2.BatchNormalization(name="bn_dw")(K2.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x))
    x = K2.BatchNormalization(name="bn_sep")(K2.SeparableConv2D(6, 1, name="sep")(x))
    r = K2.Conv2D(6, 1, activation="relu", name="relu_conv")(x)
    r = K2.BatchNormalization(name="bn_after_relu")(r)  # not foldable: a ReLU in between
    shared = K2.Conv2D(6, 1, name="two_uses")(r)
    y = K2.Add(name="add")([K2.BatchNormalization(name="bn_shared")(shared), shared])
    y = K2.Flatten()(y)
    y = K2.BatchNormalization(name="bn_fc")(K2.Dense(5, name="fc")(y))
    model = keras.Model(inputs, y)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, K2.BatchNormalization):
            layer.set_weights([rng.random(w.shape).astype(np.float32) + 0.5 for w in layer.weights])
    folded = fold_batch_norms(model)
    names = {layer.name for layer in folded.layers}
    assert not names & {"bn_c", "bn_dw", "bn_sep", "bn_fc"}
    assert {"bn_after_relu", "bn_shared"} <= names
    x = rng.random((3, 8, 8, 2), dtype=np.float32)
    np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)
