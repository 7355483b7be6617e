"""Shorter tensor names: unique, model I/O untouched, same computation, a smaller file."""

import gzip

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from tfedge.converters.flatbuffer import pack_model, unpack_model
from tfedge.converters.tensor_names import shorten_tensor_names


def _with_names(blob: bytes, rename) -> bytes:
    model = unpack_model(blob)
    graph = model.subgraphs[0]
    for index, tensor in enumerate(graph.tensors):
        tensor.name = rename(index, tensor.name)
    return pack_model(model)


def _run(blob: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=blob)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    q = np.clip(np.round(x / scale + zero), -128, 127).astype(inp["dtype"])
    interpreter.set_tensor(inp["index"], q[np.newaxis])
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def test_fused_names_keep_their_first_part_and_stay_unique(digits_tflite, digits):
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
    x = digits[1].x[0]
    assert np.array_equal(_run(short, x), _run(long, x))


def test_a_model_with_short_names_is_returned_as_is(digits_tflite):
    blob = shorten_tensor_names(digits_tflite["int8"].read_bytes())
    assert shorten_tensor_names(blob) is blob
