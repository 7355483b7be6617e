"""Magnitude pruning: real sparsity in the int8 model, accuracy kept, structure, layer choice."""

import gzip

import numpy as np
import pytest

from tfedge.core.errors import OptimizationError


@pytest.fixture(scope="module")
def pruned(trained_digits_cnn, digits):
    from tfedge.models.pruning import prune

    train, test = digits
    return prune(
        trained_digits_cnn, train, test, sparsity=0.8, teacher=trained_digits_cnn, epochs=8
    )


@pytest.fixture(scope="module")
def pruned_int8(pruned, digits):
    from tfedge.converters import convert

    return convert(pruned, calib=digits[0])


def test_pruned_int8_model_is_sparse_fully_integer_and_accurate(
    pruned_int8, trained_digits_cnn, digits, accuracy_of, tmp_path, tflite_accuracy
):
    from tfedge.core.inspector import inspect_model

    info = inspect_model(pruned_int8)
    assert info["fully_integer"]
    assert info["input"][0]["dtype"] == "int8" and info["output"][0]["dtype"] == "int8"
    assert info["weight_sparsity"] >= 0.79
    float_accuracy = accuracy_of(trained_digits_cnn, digits[1])
    assert tflite_accuracy(pruned_int8, digits[1], tmp_path) >= float_accuracy - 0.03


def test_pruned_int8_model_is_much_smaller_gzipped(pruned_int8, trained_digits_cnn):
    from tfedge.converters import convert

    float_gzip = len(gzip.compress(convert(trained_digits_cnn, mode="float32")))
    assert len(gzip.compress(pruned_int8)) * 7 < float_gzip


def test_every_prunable_kernel_holds_the_sparsity_asked(pruned):
    """No layer is left dense and made up for: each kernel is 80 % zeros, so all of them are."""
    from tfedge.models.pruning import layer_sparsity, weight_sparsity

    per_layer = layer_sparsity(pruned)
    assert set(per_layer) == {"conv1/kernel", "conv2/kernel", "fc1/kernel", "logits/kernel"}
    for name, value in per_layer.items():
        assert value == pytest.approx(0.8, abs=0.01), name
    assert weight_sparsity(pruned) == pytest.approx(0.8, abs=0.01)


def test_input_model_is_left_untouched(trained_digits_cnn, digits):
    from tfedge.models.pruning import prune

    before = [w.copy() for w in trained_digits_cnn.get_weights()]
    prune(trained_digits_cnn, digits[0], digits[1], sparsity=0.5, epochs=1, polish_epochs=0)
    after = trained_digits_cnn.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_pruned_model_saves_and_loads(pruned, digits, tmp_path):
    from tfedge.core.loading import load_model

    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = load_model(path).model
    x = digits[1].x[:32]
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), pruned.predict(x, verbose=0), atol=1e-6
    )


def _groups_of_four_along_inputs(kernel):
    """Kernel values grouped by 4 consecutive input channels: shape (..., 4)."""
    inputs_last = np.moveaxis(kernel, -2, -1)
    return inputs_last.reshape(-1, 4)


@pytest.mark.parametrize("structure", ["2:4", (1, 4)])
def test_structured_sparsity(trained_digits_cnn, digits, structure):
    from tfedge.models.pruning import prune

    model = prune(
        trained_digits_cnn,
        digits[0],
        digits[1],
        sparsity=0.5,
        structure=structure,
        epochs=1,
        polish_epochs=1,
    )
    kernel = model.get_layer("fc1").kernel.numpy()
    if structure == "2:4":
        for name in ("conv2", "fc1"):
            groups = _groups_of_four_along_inputs(model.get_layer(name).kernel.numpy())
            assert ((groups == 0).sum(axis=1) >= 2).all(), name
    else:
        blocks = kernel.reshape(kernel.shape[0], -1, 4)
        zero_blocks = (blocks == 0).all(axis=-1)
        assert zero_blocks.mean() >= 0.5
        # every block is all-zero or not pruned at all
        assert ((blocks == 0).any(axis=-1) <= zero_blocks).all()


def test_constant_schedule_and_skip_by_name_and_type(trained_digits_cnn, digits):
    from tfedge.models.pruning import prune, weight_sparsity

    model = prune(
        trained_digits_cnn,
        digits[0],
        digits[1],
        sparsity=0.6,
        schedule="constant",
        skip=("Dense",),
        epochs=1,
        polish_epochs=0,
    )
    assert weight_sparsity(model, ["fc1", "logits"]) < 0.05
    assert weight_sparsity(model, ["conv1", "conv2"]) >= 0.59


def test_nested_model_is_flattened_and_pruned(digits):
    from tfedge.core.backend import keras
    from tfedge.models.pruning import prune, weight_sparsity

    layers = keras.layers
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            layers.Conv2D(8, 3, activation="relu", name="conv"),
            layers.MaxPooling2D(name="pool"),
            layers.Flatten(name="flatten"),
        ],
        name="backbone",
    )
    inputs = keras.Input((16, 16, 1))
    hidden = layers.Dense(32, activation="relu", name="hidden")(backbone(inputs))
    outputs = layers.Dense(10, activation="softmax", name="out")(hidden)
    model = keras.Model(inputs, outputs)
    pruned = prune(model, digits[0], digits[1], sparsity=0.7, epochs=1, polish_epochs=0)
    assert "hidden" in [layer.name for layer in pruned.layers]
    assert not any(isinstance(layer, keras.Model) for layer in pruned.layers)
    assert weight_sparsity(pruned) >= 0.69


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sparsity": 1.5}, "between 0 and 1"),
        ({"schedule": "cubic"}, "polynomial"),
        ({"structure": "4:2"}, "M:N"),
        ({"structure": (0, 4)}, "block"),
        ({"skip": ("first", "no_such_layer")}, "no_such_layer"),
        ({"skip": ("Conv2D", "Dense")}, "no layer"),
    ],
)
def test_bad_arguments_say_what_to_do(trained_digits_cnn, digits, kwargs, message):
    from tfedge.models.pruning import prune

    with pytest.raises(OptimizationError, match=message) as caught:
        prune(trained_digits_cnn, digits[0], digits[1], epochs=1, **kwargs)
    assert caught.value.hint


def test_data_without_labels_is_refused(trained_digits_cnn, digits):
    from tfedge.core.data import Dataset
    from tfedge.models.pruning import prune

    with pytest.raises(OptimizationError, match="labels"):
        prune(trained_digits_cnn, Dataset(digits[0].x), digits[1], epochs=1)


def test_prunes_under_a_distribution_strategy(trained_digits_cnn, digits):
    from tfedge.core.backend import tf
    from tfedge.models.pruning import prune, weight_sparsity

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    model = prune(
        trained_digits_cnn,
        digits[0],
        digits[1],
        sparsity=0.5,
        epochs=1,
        polish_epochs=1,
        strategy=strategy,
    )
    assert weight_sparsity(model) >= 0.5


def test_keras3_model_is_rebuilt_and_pruned(digits):
    from tfedge import models
    from tfedge.core.backend import keras3
    from tfedge.models.pruning import prune, weight_sparsity

    keras3.utils.set_random_seed(0)
    layers = keras3.layers
    model = keras3.Sequential(
        [
            keras3.Input((16, 16, 1)),
            layers.Conv2D(8, 3, activation="relu"),
            layers.Flatten(),
            layers.Dense(10, activation="softmax"),
        ]
    )
    pruned = prune(model, digits[0], digits[1], sparsity=0.5, epochs=1, polish_epochs=0)
    assert type(pruned).__module__.startswith("tf_keras")
    assert weight_sparsity(pruned) >= 0.5
    # The stage is models.wrap -> fit -> models.finalize: the final model carries finalize's record.
    assert models.requested(pruned)["sparsity"] == 0.5
    assert all(k["pruned"] for k in models.requested(pruned)["plans"]["kernels"])


@pytest.mark.parametrize(
    ("structure", "expected"),
    [
        ("2:4", ((2, 4), None)),
        ("1x4", (None, (1, 4))),
        ((2, 2), (None, (2, 2))),
        (None, (None, None)),
    ],
)
def test_structure_forms(structure, expected):
    from tfedge.models.pruning import parse_structure

    assert parse_structure(structure) == expected


def test_skipped_layers_stay_dense_and_are_not_made_up_for(digits):
    """An MLP with its last layer skipped: the others hold the sparsity asked, no more."""
    from tfedge.core.backend import keras
    from tfedge.core.data import Dataset
    from tfedge.models.pruning import prune, pruning_plan, weight_sparsity

    L = keras.layers
    train = Dataset(digits[0].x.reshape(len(digits[0].x), -1)[:, :40], digits[0].y)
    model = keras.Sequential(
        [
            L.Dense(48, activation="relu", input_shape=(40,), name="first"),
            L.Dense(56, activation="relu", name="middle"),
            L.Dense(10, activation="softmax", name="last"),
        ]
    )
    sparse = prune(model, train, None, sparsity=0.75, skip=("last",), epochs=1, polish_epochs=0)
    assert weight_sparsity(sparse, ["first", "middle"]) == pytest.approx(0.75, abs=0.01)
    assert weight_sparsity(sparse, ["last"]) == 0.0
    plan = pruning_plan(model, skip=("last",))
    assert plan["pruned"] == ["first", "middle"]
    assert plan["dense"] == [{"layer": "last", "weight": "kernel", "reason": "skipped"}]


def test_depthwise_kernels_tfmot_leaves_dense_are_pruned_by_tfedge(digits):
    """tfmot prunes a SeparableConv2D's pointwise kernel only and no DepthwiseConv2D: tfedge's
    own masks prune the depthwise kernels, so every kernel holds the target."""
    import numpy as np

    from tfedge.core.backend import keras
    from tfedge.models.pruning import prune, pruning_plan

    L = keras.layers
    model = keras.Sequential(
        [
            L.Conv2D(8, 3, activation="relu", input_shape=(16, 16, 1), name="first"),
            L.SeparableConv2D(32, 3, activation="relu", name="sep1"),
            L.DepthwiseConv2D(3, activation="relu", name="dw"),
            L.GlobalAveragePooling2D(),
            L.Dense(10, activation="softmax", name="last"),
        ]
    )
    sparse = prune(model, digits[0], None, sparsity=0.75, epochs=1, polish_epochs=1)
    kernels = {
        f"{layer.name}/{w.name.split('/')[-1].split(':')[0]}": float(np.mean(w.numpy() == 0))
        for layer in sparse.layers
        for w in layer.trainable_weights
        if len(w.shape) >= 2
    }
    assert set(kernels) == {
        "first/kernel",
        "sep1/depthwise_kernel",
        "sep1/pointwise_kernel",
        "dw/depthwise_kernel",
        "last/kernel",
    }
    assert all(v == pytest.approx(0.75, abs=0.01) for v in kernels.values()), kernels
    plan = pruning_plan(model)
    assert plan["dense"] == []
    assert plan["pruned_weights"] == plan["kernel_weights"]
    # A structure does not apply to depthwise kernels: those stay dense, and say so.
    dense = {(d["layer"], d["weight"]) for d in pruning_plan(model, structure="2:4")["dense"]}
    assert ("dw", "depthwise_kernel") in dense


def test_only_epochs_at_the_final_sparsity_compete_and_the_result_holds_it(digits, monkeypatch):
    """A schedule that cannot finish its ramp (frequency past the last step) still ends at S."""
    from tfedge.models import training
    from tfedge.models.pruning import layer_sparsity, prune
    from tfedge.models.zoo import build

    model = build("digits_cnn", width=8)
    seen = []
    original = training.RestoreBest.on_epoch_end

    def spy(self, epoch, logs=None):
        original(self, epoch, logs)
        seen.append((epoch, self.best_epoch, self.accept() if self.accept else None))

    # The mask updates every 1000 steps: the ramp never reaches 60 % in 2 epochs of 44 steps.
    monkeypatch.setattr(training.RestoreBest, "on_epoch_end", spy)
    sparse = prune(
        model, digits[0], digits[1], sparsity=0.6, epochs=2, frequency=1000, polish_epochs=0
    )
    assert seen and all(best is None for _, best, accepted in seen if accepted is False)
    for name, value in layer_sparsity(sparse).items():
        assert value == pytest.approx(0.6, abs=0.01), name


def test_pruning_distils_at_a_low_temperature_with_labels(monkeypatch, trained_digits_cnn, digits):
    """T=1, alpha=0.5 by default (T=4, alpha=0.1 lost 6 points on a held-out residual CNN)."""
    from tfedge.models import training
    from tfedge.models.pruning import prune

    seen = []
    real_fit = training.fit

    def spy(*args, **kwargs):
        seen.append((kwargs.get("temperature"), kwargs.get("alpha"), kwargs.get("teacher")))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", spy)
    m = trained_digits_cnn
    prune(m, digits[0], digits[1], sparsity=0.5, epochs=1, polish_epochs=0, teacher=m)
    assert (seen[0][0], seen[0][1]) == (1.0, 0.5) and seen[0][2] is m
