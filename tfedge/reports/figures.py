"""The report's figures: accuracy against size and latency (Pareto fronts) and latency per run.

Each figure is inline SVG drawn by :mod:`tfedge.reports.plots`, wrapped with its caption.

Example:
    >>> figures, notes = plots_section([{"model": "m.tflite"}])
    >>> figures, notes[0][:26]
    ('', 'No accuracy in these resul')
"""

import html
import re
from pathlib import Path

from tfedge.reports.inputs import emulated, is_number
from tfedge.reports.plots import Point, latency_svg, pareto_svg

__all__ = ["figure_html", "plots_section"]


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
    return isinstance(runs, list) and bool(runs) and all(is_number(v) for v in runs)


def figure_html(anchor: str, svg: str, caption: str) -> str:
    """One ``<figure>``: the inline SVG with its caption, as wide as the drawing.

    Example:
        >>> figure_html("plot-x", '<svg width="300pt"></svg>', "x").startswith('<figure id="plot-x"')
        True
    """
    # As wide as the drawing (pt -> CSS px), so the caption wraps under it and plots sit side by side.
    match = re.search(r'<svg[^>]*\bwidth="([0-9.]+)pt"', svg)
    style = f' style="max-width: {float(match.group(1)) * 4 / 3:.0f}px"' if match else ""
    return (
        f'<figure id="{anchor}" class="plot"{style}>{svg}'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def plots_section(rows) -> tuple[str, list[str]]:
    """The figures of the rows without an error, and notes on what could not be drawn.

    Returns:
        ``(figures HTML, [note, ...])``.

    Example:
        >>> plots_section([{"model": "m.tflite"}])[1][0].startswith("No accuracy")
        True
    """

    ok = [r for r in rows if not r.get("error")]
    labels = dict(zip(map(id, ok), _labels(ok), strict=True))
    notes, figures = [], []
    scored = [r for r in ok if is_number(r.get("accuracy"))]
    if scored:
        size_points = [
            Point(labels[id(r)], r["size_gzip_bytes"], r["accuracy"])
            for r in scored
            if is_number(r.get("size_gzip_bytes")) and r["size_gzip_bytes"] > 0
        ]
        if size_points:
            figures.append(
                figure_html(
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
                hollow=emulated(r),
            )
            for r in scored
            if isinstance(r.get("latency_ms"), dict) and is_number(r["latency_ms"].get("p50"))
        ]
        if latency_points:
            figures.append(
                figure_html(
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
                        if any(emulated(r) for r in scored)
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
        (labels[id(r)] + (" *" if emulated(r) else ""), [float(v) for v in r["latencies_ms"]])
        for r in ok
        if _runs(r)
    ]
    if series:
        figures.append(
            figure_html(
                "plot-latency",
                latency_svg(series, title="Latency per run"),
                "Each timed run of each model: box from the 25th to the 75th percentile, "
                "median line, whiskers at the 1st and 99th percentiles; each dot is one run."
                + (" * emulated device." if any(emulated(r) for r in ok) else ""),
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
