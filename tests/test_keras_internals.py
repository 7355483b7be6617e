"""Each private Keras / tfmot / LiteRT name tfedge uses, called on real models.

When an upgrade renames one of them, the test named after it fails here, instead of a stage
failing somewhere inside a fine-tune.
"""

import numpy as np
import pytest

from tfedge.core import keras_internals as internals
from tfedge.core.backend import keras, keras3, tfmot


def _functional(k):
    inputs = k.Input((8, 8, 1), name="image")
    x = k.layers.Conv2D(4, 3, name="conv")(inputs)
    x = k.layers.Flatten(name="flat")(x)
    return k.Model(inputs, k.layers.Dense(3, name="logits")(x), name="net")


@pytest.fixture(scope="module", params=["tf_keras", "keras3"])
def model(request):
    return _functional(keras if request.param == "tf_keras" else keras3)


def test_keras_history_names_the_layer_that_made_a_tensor(model):
    layer, node_index, tensor_index = internals.keras_history(model.outputs[0])
    assert (layer.name, node_index, tensor_index) == ("logits", 0, 0)


def test_nodes_by_depth_walks_the_graph_from_inputs_to_outputs(model):
    assert internals.has_node_graph(model)
    by_depth = internals.nodes_by_depth(model)
    deepest = by_depth[max(by_depth)]
    assert len(by_depth) == 4 and len(deepest) == 1


def test_a_subclassed_model_has_no_node_graph():
    class Net(keras3.Model):
        def call(self, x):
            return x

    assert not internals.has_node_graph(Net())


def test_tf_keras_graph_internals():
    model = _functional(keras)
    assert internals.is_graph_network(model)
    assert [layer.name for layer in internals.input_layers(model)] == ["image"]
    conv = model.get_layer("conv")
    assert len(internals.inbound_nodes(conv)) == 1
    assert "conv_ib-0" in internals.network_nodes(model)
    assert internals.tensor_usage_count(model)[str(id(model.inputs[0]))] == 1


def test_a_keras3_sequential_holds_its_functional():
    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
    assert internals.sequential_functional(model) is not None


def test_rename_layer_and_own_variables():
    model = _functional(keras)
    dense = model.get_layer("logits")
    internals.rename_layer(dense, "head")
    assert dense.name == "head"
    assert [v.shape.as_list() for v in internals.own_variables(dense)] == [[144, 3], [3]]


def test_tfmot_registry_weight_names_and_quantize_wrapper_parts():
    model = _functional(keras)
    from tfedge.core.serialization import tfmot_internal

    registry = tfmot_internal("sparsity.keras.prune_registry").PruneRegistry
    assert internals.weight_names(registry, model.get_layer("conv")) == ["kernel"]
    quantized = tfmot().quantization.keras.quantize_model(model)
    wrapper = next(layer for layer in quantized.layers if "conv" in layer.name)
    parts = internals.quantize_wrapper_parts(wrapper)
    assert parts["weights"] and "kernel" in parts["weights"][0][0].name
    assert isinstance(parts["activations"], list) and isinstance(parts["outputs"], list)
    assert hasattr(wrapper, internals.OUTPUT_QUANTIZERS)


def test_litert_lists_operators_for_the_device_side_runner(tmp_path):
    """The runner's per-operator profile reads ``Interpreter._get_ops_details`` (LiteRT only)."""
    from ai_edge_litert.interpreter import Interpreter

    from tfedge.converters import convert

    blob = convert(_functional(keras), calib=np.random.default_rng(0).random((8, 8, 8, 1)))
    interpreter = Interpreter(model_content=blob)
    ops = interpreter._get_ops_details()
    assert "CONV_2D" in {op["op_name"] for op in ops}
    assert all({"index", "op_name", "outputs"} <= set(op) for op in ops)
