"""Weight clustering: few distinct values per kernel, kept through int8, accuracy recovered."""

import numpy as np
import pytest

from tfedge.core.errors import OptimizationError


@pytest.fixture(scope="module")
def clustered(trained_digits_cnn, digits):
    from tfedge.models.clustering import cluster

    train, test = digits
    return cluster(trained_digits_cnn, train, test, clusters=16, teacher=trained_digits_cnn)


def test_every_kernel_has_at_most_16_values(clustered):
    from tfedge.models.clustering import unique_weight_values

    counts = unique_weight_values(clustered)
    assert set(counts) == {f"{name}/kernel" for name in ("conv1", "conv2", "fc1", "logits")}
    assert max(counts.values()) <= 16


def test_clustered_int8_model_keeps_clusters_and_accuracy(
    clustered, trained_digits_cnn, digits, accuracy_of, tmp_path, tflite_accuracy
):
    from tfedge.converters import convert
    from tfedge.core.inspector import inspect_model

    blob = convert(clustered, calib=digits[0])
    info = inspect_model(blob)
    assert info["fully_integer"]
    assert info["unique_weight_values_max"] <= 16
    float_accuracy = accuracy_of(trained_digits_cnn, digits[1])
    assert tflite_accuracy(blob, digits[1], tmp_path) >= float_accuracy - 0.03


def test_clustered_model_saves_and_loads(clustered, digits, tmp_path):
    from tfedge.core.loading import load_model

    path = tmp_path / "clustered.keras"
    clustered.save(path)
    loaded = load_model(path).model
    x = digits[1].x[:32]
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), clustered.predict(x, verbose=0), atol=1e-6
    )


def test_preserve_sparsity_keeps_the_zeros_of_a_pruned_model(trained_digits_cnn, digits):
    from tfedge.models.clustering import cluster, unique_weight_values
    from tfedge.models.pruning import prune, weight_sparsity

    train, test = digits
    pruned = prune(trained_digits_cnn, train, test, sparsity=0.7, epochs=2, polish_epochs=0)
    both = cluster(pruned, train, test, clusters=8, preserve_sparsity=True, epochs=1)
    assert weight_sparsity(both, ["conv2", "fc1"]) >= weight_sparsity(pruned, ["conv2", "fc1"])
    assert max(unique_weight_values(both, ["conv2", "fc1"]).values()) <= 8


def test_a_kernel_pruned_below_the_cluster_count_is_left_alone(trained_digits_cnn, digits):
    """Preserving sparsity, tfmot's k-means++ clusters only the non-zero values and fails on
    fewer than ``clusters`` of them ("Expected num_to_sample <= points.rows()"); such a kernel
    already holds at most clusters + 1 values, so it is left as it is."""
    from tfedge.models.cloning import clone_model
    from tfedge.models.clustering import cluster, clustering_plan, unique_weight_values

    model = clone_model(trained_digits_cnn)
    conv1 = model.get_layer("conv1")
    kernel, *rest = conv1.get_weights()
    flat = kernel.reshape(-1).copy()
    flat[10:] = 0.0  # 10 non-zero values left, fewer than 16 clusters
    conv1.set_weights([flat.reshape(kernel.shape), *rest])

    plan = clustering_plan(model, 16, preserve_sparsity=True)
    (left,) = [entry for entry in plan["unclustered"] if entry["layer"] == "conv1"]
    assert "non-zero weights" in left["reason"]
    assert "conv1" in clustering_plan(model, 16)["clustered"]  # without preserving sparsity

    both = cluster(model, digits[0], digits[1], clusters=16, preserve_sparsity=True, epochs=1)
    np.testing.assert_array_equal(
        both.get_layer("conv1").get_weights()[0], flat.reshape(kernel.shape)
    )
    assert max(unique_weight_values(both, ["conv2", "fc1"]).values()) <= 16


@pytest.mark.parametrize("init", ["linear", "density"])
def test_other_initializations_and_skip(trained_digits_cnn, digits, init):
    from tfedge.models.clustering import cluster, unique_weight_values

    model = cluster(
        trained_digits_cnn,
        digits[0],
        digits[1],
        clusters=8,
        init=init,
        skip=("first", "last"),
        epochs=1,
    )
    counts = unique_weight_values(model)
    assert counts["conv2/kernel"] <= 8 and counts["fc1/kernel"] <= 8
    assert counts["conv1/kernel"] > 8 and counts["logits/kernel"] > 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clusters": 1}, "from 2 to 256"),
        ({"clusters": 1000}, "from 2 to 256"),
        ({"init": "kmeans"}, "kmeans\\+\\+"),
        ({"skip": ("Conv9D",)}, "Conv9D"),
    ],
)
def test_bad_arguments_say_what_to_do(trained_digits_cnn, digits, kwargs, message):
    from tfedge.models.clustering import cluster

    with pytest.raises(OptimizationError, match=message) as caught:
        cluster(trained_digits_cnn, digits[0], digits[1], epochs=1, **kwargs)
    assert caught.value.hint
