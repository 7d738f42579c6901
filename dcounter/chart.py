"""A small line chart as inline SVG markup (pure): series of numbers in, an `<svg>` element out.

For the status page, which may load nothing from elsewhere: no script draws it, so it shows
without JavaScript too. Values are placed on fixed slots with the newest at the right edge; a
None is a gap in the line. The vertical scale runs from 0 to the smallest 1, 2 or 5 times a
power of ten at or above the largest value, labelled at the top, middle and bottom. Colours
come from the page's CSS through each series' class; the SVG carries no style attribute (the
page's Content-Security-Policy would refuse it).
"""

from __future__ import annotations

import html
import math

WIDTH, HEIGHT = 480, 130  # the SVG's coordinate space
X0, X1 = 46, 470          # plot area, left to right
Y0, Y1 = 10, 106          # plot area, top to bottom


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def nice_ceiling(value) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (1 for nothing)."""
    if not value or value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 5):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def segments(values: list, size: int, top: float) -> list[list[tuple[float, float]]]:
    """Runs of known values as SVG points; slot `size - 1` (the newest) at the right edge."""
    step = (X1 - X0) / max(1, size - 1)
    offset = size - len(values)
    runs, run = [], []
    for index, value in enumerate(values):
        if value is None:
            if run:
                runs.append(run)
            run = []
            continue
        x = X0 + (offset + index) * step
        y = Y1 - (Y1 - Y0) * max(0.0, min(float(value), top)) / top
        run.append((round(x, 1), round(y, 1)))
    if run:
        runs.append(run)
    return runs


def line_chart(label: str, unit: str, series: list[tuple[list, str]], size: int,
               span: str) -> str:
    """`series` is [(values oldest first, css class)], at most `size` values each; `span` names
    the left edge ("10 min ago")."""
    series = [(list(values)[-size:], cls) for values, cls in series]
    known = [float(v) for values, _ in series for v in values if v is not None]
    top = nice_ceiling(max(known) if known else 0)
    middle = (Y0 + Y1) / 2
    marks = [f'<line class="grid" x1="{X0}" y1="{y}" x2="{X1}" y2="{y}"/>'
             for y in (Y0, middle, Y1)]
    marks += [f'<text class="tick" x="{X0 - 6}" y="{y + 4}" text-anchor="end">{_esc(t)}</text>'
              for y, t in ((Y0, f"{top:g}"), (middle, f"{top / 2:g}"), (Y1, "0"))]
    marks.append(f'<text class="tick" x="{X0}" y="{HEIGHT - 6}">{_esc(span)}</text>')
    marks.append(f'<text class="tick" x="{X1}" y="{HEIGHT - 6}" text-anchor="end">now</text>')
    marks.append(f'<text class="tick" x="{(X0 + X1) / 2}" y="{HEIGHT - 6}" '
                 f'text-anchor="middle">{_esc(unit)}</text>')
    for values, cls in series:
        for run in segments(values, size, top):
            if len(run) == 1:  # a lone sample: a dot, since a one-point line draws nothing
                x, y = run[0]
                marks.append(f'<circle class="{_esc(cls)}" cx="{x}" cy="{y}" r="2.5"/>')
            else:
                points = " ".join(f"{x},{y}" for x, y in run)
                marks.append(f'<polyline class="{_esc(cls)}" points="{points}"/>')
    if not known:
        marks.append(f'<text class="tick" x="{(X0 + X1) / 2}" y="{middle - 6}" '
                     f'text-anchor="middle">no data yet</text>')
    return (f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-label="{_esc(label)}">{"".join(marks)}</svg>')
