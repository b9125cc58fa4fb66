"""Line charts as standalone SVG files, for the benchmark reports.

No plotting library: the benches run from the system Python, and a chart of a few series of a few
points needs axes, ticks, polylines and a legend, nothing more.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

WIDTH, HEIGHT = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 80, 170, 50, 60
# Colour-blind-safe (Okabe–Ito), in the order series are given.
COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        decades = [10.0**e for e in range(first, last + 1)]
        if last - first > 4:
            return decades
        return [m * d for d in decades for m in (1, 2, 5) if lo <= m * d <= hi * 1.0001] or decades
    span = hi - lo or abs(hi) or 1.0
    raw = span / 5
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int(math.ceil((hi - start) / step)) + 1)]


def _label(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:g}k"
    if abs(v) >= 1000 and v == int(v):
        return f"{int(v)}"
    return f"{v:.3g}"


def line_chart(
    path: str | Path,
    title: str,
    x_label: str,
    y_label: str,
    series: dict[str, list[tuple[float, float]]],
    log_x: bool = False,
    log_y: bool = False,
) -> Path:
    """Writes one chart; points are (x, y), drawn in x order; empty series are left out."""
    series = {name: sorted(pts) for name, pts in series.items() if pts}
    if not series:
        raise ValueError(f"{title}: no points to draw")
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    for axis, vals, log in (("x", xs, log_x), ("y", ys, log_y)):
        if log and min(vals) <= 0:
            raise ValueError(f"{title}: a log {axis} axis needs positive values")
    x_ticks = _ticks(min(xs), max(xs), log_x)
    y_ticks = _ticks(0 if not log_y else min(ys), max(ys), log_y)
    # A log axis spans the data (its ticks fall inside); a linear one rounds out to its ticks.
    x0, x1 = (min(xs), max(xs)) if log_x else (min(x_ticks[0], min(xs)), max(x_ticks[-1], max(xs)))
    y0, y1 = (min(ys), max(ys)) if log_y else (min(y_ticks[0], min(ys)), max(y_ticks[-1], max(ys)))

    def scale(v: float, lo: float, hi: float, log: bool) -> float:
        if log:
            v, lo, hi = math.log10(v), math.log10(lo), math.log10(hi)
        return (v - lo) / ((hi - lo) or 1.0)

    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + scale(x, x0, x1, log_x) * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - scale(y, y0, y1, log_y) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    for t in x_ticks:
        if x0 <= t <= x1:
            x = px(t)
            out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + plot_h}" stroke="#e5e5e5"/>')
            out.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{_label(t)}</text>')
    for t in y_ticks:
        if y0 <= t <= y1:
            y = py(t)
            out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#e5e5e5"/>')
            out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(t)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 18}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(
        f'<text transform="translate(18,{TOP + plot_h / 2}) rotate(-90)" text-anchor="middle">'
        f"{escape(y_label)}</text>"
    )
    for i, (name, pts) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"><title>'
                       f"{escape(name)}: {_label(x)}, {y:.4g}</title></circle>")
        ly = TOP + 10 + 20 * i
        out.append(f'<line x1="{LEFT + plot_w + 12}" y1="{ly}" x2="{LEFT + plot_w + 32}" y2="{ly}" '
                   f'stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{LEFT + plot_w + 38}" y="{ly + 4}">{escape(name)}</text>')
    out.append("</svg>")
    path = Path(path)
    path.write_text("\n".join(out) + "\n")
    return path


if __name__ == "__main__":
    import sys

    # A self-check that draws a sample chart: `python3 benches/plot.py /tmp/sample.svg`.
    dest = sys.argv[1] if len(sys.argv) > 1 else "sample.svg"
    line_chart(dest, "sample", "connections", "requests/s",
               {"a": [(1, 10_000), (4, 35_000), (64, 70_000), (256, 66_000)],
                "b": [(1, 12_000), (4, 30_000), (64, 60_000), (256, 50_000)]}, log_x=True)
    print(dest)
