"""The report's figures: matplotlib on the Agg canvas, each line in its series' style (styles.style:
the backend's colour, marker and dash pattern, a server beside ephttpd its own marker and dash pattern).

The 2002 reference is drawn in its backend's colour with hollow markers and thin dotted lines. Renders are
deterministic: the SVG hash salt is fixed and no date is written into the files.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

# The 2002 series names, mapped to the backend whose style they share.
REFERENCE_BACKEND = {"sys_epoll-0.14": "epoll", "poll": "poll"}

RC: dict[Any, Any] = {  # matplotlib types its keys as literals
    "svg.hashsalt": "epollbench",
    "svg.fonttype": "path",
    "font.size": 10,
    "axes.grid": True,
    "grid.color": "#d0d0d0",
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}
FIGSIZE = (6.4, 3.9)
# The legend's width in characters of its labels that fits FIGSIZE's width at its font, each column counting
# LEGEND_COLUMN_EXTRA more for its marker and the space between columns (measured: the quick reference run's
# reply-rate legend, 58 characters in 5 columns, just fits; a run over two kernels' comparison, 70, does not).
LEGEND_WIDTH = 90
LEGEND_COLUMN_EXTRA = 6
NOTE_COLOUR = "#A00000"
PNG_DPI = 144


@dataclass
class Series:
    """One line: medians over repetitions at each x, with the min-max of the repetitions as a band."""

    label: str
    style: dict  # color, marker, linestyle (styles.style)
    xs: list[float]
    medians: list[float]
    lows: list[float] = field(default_factory=list)
    highs: list[float] = field(default_factory=list)
    saturated: list[bool] = field(default_factory=list)
    reference: bool = False  # a published series: hollow markers, thin dotted line
    dashed: bool = False  # the second run of a comparison
    hollow: bool = False  # the second run of a comparison over kernels: hollow markers, its kernel's dash kept
    thin: bool = False  # a companion figure of the same line (p50 beside p99): thinner, smaller markers


@dataclass
class Plot:
    name: str
    title: str
    xlabel: str
    ylabel: str
    series: list[Series]
    logx: bool = False
    logy: bool = False
    ratio_series: list[Series] = field(default_factory=list)  # B/A panel of a comparison
    # Above the plot, in NOTE_COLOUR: what the reader must know before reading any number of it (emulated CPUs),
    # drawn into the figure so that it stays with a figure attached on its own.
    note: str = ""


@dataclass
class Bar:
    """One stacked bar: its group (a backend), its label in the group (a dead level), its parts."""

    group: str
    label: str
    parts: dict[str, float]


@dataclass
class StackedBars:
    """Stacked bars in groups, one colour per part (the anatomy's CPU categories, or slab caches)."""

    name: str
    title: str
    xlabel: str
    ylabel: str
    bars: list[Bar]
    colours: dict[str, str]  # part -> colour, in stacking order


@dataclass
class FigureFile:
    name: str
    png: Path
    svg: Path
    png_base64: str
    title: str
    width_px: int
    height_px: int


def _tick(value: float, _pos=None) -> str:
    """Plain tick labels (5k, 1M, 0.01): no mathtext, which is slow and unneeded."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _draw_series(ax, series: Series) -> None:
    style = series.style
    points = [(x, y) for x, y in zip(series.xs, series.medians, strict=True) if y is not None]
    if not points:
        return
    xs, ys = zip(*points, strict=True)
    if series.reference:
        ax.plot(xs, ys, color=style["color"], marker=style["marker"], linestyle=":", linewidth=1.2,
                markersize=6, markerfacecolor="white", markeredgewidth=1.3, label=series.label, zorder=2)
        return
    linestyle = (0, (4, 2)) if series.dashed else style["linestyle"]
    face = "white" if series.dashed or series.hollow else style["color"]
    width, size = (0.8, 3.0) if series.thin else (1.8, 5.5)
    ax.plot(xs, ys, color=style["color"], marker=style["marker"], linestyle=linestyle, linewidth=width,
            markersize=size, markerfacecolor=face, markeredgewidth=1.2, label=series.label, zorder=3)
    if series.lows and any(lo != hi for lo, hi in zip(series.lows, series.highs, strict=True)):
        band = [(x, lo, hi) for x, lo, hi in zip(series.xs, series.lows, series.highs, strict=True)
                if lo is not None]
        bx, blo, bhi = zip(*band, strict=True)
        ax.fill_between(bx, blo, bhi, color=style["color"], alpha=0.18, linewidth=0, zorder=1)


def _style_axes(ax, plot: Plot, ylabel: str, logy: bool) -> None:
    if plot.logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(left=0)
    if logy:
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_ylim(bottom=0)
    ax.xaxis.set_major_formatter(FuncFormatter(_tick))
    ax.yaxis.set_major_formatter(FuncFormatter(_tick))
    ax.set_ylabel(ylabel)


def _wants_logy(plot: Plot) -> bool:
    values = [y for s in plot.series for y in s.medians if y is not None and y > 0]
    return plot.logy or (bool(values) and max(values) / min(values) > 50 and not plot.ratio_series)


def draw(plot: Plot) -> Figure:
    with matplotlib.rc_context(RC):
        if plot.ratio_series:
            fig = Figure(figsize=(FIGSIZE[0], FIGSIZE[1] * 1.35), layout="constrained")
            ax, ratio_ax = fig.subplots(2, 1, sharex=True, height_ratios=[2.2, 1])
        else:
            fig = Figure(figsize=FIGSIZE, layout="constrained")
            ax, ratio_ax = fig.subplots(), None
        for series in plot.series:
            _draw_series(ax, series)
        saturated = [(x, y) for s in plot.series if s.saturated
                     for x, y, sat in zip(s.xs, s.medians, s.saturated, strict=True) if sat and y is not None]
        if saturated:
            sx, sy = zip(*saturated, strict=True)
            ax.scatter(sx, sy, s=150, facecolors="none", edgecolors="#000000", linewidths=1.0, zorder=4,
                       label="client saturated")
        _style_axes(ax, plot, plot.ylabel, _wants_logy(plot))
        ax.set_title(plot.title, fontsize=11, loc="left")
        if plot.note:
            fig.suptitle(plot.note, fontsize=8.5, color=NOTE_COLOUR)
        if ratio_ax is not None:
            for series in plot.ratio_series:
                _draw_series(ratio_ax, series)
            ratio_ax.axhline(1.0, color="#000000", linewidth=0.8)
            _style_axes(ratio_ax, plot, "B / A", logy=False)
            ratios = [1.0] + [y for s in plot.ratio_series for y in s.medians if y is not None]
            pad = max(0.05, 0.15 * (max(ratios) - min(ratios)))
            ratio_ax.set_ylim(max(0.0, min(ratios) - pad), max(ratios) + pad)
            ratio_ax.set_xlabel(plot.xlabel)
        else:
            ax.set_xlabel(plot.xlabel)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            # Below the axes: it never hides a line, and placing it costs no search.
            fig.legend(handles, labels, loc="outside lower center", fontsize=8.5, ncols=legend_columns(labels))
    return fig


def legend_columns(labels: list[str]) -> int:
    """The most columns, up to 5 (3 for long labels such as an extrapolated line's), in which the legend stays
    within the figure's width. matplotlib fills the columns top to bottom, the first len % columns of them one
    entry longer, and each is as wide as its widest label with its marker: their sum must fit LEGEND_WIDTH."""
    most = 5 if max(len(label) for label in labels) <= 16 else 3
    for columns in range(min(len(labels), most), 1, -1):
        rows, longer = divmod(len(labels), columns)
        width, start = 0, 0
        for column in range(columns):
            size = rows + (column < longer)
            width += max(len(label) for label in labels[start:start + size]) + LEGEND_COLUMN_EXTRA
            start += size
        if width <= LEGEND_WIDTH:
            return columns
    return 1


def draw_bars(plot: StackedBars) -> Figure:
    """The groups side by side with a gap between them, each bar's parts stacked in the colours' order."""
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=FIGSIZE, layout="constrained")
        ax = fig.subplots()
        xs: list[float] = []
        labels: list[str] = []
        group_centres: dict[str, list[float]] = {}
        x, previous = 0.0, None
        for bar in plot.bars:
            if previous is not None and bar.group != previous:
                x += 0.6
            xs.append(x)
            labels.append(bar.label)
            group_centres.setdefault(bar.group, []).append(x)
            previous, x = bar.group, x + 1
        bottoms = [0.0] * len(plot.bars)
        for part, colour in plot.colours.items():
            heights = [max(0.0, bar.parts.get(part, 0.0)) for bar in plot.bars]
            ax.bar(xs, heights, bottom=bottoms, color=colour, width=0.8, label=part, zorder=2)
            bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
        ax.set_xticks(xs, labels, fontsize=8, rotation=30 if len(xs) > 8 else 0)
        for group, centres in group_centres.items():
            ax.annotate(group, xy=(sum(centres) / len(centres), 1.0), xycoords=("data", "axes fraction"),
                        ha="center", va="bottom", fontsize=9, fontweight="bold")
        ax.grid(axis="x", visible=False)
        ax.set_ylim(bottom=0, top=max(bottoms, default=1.0) * 1.12 or 1.0)
        ax.yaxis.set_major_formatter(FuncFormatter(_tick))
        ax.set_ylabel(plot.ylabel)
        ax.set_xlabel(plot.xlabel)
        ax.set_title(plot.title, fontsize=11, loc="left", pad=16)
        handles, names = ax.get_legend_handles_labels()
        fig.legend(handles[::-1], names[::-1], loc="outside right center", fontsize=8)
    return fig


def save(plot: Plot | StackedBars, folder: Path) -> FigureFile:
    """Draws plot into folder/<name>.png and .svg; returns both paths and the PNG for inlining."""
    folder.mkdir(parents=True, exist_ok=True)
    fig = draw_bars(plot) if isinstance(plot, StackedBars) else draw(plot)
    png, svg = folder / f"{plot.name}.png", folder / f"{plot.name}.svg"
    with matplotlib.rc_context(RC):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=PNG_DPI, metadata={"Software": None})
        png.write_bytes(buffer.getvalue())
        fig.set_layout_engine("none")  # laid out for the PNG already: the SVG keeps those positions
        fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    width, height = (math.ceil(v * PNG_DPI) for v in fig.get_size_inches())
    return FigureFile(name=plot.name, png=png, svg=svg, title=plot.title, width_px=width, height_px=height,
                      png_base64=base64.b64encode(buffer.getvalue()).decode("ascii"))
