"""Shorter tensor names: unique, model I/O untouched, same computation, a smaller file."""

import gzip

import numpy as np

from tfedge.converters.flatbuffer import pack_model, unpack_model
from tfedge.converters.tensor_names import shorten_tensor_names


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
