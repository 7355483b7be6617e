"""What `optimize` asks for reaches the int8 file: sparsity, 2:4 and clusters on a DS-CNN.

A small depthwise-separable CNN with BatchNorms (the zoo's DS-CNN) goes through real training,
real conversion and the real LiteRT interpreter; the achieved sparsity and distinct values are
read from the int8 ``.tflite`` itself, with LiteRT reading the weight values.
"""

import numpy as np
import pytest

PRUNABLE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
#: What a structure (2:4) applies to: not depthwise kernels.
STRUCTURED_OPS = ("CONV_2D", "FULLY_CONNECTED")
EPOCHS = {"prune": 12, "cluster": 4, "qat": 2}


@pytest.fixture(scope="module")
def ds_cnn_path(digits, tmp_path_factory):
    """A trained DS-CNN (conv, 3 depthwise-separable blocks with BatchNorm, dense), saved."""
    from tfedge.models.zoo import build, train

    model = train(build("ds_cnn", width=32, blocks=3), digits[0], epochs=15)
    path = tmp_path_factory.mktemp("ds_cnn") / "ds_cnn.keras"
    model.save(path)
    return path


def weight_arrays(path):
    """``[(weight entry of tfedge inspect, int values per channel, zero point per channel)]``.

    tfedge inspect says which tensors are weights; LiteRT reads their values.
    """
    from ai_edge_litert.interpreter import Interpreter

    from tfedge.core.inspector import inspect_model

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    out = []
    for weight in inspect_model(path)["weights"]:
        values = interpreter.get_tensor(weight["tensor"])
        quant = details[weight["tensor"]]["quantization_parameters"]
        axis = quant["quantized_dimension"] if len(quant["scales"]) > 1 else 0
        rows = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
        zero = np.asarray(quant["zero_points"], dtype=np.int64).reshape(-1, 1)
        out.append((weight, rows.astype(np.int64), zero if zero.size else np.zeros((1, 1))))
    return out


@pytest.fixture(scope="module")
def run(ds_cnn_path, digits, tmp_path_factory):
    """``run(**flags)`` → (report, output folder) of ``optimize`` with those flags (cached)."""
    from tfedge.commands.optimize import optimize, stages_from_flags

    cache = {}

    def go(**flags):
        key = tuple(sorted(flags.items()))
        if key not in cache:
            out = tmp_path_factory.mktemp("optimize")
            stages = stages_from_flags(**flags)
            for stage in stages:  # few epochs: enough for this small model, cheap for CI
                stage["epochs"] = EPOCHS[stage["name"]]
            report = optimize(ds_cnn_path, digits[0], digits[1], stages=stages, out_dir=out, runs=3)
            cache[key] = (report, out)
        return cache[key]

    return go


def accuracy_drop(report) -> float:
    rows = {row["stage"]: row for row in report["results"]}
    return rows["float32"]["accuracy"] - report["results"][-1]["accuracy"]


def test_prune_and_qat_reach_the_sparsity_asked_in_every_prunable_tensor(run):
    report, out = run(prune=0.75, qat=True)
    weights = weight_arrays(out / "model.tflite")
    prunable = [(w, rows, zero) for w, rows, zero in weights if w["op"] in PRUNABLE_OPS]
    # The first conv, three depthwise (tfmot leaves them dense: tfedge prunes them), three
    # pointwise convs, the classifier.
    assert len(prunable) == 8
    zeros = sum(int((rows == zero).sum()) for _, rows, zero in prunable)
    elements = sum(rows.size for _, rows, _ in prunable)
    assert zeros / elements == pytest.approx(0.75, abs=0.01)
    for w, rows, zero in prunable:
        assert (rows == zero).mean() == pytest.approx(0.75, abs=0.01), w["name"]
    # 75 % of every 3x3 depthwise kernel too (2 weights of 9 left per channel) costs this small
    # DS-CNN more than the pointwise kernels alone did (1.5 pt then; 3.0 and 3.8 pt measured in
    # two runs now, 12 prune epochs): `skip=("DepthwiseConv2D",)` gives the old trade-off.
    assert accuracy_drop(report) <= 0.045


def test_report_shows_requested_against_achieved_and_names_the_dense_layers(run):
    report, _ = run(prune=0.75, qat=True)
    by_stage = {row["stage"]: row["compression"] for row in report["results"]}
    assert by_stage["int8"]["requested"]["sparsity"] is None
    for stage in ("prune(sparsity=0.75)", "qat(preserve=sparsity)"):
        entry = by_stage[stage]
        assert entry["requested"]["sparsity"] == 0.75
        assert entry["achieved"]["sparsity"] == pytest.approx(0.75, abs=0.01)
        assert entry["met"] is True
        assert entry["dense_layers"] == []
        pruned = {layer["layer"] for layer in entry["layers"] if layer["pruned"]}
        assert pruned == {"conv1", "dw1", "pw1", "dw2", "pw2", "dw3", "pw3", "logits"}
    # The QAT stage kept every zero of the pruning stage.
    prune_layers = by_stage["prune(sparsity=0.75)"]["layers"]
    qat_layers = by_stage["qat(preserve=sparsity)"]["layers"]
    assert [x["zeros"] for x in qat_layers] == [x["zeros"] for x in prune_layers]


def test_prune_and_cluster_keep_both_in_the_int8_model(run):
    report, out = run(prune=0.5, cluster=16)
    weights = weight_arrays(out / "model.tflite")
    for w, rows, zero in weights:
        if w["op"] not in PRUNABLE_OPS:
            continue
        assert (rows == zero).mean() == pytest.approx(0.5, abs=0.01), w["name"]
        assert max(np.unique(row).size for row in rows) <= 16, w["name"]
    entry = report["results"][-1]["compression"]
    assert entry["requested"] == {"sparsity": 0.5, "structure": None, "clusters": 16}
    assert entry["achieved"]["unique_values_max"] <= 16
    assert entry["met"] is True
    assert accuracy_drop(report) <= 0.015


def test_structured_2_4_gives_two_zeros_in_every_group_of_four(run):
    report, out = run(structured="2:4")
    checked = 0
    for w, rows, zero in weight_arrays(out / "model.tflite"):
        if w["op"] not in STRUCTURED_OPS or w["shape"][-1] % 4:
            continue  # the first conv has one input channel: no group of 4 to prune
        groups = (rows == zero).reshape(-1, 4).sum(axis=1)
        assert (groups >= 2).all(), w["name"]
        checked += 1
    assert checked == 4  # the pointwise convs and the classifier
    entry = report["results"][-1]["compression"]
    assert entry["achieved"]["pattern"] == 1.0
    assert any(d["layer"] == "conv1" for d in entry["dense_layers"])
    assert accuracy_drop(report) <= 0.015
