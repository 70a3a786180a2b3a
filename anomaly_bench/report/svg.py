"""Inline SVG charts: overlaid curves and score histograms, no plotting library, no external refs.

The SVG is written without an ``xmlns`` attribute: inside HTML5 it is not needed, and the report
holds no URL at all.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anomaly_bench.report.html import esc

PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)
WIDTH, HEIGHT = 224, 210
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 40, 10, 22, 34
LEGEND_LINE = 14
_ids = itertools.count()


@dataclass
class Series:
    """One line of a chart."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: str


def color_of(index: int) -> str:
    """The colour of the ``index``-th method (the same in every chart of a report).

    Args:
        index: the method's position in the report's model order.
    """
    return PALETTE[index % len(PALETTE)]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    return [float(v) for v in np.linspace(low, high, count + 1)]


def _fmt(value: float) -> str:
    return f"{value:.3g}"


class _Frame:
    """Maps data coordinates to the plot area and writes axes, ticks and a title."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], legend_lines: int) -> None:
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        self.height = HEIGHT + 4 + legend_lines * LEGEND_LINE
        self.left, self.right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, HEIGHT - MARGIN_BOTTOM
        self.clip = f"clip{next(_ids)}"

    def px(self, x: float) -> float:
        span = self.x1 - self.x0 or 1.0
        return self.left + (x - self.x0) / span * (self.right - self.left)

    def py(self, y: float) -> float:
        span = self.y1 - self.y0 or 1.0
        return self.bottom - (y - self.y0) / span * (self.bottom - self.top)

    def open(self, title: str, xlabel: str, ylabel: str) -> list[str]:
        parts = [
            f'<svg class="chart" width="{WIDTH}" height="{self.height}" viewBox="0 0 {WIDTH} {self.height}" '
            f'role="img" aria-label="{esc(title)}">',
            f'<defs><clipPath id="{self.clip}"><rect x="{self.left}" y="{self.top}" '
            f'width="{self.right - self.left}" height="{self.bottom - self.top}"/></clipPath></defs>',
            f'<text x="{WIDTH / 2:.0f}" y="14" class="title">{esc(title)}</text>',
            f'<rect x="{self.left}" y="{self.top}" width="{self.right - self.left}" '
            f'height="{self.bottom - self.top}" class="frame"/>',
        ]
        for value in _ticks(self.x0, self.x1):
            x = self.px(value)
            parts.append(f'<line x1="{x:.1f}" y1="{self.top}" x2="{x:.1f}" y2="{self.bottom}" class="grid"/>')
            parts.append(f'<text x="{x:.1f}" y="{self.bottom + 12}" class="tick">{_fmt(value)}</text>')
        for value in _ticks(self.y0, self.y1):
            y = self.py(value)
            parts.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.right}" y2="{y:.1f}" class="grid"/>')
            parts.append(
                f'<text x="{self.left - 3}" y="{y + 3:.1f}" class="tick" '
                f'text-anchor="end">{_fmt(value)}</text>'
            )
        parts.append(
            f'<text x="{(self.left + self.right) / 2:.0f}" y="{self.bottom + 26}" '
            f'class="label">{esc(xlabel)}</text>'
        )
        parts.append(
            f'<text x="11" y="{(self.top + self.bottom) / 2:.0f}" class="label" '
            f'transform="rotate(-90 11 {(self.top + self.bottom) / 2:.0f})">{esc(ylabel)}</text>'
        )
        return parts

    def vline(self, x: float, label: str) -> str:
        px = self.px(x)
        return (
            f'<line x1="{px:.1f}" y1="{self.top}" x2="{px:.1f}" y2="{self.bottom}" class="marker"/>'
            f'<text x="{px + 3:.1f}" y="{self.top + 10}" class="tick" text-anchor="start">{esc(label)}</text>'
        )

    def legend(self, entries: Sequence[tuple[str, str]]) -> list[str]:
        parts = []
        for i, (label, color) in enumerate(entries):
            y = HEIGHT + 6 + i * LEGEND_LINE
            parts.append(
                f'<rect x="{self.left}" y="{y - 8}" width="10" height="10" fill="{color}"/>'
                f'<text x="{self.left + 14}" y="{y + 1}" class="legend">{esc(label)}</text>'
            )
        return parts


def line_chart(
    title: str,
    series: Sequence[Series],
    xlabel: str,
    ylabel: str,
    x_range: tuple[float, float] = (0.0, 1.0),
    y_range: tuple[float, float] = (0.0, 1.0),
    diagonal: bool = False,
    vline: tuple[float, str] | None = None,
) -> str:
    """An SVG with one polyline per series and a legend below the plot.

    Args:
        title: the chart title.
        series: the lines (points outside the ranges are clipped).
        xlabel: x-axis label.
        ylabel: y-axis label.
        x_range: (low, high) of the x axis.
        y_range: (low, high) of the y axis.
        diagonal: draw the chance diagonal (ROC).
        vline: (x, label) of a dashed vertical marker (e.g. the PRO integration limit).
    """
    frame = _Frame(x_range, y_range, len(series))
    parts = frame.open(title, xlabel, ylabel)
    if diagonal:
        parts.append(
            f'<line x1="{frame.px(0):.1f}" y1="{frame.py(0):.1f}" '
            f'x2="{frame.px(1):.1f}" y2="{frame.py(1):.1f}" '
            'class="chance"/>'
        )
    for line in series:
        points = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in zip(line.x, line.y))
        if points:
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="{line.color}" stroke-width="1.6" '
                f'clip-path="url(#{frame.clip})"/>'
            )
    if vline is not None:
        parts.append(frame.vline(*vline))
    parts += frame.legend([(s.label, s.color) for s in series])
    parts.append("</svg>")
    return "".join(parts)


def histogram_chart(
    title: str,
    normal: Sequence[float],
    anomalous: Sequence[float],
    threshold: float | None = None,
    bins: int = 30,
) -> str:
    """Overlaid score histograms of normal and anomalous images (counts), with the threshold.

    Args:
        title: the chart title.
        normal: scores of the normal test images.
        anomalous: scores of the anomalous test images.
        threshold: the image threshold, drawn as a dashed line when given.
        bins: number of equal-width bins over the range of all scores (and the threshold).
    """
    values = [float(v) for v in (*normal, *anomalous)] + ([threshold] if threshold is not None else [])
    if not values:
        return ""
    low, high = min(values), max(values)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)
    counts = {
        name: np.histogram(np.asarray(data, dtype=np.float64), bins=edges)[0]
        for name, data in (("normal", normal), ("anomalous", anomalous))
    }
    top = max(1, int(max(c.max(initial=0) for c in counts.values())))
    colors = {"normal": "#2ca02c", "anomalous": "#d62728"}
    frame = _Frame((low, high), (0.0, float(top)), 2)
    parts = frame.open(title, "image score", "images")
    for name, count in counts.items():
        for i, c in enumerate(count):
            if c == 0:
                continue
            x, x_next = frame.px(edges[i]), frame.px(edges[i + 1])
            y = frame.py(float(c))
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(x_next - x - 0.5, 0.5):.1f}" '
                f'height="{frame.bottom - y:.1f}" fill="{colors[name]}" fill-opacity="0.55"/>'
            )
    if threshold is not None:
        parts.append(frame.vline(threshold, f"threshold {threshold:.4g}"))
    parts += frame.legend(
        [
            (f"normal ({len(normal)})", colors["normal"]),
            (f"anomalous ({len(anomalous)})", colors["anomalous"]),
        ]
    )
    parts.append("</svg>")
    return "".join(parts)
