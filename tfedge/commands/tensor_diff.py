"""The per-tensor difference of two models for ``tfedge compare``: which tensors correspond, and
the running statistics of how far apart they are (max and mean absolute difference, RMSE, SQNR,
cosine).

The statistics are :class:`~tfedge.core.error_stats.ErrorStats`, the one definition every
tfedge report uses (SQNR per channel, capped at 300 dB for identical values).

Example:
    >>> import numpy as np
    >>> stats = ErrorStats()
    >>> stats.add(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
    >>> differences(stats)["identical"]
    False
"""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
import numpy as np

from tfedge.commands.compared_model import ComparedModel, numeric
from tfedge.core.error_stats import ErrorStats

__all__ = ["differences", "round_sig", "matched_tensors"]


def differences(stat: ErrorStats) -> dict:
    """A tensor's record: B's values against A's (the signal), as :class:`ErrorStats` defines them.

    Example:
        >>> stats = ErrorStats()
        >>> stats.add(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
        >>> differences(stats)["max_abs_diff"], differences(stats)["identical"]
        (0.5, False)
    """
    sqnr, cosine = stat.sqnr_db(), stat.cosine
    return {
        "max_abs_diff": round_sig(stat.max_abs),
        "mean_abs_diff": round_sig(stat.mean_abs) if stat.count else None,
        "rmse": round_sig(stat.rmse) if stat.count else None,
        "sqnr_db": None if sqnr is None else round(sqnr, 2),
        "identical": stat.identical,
        "cosine": None if cosine is None else round_sig(cosine),
    }


def round_sig(value: float, digits: int = 6):
    """``value`` rounded to ``digits`` significant digits, for the JSON result.

    Example:
        >>> round_sig(0.123456789), round_sig(123456789.0, 3)
        (0.123457, 123000000.0)
    """
    return float(f"{value:.{digits}g}")


def matched_tensors(a: ComparedModel, b: ComparedModel) -> list[dict]:
    """A's operator outputs, in execution order, that B has too (same name and element count).

    Empty when the two do not look like conversions of one source model.

    Example:
        >>> a = ComparedModel(Path("f32.tflite"), "A", preserve=True)  # doctest: +SKIP
        >>> b = ComparedModel(Path("int8.tflite"), "B", preserve=True)  # doctest: +SKIP
        >>> matched_tensors(a, b)[0]["op"]  # doctest: +SKIP
        'CONV_2D'
    """
    details_a = {t["index"]: t for t in a.interpreter.get_tensor_details()}
    by_name_b = {}
    for detail in b.interpreter.get_tensor_details():
        by_name_b.setdefault(detail["name"], detail)
    graph_inputs = {d["index"] for d in a.inputs}
    matched, seen, candidates, reshaped = [], set(), 0, 0
    for op in _operators(a.path):
        for index in op["outputs"]:
            detail = details_a.get(int(index))
            if detail is None or index in graph_inputs or detail["name"] in seen:
                continue
            candidates += 1
            other = by_name_b.get(detail["name"])
            if other is None:
                continue
            if int(np.prod(other["shape"])) != int(np.prod(detail["shape"])):
                reshaped += 1  # same name, another shape: another architecture
                continue
            if not (numeric(detail) and numeric(other)):
                continue  # a resource variable's handle, a string: no values to compare
            seen.add(detail["name"])
            matched.append(
                {"op_index": int(op["index"]), "op": op["op_name"], "a": detail, "b": other}
            )
    # Tensor names alone (Identity, StatefulPartitionedCall...) match across unrelated models:
    # the same source means most of A's operator outputs are in B, none with another shape.
    if reshaped or len(matched) * 2 < candidates:
        return []
    return matched


def _operators(path) -> list[dict]:
    """The main subgraph's operators in execution order, read from the flatbuffer.

    The interpreter lists them only through a private method; its tensor indices are the
    flatbuffer's, so the file says the same.
    """
    from tfedge.core.tflite_file import op_name, op_names, read_model

    model = read_model(path)
    names = op_names()
    return [
        {"index": op.index, "op_name": op_name(model, op, names), "outputs": op.outputs}
        for op in model.graphs[0].operators
    ]
