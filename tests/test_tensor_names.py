"""Tensor names: the one layer matcher (exact names only), and shorter names (unique, model I/O
untouched, same computation, a smaller file)."""

import gzip

import numpy as np
import pytest

from tfedge.converters.flatbuffer import pack_model, unpack_model
from tfedge.converters.tensor_names import (
    LayerMatcher,
    in_graph_order,
    quoted,
    shorten_tensor_names,
)


def _with_names(blob: bytes, rename) -> bytes:
    model = unpack_model(blob)
    graph = model.subgraphs[0]
    for index, tensor in enumerate(graph.tensors):
        tensor.name = rename(index, tensor.name)
    return pack_model(model)


def test_fused_names_keep_their_first_part_and_stay_unique(digits_tflite, digits, raw_outputs):
    blob = digits_tflite["int8"].read_bytes()
    graph = unpack_model(blob).subgraphs[0]
    io = {int(i) for i in [*graph.inputs, *graph.outputs]}
    # Every name becomes a TF-style fused list; tensors 2 and 3 share their first part, and
    # tensor 4 is already named what the first of them would shorten to.
    long = _with_names(
        blob,
        lambda i, name: (
            name
            if i in io
            else b"model/shared;model/x%d;model/y" % i
            if i in (2, 3)
            else b"model/shared"
            if i == 4
            else name + b";model/fused/Relu;model/fused/BiasAdd"
        ),
    )
    short = shorten_tensor_names(long)
    names = [t.name for t in unpack_model(short).subgraphs[0].tensors]
    assert not any(b";" in n for n in names)
    assert len(set(names)) == len(names)
    assert names[4] == b"model/shared" and {names[2], names[3]} == {
        b"model/shared_1",
        b"model/shared_2",
    }
    assert [names[i] for i in sorted(io)] == [graph.tensors[i].name for i in sorted(io)]
    assert len(gzip.compress(short)) < len(gzip.compress(long))
    x = digits[1].x[:5]
    assert np.array_equal(raw_outputs(short, x), raw_outputs(long, x))


def test_a_model_with_short_names_is_returned_as_is(digits_tflite):
    blob = shorten_tensor_names(digits_tflite["int8"].read_bytes())
    assert shorten_tensor_names(blob) is blob


def test_a_model_with_two_outputs_converts_and_keeps_its_output_names():
    """shorten_names once failed on a model with two outputs (a numpy array has no truth value)."""
    from tfedge.converters import convert
    from tfedge.core.backend import keras3

    inputs = keras3.Input((4,))
    x = keras3.layers.Dense(4, name="trunk")(inputs)
    model = keras3.Model(inputs, [keras3.layers.Dense(2)(x), keras3.layers.Dense(3)(x)])
    graph = unpack_model(convert(model, mode="float32")).subgraphs[0]
    names = [graph.tensors[int(i)].name for i in graph.outputs]
    assert names == [b"Identity", b"Identity_1"]


MATCHER = LayerMatcher(
    layers=("conv", "bn", "dense", "dense_1", "inner", "logits"),
    outputs=("logits", "dense_1"),
    model_name="net",
)


@pytest.mark.parametrize(
    ("name", "keras3", "expected"),
    [
        ("net/dense/MatMul", False, ["dense"]),
        ("net/dense_1/MatMul", False, ["dense_1"]),
        ("net_1/dense_1/MatMul", True, ["dense"]),  # Keras 3 traces dense as dense_1
        ("net_1/dense_1_2/MatMul", True, ["dense_1"]),
        ("net_1/dense_3/MatMul", True, ["dense"]),  # dense's second call
        ("net/conv/Conv2D;net/bn/FusedBatchNormV3;net/conv/Relu", False, ["conv", "bn"]),
        ("net/inner/dense/MatMul", False, ["inner"]),  # a nested model's layer is its own
        ("net/MatMul", False, []),  # the model's own scope is no layer
        ("net", False, []),
        ("netdense/MatMul", False, []),  # no prefixes
        ("net/Dense/MatMul", False, []),  # no case folding
        ("Identity", False, ["logits"]),
        ("Identity_1", True, ["dense_1"]),
        ("Identity2", False, ["logits"]),  # QuantizationDebugger's renamed duplicate
        ("StatefulPartitionedCall:1", False, ["dense_1"]),
        ("Identity_12", False, ["dense_1"]),  # Identity_1 moved aside: there are 2 outputs
        ("Identity_7", False, []),
        ("arith.constant", False, []),
    ],
)
def test_the_matcher_takes_exact_layer_names_only(name, keras3, expected):
    from dataclasses import replace

    assert replace(MATCHER, keras3=keras3).layers_of(name) == expected


def test_quoted_names_are_cut_and_counted():
    text = quoted(["a" * 500, *[f"l{i}" for i in range(20)]], limit=3)
    assert text.startswith("'" + "a" * 57 + "...'") and text.endswith("(21 in all)")
    assert len(text) < 120


def test_operators_of_two_conversions_are_matched_by_type_in_graph_order():
    ops = [{"op": k} for k in ("CONV_2D", "RESHAPE", "FULLY_CONNECTED", "FULLY_CONNECTED")]
    kinds = ["CONV_2D", "FULLY_CONNECTED", "SOFTMAX", "FULLY_CONNECTED", "CONV_2D"]
    # SOFTMAX is in no conversion's ops: skipped, the walk goes on after the last match
    assert in_graph_order(kinds, ops) == [0, 2, None, 3, None]
