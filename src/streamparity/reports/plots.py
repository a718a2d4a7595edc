"""Plots for the report (matplotlib, headless Agg): error vs chunk per backend and output, cache length.

Input: the summary document of :meth:`streamparity.report.SummaryCollector.to_json`
(``runs[].outputs[out].series``, ``runs[].stability[out]``, ``runs[].cache_len``).  Every function
returns the PNG files it wrote; writes are atomic.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamparity.atomic import atomic_write_bytes
from streamparity.judging.stability import fit_trend

COLORS = ("tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")


def _figure(**kw: Any) -> Any:
    """A bare Agg figure: no pyplot (its import, global figure list and backend switch cost without use)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def error_plot_name(backend: str, mode: str) -> str:
    return f"error_{safe_name(backend)}_{safe_name(mode)}.png"


CACHE_LEN_PLOT = "cache_len.png"


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


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    # one draw only (no tight_layout pass: the margins are fixed by _fixed_layout); fast zlib level
    fig.savefig(buf, format="png", dpi=100, pil_kwargs={"compress_level": 1})
    atomic_write_bytes(path, buf.getvalue())
    return path


def _tolerances(run: Mapping[str, Any], output: str, tolerances: Mapping[str, Mapping[str, float | None]]
                ) -> tuple[float | None, float | None]:
    st = run.get("stability", {}).get(output) or {}
    tol = tolerances.get(output, {})
    atol = st.get("atol", tol.get("atol"))
    warn = st.get("warn_atol", tol.get("warn_atol"))
    return (float(atol) if atol is not None else None, float(warn) if warn is not None else None)


def _trend(run: Mapping[str, Any], output: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    st = run.get("stability", {}).get(output) or {}
    slope, icpt, se = st.get("slope"), st.get("intercept"), st.get("stderr")
    if st and se is None:  # the gate judged too few points for a trend: draw none
        return None
    if isinstance(slope, float) and isinstance(icpt, float):
        return slope, icpt, float(se) if isinstance(se, float) else float("nan")
    finite = np.isfinite(y)
    if finite.sum() < 3:
        return None
    s, i, e = fit_trend(x[finite], y[finite])
    return s, i, e


def _fixed_layout(fig: Any, rows: int) -> None:
    """Margins in inches, set once: what tight_layout found for these figures, without its extra draw."""
    w, h = fig.get_size_inches()
    top, bottom, gap = 0.3, 0.45, 0.7
    axes_h = max((h - top - bottom - gap * (rows - 1)) / rows, 0.1)
    fig.subplots_adjust(left=0.75 / w, right=1 - 0.2 / w, bottom=bottom / h, top=1 - top / h,
                        hspace=gap / axes_h)


def _cheap_log_axis(ax: Any) -> None:
    """Log y axis with decade ticks only: the minor ticks (unlabelled) cost most of a draw."""
    from matplotlib.ticker import LogLocator, NullLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=8))
    ax.yaxis.set_minor_locator(NullLocator())


def _integer_chunks(ax: Any) -> None:
    """Chunk axis: integer ticks only, and a readable span around a single chunk."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    lo, hi = ax.get_xlim()
    if hi - lo < 2:
        mid = round((lo + hi) / 2)
        ax.set_xlim(mid - 1, mid + 1)
    ax.set_xlabel("chunk", fontsize=8)


def plot_errors(run: Mapping[str, Any], out_dir: Path, *,
                tolerances: Mapping[str, Mapping[str, float | None]] | None = None) -> Path | None:
    """One PNG per run (backend x mode): a panel per output with the per-chunk max_abs (log scale), the
    contract's atol (fail) and warn_atol lines and the fitted least-squares trend."""
    outputs = [o for o in run_outputs(run) if run_series(run, o)[0]]
    if not outputs:
        return None
    tols = tolerances or {}
    fig = _figure(figsize=(9, 2.6 * len(outputs) + 0.6))
    axes = fig.subplots(len(outputs), 1, squeeze=False)
    for ax, out in zip(axes[:, 0], outputs):
        ks, vs = run_series(run, out)
        x = np.asarray(ks, dtype=np.float64)
        y = np.asarray(vs, dtype=np.float64)
        finite = np.isfinite(y)
        pos = finite & (y > 0)
        ax.plot(x[pos], y[pos], ".", ms=3, color="tab:blue", label="max |error| per chunk", rasterized=True)
        bad = ~finite
        if bad.any():
            top = float(np.nanmax(y[finite])) * 10 if finite.any() else 1.0
            ax.plot(x[bad], np.full(int(bad.sum()), top), "x", color="red", label="non-finite")
        atol, warn = _tolerances(run, out, tols)
        if atol is not None:
            ax.axhline(atol, color="red", lw=1, ls="--", label=f"atol {atol:g} (fail)")
        if warn is not None:
            ax.axhline(warn, color="orange", lw=1, ls=":", label=f"warn {warn:g}")
        tr = _trend(run, out, x, y)
        if tr is not None and x.size:
            slope, icpt, se = tr
            xx = np.linspace(float(x.min()), float(x.max()), 100)
            yy = icpt + slope * xx
            keep = yy > 0
            se_txt = f" ± {se:.2g}" if np.isfinite(se) else ""
            ax.plot(xx[keep], yy[keep], "-", color="black", lw=1.2, label=f"trend {slope:.2g}{se_txt}/chunk")
        st = run.get("stability", {}).get(out) or {}
        verdict = st.get("verdict")
        bounds_only = ", bounds only: too few chunks for a trend" if st and st.get("stderr") is None else ""
        ax.set_title(f"{run.get('backend')} {run.get('mode')}: {out}"
                     + (f"  [stability {str(verdict).upper()}{bounds_only}]" if verdict else ""), fontsize=9)
        if pos.any():
            _cheap_log_axis(ax)
        _integer_chunks(ax)
        ax.set_ylabel("max |error|", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    _fixed_layout(fig, len(outputs))
    return _save(fig, out_dir / error_plot_name(str(run.get("backend")), str(run.get("mode"))))


def plot_cache_len(runs: Sequence[Mapping[str, Any]], out_dir: Path, *,
                   expected: Mapping[int, int] | None = None) -> Path | None:
    """Cache-length progression (cache_len out per chunk) of every run that reports it, and the
    contract's rule as a dashed line."""
    have = [r for r in runs if r.get("cache_len")]
    if not have:
        return None
    fig = _figure(figsize=(9, 3.2))
    ax = fig.subplots()
    for i, r in enumerate(have):
        pts = sorted((int(k), int(v)) for k, v in r["cache_len"].items())
        ax.step([k for k, _ in pts], [v for _, v in pts], where="post", lw=1.2, color=COLORS[i % len(COLORS)],
                marker="." if len(pts) < 60 else None, ms=4, label=f"{r.get('backend')} {r.get('mode')}")
    if expected:
        ks = sorted(expected)
        ax.step(ks, [expected[k] for k in ks], where="post", color="black", ls="--", lw=1,
                marker="x" if len(ks) < 60 else None, ms=4, label="contract rule")
    _integer_chunks(ax)
    ax.set_ylabel("cache length out (frames)", fontsize=8)
    ax.set_title("cache length progression", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    _fixed_layout(fig, 1)
    return _save(fig, out_dir / CACHE_LEN_PLOT)


def write_plots(doc: Mapping[str, Any], out_dir: Path, *,
                tolerances: Mapping[str, Mapping[str, Mapping[str, float | None]]] | None = None,
                expected_cache_len: Mapping[int, int] | None = None) -> dict[str, Path]:
    """Every plot of a summary document. Returns {"<backend>/<mode>": png, "cache_len": png}.

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
