"""Figures for the report (SVG, :mod:`streamparity.reports.svg`): error vs chunk per backend and output, cache
length.

Input: the summary document of :meth:`streamparity.report.SummaryCollector.to_json`
(``runs[].outputs[out].series``, ``runs[].stability[out]``, ``runs[].cache_len``).  Every function
returns the files it wrote; writes are atomic.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamparity.atomic import atomic_write_text
from streamparity.judging.stability import fit_trend
from streamparity.reports.svg import Chart, Panel, Series

COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
POINTS, FAIL, WARN, TREND = "#1f77b4", "#d62728", "#ff7f0e", "#000000"


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def error_plot_name(backend: str, mode: str) -> str:
    return f"error_{safe_name(backend)}_{safe_name(mode)}.svg"


CACHE_LEN_PLOT = "cache_len.svg"


def run_series(run: Mapping[str, Any], output: str) -> tuple[list[int], list[float]]:
    """(chunks, per-chunk max_abs) of one output of one run: the per-chunk tests' series, else the
    stability test's copy of it."""
    ser: Mapping[str, Any] = (run.get("outputs", {}).get(output, {}) or {}).get("series") or \
        (run.get("stability", {}).get(output, {}) or {}).get("series") or {}
    pts = sorted((int(k), float(v) if v is not None else float("nan")) for k, v in ser.items())
    return [k for k, _ in pts], [v for _, v in pts]


def run_outputs(run: Mapping[str, Any]) -> list[str]:
    names = list(run.get("outputs", {}))
    names += [n for n in run.get("stability", {}) if n not in names]
    return names


def _save(chart: Chart, path: Path) -> Path:
    atomic_write_text(path, chart.render())
    return path


def _tolerances(run: Mapping[str, Any], output: str, tolerances: Mapping[str, Mapping[str, float | None]]
                ) -> tuple[float | None, float | None]:
    st = run.get("stability", {}).get(output) or {}
    tol = tolerances.get(output, {})
    atol = st.get("atol", tol.get("atol"))
    warn = st.get("warn_atol", tol.get("warn_atol"))
    return (float(atol) if atol is not None else None, float(warn) if warn is not None else None)


def _trend(run: Mapping[str, Any], output: str, x: np.ndarray, y: np.ndarray
           ) -> tuple[float, float, float, float] | None:
    """(slope, intercept, stderr, first chunk of the fit) of the stability record, else fitted here."""
    st = run.get("stability", {}).get(output) or {}
    slope, icpt, se = st.get("slope"), st.get("intercept"), st.get("stderr")
    if st and se is None:  # the gate judged too few points for a trend: draw none
        return None
    if isinstance(slope, float) and isinstance(icpt, float):
        start = st.get("fit_from")
        return (slope, icpt, float(se) if isinstance(se, float) else float("nan"),
                float(start) if isinstance(start, int) and start >= 0 else float(x.min()))
    finite = np.isfinite(y)
    if finite.sum() < 3:
        return None
    s, i, e = fit_trend(x[finite], y[finite])
    return s, i, e, float(x.min())


def error_panel(run: Mapping[str, Any], out: str, tols: Mapping[str, Mapping[str, float | None]]) -> Panel:
    """One output of one run: per-chunk max |error| (log scale when positive), atol and warn lines, the trend."""
    ks, vs = run_series(run, out)
    x = np.asarray(ks, dtype=np.float64)
    y = np.asarray(vs, dtype=np.float64)
    finite = np.isfinite(y)
    pos = finite & (y > 0)
    st = run.get("stability", {}).get(out) or {}
    verdict = st.get("verdict")
    bounds_only = ", bounds only: too few chunks for a trend" if st and st.get("stderr") is None else ""
    panel = Panel(f"{run.get('backend')} {run.get('mode')}: {out}"
                  + (f"  [stability {str(verdict).upper()}{bounds_only}]" if verdict else ""),
                  "max |error|", log_y=bool(pos.any()))
    panel.add(Series(x[pos].tolist(), y[pos].tolist(), "max |error| per chunk", POINTS))
    if (~finite).any():
        top = float(np.nanmax(y[finite])) * 10 if finite.any() else 1.0
        panel.add(Series(x[~finite].tolist(), [top] * int((~finite).sum()), "non-finite", FAIL, kind="marks"))
    atol, warn = _tolerances(run, out, tols)
    if atol is not None:
        panel.add(Series([], [atol], f"atol {atol:g} (fail)", FAIL, kind="hline", dash="6 3"))
    if warn is not None:
        panel.add(Series([], [warn], f"warn {warn:g}", WARN, kind="hline", dash="2 2"))
    tr = _trend(run, out, x, y)
    if tr is not None and x.size:
        slope, icpt, se, start = tr
        xx = np.linspace(start, float(x.max()), 50)
        yy = icpt + slope * xx
        keep = yy > 0
        se_txt = f" ± {se:.2g}" if np.isfinite(se) else ""
        panel.add(Series(xx[keep].tolist(), yy[keep].tolist(), f"trend {slope:.2g}{se_txt}/chunk", TREND,
                         kind="line"))
    return panel


def plot_errors(run: Mapping[str, Any], out_dir: Path, *,
                tolerances: Mapping[str, Mapping[str, float | None]] | None = None) -> Path | None:
    """One SVG per run (backend x mode): a panel per output with the per-chunk max_abs (log scale), the
    contract's atol (fail) and warn_atol lines and the fitted least-squares trend."""
    outputs = [o for o in run_outputs(run) if run_series(run, o)[0]]
    if not outputs:
        return None
    chart = Chart([error_panel(run, out, tolerances or {}) for out in outputs])
    return _save(chart, out_dir / error_plot_name(str(run.get("backend")), str(run.get("mode"))))


def plot_cache_len(runs: Sequence[Mapping[str, Any]], out_dir: Path, *,
                   expected: Mapping[int, int] | None = None) -> Path | None:
    """Cache-length progression (cache_len out per chunk) of every run that reports it, and the
    contract's rule as a dashed line."""
    have = [r for r in runs if r.get("cache_len")]
    if not have:
        return None
    panel = Panel("cache length progression", "cache length out (frames)", legend_at="bottom")
    for i, r in enumerate(have):
        pts = sorted((int(k), int(v)) for k, v in r["cache_len"].items())
        panel.add(Series([k for k, _ in pts], [v for _, v in pts], f"{r.get('backend')} {r.get('mode')}",
                         COLORS[i % len(COLORS)], kind="step"))
    if expected:
        ks = sorted(expected)
        panel.add(Series(ks, [expected[k] for k in ks], "contract rule", TREND, kind="step", dash="5 3"))
    return _save(Chart([panel]), out_dir / CACHE_LEN_PLOT)


def write_plots(doc: Mapping[str, Any], out_dir: Path, *,
                tolerances: Mapping[str, Mapping[str, Mapping[str, float | None]]] | None = None,
                expected_cache_len: Mapping[int, int] | None = None) -> dict[str, Path]:
    """Every figure of a summary document. Returns {"<backend>/<mode>": svg, "cache_len": svg}.

    ``tolerances``: precision -> output -> {"atol", "warn_atol"} for runs without a stability record.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    runs = list(doc.get("runs", []))
    for run in runs:
        precision = str(run.get("backend", "")).rsplit("-", 1)[-1]
        p = plot_errors(run, out_dir, tolerances=(tolerances or {}).get(precision))
        if p is not None:
            written[f"{run.get('backend')}/{run.get('mode')}"] = p
    p = plot_cache_len([r for r in runs if r.get("mode") == "closed_loop"] or runs, out_dir,
                       expected=expected_cache_len)
    if p is not None:
        written["cache_len"] = p
    return written


__all__ = ["CACHE_LEN_PLOT", "error_plot_name", "plot_cache_len", "plot_errors", "run_series", "write_plots"]
