"""The report's tables: the results (one row per result, formatted cells) and the device and runtime.

Example:
    >>> "<table" in results_table([{"model": "m.tflite", "accuracy": 0.9}])
    True
"""

import html
from pathlib import Path

from tfedge.reports.inputs import emulated, is_number

__all__ = ["results_table", "environment_table"]

_COLUMNS = (
    ("stage", "stage"),
    ("model", "model"),
    ("device", "device"),
    ("keras_accuracy", "Keras accuracy"),
    ("accuracy", "TFLite accuracy"),
    ("size_bytes", "size (bytes)"),
    ("size_gzip_bytes", "gzip (bytes)"),
    ("p50", "p50 ms"),
    ("p90", "p90 ms"),
    ("p99", "p99 ms"),
    ("runs", "runs"),
    ("init_ms", "init ms"),
    ("peak_rss_mb", "peak RSS MB"),
    ("edgetpu_compatible", "EdgeTPU"),
    ("fidelity", "fidelity"),
    ("error", "error"),
)
_LATENCY_KEYS = ("p50", "p90", "p99", "init_ms")


def _value(row: dict, key: str):
    if key in ("p50", "p90", "p99"):
        return (row.get("latency_ms") or {}).get(key)
    if key == "device":
        return (row.get("device") or {}).get("name")
    if key == "model":
        return Path(str(row.get("model", ""))).name
    return row.get(key)


def _cell(row: dict, key: str) -> str:
    value = _value(row, key)
    if value is None or value == "":
        return ""
    if key == "fidelity":
        return _fidelity(value)
    if key == "edgetpu_compatible":
        layers = row.get("int16_layers")
        return "yes" if value else "no" + (f" (int16 {', '.join(layers)})" if layers else "")
    if not is_number(value):
        return str(value)
    if key.endswith("accuracy"):
        return f"{value * 100:.2f} %"
    if key in ("size_bytes", "size_gzip_bytes") and isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:.3f}" if key in _LATENCY_KEYS else f"{value:.2f}"
    else:
        text = str(value)
    if key in _LATENCY_KEYS and emulated(row):
        text += " *"
    return text


def _fidelity(value) -> str:
    """``full``, or the screen a search candidate got (``screen 1 ep / 25 % -> full``)."""
    if not isinstance(value, dict):
        return str(value)
    screen = value.get("screen") or {}
    share = screen.get("data_fraction")
    text = f"screen {screen.get('epochs')} ep" + (f" / {share * 100:g} %" if share else "")
    return text + (" -> full" if value.get("then") else " (pruned)")


def results_table(rows) -> str:
    """The results table: a column per figure any row has, a row per result (errors marked).

    Example:
        >>> 'id="results"' in results_table([{"model": "m.tflite", "accuracy": 0.9}])
        True
    """
    keys = [(k, label) for k, label in _COLUMNS if any(_cell(r, k) for r in rows)]
    if all(r.get("stage") and str(r.get("model")) == str(r["stage"]) for r in rows):
        keys = [(k, label) for k, label in keys if k != "model"]  # rows named by stage only
    text_keys = {"stage", "model", "device", "error", "fidelity", "edgetpu_compatible"}

    def cls(key):
        return ' class="text"' if key in text_keys else ""

    head = "".join(f"<th{cls(k)}>{html.escape(label)}</th>" for k, label in keys)
    body = "\n".join(
        ('<tr class="error">' if r.get("error") else "<tr>")
        + "".join(f"<td{cls(k)}>{html.escape(_cell(r, k))}</td>" for k, _ in keys)
        + "</tr>"
        for r in rows
    )
    return f'<table id="results"><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>'


def environment_table(rows) -> str:
    """The table of each device and runtime the rows ran on ('' when none), emulated ones badged.

    Example:
        >>> "emulated (qemu)" in environment_table([{"device": {"name": "pi", "emulated": True}}])
        True
    """
    seen, lines = set(), []
    for row in rows:
        device = row.get("device") or {}
        runtime = row.get("runtime") or {}
        key = (device.get("name"), device.get("cpu"), runtime.get("name"), runtime.get("version"))
        if key in seen or row.get("error"):
            continue
        seen.add(key)
        cells = [
            device.get("name", ""),
            device.get("machine", ""),
            device.get("cpu", ""),
            device.get("model") or "",
            device.get("python", ""),
            f"{runtime.get('name', '')} {runtime.get('version', '')}".strip(),
            row.get("threads", ""),
            '<span class="badge">emulated (qemu)</span>' if emulated(row) else "real",
        ]
        lines.append(
            "<tr>"
            + "".join(
                f'<td class="text">{c if i == 7 else html.escape(str(c))}</td>'
                for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    if not lines:
        return ""
    head = "".join(
        f'<th class="text">{h}</th>'
        for h in ("device", "machine", "CPU", "board", "Python", "runtime", "threads", "kind")
    )
    note = ""
    if any(emulated(r) for r in rows):
        note = (
            '<p><span class="badge">Emulated device</span> Latency marked * was measured under '
            "qemu: it is 150-500x a real board's and is not a device figure; use those rows "
            "for accuracy and output agreement only.</p>"
        )
    return (
        f'<table id="environment"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}'
        f"</tbody></table>{note}"
    )
