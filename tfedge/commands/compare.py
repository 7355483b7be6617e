"""``tfedge compare``: run two ``.tflite`` models on the same inputs and say where they differ.

Per output: max and mean absolute difference, SQNR (signal: model A's output) and top-1
agreement, on dequantized values (int8/int16 outputs go through their own scale and zero point).
When both models come from the same Keras model (their operators' output tensors share names,
as TFLite's converter derives them from the Keras layers), every intermediate tensor is compared
too, with LiteRT's ``experimental_preserve_all_tensors`` and its built-in kernels, and the first
operator whose output differs by more than one quantization step is named. A model with custom
operators that only LiteRT's default delegate runs is compared at its outputs only, and a model
that keeps state between invocations (resource variables) starts every sample from its initial
state; the result's ``notes`` say so.

Example:
    >>> result = compare("model_f32.tflite", "model_int8.tflite", data="test.npz")  # doctest: +SKIP
    >>> result["outputs"][0]["top1_agreement"], result["first_divergence"]["name"]  # doctest: +SKIP
    (0.9975, 'digits_cnn/conv1/Relu_1')
"""

import json
import math
from pathlib import Path

import numpy as np

from tfedge.commands.bench import check_tflite
from tfedge.commands.compared_model import ComparedModel, numeric, quant_step, type_name
from tfedge.commands.tensor_diff import differences, matched_tensors, round_sig
from tfedge.core.console import progress, quiet
from tfedge.core.error_stats import ErrorStats
from tfedge.core.errors import DataError, InputFileError, shape_text
from tfedge.core.files import write_atomically
from tfedge.core.streams import stream_data
from tfedge.core.tflite_file import custom_ops, read_model, state_names
from tfedge.devices.arrays import to_arrays

__all__ = ["compare", "format_comparison", "write_json"]

RANDOM_SAMPLES = 64


TFLITE_HINT = "pass two .tflite files written by `tfedge convert` (or any TFLite converter)"


def _sample_shape(model: ComparedModel) -> tuple:
    return tuple(int(d) for d in model.input["shape"][1:])


def _inputs(data, a: ComparedModel, b: ComparedModel, samples: int | None):
    """The float samples both models get, their labels (or None), and where they came from."""
    shape_a, shape_b = _sample_shape(a), _sample_shape(b)
    if int(np.prod(shape_a)) != int(np.prod(shape_b)):
        raise InputFileError(
            f"the models take different inputs: A {shape_text(shape_a)}, B {shape_text(shape_b)}",
            "compare two conversions of the same model",
        )
    if data is None:
        span = a.input_range() or b.input_range() or (0.0, 1.0)
        rng = np.random.default_rng(0)
        x = rng.uniform(span[0], span[1], size=(samples or RANDOM_SAMPLES, *shape_a))
        return (
            x.astype(np.float32),
            None,
            f"{len(x)} seeded random inputs in [{span[0]:.3g}, {span[1]:.3g}]",
        )

    dataset = stream_data(data, input_shape=shape_a, name="--data")
    dataset = dataset.take(samples) if samples else dataset
    x, y = to_arrays(dataset)
    return x, y, f"{len(x)} samples of {dataset.source}"


def _top1(values: np.ndarray) -> np.ndarray:
    if values.shape[1] == 1:
        column = values[:, 0]
        threshold = 0.5 if ((column >= 0) & (column <= 1)).all() else 0.0
        return (column > threshold).astype(np.int64)
    return values.argmax(axis=1)


def compare(
    model_a, model_b, data=None, *, samples: int | None = None, layers: bool = True
) -> dict:
    """Run two ``.tflite`` models on the same inputs and measure how their outputs differ.

    Args:
        model_a: the reference ``.tflite`` (SQNR takes its outputs as the signal).
        model_b: the ``.tflite`` compared with it.
        data: ``.npz`` path, image folder or arrays; None for seeded random inputs in the range
            the quantized input can represent.
        samples: use at most this many samples.
        layers: also compare the intermediate tensors both models share by name.

    Returns:
        ``{"a", "b", "inputs", "samples", "outputs": [{"name", "shape", "max_abs_diff",
        "mean_abs_diff", "sqnr_db", "cosine", "top1_agreement"}], "accuracy": {"a", "b"} or None,
        "same_model", "tensors": [{"op_index", "op", "name", "step", ...}], "first_divergence",
        "layers_skipped", "notes"}``. ``sqnr_db`` is taken per channel, as
        :class:`~tfedge.core.error_stats.ErrorStats` defines it for every tfedge report (A is
        the signal; 300, the cap, where the values are identical, which ``identical`` says);
        ``layers_skipped`` says why no intermediate tensor was compared (custom operators only
        LiteRT's default delegate runs), else None; ``notes`` are lines for the reader, e.g. that
        a stateful model (resource variables) starts every sample from its initial state.

    Raises:
        InputFileError: a model is missing, not a TFLite model, or the two models' inputs or
            outputs do not correspond.
        DataError: the data does not fit the models.

    Example:
        >>> result = compare("model_f32.tflite", "model_int8.tflite", "test.npz")  # doctest: +SKIP
        >>> print(format_comparison(result))  # doctest: +SKIP
    """

    path_a = check_tflite(model_a, "A", TFLITE_HINT)
    path_b = check_tflite(model_b, "B", TFLITE_HINT)
    with quiet():  # LiteRT prints its delegate banner on stderr
        return _compare(path_a, path_b, data, samples, layers)


def _traits(path: Path) -> dict:
    """The model's state and custom operators, read from the flatbuffer (checked whole)."""
    model = read_model(path)
    return {"state": state_names(model), "custom": custom_ops(model)}


def _state_note(traits: dict) -> list[str]:
    """One line saying which models keep state, and that every sample starts afresh."""
    stateful = [
        f"{label} ({', '.join(t['state'][:3])})" for label, t in traits.items() if t["state"]
    ]
    if not stateful:
        return []
    models = (
        "models " + " and ".join(stateful) + " keep"
        if len(stateful) > 1
        else (f"model {stateful[0]} keeps")
    )
    return [
        f"{models} state between invocations (resource variables): reset before every sample, "
        "so each starts from the initial state"
    ]


def _compare(path_a: Path, path_b: Path, data, samples, layers: bool) -> dict:

    traits = {"A": _traits(path_a), "B": _traits(path_b)}
    a, b = (
        ComparedModel(path_a, "A", False, **traits["A"]),
        ComparedModel(path_b, "B", False, **traits["B"]),
    )
    if len(a.outputs) != len(b.outputs):
        raise InputFileError(
            f"the models have {len(a.outputs)} and {len(b.outputs)} outputs",
            "compare two conversions of the same model",
        )
    for number, (out_a, out_b) in enumerate(zip(a.outputs, b.outputs, strict=True)):
        if int(np.prod(out_a["shape"][1:])) != int(np.prod(out_b["shape"][1:])):
            raise InputFileError(
                f"output {number} has shape {shape_text(out_a['shape'])} in A but "
                f"{shape_text(out_b['shape'])} in B",
                "compare two conversions of the same model",
            )
        if not (numeric(out_a) and numeric(out_b)):
            raise InputFileError(
                f"output {number} ({out_a['name']}) holds {type_name(out_a)} in A and "
                f"{type_name(out_b)} in B; compare measures numeric outputs",
                "compare models whose outputs are numbers",
            )
    x, y, source = _inputs(data, a, b, samples)
    if y is not None:
        classes = int(np.prod(a.outputs[0]["shape"][1:]))
        classes = 2 if classes == 1 else classes
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise DataError(
                f"labels range {int(y.min())}..{int(y.max())} but the models have "
                f"{classes} classes (0..{classes - 1})",
                "pass data labelled for these models",
                option="data",
            )
    stats = [ErrorStats() for _ in a.outputs]
    firsts = {"a": [], "b": []}
    for sample in progress(x, desc="comparing outputs", unit="sample"):
        a.feed(sample)
        b.feed(sample)
        for number, (out_a, out_b) in enumerate(zip(a.outputs, b.outputs, strict=True)):
            va, vb = a.value(out_a), b.value(out_b)
            stats[number].add(va, vb)
            if number == 0:
                firsts["a"].append(va)
                firsts["b"].append(vb)
    top_a, top_b = _top1(np.stack(firsts["a"])), _top1(np.stack(firsts["b"]))
    outputs = []
    for number, (out_a, stat) in enumerate(zip(a.outputs, stats, strict=True)):
        entry = {
            "name": out_a["name"],
            "shape": [int(d) for d in out_a["shape"]],
            **differences(stat),
        }
        entry["top1_agreement"] = round(float((top_a == top_b).mean()), 6) if number == 0 else None
        outputs.append(entry)
    result = {
        "a": str(path_a),
        "b": str(path_b),
        "inputs": source,
        "samples": int(len(x)),
        "outputs": outputs,
        "accuracy": None,
        "same_model": False,
        "tensors": [],
        "first_divergence": None,
        "layers_skipped": None,
        "notes": _state_note(traits),
    }
    if y is not None:
        result["accuracy"] = {
            "a": round(float((top_a == y).mean()), 6),
            "b": round(float((top_b == y).mean()), 6),
        }
    if layers:
        result.update(_compare_layers(path_a, path_b, x, traits))
    return result


def _compare_layers(path_a: Path, path_b: Path, x: np.ndarray, traits: dict) -> dict:
    models = {}
    for label, path in (("A", path_a), ("B", path_b)):
        try:
            models[label] = ComparedModel(path, label, True, traits[label]["state"])
        except InputFileError as exc:
            # It ran with the default delegate (the outputs are compared): custom operators
            # that only the delegate implements, e.g. MediaPipe's Convolution2DTransposeBias.
            custom = traits[label]["custom"]
            why = f"custom operators {', '.join(custom)}" if custom else exc.message
            return {
                "same_model": False,
                "tensors": [],
                "first_divergence": None,
                "layers_skipped": f"model {label} needs LiteRT's default delegate ({why}), "
                "whose fused kernels keep no intermediate tensor: outputs compared only",
            }
    a, b = models["A"], models["B"]
    matched = matched_tensors(a, b)
    outputs = {d["name"] for d in a.outputs}
    intermediate = [m for m in matched if m["a"]["name"] not in outputs]
    if not intermediate:
        return {"same_model": False, "tensors": [], "first_divergence": None}

    stats = [ErrorStats() for _ in matched]
    for sample in progress(x, desc="comparing every tensor", unit="sample"):
        a.feed(sample)
        b.feed(sample)
        for match, stat in zip(matched, stats, strict=True):
            stat.add(a.value(match["a"]), b.value(match["b"]))
    tensors = []
    first = None
    for match, stat in zip(matched, stats, strict=True):
        step = max(quant_step(match["a"]), quant_step(match["b"]))
        entry = {
            "op_index": match["op_index"],
            "op": match["op"],
            "name": match["a"]["name"],
            "step": round_sig(step) if step else None,
            **differences(stat),
        }
        # Beyond rounding: more than one quantization step of the coarser tensor apart (float
        # tensors: more than a float32 rounding of the largest value).
        tolerance = step if step else 1e-5 * max(math.sqrt(stat.power / max(stat.count, 1)), 1e-6)
        entry["diverged"] = stat.max_abs > tolerance * (1 + 1e-6)
        if entry["diverged"] and first is None:
            first = entry
        tensors.append(entry)
    return {"same_model": True, "tensors": tensors, "first_divergence": first}


def _db(entry: dict) -> str:
    if entry.get("identical"):
        return "identical"
    return "-" if entry.get("sqnr_db") is None else f"{entry['sqnr_db']:.1f}"


def format_comparison(result: dict, limit: int = 40) -> str:
    """A plain-text summary of :func:`compare`'s result.

    Example:
        >>> print(format_comparison(compare("a.tflite", "b.tflite")))  # doctest: +SKIP
    """
    lines = [
        f"A: {result['a']}",
        f"B: {result['b']}",
        f"inputs: {result['inputs']}",
        *(f"note: {note}" for note in result.get("notes") or []),
        "",
        f"{'output':<32} {'max |diff|':>11} {'mean |diff|':>12} {'SQNR dB':>9} {'top-1 agree':>12}",
    ]
    for out in result["outputs"]:
        agree = out.get("top1_agreement")
        lines.append(
            f"{out['name'][-32:]:<32} {out['max_abs_diff']:>11.4g} {out['mean_abs_diff']:>12.4g} "
            f"{_db(out):>9} {'' if agree is None else f'{agree * 100:.2f} %':>12}"
        )
    if result.get("accuracy"):
        acc = result["accuracy"]
        lines.append(f"accuracy: A {acc['a'] * 100:.2f} %, B {acc['b'] * 100:.2f} %")
    lines.append("")
    if result.get("layers_skipped"):
        lines.append(f"per operator: not compared: {result['layers_skipped']}")
        return "\n".join(lines)
    if not result["same_model"]:
        lines.append(
            "per operator: no intermediate tensor names in common, so the models do not come "
            "from the same source model (or a tool renamed their tensors)"
        )
        return "\n".join(lines)
    tensors = result["tensors"]
    first = result["first_divergence"]
    if first is None:
        lines.append(
            f"same source model ({len(tensors)} tensors matched by name): no operator output "
            "differs by more than one quantization step"
        )
    else:
        step = f"one step {first['step']:.4g}" if first["step"] else "float rounding"
        lines.append(
            f"same source model ({len(tensors)} tensors matched by name); first divergence at "
            f"operator {first['op_index']} {first['op']} -> {first['name']}: max |diff| "
            f"{first['max_abs_diff']:.4g} (> {step}), SQNR {_db(first)} dB"
        )
    lines.append("")
    lines.append(f"{'op':>4} {'operator':<18} {'max |diff|':>11} {'SQNR dB':>9}  tensor")
    for entry in tensors[:limit]:
        mark = " <- first divergence" if entry is first else ""
        lines.append(
            f"{entry['op_index']:>4} {entry['op'][:18]:<18} {entry['max_abs_diff']:>11.4g} "
            f"{_db(entry):>9}  {entry['name']}{mark}"
        )
    if len(tensors) > limit:
        lines.append(f"... {len(tensors) - limit} more (see --json)")
    return "\n".join(lines)


def write_json(path, result: dict) -> Path:
    """Write :func:`compare`'s result as JSON, atomically; returns the path.

    Example:
        >>> write_json("cmp.json", compare("a.tflite", "b.tflite"))  # doctest: +SKIP
        PosixPath('cmp.json')
    """
    return write_atomically(path, json.dumps(result, indent=2) + "\n")
