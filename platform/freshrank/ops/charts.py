"""Charts as inline SVG, drawn in Python for the status page (no JavaScript, no CDN, offline).

Every string that reaches the markup goes through `html.escape`; every point is a
``<circle data-series=KEY>`` with a ``<title>`` (the browser's tooltip), so a test or a person
can count and read what was drawn.

>>> svg = line_chart("c", [ChartSeries("auc", "AUC", ((1, 0.7), (2, 0.8)), labels=("v1", "v2"))],
...                  x_label="version", y_label="AUC")
>>> svg.count('data-series="auc"'), svg.startswith('<svg id="c"')
(2, True)
>>> "<script" in bar_rows("d", [BarRow("<script>", 2.0, True, "x")], ref_label="threshold")
False
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape

WIDTH = 600
"""Default chart width in CSS pixels (two charts side by side on a 1280 px window)."""

HEIGHT = 230
_PAD_LEFT, _PAD_RIGHT, _PAD_TOP, _PAD_BOTTOM = 56, 14, 26, 40
_FONT = 'font-family="system-ui, sans-serif" font-size="11"'

Point = tuple[float, float] | None
"""``(x, y)``; None breaks the line there (a gap, not a joined segment)."""


@dataclass(frozen=True)
class ChartSeries:
    """One series of a line chart: its points and how to draw them.

    ``key`` becomes the ``data-series`` attribute of each point; ``labels`` (one per point
    that is not None) are their tooltips; ``colors`` (optional, one per point) overrides
    ``color`` for single marks (a gate decision per version, say).
    """

    key: str
    name: str
    points: tuple[Point, ...]
    color: str = "#1f6feb"
    line: bool = True
    marks: bool = True
    labels: tuple[str, ...] = ()
    colors: tuple[str, ...] = ()


@dataclass(frozen=True)
class BarRow:
    """One horizontal bar: ``value`` in units of the reference (1.0 is the reference line)."""

    label: str
    value: float
    alarm: bool
    tooltip: str


def clock(t: float) -> str:
    """``HH:MM:SS`` (UTC) of a unix time.

    >>> clock(3725.0)
    '01:02:05'
    """
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%H:%M:%S")


def nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """Round tick values covering ``[lo, hi]`` (about ``n`` of them).

    >>> nice_ticks(0.52, 0.81)
    [0.5, 0.6, 0.7, 0.8, 0.9]
    >>> nice_ticks(3.0, 3.0)
    [2.0, 2.5, 3.0, 3.5, 4.0]
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        lo, hi = (0.0, 1.0) if lo == 0 else (lo - 1.0, hi + 1.0)
    raw = (hi - lo) / max(1, n)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(lo / step) * step
    ticks, k = [], 0
    while k < 50:  # bounded: at most 50 ticks
        value = first + k * step
        ticks.append(round(value, 10))
        if value >= hi - 1e-12:
            break
        k += 1
    return ticks


def line_chart(
    chart_id: str,
    series: Sequence[ChartSeries],
    *,
    x_label: str,
    y_label: str,
    x_time: bool = False,
    y_format: Callable[[float], str] = lambda v: f"{v:g}",
    y_zero: bool = False,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """An SVG line/point chart of ``series`` (x as unix times when ``x_time``, else numbers).

    The axes span every point; ``y_zero`` keeps 0 on the y axis. With no point at all it says
    so instead of drawing axes.
    """
    xs = [p[0] for s in series for p in s.points if p is not None]
    ys = [p[1] for s in series for p in s.points if p is not None]
    head = (
        f'<svg id="{escape(chart_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(y_label)} by {escape(x_label)}">'
    )
    if not xs:
        return (
            head + f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" {_FONT} '
            'fill="#666">no data yet</text></svg>'
        )
    y_ticks = nice_ticks(min(ys + ([0.0] if y_zero else [])), max(ys))
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 1.0, x_hi + 1.0
    left, right = _PAD_LEFT, width - _PAD_RIGHT
    top, bottom = _PAD_TOP, height - _PAD_BOTTOM

    def sx(x: float) -> float:
        return round(left + (x - x_lo) / (x_hi - x_lo) * (right - left), 1)

    def sy(y: float) -> float:
        return round(bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top), 1)

    out = [head, f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
           'fill="#fafbfc" stroke="#d0d7de"/>']  # fmt: skip
    for t in y_ticks:
        out.append(
            f'<line x1="{left}" x2="{right}" y1="{sy(t)}" y2="{sy(t)}" stroke="#eaeef2"/>'
            f'<text x="{left - 4}" y="{sy(t) + 4}" text-anchor="end" {_FONT} fill="#444">'
            f"{escape(y_format(t))}</text>"
        )
    if x_time:
        x_ticks = [x_lo + (x_hi - x_lo) * i / 4 for i in range(5)]
    else:
        x_ticks = [t for t in nice_ticks(x_lo, x_hi) if x_lo <= t <= x_hi]
    previous = None
    for x in x_ticks:
        text = clock(x) if x_time else f"{x:g}"
        if text == previous:  # a span of seconds: one label per second
            continue
        previous = text
        anchor = "end" if sx(x) > right - 30 else "start" if sx(x) < left + 30 else "middle"
        out.append(
            f'<text x="{sx(x)}" y="{bottom + 14}" text-anchor="{anchor}" {_FONT} fill="#444">'
            f"{escape(text)}</text>"
        )
    axis = f"{x_label} (UTC)" if x_time else x_label
    out.append(
        f'<text x="{(left + right) / 2}" y="{height - 6}" text-anchor="middle" {_FONT} '
        f'fill="#222">{escape(axis)}</text>'
        f'<text x="12" y="{(top + bottom) / 2}" text-anchor="middle" {_FONT} fill="#222" '
        f'transform="rotate(-90 12 {(top + bottom) / 2})">{escape(y_label)}</text>'
    )
    legend_x = left
    for s in series:
        color = escape(s.color)
        out.append(
            f'<rect x="{legend_x}" y="8" width="10" height="10" fill="{color}"/>'
            f'<text x="{legend_x + 14}" y="17" {_FONT} fill="#222">{escape(s.name)}</text>'
        )
        legend_x += 24 + 7 * len(s.name)
    for s in series:
        out.extend(_draw_series(s, sx, sy))
    out.append("</svg>")
    return "".join(out)


def _draw_series(
    s: ChartSeries, sx: Callable[[float], float], sy: Callable[[float], float]
) -> list[str]:
    out: list[str] = []
    color = escape(s.color)
    if s.line:
        run: list[str] = []
        for p in (*s.points, None):
            if p is None:
                if len(run) > 1:
                    out.append(
                        f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                        f'points="{" ".join(run)}"/>'
                    )
                run = []
            else:
                run.append(f"{sx(p[0])},{sy(p[1])}")
    if s.marks:
        drawn = [p for p in s.points if p is not None]
        for i, (x, y) in enumerate(drawn):
            fill = escape(s.colors[i]) if i < len(s.colors) else color
            label = escape(s.labels[i]) if i < len(s.labels) else ""
            out.append(
                f'<circle data-series="{escape(s.key)}" cx="{sx(x)}" cy="{sy(y)}" r="3.2" '
                f'fill="{fill}"><title>{label}</title></circle>'
            )
    return out


def bar_rows(chart_id: str, rows: Sequence[BarRow], *, ref_label: str, width: int = WIDTH) -> str:
    """Horizontal bars, one per row, with a vertical line at 1.0 (the reference: a threshold).

    Bars marked ``alarm`` are red, bars over the reference without an alarm amber, the others
    green; values are clipped at 3x the reference (the tooltip keeps the true number).
    """
    row_h, label_w, top = 18, 190, 22
    height = top + row_h * max(1, len(rows)) + 8
    cap = 3.0
    span = width - label_w - 20

    def sx(v: float) -> float:
        return round(label_w + min(max(v, 0.0), cap) / cap * span, 1)

    out = [
        f'<svg id="{escape(chart_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="each statistic against its {escape(ref_label)}">',
        f'<line x1="{sx(1.0)}" x2="{sx(1.0)}" y1="{top - 6}" y2="{height - 4}" '
        'stroke="#cf222e" stroke-dasharray="4 3"/>'
        f'<text x="{sx(1.0)}" y="12" text-anchor="middle" {_FONT} fill="#cf222e">'
        f"{escape(ref_label)}</text>",
    ]
    if not rows:
        out.append(f'<text x="{label_w}" y="{top + 12}" {_FONT} fill="#666">nothing judged</text>')
    for i, r in enumerate(rows):
        y = top + i * row_h
        color = "#cf222e" if r.alarm else "#bf8700" if r.value > 1.0 else "#2da44e"
        out.append(
            f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end" {_FONT} fill="#222">'
            f"{escape(r.label)}</text>"
            f'<rect data-series="bar" x="{label_w}" y="{y + 2}" height="{row_h - 6}" '
            f'width="{max(1.0, sx(r.value) - label_w)}" fill="{color}">'
            f"<title>{escape(r.tooltip)}</title></rect>"
        )
    out.append("</svg>")
    return "".join(out)


__all__ = ["BarRow", "ChartSeries", "bar_rows", "clock", "line_chart", "nice_ticks"]
