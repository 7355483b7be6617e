"""Low-rank factorization: exact on low-rank weights, smaller, accurate after fine-tuning, int8-ready."""

import numpy as np
import pytest

from tfedge.core.backend import keras
from tfedge.core.errors import OptimizationError
from tfedge.models.factorization import choose_rank, decompose, factorize

L = keras.layers


def low_rank(shape, rank, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(shape[0], rank)) @ rng.normal(size=(rank, shape[1]))).astype(
        np.float32
    )


def rank3_model() -> keras.Model:
    inputs = keras.Input((8, 8, 6), name="x")
    x = L.Conv2D(24, 1, strides=2, padding="same", activation="relu", name="pw")(inputs)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(32, activation="tanh", name="fc")(x)
    outputs = L.Dense(5, name="out")(x)
    model = keras.Model(inputs, outputs)
    pw = model.get_layer("pw")
    pw.set_weights([low_rank((6, 24), 3, 0).reshape(1, 1, 6, 24), np.linspace(-1, 1, 24)])
    fc = model.get_layer("fc")
    fc.set_weights([low_rank((4 * 4 * 24, 32), 3, 1) * 0.05, np.zeros(32)])
    return model


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"rank": 2}, 2),
        ({"rank": 99}, 4),
        ({"ratio": 0.5}, 2),
        ({"ratio": 0.1}, 1),
        ({"energy": 0.85}, 1),
        ({"energy": 0.9}, 2),
        ({"energy": 0.99}, 2),
        ({"energy": 1.0}, 3),
    ],
)
def test_choose_rank(kwargs, expected):
    assert choose_rank(np.array([3.0, 1.0, 0.1, 0.0]), **kwargs) == expected


def test_low_rank_layers_are_split_exactly():
    model = rank3_model()
    thin, report = decompose(model, rank=3, skip=["out"])
    applied = {r.layer: r for r in report if r.applied}
    assert set(applied) == {"pw", "fc"}
    assert applied["fc"].energy == pytest.approx(1.0)
    assert thin.get_layer("pw_svd").strides == (2, 2) and thin.get_layer("pw").strides == (1, 1)
    assert thin.get_layer("fc_svd").units == 3 and not thin.get_layer("fc_svd").use_bias
    x = np.random.default_rng(2).random((4, 8, 8, 6)).astype(np.float32)
    np.testing.assert_allclose(thin(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)
    assert thin.count_params() < model.count_params()


def test_layers_that_would_grow_are_left_alone():
    model = rank3_model()
    thin, report = decompose(model, ratio=1.0)
    assert thin is model or thin.count_params() == model.count_params()
    assert not any(r.applied for r in report)
    with pytest.raises(OptimizationError, match="would not shrink") as info:
        factorize(model, None, epochs=0, ratio=1.0)
    assert "energy=" in info.value.hint


def test_skip_and_sequential():
    model = keras.Sequential(
        [L.Dense(64, input_shape=(32,), name="a"), L.Dense(64, name="b"), L.Dense(3, name="c")]
    )
    thin, report = decompose(model, rank=4, skip=["b"])
    assert "a_svd" in [layer.name for layer in thin.layers]
    assert "b_svd" not in [layer.name for layer in thin.layers]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"rank": 0}, "positive integer"),
        ({"ratio": 1.5}, "out of range"),
        ({"energy": 0}, "out of range"),
    ],
)
def test_bad_arguments(kwargs, words):
    with pytest.raises(OptimizationError, match=words):
        decompose(rank3_model(), **kwargs)


def test_models_without_dense_are_refused():
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, L.Conv2D(4, 3)(inputs))
    with pytest.raises(OptimizationError, match="no Dense or 1x1 Conv2D"):
        decompose(model)


def test_factorize_digits_holds_accuracy_and_converts(
    trained_digits_cnn, digits, tmp_path, accuracy_of
):
    from tfedge.converters import convert
    from tfedge.core.inspector import inspect_model
    from tfedge.core.loading import load_model

    train, test = digits
    before = accuracy_of(trained_digits_cnn, test)
    thin = factorize(
        trained_digits_cnn, train, test, energy=0.8, epochs=3, teacher=trained_digits_cnn
    )
    assert thin.count_params() < trained_digits_cnn.count_params() * 0.8
    assert "fc1_svd" in [layer.name for layer in thin.layers]
    assert accuracy_of(thin, test) >= before - 0.03
    path = tmp_path / "thin.keras"
    thin.save(path)
    loaded = load_model(path).model
    np.testing.assert_allclose(loaded(test.x[:4]).numpy(), thin(test.x[:4]).numpy(), atol=1e-6)
    info = inspect_model(convert(loaded, calib=train))
    assert info["fully_integer"]
    assert info["ops"]["FULLY_CONNECTED"] >= 3
