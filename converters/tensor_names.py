"""Tensor names in converted models: which Keras layer a tensor belongs to, and shorter names.

**The one matcher.** TensorFlow's converter names an operator's output tensor after the ops it
absorbed, each a scope path: ``model/dense_2/MatMul;model/dense_2/Relu``. The first segment is
the model's own scope, the next the top-level layer's (a nested model's layers follow its own
segment). Keras 3 traces every layer under a numbered scope: layer ``dense`` appears as
``dense_1`` (``dense_3`` for its second call), layer ``dense_1`` as ``dense_1_2``. A model
output is named ``Identity`` / ``Identity_1`` or ``StatefulPartitionedCall:0``. These are
TensorFlow's conventions, not an API: :class:`LayerMatcher` is the only code that reads them
(``--int16``, ``--keep-float``, ``tfedge analyze``), and ``tests/test_tensor_names.py`` checks them
on real conversions of tf_keras and Keras 3 models so a TensorFlow upgrade that changes them
fails there, by name. A layer is matched by its exact name, never by a prefix or a substring:
the model's own name selects nothing.

**Shorter names.** Those ``;``-joined lists are a large share of a small model's file: 550 of the
4,224 bytes of a 1,800-parameter MLP. Keeping the first name of each list still names the layer
and took that model to 3,968 bytes (1,841 to 1,757 gzipped).

Example:
    >>> from tfedge.converters.tensor_names import LayerMatcher, shorten_tensor_names
    >>> LayerMatcher(("dense", "dense_1"), model_name="net").layer_of("net/dense_1/MatMul")
    'dense_1'
    >>> blob = shorten_tensor_names(blob)  # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ai_edge_litert import schema_py_generated as schema

from tfedge.converters.flatbuffer import opcode_names, rewrite, unpack_model
from tfedge.core.backend import is_keras3_model
from tfedge.core.errors import ConversionError

__all__ = [
    "LayerMatcher",
    "describe_selection",
    "format_selection",
    "in_graph_order",
    "output_layers",
    "output_position",
    "quoted",
    "shorten_tensor_names",
    "shorten_names",
]

# How many names an error lists, and how much of one name it quotes.
_LIST_LIMIT = 12
_NAME_LIMIT = 60
_SUFFIX = re.compile(r"_\d+$")
_OUTPUT = re.compile(r"Identity(?:_(\d+))?|StatefulPartitionedCall(?:_\d+)?:(\d+)")


def quoted(names: Iterable[str], limit: int = _LIST_LIMIT) -> str:
    """``'a', 'b', ... (N in all)``: names for a message, each cut to a sane length.

    Example:
        >>> quoted(["conv", "dense"])
        "'conv', 'dense'"
    """
    names = list(names)
    shown = [repr(n if len(n) <= _NAME_LIMIT else n[: _NAME_LIMIT - 3] + "...") for n in names]
    if len(shown) > limit:
        return ", ".join(shown[:limit]) + f", ... ({len(shown)} in all)"
    return ", ".join(shown)


def in_graph_order(kinds: Sequence[str], ops: Sequence[dict]) -> list[int | None]:
    """Match operators of two conversions of one model by type, in graph order.

    TensorFlow's QuantizationDebugger converts the model itself and names tensors its own way
    (``Identity`` becomes ``Identity2``), so its operators are found in another conversion by
    walking both in graph order: each of ``kinds`` is the next operator of that type in ``ops``.

    Args:
        kinds: operator types (``"CONV_2D"``), in graph order.
        ops: :func:`tfedge.core.inspector.inspect_model` ``operators`` records (with ``"op"``).

    Returns:
        The index in ``ops`` of each of ``kinds``; None where no operator of that type is left.

    Example:
        >>> in_graph_order(["CONV_2D", "SOFTMAX"], [{"op": "CONV_2D"}, {"op": "RESHAPE"}])
        [0, None]
    """
    found, position = [], 0
    for kind in kinds:
        index = next((i for i in range(position, len(ops)) if ops[i]["op"] == kind), None)
        found.append(index)
        if index is not None:
            position = index + 1
    return found


def output_position(tensor_name: str, outputs: int | None = None) -> int | None:
    """Which model output a converter-named output tensor is (``Identity_1`` is output 1), or None.

    A converter that adds an operator after an output (a DEQUANTIZE for float I/O), and
    QuantizationDebugger's models, append a digit to the name they move aside (``Identity``
    becomes ``Identity1``, ``Identity_1`` becomes ``Identity_12``); when the number read whole is
    not below ``outputs`` (the model's output count), that digit is dropped.

    Example:
        >>> output_position("Identity_1"), output_position("StatefulPartitionedCall:0")
        (1, 0)
        >>> output_position("Identity1"), output_position("Identity_12", outputs=2)
        (0, 1)
    """
    for name in (tensor_name, tensor_name[:-1]):
        found = _OUTPUT.fullmatch(name)
        if found is not None:
            position = int(found.group(1) or found.group(2) or 0)
            if outputs is None or position < outputs or name != tensor_name:
                return position
    return None


def output_layers(model) -> list[str]:
    """The names of the Keras layers that make a model's outputs, in order (Keras 2 or 3).

    Public Keras only: ``output_names`` (tf_keras models, Keras 3 functional models), else the
    layer whose ``output`` is each model output (Keras 3 Sequential), else the last layer.

    Example:
        >>> output_layers(model)  # doctest: +SKIP
        ['logits']
    """
    names = list(getattr(model, "output_names", None) or [])
    if names:
        return [str(n) for n in names]
    layers = list(getattr(model, "layers", None) or [])
    for tensor in getattr(model, "outputs", None) or []:
        for layer in reversed(layers):
            try:
                if layer.output is tensor:
                    names.append(layer.name)
                    break
            except (AttributeError, ValueError, RuntimeError):  # a layer called several times
                continue
    return names or ([layers[-1].name] if layers else [])


@dataclass(frozen=True)
class LayerMatcher:
    """Which Keras layer each tensor of a converted model belongs to: exact layer names only.

    Attributes:
        layers: the model's top-level layer names.
        outputs: the Keras layers of the model's outputs, in order (their tensors are named
            ``Identity...`` by the converter, so they are matched by position).
        model_name: the model's own name; its scope (the first path segment) is no layer.
        keras3: a Keras 3 model (every layer scope carries one ``_N`` suffix).

    Example:
        >>> matcher = LayerMatcher.of(model)  # doctest: +SKIP
        >>> matcher.select(float_blob, ["dense_1"], "int16")  # doctest: +SKIP
        {'dense_1': [3]}
    """

    layers: tuple[str, ...]
    outputs: tuple[str, ...] = ()
    model_name: str | None = None
    keras3: bool = False

    @classmethod
    def of(cls, model) -> LayerMatcher:
        """The matcher for a Keras model (tf_keras or Keras 3).

        Example:
            >>> LayerMatcher.of(model).layers  # doctest: +SKIP
            ('conv', 'flat', 'dense', 'logits')
        """

        return cls(
            layers=tuple(layer.name for layer in getattr(model, "layers", None) or []),
            outputs=tuple(output_layers(model)),
            model_name=getattr(model, "name", None),
            keras3=bool(is_keras3_model(model)),
        )

    def layers_of(self, tensor_name: str) -> list[str]:
        """Every layer named in a (possibly ``;``-fused) tensor name, in order; [] if none.

        Example:
            >>> LayerMatcher(("conv", "bn"), model_name="m").layers_of("m/conv/Conv2D;m/bn/add")
            ['conv', 'bn']
        """
        position = output_position(tensor_name, len(self.outputs))
        if position is not None:
            return [self.outputs[position]] if position < len(self.outputs) else []
        known = set(self.layers)
        found = []
        for part in tensor_name.split(";"):
            segments = part.split(":", 1)[0].split("/")
            if len(segments) > 1 and self._is_model_scope(segments[0]):
                segments = segments[1:]
            for segment in segments[:-1] or segments:
                name = _SUFFIX.sub("", segment) if self.keras3 else segment
                if name in known:
                    if name not in found:
                        found.append(name)
                    break  # a nested model's own layers are not the top level's
        return found

    def layer_of(self, tensor_name: str) -> str | None:
        """The (first) layer a tensor belongs to, or None.

        Example:
            >>> LayerMatcher(("dense", "dense_1"), keras3=True, model_name="m").layer_of(
            ...     "m_1/dense_1_2/MatMul")
            'dense_1'
        """
        found = self.layers_of(tensor_name)
        return found[0] if found else None

    def _is_model_scope(self, segment: str) -> bool:
        if not self.model_name:
            return False
        return re.fullmatch(rf"{re.escape(self.model_name)}(_\d+)?", segment) is not None

    def operators(self, blob: bytes, layers: Sequence[str] | None = None) -> dict[str, list[int]]:
        """The operators (indexes in subgraph 0) each layer became in a converted model.

        An operator belongs to every layer its output tensor names (a fused convolution, batch
        norm and activation belong to all three); an operator that writes a model output
        belongs to that output's layer.

        Args:
            blob: a converted ``.tflite`` (its tensor names as the converter wrote them).
            layers: the layers wanted; all of :attr:`layers` when None.

        Returns:
            ``{layer: [operator index, ...]}``, an empty list for a layer with no operator.
        """
        graph = unpack_model(blob).subgraphs[0]
        outputs = [int(i) for i in (graph.outputs if graph.outputs is not None else [])]
        wanted = list(self.layers if layers is None else layers)
        found: dict[str, list[int]] = {layer: [] for layer in wanted}
        for index, op in enumerate(graph.operators or []):
            owners = []
            for tensor in op.outputs if op.outputs is not None else []:
                if int(tensor) in outputs:
                    position = outputs.index(int(tensor))
                    owners += self.outputs[position : position + 1]
                owners += self.layers_of(
                    (graph.tensors[tensor].name or b"").decode("utf-8", "replace")
                )
            for owner in owners:
                if owner in found and index not in found[owner]:
                    found[owner].append(index)
        return found

    def select(self, blob: bytes, requested: Sequence[str], option: str) -> dict[str, list[int]]:
        """The operators of each requested layer; refuse a name that is not a layer with operators.

        Args:
            blob: the converted ``.tflite`` the selection is for.
            requested: layer names, matched exactly.
            option: the keyword argument (``int16``, ``keep_float``), for the error.

        Returns:
            ``{layer: [operator index, ...]}`` in ``requested`` order, every list non-empty.

        Raises:
            ConversionError: a name that is not one of the model's layers (the error lists
                them), or a layer that became no operator of its own.
        """
        requested = list(dict.fromkeys(requested))
        found = self.operators(blob)
        with_ops = [layer for layer in self.layers if found.get(layer)]
        unknown = [name for name in requested if name not in found]
        if unknown:
            own = (
                f" ({quoted([self.model_name])} is the model's own name, not one of its layers)"
                if self.model_name in unknown
                else ""
            )
            raise ConversionError(
                f"no layer named {quoted(unknown, 5)} in model {quoted([self.model_name or '?'])}"
                f"{own}; its layers with operators are {quoted(with_ops)}",
                "give exact Keras layer names (model.summary() lists them); names are not prefixes",
                option=option,
            )
        empty = [name for name in requested if not found[name]]
        if empty:
            raise ConversionError(
                f"layer {quoted(empty, 5)} became no operator of its own in the converted model "
                "(TFLite folded it into a neighbour, or it only passes values through); the "
                f"layers with operators are {quoted(with_ops)}",
                "select the layer it was folded into (a BatchNormalization or an activation goes "
                "with the convolution or dense layer before it)",
                option=option,
            )
        return {name: found[name] for name in requested}


def describe_selection(blob: bytes, selection: dict[str, list[int]]) -> dict[str, dict]:
    """``{layer: {"operators": n, "ops": [operator type, ...]}}`` for a selection's report.

    Example:
        >>> describe_selection(float_blob, {"dense": [2]})  # doctest: +SKIP
        {'dense': {'operators': 1, 'ops': ['FULLY_CONNECTED']}}
    """
    model = unpack_model(blob)
    kinds = opcode_names(model)
    ops = model.subgraphs[0].operators or []
    return {
        layer: {"operators": len(indexes), "ops": [kinds[ops[i].opcodeIndex] for i in indexes]}
        for layer, indexes in selection.items()
    }


def format_selection(selected: Sequence[dict]) -> list[str]:
    """One line per selected layer, for the command line (:attr:`Conversion.selected`).

    Example:
        >>> format_selection([{"option": "keep_float", "layer": "fc1", "operators": 1,
        ...                    "ops": ["FULLY_CONNECTED"]}])
        ['keep-float: layer fc1: 1 operator (FULLY_CONNECTED)']
    """
    lines = []
    for entry in selected:
        count = entry["operators"]
        line = (
            f"{entry['option'].replace('_', '-')}: layer {entry['layer'][:_NAME_LIMIT]}: "
            f"{count} operator{'s' if count != 1 else ''} ({_kinds(entry['ops'])})"
        )
        if entry.get("readers"):
            layers = ", ".join(n[:_NAME_LIMIT] for n in entry.get("reader_layers") or [])
            line += (
                f", and {entry['readers']} that read{'s' if entry['readers'] == 1 else ''} its "
                f"output ({_kinds(entry['reader_ops'])}" + (f", of {layers})" if layers else ")")
            )
        lines.append(line)
    return lines


def _kinds(ops: Sequence[str]) -> str:
    return ", ".join(
        f"{op} x{ops.count(op)}" if ops.count(op) > 1 else op for op in dict.fromkeys(ops)
    )


def shorten_tensor_names(blob: bytes) -> bytes:
    """Keep the first ``;``-separated part of each tensor name, unique within its subgraph.

    Model inputs and outputs keep their names (apps and signatures look them up).

    Args:
        blob: a converted ``.tflite`` flatbuffer.

    Returns:
        The model with shorter names; ``blob`` itself when no name holds a ``;``.

    Example:
        >>> short = shorten_tensor_names(converter.convert())  # doctest: +SKIP
    """
    return rewrite(blob, shorten_names)


def shorten_names(model: schema.ModelT) -> bool:
    """:func:`shorten_tensor_names` on an unpacked model, in place; True if it changed it.

    Example:
        >>> rewrite(blob, shorten_names)  # doctest: +SKIP
    """
    changed = False
    for graph in model.subgraphs or []:
        ends = [graph.inputs, graph.outputs]  # numpy arrays: no truth value
        keep = {int(i) for end in ends if end is not None for i in end}
        fixed = [i in keep or b";" not in (t.name or b"") for i, t in enumerate(graph.tensors)]
        taken = {t.name for t, stays in zip(graph.tensors, fixed) if stays}
        for tensor, stays in zip(graph.tensors, fixed):
            if stays:
                continue
            short = base = tensor.name.split(b";", 1)[0]
            n = 1
            while short in taken:
                short = base + b"_%d" % n
                n += 1
            tensor.name = short
            taken.add(short)
            changed = True
    return changed
