"""The report's inputs: result rows and analyses read from tfedge's JSON files, and checked.

A row is one ``tfedge bench`` / ``tfedge optimize`` result; an analysis one ``tfedge analyze
--json`` document. A file of another shape, or a figure no plot can draw, is refused with the
path and the key.

Example:
    >>> inputs = load_inputs(["results.json"])  # doctest: +SKIP
    >>> sorted(inputs)  # doctest: +SKIP
    ['analyses', 'rows', 'sources']
"""

import json
import math
from pathlib import Path

from tfedge.core.errors import InputFileError, missing_file

__all__ = ["REPORT_HINT", "load_inputs", "is_number", "emulated"]

REPORT_HINT = (
    "pass JSON written by `tfedge bench --json`, `tfedge optimize` (report.json) "
    "or `tfedge analyze --json`"
)


def _read_json(path: Path):
    if path.is_dir():
        raise InputFileError(f"report input {path} is a folder, not a JSON file", REPORT_HINT)
    if not path.is_file():
        raise missing_file("report input", path, REPORT_HINT)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputFileError(f"{path} is not a JSON file (not UTF-8 text)", REPORT_HINT) from None
    except json.JSONDecodeError as exc:
        raise InputFileError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            REPORT_HINT,
        ) from None
    except RecursionError:
        raise InputFileError(
            f"{path} nests arrays or objects too deeply to be a tfedge result", REPORT_HINT
        ) from None


# Figures a result row may hold, each a finite number when present (accuracies a fraction).
_NUMBERS = ("accuracy", "keras_accuracy", "size_bytes", "size_gzip_bytes", "init_ms", "peak_rss_mb")


def _check_number(value, where: str, path: Path, fraction: bool = False) -> None:
    """Refuse a number no plot can draw (huge, infinite, NaN; an accuracy outside 0..1).

    Text where a number belongs is shown as text, as a hand-edited file may hold.
    """
    if value is None or isinstance(value, str):
        return
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError, OverflowError):
        number = None
    ok = number is not None and math.isfinite(number) and (not fraction or 0 <= number <= 1)
    if not ok:
        expected = "a fraction from 0 to 1" if fraction else "a finite number"
        raise InputFileError(
            f"{path}: {where} is {str(value)[:40]}; expected {expected}", REPORT_HINT
        )


def _kind(payload, path: Path) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("results"), list):
        for number, row in enumerate(payload["results"]):
            if not isinstance(row, dict) or "model" not in row:
                raise InputFileError(
                    f"{path}: results[{number}] is not a result (no 'model' key)", REPORT_HINT
                )
            for key in ("latency_ms", "device", "runtime"):
                if row.get(key) is not None and not isinstance(row[key], dict):
                    raise InputFileError(
                        f"{path}: results[{number}].{key} is {type(row[key]).__name__}; "
                        "expected an object",
                        REPORT_HINT,
                    )
            for key in _NUMBERS:
                where = f"results[{number}].{key}"
                _check_number(row.get(key), where, path, fraction=key.endswith("accuracy"))
            for key, value in (row.get("latency_ms") or {}).items():
                _check_number(value, f"results[{number}].latency_ms.{key}", path)
            for value in row.get("latencies_ms") or []:
                _check_number(value, f"results[{number}].latencies_ms", path)
        return "results"
    if isinstance(payload, dict) and isinstance(payload.get("layers"), list):
        return "analysis"
    found = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
    raise InputFileError(
        f"{path} is JSON but not a tfedge result: found {found}; expected 'results' "
        "(bench, optimize) or 'model' and 'layers' (analyze)",
        REPORT_HINT,
    )


def load_inputs(paths) -> dict:
    """Read report inputs and sort them into result rows and analyses.

    Args:
        paths: JSON files from ``tfedge bench --json``, ``tfedge optimize`` or ``tfedge analyze --json``.

    Returns:
        ``{"rows": [...], "analyses": [...], "sources": [str, ...]}``; each row gets ``"source"``
        (the file it came from).

    Raises:
        InputFileError: a file is missing, is not JSON, or is JSON of another shape.

    Example:
        >>> inputs = load_inputs(["results.json"])  # doctest: +SKIP
        >>> len(inputs["rows"]), inputs["analyses"]  # doctest: +SKIP
        (2, [])
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputFileError("no report input given", REPORT_HINT)
    rows, analyses = [], []
    for path in paths:
        payload = _read_json(path)
        if _kind(payload, path) == "results":
            rows += [{**row, "source": str(path)} for row in payload["results"]]
        else:
            analyses.append({**payload, "source": str(path)})
    return {"rows": rows, "analyses": analyses, "sources": [str(p) for p in paths]}


def is_number(value) -> bool:
    """Whether ``value`` is a number to format or draw (an int or float; not a bool, not text).

    Example:
        >>> is_number(0.5), is_number(True), is_number("0.5")
        (True, False, False)
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def emulated(row: dict) -> bool:
    """Whether the row was measured on an emulated device (its latency is no device figure).

    Example:
        >>> emulated({"device": {"name": "pi", "emulated": True}}), emulated({})
        (True, False)
    """
    return bool((row.get("device") or {}).get("emulated"))
