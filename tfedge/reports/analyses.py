"""The report's per-layer error section of a ``tfedge analyze --json`` document: worst layers, fixes tried.

Example:
    >>> section = analysis_section({"model": "m.tflite", "layers": []}, 1)
    >>> "The analysis lists no layer." in section
    True
"""

import html
from pathlib import Path

from tfedge.reports.figures import figure_html
from tfedge.reports.plots import layer_error_svg

__all__ = ["analysis_section"]


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


def analysis_section(analysis: dict, number: int) -> str:
    """The section of one analysis: its worst layers (figure and table) and the fixes tried.

    Args:
        analysis: a ``tfedge analyze --json`` dict.
        number: its place among the page's analyses (for the section and figure ids).

    Example:
        >>> 'id="analysis-1"' in analysis_section({"model": "m.tflite", "layers": []}, 1)
        True
    """

    model = str(analysis.get("model", "?"))
    worst = [r for r in analysis.get("worst") or [] if isinstance(r, dict)] or sorted(
        (r for r in analysis.get("layers") or [] if isinstance(r, dict)),
        key=lambda r: -_number(r.get("rmse_over_scale")),
    )
    parts = [f'<section id="analysis-{number}"><h2>Per-layer error: {html.escape(model)}</h2>']
    if any(_number(r.get("rmse_over_scale")) > 0 for r in worst):
        parts.append(
            figure_html(
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
