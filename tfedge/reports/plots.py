"""The report's plots, drawn with matplotlib as inline SVG (no pyplot state, nothing fetched).

Each function takes plain data and returns SVG markup ready to paste into an HTML page: text is
kept as ``<text>`` (``svg.fonttype='none'``, the browser draws it with a local sans-serif font),
the XML prologue, metadata and namespace URLs are dropped, and element ids get a per-figure
prefix so several figures can share one page.

Example:
    >>> points = [Point("int8", 39_775, 0.977), Point("float32", 142_915, 0.977)]
    >>> svg = pareto_svg(points, xlabel="gzip size (KB)", scale=1 / 1024)
    >>> svg.startswith("<svg")
    True
"""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
import io
import itertools
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["Point", "pareto_front", "pareto_svg", "latency_svg", "layer_error_svg"]

FRONT_COLOR = "#d62728"
DEVICE_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
MARKERS = ("o", "s", "^", "D", "v", "P")
BOX_COLOR = "#9ecae1"
DOT_COLOR = "#2171b5"
MEDIAN_COLOR = "#08306b"
BAR_COLOR = "#fd8d3c"
_RC = {
    # Labels are model and file names: "a$b$c.tflite" is text, not a mathtext formula.
    "text.parse_math": False,
    "svg.fonttype": "none",
    "svg.hashsalt": "tfedge",
    "font.family": "sans-serif",
    "font.size": 10,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e5e5e5",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
}
_figure_ids = itertools.count(1)


@dataclass
class Point:
    """One model on an accuracy plot.

    Attributes:
        label: the model's short name.
        x: size in bytes or latency in ms (lower is better).
        accuracy: top-1 accuracy in [0, 1] (higher is better).
        group: the device it was measured on (a Pareto front per group).
        hollow: draw the marker hollow (an emulated device's latency).
    """

    label: str
    x: float
    accuracy: float
    group: str = ""
    hollow: bool = False


def pareto_front(points):
    """The points no other point beats on both axes (smaller ``x`` and higher ``accuracy``).

    Returns them sorted by ``x``; of points with equal ``x`` and accuracy only the first is kept.

    Example:
        >>> front = pareto_front([Point("a", 1, 0.9), Point("b", 2, 0.8), Point("c", 3, 0.95)])
        >>> [p.label for p in front]
        ['a', 'c']
    """
    front = []
    best = -math.inf
    for point in sorted(points, key=lambda p: (p.x, -p.accuracy)):
        if point.accuracy > best:
            front.append(point)
            best = point.accuracy
    return front


def _figure(width, height):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _to_svg(figure) -> str:
    """The figure as SVG markup without prologue, metadata or URLs, with unique element ids."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context(_RC), warnings.catch_warnings():
        # With many labelled points (a search's candidates) the constrained layout can give up;
        # the figure is then drawn with the default layout, which is fine: keep the terminal quiet.
        warnings.filterwarnings("ignore", message="constrained_layout not applied")
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S)
    text = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text)
    prefix = f"tf{next(_figure_ids)}-"
    text = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', text)
    text = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}{m.group(1)}"', text)
    text = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m.group(1)})", text)
    return text.strip()


def _log_if_wide(axis_setter, values, ratio: float = 20.0) -> None:
    low, high = min(values), max(values)
    if low > 0 and high / low >= ratio:
        axis_setter("log")


def pareto_svg(points, *, xlabel: str, title: str = "", scale: float = 1.0) -> str:
    """Accuracy against a cost (size or latency), with each group's Pareto front marked.

    Args:
        points: :class:`Point` list (at least one).
        xlabel: the x axis label (with its unit, after ``scale``).
        title: the plot title.
        scale: multiplies every ``x`` (e.g. ``1/1024`` to plot bytes as KB).

    Returns:
        SVG markup.
    """
    import matplotlib
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    with matplotlib.rc_context(_RC):
        figure = _figure(6.0, 4.6)
        ax = figure.add_subplot()
        groups = list(dict.fromkeys(p.group for p in points))
        for number, group in enumerate(groups):
            color = DEVICE_COLORS[number % len(DEVICE_COLORS)]
            marker = MARKERS[number % len(MARKERS)]
            members = [p for p in points if p.group == group]
            front = pareto_front(members)
            suffix = f" ({group})" if len(groups) > 1 else ""
            for on_front in (False, True):
                for hollow in (False, True):
                    part = [p for p in members if (p in front) == on_front and p.hollow == hollow]
                    if not part:
                        continue
                    edge = FRONT_COLOR if on_front else color
                    name = "Pareto front" if on_front else "other models"
                    ax.scatter(
                        [p.x * scale for p in part],
                        [p.accuracy * 100 for p in part],
                        marker=marker,
                        s=70 if on_front else 40,
                        facecolors="white" if hollow else edge,
                        edgecolors=edge,
                        linewidths=1.8,
                        alpha=1.0 if on_front else 0.7,
                        zorder=4 if on_front else 3,
                        label=name + suffix + (", emulated device" if hollow else ""),
                    )
            if len(front) > 1:
                ax.step(
                    [p.x * scale for p in front],
                    [p.accuracy * 100 for p in front],
                    where="post",
                    color=FRONT_COLOR,
                    linewidth=1.8,
                    linestyle="-" if number == 0 else "--",
                    zorder=2,
                )
        _log_if_wide(ax.set_xscale, [p.x * scale for p in points if p.x > 0] or [1.0])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.margins(x=0.15, y=0.15)
        # At least one point of accuracy in view, so that ticks need one decimal at most.
        low, high = (min(p.accuracy for p in points) * 100, max(p.accuracy for p in points) * 100)
        half = max((high - low) * 0.65, 0.5)
        ax.set_ylim((low + high) / 2 - half, (low + high) / 2 + half)
        ax.yaxis.set_major_locator(MaxNLocator(7, steps=[1, 2, 5, 10]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.1f}"))
        if ax.get_xscale() == "linear":
            ax.xaxis.set_major_locator(MaxNLocator(6, steps=[1, 2, 5, 10]))
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        if title:
            ax.set_title(title, loc="left")
        figure.legend(
            loc="outside lower center",
            ncols=2,
            fontsize=8,
            frameon=False,
            title="red: the Pareto front, models no other model beats on both axes",
            title_fontsize=8,
        )
        _label_points(ax, points, scale)
        return _to_svg(figure)


def _plain(value, _=None) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:g}"
    return f"{value:.3g}"


def _label_points(ax, points, scale) -> None:
    """Name each point where its label overlaps no other label or marker (greedy, in pixels)."""
    figure = ax.get_figure()
    figure.draw_without_rendering()  # final limits and layout, so pixel positions are right
    to_pixels = ax.transData.transform
    ratio = figure.dpi / 72.0
    markers = [to_pixels((p.x * scale, p.accuracy * 100)) for p in points]
    taken = [(x - 5 * ratio, y - 5 * ratio, x + 5 * ratio, y + 5 * ratio) for x, y in markers]
    candidates = [(6, 4), (6, -12), (0, 9), (0, -19), (-6, 4), (-6, -12), (6, 16), (6, -24)]
    frame = ax.get_window_extent()
    order = sorted(range(len(points)), key=lambda i: (markers[i][0], markers[i][1]))
    for i in order:
        point, (px, py) = points[i], markers[i]
        width = 0.56 * 8 * len(point.label) * ratio
        height = 10 * ratio
        chosen = candidates[0]
        for dx, dy in candidates:
            left = px + dx * ratio - (width if dx < 0 else width / 2 if dx == 0 else 0)
            box = (left, py + dy * ratio, left + width, py + dy * ratio + height)
            inside = frame.x0 <= box[0] and box[2] <= frame.x1 + 40 * ratio
            if inside and not any(_overlap(box, other) for other in taken):
                chosen = (dx, dy)
                taken.append(box)
                break
        dx, dy = chosen
        ax.annotate(
            point.label,
            (point.x * scale, point.accuracy * 100),
            xytext=(dx, dy),
            textcoords="offset points",
            fontsize=8,
            color="#333333",
            ha="right" if dx < 0 else "center" if dx == 0 else "left",
            va="bottom",
        )


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def latency_svg(series, *, title: str = "") -> str:
    """The per-run latency distribution of each model as horizontal box plots.

    Args:
        series: ``[(label, [ms, ...]), ...]``, one entry per model (and device).
        title: the plot title.

    Returns:
        SVG markup. Boxes span the 25th-75th percentile, the line in the box is the median
        (its value printed at the right), whiskers reach the 1st and 99th percentiles, and every
        run is a dot (jittered up and down so that equal times stay visible).
    """
    import matplotlib
    from matplotlib.colors import to_rgba
    from matplotlib.ticker import FuncFormatter

    with matplotlib.rc_context(_RC):
        figure = _figure(9.0, 1.2 + 0.42 * len(series))
        ax = figure.add_subplot()
        data = [values for _, values in series]
        jitter = np.random.default_rng(0)
        for row, values in enumerate(data, start=1):
            ax.scatter(
                values,
                row + jitter.uniform(-0.28, 0.28, len(values)),
                s=6,
                color=DOT_COLOR,
                alpha=0.45,
                linewidths=0,
                zorder=2,
            )
        box = ax.boxplot(
            data,
            orientation="horizontal",
            whis=(1, 99),
            widths=0.7,
            patch_artist=True,
            showfliers=False,
            medianprops={"color": MEDIAN_COLOR, "linewidth": 2.5},
            whiskerprops={"color": "#3182bd"},
            capprops={"color": "#3182bd"},
            zorder=3,
        )
        for patch in box["boxes"]:
            patch.set_facecolor(to_rgba(BOX_COLOR, 0.35))  # see-through to the runs
            patch.set_edgecolor("#3182bd")
        ax.set_yticks(range(1, len(series) + 1), [label for label, _ in series])
        ax.invert_yaxis()
        values = [v for _, vs in series for v in vs if v > 0]
        _log_if_wide(ax.set_xscale, values or [1.0])
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))
        ax.set_xlabel("latency per run (ms)")
        ax.grid(axis="y", visible=False)
        for row, (_, vs) in enumerate(series, start=1):
            median = sorted(vs)[len(vs) // 2]
            ax.annotate(
                f"p50 {_plain(median)} ms",
                (1.0, row),
                xycoords=("axes fraction", "data"),
                xytext=(6, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
                color=MEDIAN_COLOR,
            )
        if title:
            ax.set_title(title, loc="left")
        return _to_svg(figure)


def layer_error_svg(layers, *, title: str = "", limit: int = 12) -> str:
    """A bar chart of the layers with the largest error (``rmse_over_scale``), worst on top.

    Args:
        layers: analysis records with ``name``, ``op`` and ``rmse_over_scale``.
        title: the plot title.
        limit: how many layers to draw.

    Returns:
        SVG markup.
    """
    import matplotlib

    layers = [r for r in layers if _number(r.get("rmse_over_scale")) is not None][:limit]
    with matplotlib.rc_context(_RC):
        figure = _figure(9.0, 1.2 + 0.38 * max(len(layers), 1))
        ax = figure.add_subplot()
        labels = [
            _short(f"{r.get('name')} ({r.get('op')})" if r.get("op") else r.get("name"))
            for r in layers
        ]
        values = [float(r["rmse_over_scale"]) for r in layers]
        bars = ax.barh(range(len(layers)), values, color=BAR_COLOR, edgecolor="#d94801")
        ax.set_yticks(range(len(layers)), labels)
        ax.invert_yaxis()
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], padding=3, fontsize=8)
        ax.set_xlabel("RMSE against the float model / quantization scale (quantization steps)")
        ax.grid(axis="y", visible=False)
        ax.margins(x=0.12)
        if title:
            ax.set_title(title, loc="left")
        return _to_svg(figure)


def _short(text, width: int = 48) -> str:
    text = str(text)
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
