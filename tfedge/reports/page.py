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
from pathlib import Path

from tfedge.core.files import write_atomically
from tfedge.reports.analyses import analysis_section
from tfedge.reports.figures import plots_section
from tfedge.reports.inputs import emulated, load_inputs
from tfedge.reports.tables import environment_table, results_table
from tfedge.version import __version__

__all__ = ["load_inputs", "build_report", "render_html", "write_html"]

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
        figures, notes = plots_section(rows)
        emulated_note = (
            '<p class="note">* latency measured on an emulated device (qemu).</p>'
            if any(emulated(r) for r in rows)
            else ""
        )
        sections.append(
            '<section id="results-section"><h2>Results</h2>'
            + results_table(rows)
            + '<p class="note">Latency: p50/p90/p99 of timed invocations in one run (ms); '
            "accuracy is top-1 over the labelled data.</p>" + emulated_note + "</section>"
        )
        if figures:
            sections.append(
                f'<section id="plots"><h2>Plots</h2><div class="plots">{figures}</div></section>'
            )
        sections += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
        environment = environment_table(rows)
        if environment:
            sections.append(
                f'<section id="environment-section"><h2>Device and runtime</h2>{environment}</section>'
            )
    else:
        sections.append('<p class="note">No result rows in the inputs.</p>')
    sections += [analysis_section(a, n) for n, a in enumerate(analyses, start=1)]
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
