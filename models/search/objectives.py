"""What the search measures: the objectives, a candidate's figures as study values and scores.

A candidate's figures are a results row (``accuracy`` of the int8 model on the validation data,
``size_gzip_bytes``, ``latency_ms``); the study keeps accuracy (maximized) against gzip size
and/or p50 latency (minimized), and ranks candidates by one score of the objective.

Example:
    >>> check_settings(0.01, "balanced")
"""

import json

from tfedge.core.errors import OptimizationError

__all__ = ["OBJECTIVES", "check_settings"]

OBJECTIVES = ("size", "latency", "balanced")


def _p50(figures: dict):
    latency = figures.get("latency_ms") or {}
    value = latency.get("p50", figures.get("p50_ms"))
    return None if value is None else float(value)


def _values(figures: dict, objective: str) -> list[float]:
    """The study's objective values: accuracy (maximized), then size and/or p50 (minimized)."""
    needed = ["accuracy"]
    if objective in ("size", "balanced"):
        needed.append("size_gzip_bytes")
    if objective in ("latency", "balanced"):
        needed.append("latency_ms.p50")
    found = {"accuracy": figures.get("accuracy"), "size_gzip_bytes": figures.get("size_gzip_bytes")}
    found["latency_ms.p50"] = _p50(figures)
    missing = [key for key in needed if found[key] is None]
    if missing:
        raise OptimizationError(
            f"the evaluator's figures lack {', '.join(missing)}: got keys {sorted(figures)}",
            "return a results row with accuracy, size_gzip_bytes and latency_ms.p50",
        )
    values = [float(figures["accuracy"])]
    if objective in ("size", "balanced"):
        values.append(float(figures["size_gzip_bytes"]))
    if objective in ("latency", "balanced"):
        values.append(_p50(figures))
    return values


def _directions(objective: str) -> list[str]:
    return ["maximize"] + ["minimize"] * (2 if objective == "balanced" else 1)


def _score(figures: dict, objective: str, ptq: dict | None) -> float:
    """Lower is better: gzip bytes, p50, or (balanced) the geometric mean of both vs PTQ int8."""
    if objective == "size":
        return float(figures["size_gzip_bytes"])
    if objective == "latency":
        return _p50(figures)
    base_size = float((ptq or figures)["size_gzip_bytes"]) or 1.0
    base_p50 = _p50(ptq or figures) or 1.0
    return ((figures["size_gzip_bytes"] / base_size) * (_p50(figures) / base_p50)) ** 0.5


def _describe(figures: dict, objective: str) -> str:
    parts = []
    if objective in ("size", "balanced"):
        parts.append(f"{figures['size_gzip_bytes']:,} B gzip")
    if objective in ("latency", "balanced"):
        parts.append(f"p50 {_p50(figures):.3f} ms")
    parts.append(f"acc {figures['accuracy'] * 100:.2f}%")
    return ", ".join(parts)


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def check_settings(tolerance, objective, budget_minutes=None, max_trials=None) -> None:
    """Refuse a tolerance outside (0, 1), an unknown objective, or a budget that is not positive.

    Example:
        >>> check_settings(0.01, "size")
    """
    try:
        value = float(tolerance)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise OptimizationError(
            f"tolerance {tolerance!r} is outside (0, 1); it is the accuracy the result may lose "
            "against the float model, as a fraction",
            "e.g. --tolerance 0.01 for one point of accuracy",
            option="tolerance",
        )
    if objective not in OBJECTIVES:
        raise OptimizationError(
            f"objective {objective!r} is unknown; expected one of {', '.join(OBJECTIVES)}",
            "size = smallest gzip size, latency = lowest p50 on the device, balanced = both",
            option="objective",
        )
    if budget_minutes is not None and not float(budget_minutes) > 0:
        raise OptimizationError(
            f"budget of {budget_minutes!r} minutes: expected a positive number",
            "e.g. --budget-minutes 15",
            option="budget_minutes",
        )
    if max_trials is not None and int(max_trials) < 1:
        raise OptimizationError(f"max_trials {max_trials!r}: expected at least 1")
