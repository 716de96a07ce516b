"""Inline SVG charts for the report: grouped bars and lines, written by hand so the report is one
self-contained file and needs no plotting library."""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
WIDTH, HEIGHT = 560, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 30, 56


def nice_max(value: float) -> float:
    """The smallest 1/2/5 x 10^k at or above ``value``, so axis ticks land on round numbers."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value)


def _colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _frame(title: str, body: list[str], legend: Sequence[str]) -> Markup:
    items = [
        f'<rect x="{LEFT + i * 110}" y="{HEIGHT - 16}" width="10" height="10" fill="{_colour(i)}"/>'
        f'<text x="{LEFT + i * 110 + 14}" y="{HEIGHT - 7}" font-size="11">{escape(name)}</text>'
        for i, name in enumerate(legend)
    ]
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        'font-family="sans-serif">'
        f'<text x="{WIDTH / 2}" y="18" font-size="13" text-anchor="middle" font-weight="bold">'
        f"{escape(title)}</text>" + "".join(body) + "".join(items) + "</svg>"
    )


def _y_axis(low: float, high: float) -> list[str]:
    """Gridlines and labels for five ticks between ``low`` and ``high``."""
    plot_h = HEIGHT - TOP - BOTTOM
    parts = []
    for i in range(5):
        value = low + (high - low) * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{_fmt(value)}</text>'
        )
    return parts


def grouped_bar_chart(
    title: str, categories: Sequence[str], series: dict[str, Sequence[float | None]]
) -> Markup:
    """One group of bars per category, one bar per series (None leaves a gap); y starts at 0."""
    values = [v for vs in series.values() for v in vs if v is not None]
    low = min(0.0, min(values, default=0.0))
    high = nice_max(max(values, default=1.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    group_w = plot_w / max(len(categories), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)

    def y_of(value: float) -> float:
        return TOP + plot_h - (value - low) / (high - low) * plot_h

    body = _y_axis(low, high)
    for c, category in enumerate(categories):
        x0 = LEFT + c * group_w + group_w * 0.1
        body.append(
            f'<text x="{LEFT + (c + 0.5) * group_w:.1f}" y="{TOP + plot_h + 14}" font-size="11" '
            f'text-anchor="middle">{escape(category)}</text>'
        )
        for s, (name, vs) in enumerate(series.items()):
            value = vs[c]
            if value is None:
                continue
            top, zero = y_of(max(value, 0.0)), y_of(min(value, 0.0))
            body.append(
                f'<rect x="{x0 + s * bar_w:.1f}" y="{top:.1f}" width="{bar_w * 0.95:.1f}" '
                f'height="{max(zero - top, 0.5):.1f}" fill="{_colour(s)}">'
                f"<title>{escape(name)} {escape(category)}: {_fmt(value)}</title></rect>"
            )
    return _frame(title, body, list(series))


def line_chart(title: str, series: dict[str, Sequence[tuple[float, float]]], x_label: str = "step") -> Markup:
    """One polyline (with point markers) per series of (x, y) points."""
    points = [p for ps in series.values() for p in ps]
    xs, ys = [x for x, _ in points] or [0.0, 1.0], [y for _, y in points] or [0.0, 1.0]
    x_low, x_high = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y_low, y_high = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def xy(x: float, y: float) -> tuple[float, float]:
        return (
            LEFT + (x - x_low) / (x_high - x_low) * plot_w,
            TOP + plot_h - (y - y_low) / (y_high - y_low) * plot_h,
        )

    axis_y = TOP + plot_h + 14
    body = _y_axis(y_low, y_high)
    body.append(
        f'<text x="{LEFT}" y="{axis_y}" font-size="10">{_fmt(x_low)}</text>'
        f'<text x="{WIDTH - RIGHT}" y="{axis_y}" font-size="10" text-anchor="end">{_fmt(x_high)}</text>'
        f'<text x="{LEFT + plot_w / 2}" y="{axis_y}" font-size="10" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    for s, ps in enumerate(series.values()):
        coords = [xy(x, y) for x, y in sorted(ps)]
        polyline = " ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords)
        body.append(f'<polyline fill="none" stroke="{_colour(s)}" stroke-width="2" points="{polyline}"/>')
        body += [f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3" fill="{_colour(s)}"/>' for cx, cy in coords]
    return _frame(title, body, list(series))
