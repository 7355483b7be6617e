"""Reports: one self-contained HTML page with the results table and its plots.

The page shows the results table, accuracy against gzip size and against p50 latency with the
Pareto front marked, each model's per-run latency distribution, the per-layer error and fixes of
any ``tfedge analyze`` JSON among the inputs, and the device, runtime and emulated-device marker.
Plots are inline SVG drawn by matplotlib (:mod:`tfedge.reports.plots`); the page has no script and loads
nothing: it opens the same offline, from an e-mail or from a CI artifact.

Inputs are the JSON files tfedge writes: ``tfedge bench --json`` (``{"results": [...]}``),
``tfedge optimize``'s ``report.json`` (results with ``stage`` and ``keras_accuracy``) and
``tfedge analyze --json`` (``{"model", "layers", "worst", "fixes", "chosen"}``).

Example:
    >>> build_report(["bench.json", "analysis.json"], "report.html")  # doctest: +SKIP
    PosixPath('report.html')
    >>> write_html("report.html", bench_report["results"], title="digits")  # doctest: +SKIP
"""

import html
import json
import math
import re
from pathlib import Path

from tfedge.core.errors import InputFileError, missing_file
from tfedge.core.files import write_atomically
from tfedge.version import __version__

__all__ = ["load_inputs", "build_report", "render_html", "write_html"]

REPORT_HINT = (
    "pass JSON written by `tfedge bench --json`, `tfedge optimize` (report.json) "
    "or `tfedge analyze --json`"
)

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

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1280px; padding: 0 1.5em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.meta { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f0f0f0; } td.text, th.text { text-align: left; }
tr.error td { background: #fff0f0; } tr.chosen td { background: #eef8ee; font-weight: 600; }
.badge { display: inline-block; padding: 2px 8px; border-radius: 4px; background: #fde0c5;
         color: #7a3d00; font-weight: 600; }
.plots { display: flex; flex-wrap: wrap; gap: 1.5em; }
figure { margin: 0.5em 0; } figcaption { color: #555; font-size: 0.9em; max-width: 60em; }
svg { max-width: 100%; height: auto; }
.note { color: #555; font-size: 0.9em; }
"""


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


def build_report(inputs, output, title: str | None = None) -> Path:
    """Write the HTML report of one or more JSON result files.

    Args:
        inputs: JSON paths (see :func:`load_inputs`).
        output: the ``.html`` file to write.
        title: the page title (default: the input file names).

    Returns:
        The path written.

    Example:
        >>> build_report(["bench.json"], "report.html")  # doctest: +SKIP
        PosixPath('report.html')
    """
    loaded = load_inputs(inputs)
    title = title or "tfedge report: " + ", ".join(Path(s).name for s in loaded["sources"])
    return write_html(output, loaded["rows"], title=title, analyses=loaded["analyses"])


# -- table ---------------------------------------------------------------------------------------


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
    if not _is_number(value):
        return str(value)
    if key.endswith("accuracy"):
        return f"{value * 100:.2f} %"
    if key in ("size_bytes", "size_gzip_bytes") and isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:.3f}" if key in _LATENCY_KEYS else f"{value:.2f}"
    else:
        text = str(value)
    if key in _LATENCY_KEYS and _emulated(row):
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


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _emulated(row: dict) -> bool:
    return bool((row.get("device") or {}).get("emulated"))


def _table(rows) -> str:
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


# -- environment ---------------------------------------------------------------------------------


def _environment(rows) -> str:
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
            '<span class="badge">emulated (qemu)</span>' if _emulated(row) else "real",
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
    if any(_emulated(r) for r in rows):
        note = (
            '<p><span class="badge">Emulated device</span> Latency marked * was measured under '
            "qemu: it is 150-500x a real board's and is not a device figure; use those rows "
            "for accuracy and output agreement only.</p>"
        )
    return (
        f'<table id="environment"><thead><tr>{head}</tr></thead><tbody>{"".join(lines)}'
        f"</tbody></table>{note}"
    )


# -- plots ---------------------------------------------------------------------------------------


def _labels(rows) -> list[str]:
    """A short unique name per row: the stage or file name, with the device when several."""
    devices = {(r.get("device") or {}).get("name") for r in rows}
    labels = []
    for row in rows:
        label = str(row.get("stage") or Path(str(row.get("model", "?"))).name)
        if len(devices) > 1:
            label += f" @ {(row.get('device') or {}).get('name', '?')}"
        labels.append(label)
    counts: dict = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    out, seen = [], {}
    for label, row in zip(labels, rows, strict=True):
        if counts[label] > 1:
            seen[label] = seen.get(label, 0) + 1
            label = f"{label} [{Path(row.get('source', '')).stem or seen[label]}]"
            if label in out:
                label = f"{label} #{seen[label.split(' [')[0]]}"
        out.append(label)
    return out


def _runs(row: dict) -> bool:
    """Whether the row has per-run latencies to draw (a non-empty list of numbers)."""
    runs = row.get("latencies_ms")
    return isinstance(runs, list) and bool(runs) and all(_is_number(v) for v in runs)


def _figure_html(anchor: str, svg: str, caption: str) -> str:
    # As wide as the drawing (pt -> CSS px), so the caption wraps under it and plots sit side by side.
    match = re.search(r'<svg[^>]*\bwidth="([0-9.]+)pt"', svg)
    style = f' style="max-width: {float(match.group(1)) * 4 / 3:.0f}px"' if match else ""
    return (
        f'<figure id="{anchor}" class="plot"{style}>{svg}'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _plots(rows) -> tuple[str, list[str]]:
    from tfedge.reports.plots import Point, latency_svg, pareto_svg

    ok = [r for r in rows if not r.get("error")]
    labels = dict(zip(map(id, ok), _labels(ok), strict=True))
    notes, figures = [], []
    scored = [r for r in ok if _is_number(r.get("accuracy"))]
    if scored:
        size_points = [
            Point(labels[id(r)], r["size_gzip_bytes"], r["accuracy"])
            for r in scored
            if _is_number(r.get("size_gzip_bytes")) and r["size_gzip_bytes"] > 0
        ]
        if size_points:
            figures.append(
                _figure_html(
                    "plot-accuracy-size",
                    pareto_svg(
                        size_points,
                        xlabel="gzip size (KB)",
                        scale=1 / 1024,
                        title="Accuracy vs gzip size",
                    ),
                    "Top-1 accuracy against the gzipped .tflite size. Red: the Pareto front, "
                    "the models no other model beats on both size and accuracy.",
                )
            )
        latency_points = [
            Point(
                labels[id(r)],
                r["latency_ms"]["p50"],
                r["accuracy"],
                group=str((r.get("device") or {}).get("name", "")),
                hollow=_emulated(r),
            )
            for r in scored
            if isinstance(r.get("latency_ms"), dict) and _is_number(r["latency_ms"].get("p50"))
        ]
        if latency_points:
            figures.append(
                _figure_html(
                    "plot-accuracy-latency",
                    pareto_svg(
                        latency_points,
                        xlabel="p50 latency (ms)",
                        title="Accuracy vs p50 latency",
                    ),
                    "Top-1 accuracy against the median latency of one inference"
                    + (
                        "; a front per device. Hollow markers: an emulated device (not a "
                        "device latency)."
                        if any(_emulated(r) for r in scored)
                        else (
                            "; a front per device."
                            if len({p.group for p in latency_points}) > 1
                            else "."
                        )
                    ),
                )
            )
    else:
        notes.append(
            "No accuracy in these results (benched without --data): the accuracy plots need "
            "labelled data."
        )
    series = [
        (labels[id(r)] + (" *" if _emulated(r) else ""), [float(v) for v in r["latencies_ms"]])
        for r in ok
        if _runs(r)
    ]
    if series:
        figures.append(
            _figure_html(
                "plot-latency",
                latency_svg(series, title="Latency per run"),
                "Each timed run of each model: box from the 25th to the 75th percentile, "
                "median line, whiskers at the 1st and 99th percentiles; each dot is one run."
                + (" * emulated device." if any(_emulated(r) for r in ok) else ""),
            )
        )
    missing = [labels[id(r)] for r in ok if not _runs(r)]
    if missing:
        notes.append(
            "No per-run latencies for "
            + ", ".join(missing)
            + " (results written before tfedge kept them): no distribution drawn."
        )
    return "\n".join(figures), notes


# -- analyses ------------------------------------------------------------------------------------


def _fmt(value, spec: str = ".4g") -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def _number(value) -> float:
    """``value`` as a float for sorting, 0.0 where it is not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if number == number and abs(number) != float("inf") else 0.0


def _analysis(analysis: dict, number: int) -> str:
    from tfedge.reports.plots import layer_error_svg

    model = str(analysis.get("model", "?"))
    worst = [r for r in analysis.get("worst") or [] if isinstance(r, dict)] or sorted(
        (r for r in analysis.get("layers") or [] if isinstance(r, dict)),
        key=lambda r: -_number(r.get("rmse_over_scale")),
    )
    parts = [f'<section id="analysis-{number}"><h2>Per-layer error: {html.escape(model)}</h2>']
    if any(_number(r.get("rmse_over_scale")) > 0 for r in worst):
        parts.append(
            _figure_html(
                f"plot-layers-{number}",
                layer_error_svg(worst, title=f"Worst layers of {Path(model).name}"),
                "RMSE of each layer's int8 output against the float model, in quantization "
                "steps (1 is the rounding floor); worst first.",
            )
        )
    if worst:
        head = "".join(
            f'<th class="{"text" if i < 2 else ""}">{h}</th>'
            for i, h in enumerate(("layer", "op", "RMSE / scale", "max |error|", "cosine"))
        )
        body = "".join(
            "<tr>"
            + f'<td class="text">{html.escape(str(r.get("name", "")))}</td>'
            + f'<td class="text">{html.escape(str(r.get("op", "")))}</td>'
            + "".join(
                f"<td>{_fmt(r.get(k), spec)}</td>"
                for k, spec in (
                    ("rmse_over_scale", ".4g"),
                    ("max_abs_error", ".4g"),
                    ("cosine", ".5f"),
                )
            )
            + "</tr>"
            for r in worst[:12]
        )
        parts.append(
            f'<table class="layers"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
        )
    else:
        parts.append('<p class="note">The analysis lists no layer.</p>')
    fixes = [f for f in analysis.get("fixes") or [] if isinstance(f, dict)]
    if fixes:
        chosen = analysis.get("chosen")
        chosen_name = chosen.get("fix") if isinstance(chosen, dict) else chosen
        head = "".join(
            f'<th class="{"text" if i == 0 else ""}">{h}</th>'
            for i, h in enumerate(
                ("fix", "accuracy", "size (bytes)", "p50 ms", "fully integer", "EdgeTPU")
            )
        )
        rows = []
        for fix in fixes:
            accuracy = fix.get("accuracy")
            cells = [
                f"{accuracy * 100:.2f} %" if isinstance(accuracy, (int, float)) else "",
                f"{fix['size_bytes']:,}" if isinstance(fix.get("size_bytes"), int) else "",
                _fmt(fix.get("p50_ms"), ".3f"),
                _fmt(fix.get("fully_integer")),
                _fmt(fix.get("edgetpu_compatible")),
            ]
            is_chosen = chosen_name is not None and fix.get("fix") == chosen_name
            mark = " (chosen)" if is_chosen else ""
            if fix.get("error"):  # a candidate that could not be built: say why across the row
                body = f'<td class="text" colspan="{len(cells)}">failed: {html.escape(str(fix["error"]))}</td>'
            else:
                body = "".join(f"<td>{html.escape(c)}</td>" for c in cells)
            rows.append(
                ('<tr class="chosen">' if is_chosen else "<tr>")
                + f'<td class="text">{html.escape(str(fix.get("fix", "")) + mark)}</td>'
                + body
                + "</tr>"
            )
        parts.append("<h3>Fixes tried</h3>")
        parts.append(
            f'<table class="fixes"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
            "</tbody></table>"
        )
        if chosen_name is None:
            parts.append('<p class="note">No fix was chosen.</p>')
    parts.append("</section>")
    return "\n".join(parts)


# -- page ----------------------------------------------------------------------------------------


def render_html(rows, title: str = "tfedge report", analyses=()) -> str:
    """Render result rows (and analyses) as one self-contained HTML page.

    Args:
        rows: result dicts of the bench JSON schema (``optimize`` rows add ``stage`` and
            ``keras_accuracy``; ``latencies_ms`` gives the latency distribution).
        title: the page title.
        analyses: ``tfedge analyze --json`` dicts.

    Returns:
        The HTML text: no script, no stylesheet or font link, no URL.

    Example:
        >>> page = render_html([], "empty")
        >>> "<table" in page or "No result" in page
        True
    """
    rows = list(rows)
    sections = []
    if rows:
        figures, notes = _plots(rows)
        emulated_note = (
            '<p class="note">* latency measured on an emulated device (qemu).</p>'
            if any(_emulated(r) for r in rows)
            else ""
        )
        sections.append(
            '<section id="results-section"><h2>Results</h2>'
            + _table(rows)
            + '<p class="note">Latency: p50/p90/p99 of timed invocations in one run (ms); '
            "accuracy is top-1 over the labelled data.</p>" + emulated_note + "</section>"
        )
        if figures:
            sections.append(
                f'<section id="plots"><h2>Plots</h2><div class="plots">{figures}</div></section>'
            )
        sections += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
        environment = _environment(rows)
        if environment:
            sections.append(
                f'<section id="environment-section"><h2>Device and runtime</h2>{environment}</section>'
            )
    else:
        sections.append('<p class="note">No result rows in the inputs.</p>')
    sections += [_analysis(a, n) for n, a in enumerate(analyses, start=1)]
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<style>{_CSS}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f'<p class="meta">tfedge {html.escape(__version__)}</p>\n'
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def write_html(path, rows, title: str = "tfedge report", analyses=()) -> Path:
    """Write :func:`render_html` to ``path`` atomically; returns the path.

    Example:
        >>> write_html("out/report.html", report["results"], title="digits")  # doctest: +SKIP
        PosixPath('out/report.html')
    """
    path = Path(path)
    page = render_html(rows, title, analyses)
    return write_atomically(path, page)
