"""``keep_float=``: quantize everything except the named layers, through TFLite's quantization debugger.

Example:
    >>> from tfedge.converters import convert
    >>> blob = convert("model.keras", calib="train.npz", keep_float=["dense"])  # doctest: +SKIP
"""

# TensorFlow loads inside the functions that use it: `tfedge --help` and `tfedge inspect` import
# this module through tfedge.converters.tflite (0.15 s, against 4.5 s with TensorFlow).
import copy

from tfedge.core.errors import ConversionError


def _convert_keeping_float(converter, representative, keep_float, matcher):
    """Quantize everything except the named layers, via TFLite's quantization debugger.

    The layers are matched exactly (:class:`~tfedge.converters.tensor_names.LayerMatcher`) in a
    float twin of the model; the debugger leaves float the operators whose output tensors it is
    given.

    Returns:
        The ``.tflite`` bytes and :attr:`Conversion.selected` for them.
    """
    from tfedge.converters.tensor_names import describe_selection
    from tfedge.core.backend import tf

    float_model = _float_copy(converter)
    chosen = matcher.select(float_model, keep_float, "keep_float")
    graph = _unpacked_graph(float_model)
    if {i for indexes in chosen.values() for i in indexes} >= set(range(len(graph.operators))):
        raise ConversionError(
            f"--keep-float covers every operator of the model ({len(graph.operators)}): nothing "
            "would be quantized",
            "convert with --mode float32 for a float model, or keep fewer layers float",
            option="keep_float",
        )
    denylist = sorted(
        {
            (graph.tensors[int(t)].name or b"").decode("utf-8", "replace")
            for indexes in chosen.values()
            for i in indexes
            for t in graph.operators[i].outputs
        }
    )
    selected = [
        {"option": "keep_float", "layer": layer, **entry}
        for layer, entry in describe_selection(float_model, chosen).items()
    ]
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative, debug_options=options
    )
    return debugger.get_nondebug_quantized_model(), selected


def _unpacked_graph(blob):
    from tfedge.converters.flatbuffer import unpack_model

    return unpack_model(blob).subgraphs[0]


def _float_copy(converter):
    """Convert a float32 twin of the model, to read its tensor names."""

    twin = copy.copy(converter)
    twin.optimizations = []
    twin.representative_dataset = None
    twin.target_spec = copy.deepcopy(converter.target_spec)
    from tfedge.core.backend import tf

    twin.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    twin.inference_input_type = tf.float32
    twin.inference_output_type = tf.float32
    return twin.convert()
