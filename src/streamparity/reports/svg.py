"""A small SVG chart writer for the report's figures: stacked panels of points, lines and steps over an integer
chunk axis, with a linear or log-10 y axis, ticks, grid, title and legend.

Why not matplotlib: importing it and rasterizing three figures cost ~2 s of a ~4 s parity run on the embedded
model; these figures are text, written in milliseconds, and stay sharp at any zoom in a browser or on a code
host.  Pure Python + numpy; no I/O (``Chart.render`` returns the document).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape

import numpy as np

WIDTH = 900
PANEL_H = 230
TOP, BOTTOM, LEFT, RIGHT, GAP = 28, 40, 72, 20, 52
FONT = "font-family='DejaVu Sans,Arial,sans-serif'"


@dataclass
class Series:
    x: Sequence[float]
    y: Sequence[float]
    label: str
    color: str
    kind: str = "points"
    """points | line | step | hline (y[0] across the panel) | marks (crosses)"""
    dash: str = ""


@dataclass
class Panel:
    title: str
    ylabel: str
    log_y: bool = False
    series: list[Series] = field(default_factory=list)
    legend_at: str = "top"
    """top (top right) | bottom (bottom right)"""

    def add(self, series: Series) -> Panel:
        self.series.append(series)
        return self


def _fmt(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _tick_label(v: float, log: bool) -> str:
    if log:
        return f"1e{round(v)}"
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


class Chart:
    """Panels stacked vertically, sharing the width; ``render()`` gives the SVG text."""

    def __init__(self, panels: Sequence[Panel]) -> None:
        self.panels = list(panels)

    def render(self) -> str:
        h = len(self.panels) * PANEL_H + TOP + BOTTOM + (len(self.panels) - 1) * GAP
        out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{h}' viewBox='0 0 {WIDTH} {h}' "
               f"{FONT} font-size='11'>", f"<rect width='{WIDTH}' height='{h}' fill='white'/>"]
        for i, p in enumerate(self.panels):
            out += _panel(p, TOP + i * (PANEL_H + GAP))
        out.append("</svg>")
        return "\n".join(out) + "\n"


def _values(p: Panel) -> tuple[np.ndarray, np.ndarray]:
    xs = [np.asarray(s.x, dtype=np.float64) for s in p.series if s.kind != "hline"]
    ys = [np.asarray(s.y, dtype=np.float64) for s in p.series]
    x = np.concatenate(xs) if xs else np.zeros(0)
    y = np.concatenate(ys) if ys else np.zeros(0)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    return x, (y[y > 0] if p.log_y else y)


def _panel(p: Panel, top: int) -> list[str]:
    x, y = _values(p)
    x0, x1 = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
    if x1 - x0 < 2:
        x0, x1 = round((x0 + x1) / 2) - 1.0, round((x0 + x1) / 2) + 1.0
    y0: float
    y1: float
    if p.log_y:
        ly = np.log10(y) if y.size else np.zeros(1)
        y0, y1 = math.floor(float(ly.min())), math.ceil(float(ly.max()) + 0.15)  # a line on a decade shows
        y1 = y1 if y1 > y0 else y0 + 1
    else:
        y0, y1 = (float(min(y.min(), 0.0)), float(y.max())) if y.size else (0.0, 1.0)
        y1 += (y1 - y0) * 0.05 or 1.0
    w = WIDTH - LEFT - RIGHT

    def sx(v: float) -> float:
        return LEFT + (v - x0) / (x1 - x0) * w

    def sy(v: float) -> float:
        t = (math.log10(v) if p.log_y else v) if (v > 0 or not p.log_y) else y0
        return top + PANEL_H - (t - y0) / (y1 - y0) * PANEL_H

    g = [f"<text x='{LEFT}' y='{top - 9}' font-size='12'>{escape(p.title)}</text>",
         f"<rect x='{LEFT}' y='{top}' width='{w}' height='{PANEL_H}' fill='none' stroke='#444'/>"]
    for t in _nice_ticks(x0, x1, 10):
        if float(t).is_integer():
            X = _fmt(sx(t))
            g.append(f"<line x1='{X}' y1='{top}' x2='{X}' y2='{top + PANEL_H}' stroke='#ddd'/>")
            g.append(f"<text x='{X}' y='{top + PANEL_H + 14}' text-anchor='middle' font-size='10'>{int(t)}</text>")
    yticks = list(range(int(y0), int(y1) + 1)) if p.log_y else _nice_ticks(y0, y1, 5)
    if p.log_y and len(yticks) > 9:
        yticks = yticks[::math.ceil(len(yticks) / 9)]
    for t in yticks:
        Y = _fmt(top + PANEL_H - (t - y0) / (y1 - y0) * PANEL_H)
        g.append(f"<line x1='{LEFT}' y1='{Y}' x2='{LEFT + w}' y2='{Y}' stroke='#ddd'/>")
        g.append(f"<text x='{LEFT - 5}' y='{Y}' text-anchor='end' dominant-baseline='middle' font-size='10'>"
                 f"{_tick_label(t, p.log_y)}</text>")
    g.append(f"<text x='{LEFT + w / 2:.0f}' y='{top + PANEL_H + 30}' text-anchor='middle' font-size='10'>chunk</text>")
    g.append(f"<text transform='translate(14 {top + PANEL_H / 2:.0f}) rotate(-90)' text-anchor='middle' "
             f"font-size='10'>{escape(p.ylabel)}</text>")
    g.append(f"<clipPath id='c{top}'><rect x='{LEFT}' y='{top}' width='{w}' height='{PANEL_H}'/></clipPath>")
    g.append(f"<g clip-path='url(#c{top})'>")
    for s in p.series:
        g += _draw(s, sx, sy, LEFT, LEFT + w)
    g.append("</g>")
    g += _legend(p, top, LEFT + w)
    return g


def _draw(s: Series, fx: Callable[[float], float], fy: Callable[[float], float], left: float, right: float
          ) -> list[str]:
    dash = f" stroke-dasharray='{s.dash}'" if s.dash else ""
    if s.kind == "hline":
        Y = _fmt(fy(float(s.y[0])))
        return [f"<line x1='{left}' y1='{Y}' x2='{right}' y2='{Y}' stroke='{s.color}' stroke-width='1.2'{dash}/>"]
    pts = [(float(a), float(b)) for a, b in zip(s.x, s.y) if math.isfinite(a) and math.isfinite(b)]
    if s.kind in ("points", "marks"):
        pts = [(a, b) for a, b in pts if b > 0] if s.kind == "points" else pts
        if s.kind == "marks":
            return [f"<path d='{' '.join(f'M{_fmt(fx(a) - 3)} {_fmt(fy(b) - 3)}l6 6m0 -6l-6 6' for a, b in pts)}' "
                    f"stroke='{s.color}' stroke-width='1.5'/>"]
        d = " ".join(f"M{_fmt(fx(a))} {_fmt(fy(b))}h0" for a, b in pts)
        return [f"<path d='{d}' stroke='{s.color}' stroke-width='3.5' stroke-linecap='round'/>"] if d else []
    if not pts:
        return []
    if s.kind == "step":
        d = f"M{_fmt(fx(pts[0][0]))} {_fmt(fy(pts[0][1]))}"
        for (_a0, b0), (a1, b1) in itertools.pairwise(pts):
            d += f"H{_fmt(fx(a1))}" + (f"V{_fmt(fy(b1))}" if b1 != b0 else "")
    else:
        d = "M" + " L".join(f"{_fmt(fx(a))} {_fmt(fy(b))}" for a, b in pts)
    return [f"<path d='{d}' fill='none' stroke='{s.color}' stroke-width='1.4'{dash}/>"]


def _legend(p: Panel, top: int, right: float) -> list[str]:
    items = [s for s in p.series if s.label]
    if not items:
        return []
    width = 12 + 6.2 * max(len(s.label) for s in items) + 26
    height = 8 + 15 * len(items)
    x = right - width - 6
    y = top + 6 if p.legend_at == "top" else top + PANEL_H - height - 6
    g = [f"<rect x='{x:.0f}' y='{y}' width='{width:.0f}' height='{height}' fill='white' fill-opacity='0.85' "
         "stroke='#bbb'/>"]
    for i, s in enumerate(items):
        cy = y + 12 + 15 * i
        dash = f" stroke-dasharray='{s.dash}'" if s.dash else ""
        if s.kind in ("points", "marks"):
            g.append(f"<circle cx='{x + 16:.0f}' cy='{cy}' r='2.5' fill='{s.color}'/>")
        else:
            g.append(f"<line x1='{x + 6:.0f}' y1='{cy}' x2='{x + 26:.0f}' y2='{cy}' stroke='{s.color}' "
                     f"stroke-width='1.4'{dash}/>")
        g.append(f"<text x='{x + 32:.0f}' y='{cy}' dominant-baseline='middle' font-size='10'>"
                 f"{escape(s.label)}</text>")
    return g


__all__ = ["Chart", "Panel", "Series"]
