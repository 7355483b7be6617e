"""models.wrap / callbacks / step / finalize: compression inside the user's own training code.

Each case is a plain user script: a trained CNN with a depthwise layer (tf_keras or Keras 3),
``wrap``, the user's own ``compile`` and ``fit``, ``finalize``, then the real fully-int8
conversion, read back from the ``.tflite`` file with LiteRT.
"""

import subprocess
import sys

import numpy as np
import pytest

from tfedge.core.errors import OptimizationError

# The user's fine-tune: 3 epochs, 6 for PCQAT (its clusters start once the sparsity is reached).
FIT_EPOCHS = {"prune": 4, "cluster": 3, "qat": 3, "pcqat": 6}
SCHEMES = {
    "prune": {"prune": 0.8},
    "cluster": {"cluster": 16},
    "qat": {"qat": True},
    "pcqat": {"prune": 0.8, "cluster": 16, "qat": True},
}
# Accuracy the int8 file may lose against the float model after so short a fine-tune.
TOLERANCE = {"prune": 0.03, "cluster": 0.02, "qat": 0.01, "pcqat": 0.04}


def _cnn(api, train, with_bn=False):
    layers = api.layers
    api.utils.set_random_seed(0)
    inputs = api.Input(train.x.shape[1:])
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    if with_bn:
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
        x = layers.BatchNormalization(name="dw_bn")(x)
        x = layers.ReLU(name="dw_relu")(x)
    else:
        x = layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(64, activation="relu", name="fc1")(x)
    outputs = layers.Dense(10, activation="softmax", name="logits")(x)
    model = api.Model(inputs, outputs, name="user_cnn")
    model.compile(
        api.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(train.x, train.y, epochs=10, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def user_models(digits):
    """``{"keras3": model, "tf_keras": model}``: the same CNN trained in each Keras."""
    from tfedge.core.backend import keras, keras3

    train, _ = digits
    return {"keras3": _cnn(keras3, train), "tf_keras": _cnn(keras, train)}


def _api(flavour):
    from tfedge.core.backend import keras, keras3

    return keras3 if flavour == "keras3" else keras


def _kernels(blob: bytes) -> dict:
    """Every int8 kernel of a .tflite: ``{op index: (op name, array)}`` (weights of conv/FC ops)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=blob)
    interpreter.allocate_tensors()
    out = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            out[op["index"]] = (op["op_name"], interpreter.get_tensor(op["inputs"][1]))
    return out


def _per_channel_values(name: str, kernel: np.ndarray) -> int:
    """The most distinct int8 values in one output channel (DEPTHWISE: the last axis)."""
    axis = -1 if name == "DEPTHWISE_CONV_2D" else 0
    moved = np.moveaxis(kernel, axis, 0).reshape(kernel.shape[axis], -1)
    return max(np.unique(row).size for row in moved)


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_own_fit_then_int8(user_models, digits, tflite_accuracy, tmp_path, flavour, scheme):
    from tfedge import models
    from tfedge.converters import convert
    from tfedge.core.backend import is_keras3_model

    train, test = digits
    api, model = _api(flavour), user_models[flavour]
    options = SCHEMES[scheme]
    m = models.wrap(model, schedule="polynomial", **options)
    m.compile(api.optimizers.Adam(5e-4), "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(
        train.x,
        train.y,
        epochs=FIT_EPOCHS[scheme],
        batch_size=32,
        verbose=0,
        callbacks=models.callbacks(m),
    )
    final = models.finalize(m)
    assert is_keras3_model(final) == (flavour == "keras3")
    blob = convert(final, calib=train)  # raises unless every operator is int8
    kernels = _kernels(blob)
    assert {name for name, _ in kernels.values()} == {
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "FULLY_CONNECTED",
    }
    for name, kernel in kernels.values():
        if "prune" in options:
            assert np.mean(kernel == 0) >= 0.79, (name, np.mean(kernel == 0))
        if "cluster" in options:
            # 16 shared values (and the zeros of a pruned kernel) per int8 channel.
            assert _per_channel_values(name, kernel) <= 16 + ("prune" in options), name
        if scheme == "qat":
            assert np.mean(kernel == 0) < 0.1
    float_blob = convert(model, mode="float32")
    floor = tflite_accuracy(float_blob, test, tmp_path, "float.tflite") - TOLERANCE[scheme]
    assert tflite_accuracy(blob, test, tmp_path) >= floor


def _qat_finalized(model, train):
    """``model`` wrapped for QAT, fitted one short epoch with tfedge's callbacks, finalized."""
    from tfedge import models

    m = models.wrap(model, qat=True)
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(train.x[:256], train.y[:256], epochs=1, verbose=0, callbacks=models.callbacks(m))
    return models.finalize(m)


def test_keras3_qat_saves_and_loads_as_keras(user_models, digits, tmp_path, train_npz):
    from tfedge.core.backend import keras3
    from tfedge.core.loading import load_model

    train, test = digits
    final = _qat_finalized(user_models["keras3"], train)
    path = tmp_path / "qat.keras"
    final.save(path)
    for loaded in (keras3.saving.load_model(path), load_model(path).model):
        assert [type(layer).__name__ for layer in loaded.layers] == [
            type(layer).__name__ for layer in final.layers
        ]
        assert "QuantDepthwiseConv2D" in {type(layer).__name__ for layer in loaded.layers}
        np.testing.assert_allclose(
            loaded.predict(test.x[:16], verbose=0), final.predict(test.x[:16], verbose=0), atol=1e-6
        )
    # A fresh process (the command line) knows tfedge's Keras 3 QAT layers too.
    out = tmp_path / "qat.tflite"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfedge",
            "convert",
            str(path),
            "--calib",
            str(train_npz),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fully integer: yes" in done.stdout
    # And tfedge's loader alone, without tfedge.models imported (what analyze and bench use).
    load = "from tfedge.core.loading import load_model; print(load_model({!r}).model.name)"
    done = subprocess.run(
        [sys.executable, "-c", load.format(str(path))], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == final.name


def test_tf_keras_qat_loads_with_plain_tf_keras(user_models, digits, tmp_path):
    from tfedge.core.backend import keras

    train, test = digits
    final = _qat_finalized(user_models["tf_keras"], train)
    path = tmp_path / "qat.keras"
    final.save(path)
    loaded = keras.models.load_model(path)  # no quantize_scope: tfedge.models registered it
    assert "QuantizeWrapperV2" in {type(layer).__name__ for layer in loaded.layers}
    np.testing.assert_allclose(
        loaded.predict(test.x[:16], verbose=0), final.predict(test.x[:16], verbose=0), atol=1e-6
    )


def test_keras3_batch_norm_is_folded_before_qat(digits):
    from tfedge import models
    from tfedge.converters import convert
    from tfedge.core.backend import keras3
    from tfedge.core.inspector import inspect_model
    from tfedge.models.fake_quant import fold_batch_norms

    train, test = digits
    model = _cnn(keras3, train, with_bn=True)
    folded = fold_batch_norms(model)
    assert "dw_bn" not in [layer.name for layer in folded.layers]
    np.testing.assert_allclose(
        folded.predict(test.x[:32], verbose=0), model.predict(test.x[:32], verbose=0), atol=1e-5
    )
    m = models.wrap(model, qat=True)
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(train.x[:256], train.y[:256], epochs=1, verbose=0, callbacks=models.callbacks(m))
    ops = inspect_model(convert(models.finalize(m), calib=train))["ops"]
    assert set(ops) == {
        "CONV_2D",
        "DEPTHWISE_CONV_2D",
        "MAX_POOL_2D",
        "RESHAPE",
        "FULLY_CONNECTED",
        "SOFTMAX",
    }


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_gradient_tape_loop_with_step(user_models, digits, flavour):
    from tfedge import models
    from tfedge.core.backend import tf
    from tfedge.models.pruning import weight_sparsity

    train, _ = digits
    api = _api(flavour)
    steps = 40
    m = models.wrap(user_models[flavour], prune=0.6, steps=steps)
    optimizer = api.optimizers.Adam(5e-4)
    loss_fn = api.losses.SparseCategoricalCrossentropy()
    for index in range(steps):
        x = train.x[index * 32 % 1376 :][:32]
        y = train.y[index * 32 % 1376 :][:32]
        models.step(m)
        with tf.GradientTape() as tape:
            loss = loss_fn(y, m(x, training=True))
        grads = tape.gradient(loss, m.trainable_weights)
        optimizer.apply_gradients(zip(grads, m.trainable_weights))
    final = models.finalize(m)
    assert weight_sparsity(final) == pytest.approx(0.6, abs=0.005)


def test_polynomial_schedule_in_own_loop_needs_steps(user_models):
    from tfedge import models

    m = models.wrap(user_models["keras3"], prune=0.5)
    with pytest.raises(OptimizationError, match="number of training steps") as error:
        models.step(m)
    assert "steps=N" in error.value.hint


def test_a_layer_keras3_qat_cannot_wrap_is_named(digits):
    from tfedge import models
    from tfedge.core.backend import keras3

    inputs = keras3.Input((16, 16, 1))
    x = keras3.layers.SeparableConv2D(8, 3, name="sep")(inputs)
    outputs = keras3.layers.Dense(10)(keras3.layers.Flatten()(x))
    model = keras3.Model(inputs, outputs)
    with pytest.raises(OptimizationError, match="'sep' \\(SeparableConv2D\\)") as error:
        models.wrap(model, qat=True)
    assert "skip=['sep']" in error.value.hint
    assert models.wrap(model, qat=True, skip=["sep"]) is not None


@pytest.mark.parametrize(
    "options, message",
    [
        ({}, "no compression"),
        ({"prune": 1.5}, "prune=1.5"),
        ({"cluster": 1}, "cluster=1"),
        ({"prune": 0.5, "schedule": "cubic"}, "schedule='cubic'"),
        ({"prune": 0.5, "structure": "4:2"}, "4:2"),
        ({"prune": 0.5, "frequency": 0}, "frequency=0"),
        ({"cluster": 16, "preserve": "sparse"}, "preserve='sparse'"),
        ({"cluster": 16, "preserve": "clusters"}, "QAT only"),
        ({"cluster": 16, "cluster_init": "linear"}, "tfmot does not cluster a Keras 3 model"),
    ],
)
def test_bad_options(user_models, options, message):
    from tfedge import models

    with pytest.raises(OptimizationError, match=message):
        models.wrap(user_models["keras3"], **options)


def test_callbacks_of_a_model_wrap_did_not_make(user_models):
    from tfedge import models

    with pytest.raises(OptimizationError, match="not made by tfedge.models.wrap"):
        models.callbacks(user_models["tf_keras"])
