"""check_finalized: the requested/achieved check of a model from the user's own loop.

``models.wrap`` is asked for a sparsity and a number of shared values, the user's own ``fit``
trains, ``models.finalize`` carries the request onto the plain model, and
``tfedge.reports.compression.check_finalized`` reads the real fully-int8 conversion back.
"""

import json

import numpy as np
import pytest

from tfedge.core.errors import OptimizationError

SCHEMES = {
    "prune": {"prune": 0.8},
    "cluster": {"cluster": 16},
    "pcqat": {"prune": 0.8, "cluster": 16, "qat": True},
}


def _api(flavour):
    from tfedge.core.backend import keras, keras3

    return keras3 if flavour == "keras3" else keras


def _cnn(api, train):
    layers = api.layers
    api.utils.set_random_seed(0)
    inputs = api.Input(train.x.shape[1:])
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(10, activation="softmax", name="logits")(x)
    model = api.Model(inputs, outputs, name="own_cnn")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train.x, train.y, epochs=2, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def own_models(digits):
    """``{"keras3": model, "tf_keras": model}``: the same small CNN with a depthwise layer."""
    train, _ = digits
    return {flavour: _cnn(_api(flavour), train) for flavour in ("keras3", "tf_keras")}


def _finalized(own_models, digits, flavour, options, epochs=2):
    from tfedge import models

    train, _ = digits
    api = _api(flavour)
    m = models.wrap(own_models[flavour], **options)
    m.compile(api.optimizers.Adam(5e-4), "sparse_categorical_crossentropy")
    m.fit(train.x, train.y, epochs=epochs, batch_size=32, verbose=0, callbacks=models.callbacks(m))
    return models.finalize(m)


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_the_request_is_met_in_the_int8_file(own_models, digits, flavour, scheme):
    from tfedge import models
    from tfedge.converters import convert
    from tfedge.reports.compression import check_finalized

    options = SCHEMES[scheme]
    final = _finalized(own_models, digits, flavour, options)
    record = models.requested(final)
    assert record["sparsity"] == options.get("prune")
    assert record["clusters"] == options.get("cluster")
    assert record["qat"] == options.get("qat", False)
    entry = check_finalized(final, convert(final, calib=digits[0]))
    assert entry["fully_integer"] is True
    assert entry["met"] is True, entry["notes"]
    assert entry["notes"] == []
    by_layer = {layer["layer"]: layer for layer in entry["layers"]}
    assert set(by_layer) == {"conv1", "dw", "logits"}  # every int8 kernel tied to its layer
    for layer in by_layer.values():  # the depthwise kernel included
        if "prune" in options:
            assert layer["pruned"] and layer["sparsity"] >= 0.79, layer
        if "cluster" in options:
            assert layer["clustered"] and layer["unique_values"] <= 16, layer
    if "prune" in options:
        assert entry["achieved"]["sparsity"] == pytest.approx(0.8, abs=0.01)
        assert entry["dense_layers"] == []


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_a_kernel_made_dense_again_fails_the_check(own_models, digits, flavour):
    from tfedge.converters import convert
    from tfedge.reports.compression import check_finalized

    final = _finalized(own_models, digits, flavour, {"prune": 0.8, "cluster": 16})
    rng = np.random.default_rng(0)
    for name in ("dw", "logits"):  # a depthwise kernel dense again, a Dense one unclustered
        kernel = next(w for w in final.get_layer(name).weights if len(w.shape) >= 2)
        kernel.assign(rng.normal(0.0, 0.1, kernel.shape).astype(np.float32))
    entry = check_finalized(final, convert(final, calib=digits[0]))
    assert entry["met"] is False
    assert entry["achieved"]["sparsity"] < 0.79
    by_layer = {layer["layer"]: layer for layer in entry["layers"]}
    assert by_layer["dw"]["sparsity"] < 0.01 and by_layer["conv1"]["sparsity"] >= 0.79
    assert by_layer["logits"]["unique_values"] > 16
    assert any(note.startswith("sparsity 80% asked, ") for note in entry["notes"]), entry["notes"]
    assert any("logits has" in note for note in entry["notes"]), entry["notes"]


def test_asking_more_than_the_file_holds_fails_the_check(own_models, digits):
    """A record edited to ask 90 % of a model wrap pruned to 80 %: the file holds 80 %."""
    from tfedge import models
    from tfedge.converters import convert
    from tfedge.reports.compression import check_finalized

    final = _finalized(own_models, digits, "keras3", {"prune": 0.8})
    record = models.requested(final)
    record["sparsity"] = 0.9  # asked more than wrap pruned to
    entry = check_finalized(record, convert(final, calib=digits[0]))
    assert entry["met"] is False
    assert entry["achieved"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert "sparsity 90% asked, 80.0% reached on the pruned layers" in entry["notes"]


def test_the_record_is_json_and_a_saved_model_needs_it_beside(own_models, digits, tmp_path):
    from tfedge import models
    from tfedge.converters import convert
    from tfedge.core.backend import keras3
    from tfedge.reports.compression import check_finalized

    final = _finalized(own_models, digits, "keras3", {"prune": 0.8, "qat": True}, epochs=1)
    (tmp_path / "requested.json").write_text(json.dumps(models.requested(final)))
    final.save(tmp_path / "final.keras")
    loaded = keras3.saving.load_model(tmp_path / "final.keras")
    with pytest.raises(OptimizationError, match="carries no record of models.finalize"):
        models.requested(loaded)
    record = json.loads((tmp_path / "requested.json").read_text())
    entry = check_finalized(record, convert(loaded, calib=digits[0]))
    assert entry["met"] is True and entry["requested"]["qat"] is True


def test_a_model_finalize_did_not_return_is_refused(own_models):
    from tfedge import models

    with pytest.raises(OptimizationError, match="carries no record"):
        models.requested(own_models["tf_keras"])


def test_a_2_4_structure_is_checked_group_by_group(own_models, digits):
    from tfedge.converters import convert
    from tfedge.reports.compression import check_finalized

    final = _finalized(own_models, digits, "keras3", {"structure": "2:4"}, epochs=1)
    entry = check_finalized(final, convert(final, calib=digits[0]))
    assert entry["requested"]["structure"] == "2:4" and entry["requested"]["sparsity"] == 0.5
    assert entry["met"] is True, entry["notes"]
    assert entry["achieved"]["pattern"] == 1.0
    # 2:4 needs input channels in fours: the 1-channel conv and the depthwise kernel stay dense.
    assert {d["layer"] for d in entry["dense_layers"]} == {"conv1", "dw"}
    assert [layer["layer"] for layer in entry["layers"] if layer["pruned"]] == ["logits"]
