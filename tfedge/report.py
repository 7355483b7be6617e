"""Reports: the results JSON and a self-contained HTML page comparing the results side by side.

Example:
    >>> write_html("report.html", rows, title="digits")  # doctest: +SKIP
"""

import html
from pathlib import Path

from tfedge import __version__

__all__ = ["write_html", "render_html"]

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
    ("init_ms", "init ms"),
    ("peak_rss_mb", "peak RSS MB"),
    ("error", "error"),
)


def _cell(row: dict, key: str) -> str:
    if key in ("p50", "p90"):
        value = (row.get("latency_ms") or {}).get(key)
    elif key == "device":
        value = (row.get("device") or {}).get("name")
    else:
        value = row.get(key)
    if value is None:
        return ""
    if key.endswith("accuracy"):
        return f"{value * 100:.2f}%"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def render_html(rows, title: str = "tfedge report") -> str:
    """Render result rows as an HTML page (no external assets)."""
    keys = [(k, label) for k, label in _COLUMNS if any(_cell(r, k) for r in rows)]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in keys)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r, k))}</td>" for k, _ in keys) + "</tr>"
        for r in rows
    )
    device = next((r.get("device") for r in rows if r.get("device")), {}) or {}
    runtime = next((r.get("runtime") for r in rows if r.get("runtime")), {}) or {}
    emulated = ""
    if any((r.get("device") or {}).get("emulated") for r in rows):
        emulated = "<p><b>Emulated device (qemu):</b> its latency is not a real device figure.</p>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f0f0f0; }}
td:first-child, td:nth-child(2) {{ text-align: left; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>tfedge {__version__} &middot; device {html.escape(str(device.get("name", "")))}
({html.escape(str(device.get("machine", "")))}, {html.escape(str(device.get("cpu", "")))})
&middot; runtime {html.escape(str(runtime.get("name", "")))} {html.escape(str(runtime.get("version", "")))}</p>
<table><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table>
<p>Latency is the median (p50) and 90th percentile of timed invocations in one run.</p>
{emulated}
</body></html>
"""


def write_html(path, rows, title: str = "tfedge report") -> Path:
    """Write :func:`render_html` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(rows, title), encoding="utf-8")
    return path
