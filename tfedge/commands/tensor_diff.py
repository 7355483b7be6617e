"""The per-tensor difference of two models for ``tfedge compare``: which tensors correspond, and
the running statistics of how far apart they are (max and mean absolute difference, RMSE, SQNR,
cosine).

Example:
    >>> import numpy as np
    >>> stats = DiffStats()
    >>> stats.add(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
    >>> stats.as_dict()["max_abs_diff"], stats.as_dict()["identical"]
    (0.5, False)
"""

import math

import numpy as np

from tfedge.commands.compared_model import ComparedModel, numeric

__all__ = ["DiffStats", "round_sig", "sqnr", "matched_tensors"]


class DiffStats:
    """Running difference statistics of a tensor in B against the same tensor in A."""

    def __init__(self):
        self.max_abs = 0.0
        self.sum_abs = 0.0
        self.signal = 0.0
        self.noise = 0.0
        self.dot = 0.0
        self.norm_b = 0.0
        self.count = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        diff = np.abs(a - b)
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
        self.sum_abs += float(diff.sum())
        self.signal += float(np.square(a).sum())
        self.noise += float(np.square(a - b).sum())
        self.dot += float((a * b).sum())
        self.norm_b += float(np.square(b).sum())
        self.count += diff.size

    def as_dict(self) -> dict:
        return {
            "max_abs_diff": round_sig(self.max_abs),
            "mean_abs_diff": round_sig(self.sum_abs / self.count) if self.count else None,
            "rmse": round_sig(math.sqrt(self.noise / self.count)) if self.count else None,
            "sqnr_db": sqnr(self.signal, self.noise),
            "identical": self.noise == 0,
            "cosine": round_sig(self.dot / math.sqrt(self.signal * self.norm_b))
            if self.signal and self.norm_b
            else None,
        }


def round_sig(value: float, digits: int = 6):
    """``value`` rounded to ``digits`` significant digits, for the JSON result.

    Example:
        >>> round_sig(0.123456789), round_sig(123456789.0, 3)
        (0.123457, 123000000.0)
    """
    return float(f"{value:.{digits}g}")


def sqnr(signal: float, noise: float):
    """10 log10(signal / noise) in dB; None when the values are identical or A's are all zero.

    Example:
        >>> sqnr(100.0, 1.0), sqnr(1.0, 0.0)
        (20.0, None)
    """
    if noise == 0 or signal == 0:
        return None
    return round(10 * math.log10(signal / noise), 2)


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
