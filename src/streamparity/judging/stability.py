"""Stability (drift) analysis of a closed loop's per-chunk error series.

A closed loop can stay inside the per-chunk tolerance for the first chunks and still drift: state
corruption that accumulates in the caches makes the error grow chunk after chunk.  :func:`analyze`
judges one error series (per-chunk ``max_abs`` of one output) by

* the least-squares trend ``y = a + b * chunk`` with the standard error of ``b`` (widened for the
  residuals' lag-1 autocorrelation): the gate fails when the slope is *significantly* above the
  contract's limit, ``(b - limit) / stderr > slope_sigma``; a significant slope (``b / stderr > slope_sigma``)
  that is not significantly above the limit warns;
* early vs late windows (the first and last ``window`` points): mean, max and P99 of each, and the ratio
  ``late mean / early mean``, which may not exceed ``max_late_early_ratio``;
* bounds over the whole series: ``max <= atol`` and ``P99 <= p99_max_abs`` (``atol`` when unset);
* any non-finite value fails.

Pure numpy; no pytest, no I/O.  The limits come from ``contract.gates.stability``
(:class:`~streamparity.contract.StabilityGate`) and the output's
:class:`~streamparity.contract.Tolerance`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from streamparity.contract.model import Contract, StabilityGate, Tolerance
from streamparity.results.records import ChunkResult

StabilityVerdict = Literal["pass", "warn", "fail"]
MIN_FIT_POINTS = 3


@dataclass(frozen=True)
class WindowStats:
    """Statistics of one window of the series (chunk indices inclusive)."""

    first_chunk: int
    last_chunk: int
    n: int
    mean: float
    max: float
    p99: float


@dataclass
class StabilityResult:
    """The verdict of one error series and every figure it was judged on."""

    n: int
    first_chunk: int
    last_chunk: int
    slope: float
    intercept: float
    stderr: float
    """standard error of the slope, widened for lag-1 autocorrelation (see :func:`_autocorrelation`)."""
    stderr_ols: float
    lag1_autocorr: float
    n_eff: float
    t: float
    """slope / stderr: how many standard errors the slope is away from zero."""
    t_excess: float
    """(slope - slope_limit) / stderr: the gate statistic, compared with ``sigma``."""
    slope_limit: float
    sigma: float
    window: int
    early: WindowStats | None
    late: WindowStats | None
    early_floor: float
    ratio: float
    ratio_limit: float
    max_abs: float
    worst_chunk: int
    p99: float
    mean: float
    max_limit: float
    p99_limit: float
    nonfinite_chunks: list[int] = field(default_factory=list)
    verdict: StabilityVerdict = "pass"
    """pass or fail: a trend inside the contract's limits is a note, not a warning (the type keeps warn for
    records written by other versions)."""
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fit_from: int = -1
    """first chunk of the trend fit and the windows (later than ``first_chunk`` while the cache filled)."""

    @property
    def failed(self) -> bool:
        return self.verdict == "fail"

    @property
    def growth_over_run(self) -> float:
        """Fitted change of the error from the first to the last chunk."""
        start = self.fit_from if self.fit_from >= 0 else self.first_chunk
        return self.slope * (self.last_chunk - start) if np.isfinite(self.slope) else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["growth_over_run"] = self.growth_over_run
        return {k: _jsonable(v) for k, v in d.items()}

    def describe(self, what: str = "") -> str:
        """What, where, how far and the limits, one fact per line."""
        head = f"{what}: " if what else ""
        if self.n == 0:
            bad = self.nonfinite_chunks
            lines = [f"{head}stability {self.verdict.upper()}: the error is not finite (NaN or Inf) on all "
                     f"{len(bad)} chunks" + (f" ({bad[0]}..{bad[-1]})" if bad else "") + "; no trend to fit"]
            lines += [f"  reason: {r}" for r in self.reasons]
            return "\n".join(lines + [f"  note: {n}" for n in self.notes])
        extra = f", {len(self.nonfinite_chunks)} more not finite" if self.nonfinite_chunks else ""
        lines = [f"{head}stability {self.verdict.upper()} over {self.n} chunks with a finite error "
                 f"({self.first_chunk}..{self.last_chunk}{extra})" if extra else
                 f"{head}stability {self.verdict.upper()} over {self.n} chunks ({self.first_chunk}..{self.last_chunk})"]
        lines += [f"  reason: {r}" for r in self.reasons]
        fitted = f" (fitted on chunks {self.fit_from}..{self.last_chunk})" if self.fit_from > self.first_chunk else ""
        lines.append(f"  trend{fitted}: slope {self.slope:.3g} ± {self.stderr:.2g} per chunk (t = {_fmt_t(self.t)}), "
                     f"limit {self.slope_limit:.3g} at {self.sigma:g} sigma; fitted growth over the run "
                     f"{self.growth_over_run:.3g}; lag-1 autocorrelation {self.lag1_autocorr:.2f}, "
                     f"effective n {self.n_eff:.0f}")
        for name, w in (("early", self.early), ("late", self.late)):
            if w is not None:
                lines.append(f"  {name} window chunks {w.first_chunk}..{w.last_chunk} (n={w.n}): mean {w.mean:.3g}, "
                             f"max {w.max:.3g}, P99 {w.p99:.3g}")
        if self.early is not None:
            lines.append(f"  late/early mean ratio {self.ratio:.3g} (early mean floored at {self.early_floor:.3g}), "
                         f"limit {self.ratio_limit:g}")
        lines.append(f"  max {self.max_abs:.3g} at chunk {self.worst_chunk} (limit atol {self.max_limit:.3g}); "
                     f"P99 {self.p99:.3g} (limit {self.p99_limit:.3g}); mean {self.mean:.3g}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt_t(t: float) -> str:
    return "inf" if np.isinf(t) else f"{t:.2f}"


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None if np.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def slope_limit(gate: StabilityGate, tol: Tolerance) -> float:
    """The contract's absolute slope limit, raised to ``max_slope_fraction_of_atol * atol`` when set
    (so one gate can serve FP32 and FP16, whose noise differs by orders of magnitude)."""
    limit = gate.max_slope_per_chunk
    if gate.max_slope_fraction_of_atol is not None:
        limit = max(limit, gate.max_slope_fraction_of_atol * tol.atol)
    return float(limit)


def fit_trend(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Ordinary least squares ``y = intercept + slope * x``: (slope, intercept, standard error of slope).

    The standard error is ``sqrt(SSR / (n - 2) / Sxx)``; it is NaN with fewer than 3 points and 0 for a
    series that lies exactly on a line.
    """
    n = int(x.size)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    xm, ym = float(x.mean()), float(y.mean())
    dx = x - xm
    sxx = float(dx @ dx)
    if n < 2 or sxx == 0.0:
        return 0.0, ym, float("nan")
    slope = float(dx @ (y - ym)) / sxx
    intercept = ym - slope * xm
    if n < MIN_FIT_POINTS:
        return slope, intercept, float("nan")
    resid = y - (intercept + slope * x)
    ssr = float(resid @ resid)
    return slope, intercept, float(np.sqrt(ssr / (n - 2) / sxx))


def _autocorrelation(x: np.ndarray, y: np.ndarray, slope: float, intercept: float) -> tuple[float, float]:
    """Lag-1 autocorrelation r1 of the fit residuals and the effective sample size n (1 - r1) / (1 + r1).

    Per-chunk errors of a closed loop are not independent: a cache frame lives for many chunks, so the
    error of the cache output is close to a sliding maximum, a staircase.  Ordinary least squares
    assumes independent residuals and would call such a staircase a significant trend; the AR(1)
    correction (as used for climate trend tests) widens the standard error by sqrt((n-2)/(n_eff-2)).
    Only positive r1 widens it; a series on an exact line (no residual) keeps n.
    """
    n = int(y.size)
    if n < MIN_FIT_POINTS or not np.isfinite(slope):
        return float("nan"), float(n)
    r = y - (intercept + slope * x)
    denom = float(r @ r)
    if denom == 0.0:
        return 0.0, float(n)
    r1 = float(r[1:] @ r[:-1]) / denom
    if r1 <= 0.0:
        return r1, float(n)
    r1 = min(r1, 0.999)
    return r1, n * (1.0 - r1) / (1.0 + r1)


def _window(x: np.ndarray, y: np.ndarray) -> WindowStats:
    return WindowStats(first_chunk=int(x[0]), last_chunk=int(x[-1]), n=int(y.size), mean=float(y.mean()),
                       max=float(y.max()), p99=float(np.percentile(y, 99)))


def analyze(series: Sequence[float], gate: StabilityGate, tol: Tolerance, *,
            chunks: Sequence[int] | None = None, settle_from: int = 0, settle_reason: str = "") -> StabilityResult:
    """Judge one per-chunk error series (``max_abs`` per chunk, in chunk order).

    ``chunks`` gives the chunk index of every value (default ``0..n-1``); the trend is fitted against it,
    so sparse series (outputs stored for some chunks only) get the right slope per chunk.

    Near-zero errors: an FP32 run that matches its reference to 1e-7 has an early-window mean that is
    pure rounding noise, and ``late / early`` of two noise levels can be 3 or 10 without meaning anything.
    The early mean is therefore floored at ``gate.early_floor_fraction * tol.atol`` (1% of atol by default)
    before the ratio: growth counts only once the late errors are a visible fraction of the tolerance.
    The slope gate needs no floor: it is judged against an absolute limit with its own uncertainty.

    Windows: the first and last ``gate.window`` points; a series shorter than ``2 * window`` is split into
    halves (noted in the result).  Fewer than 3 points cannot carry a trend: only the bounds are judged.

    Settling: points before chunk ``settle_from`` (the chunks in which the attention cache is still filling,
    see :func:`cache_fill_chunks`) are left out of the trend and the windows, because their error rises with
    the context the model sees, not with any corruption; ``settle_reason`` says why in the result's notes.
    They still count for the max and P99 bounds.
    """
    y_all = np.asarray(list(series), dtype=np.float64).reshape(-1)
    x_all = (np.arange(y_all.size, dtype=np.float64) if chunks is None
             else np.asarray(list(chunks), dtype=np.float64).reshape(-1))
    if x_all.size != y_all.size:
        raise ValueError(f"chunks has {x_all.size} entries, series has {y_all.size}")
    if y_all.size and np.any(np.diff(x_all) <= 0):
        order = np.argsort(x_all, kind="stable")
        x_all, y_all = x_all[order], y_all[order]
    finite = np.isfinite(y_all)
    nonfinite_chunks = [int(c) for c in x_all[~finite]]
    x, y = x_all[finite], y_all[finite]
    n = int(y.size)
    bounds_y = y
    notes: list[str] = []
    settled = x >= settle_from
    if settle_from > 0 and n and not settled.all():
        left = int((~settled).sum())
        if int(settled.sum()) >= MIN_FIT_POINTS:
            notes.append(f"{left} point(s) before chunk {settle_from} are left out of the trend and the windows"
                         + (f" ({settle_reason})" if settle_reason else "") + "; they still count for max and P99")
            x, y = x[settled], y[settled]
        else:  # the fill-up outlasts the series (full size: 128 chunks): judge it all rather than nothing
            notes.append(f"the trend includes the fill-up: fewer than {MIN_FIT_POINTS} points lie at or after "
                         f"chunk {settle_from}" + (f" ({settle_reason})" if settle_reason else ""))
    limit = slope_limit(gate, tol)
    p99_limit = tol.p99_max_abs if tol.p99_max_abs is not None else tol.atol
    floor = gate.early_floor_fraction * tol.atol
    reasons_fail: list[str] = []

    n_fit = int(y.size)
    slope, intercept, stderr_ols = fit_trend(x, y)
    r1, n_eff = _autocorrelation(x, y, slope, intercept)
    stderr = stderr_ols
    if n_fit >= MIN_FIT_POINTS and np.isfinite(stderr_ols) and n_eff < n:
        stderr = stderr_ols * float(np.sqrt((n_fit - 2) / (n_eff - 2))) if n_eff > 2 else float("inf")
    if stderr == 0.0:
        t = 0.0 if slope == 0.0 else float(np.copysign(np.inf, slope))
        t_excess = 0.0 if slope == limit else float(np.copysign(np.inf, slope - limit))
    elif np.isfinite(stderr):
        t, t_excess = slope / stderr, (slope - limit) / stderr
    else:
        t = t_excess = float("nan")

    w = min(gate.window, n_fit // 2) if n_fit >= 2 else 0
    early = _window(x[:w], y[:w]) if w else None
    late = _window(x[-w:], y[-w:]) if w else None
    ratio = late.mean / max(early.mean, floor) if early and late and max(early.mean, floor) > 0 else float("nan")

    if nonfinite_chunks:
        shown = ", ".join(map(str, nonfinite_chunks[:10])) + (" ..." if len(nonfinite_chunks) > 10 else "")
        reasons_fail.append(f"non-finite error at {len(nonfinite_chunks)} chunk(s): {shown}")
    if n_fit < MIN_FIT_POINTS:
        notes.append(f"only {n_fit} point(s) to fit: too few for a trend, only the bounds were judged")
    else:
        if n_fit < 2 * gate.window:
            notes.append(f"{n_fit} points < 2 x window {gate.window}: early/late windows are the two halves "
                         f"({w} each)")
        if t_excess > gate.slope_sigma:  # NaN (no uncertainty estimate) never fails
            reasons_fail.append(
                f"error grows by {slope:.3g} ± {stderr:.2g} per chunk, significantly above the limit {limit:.3g} "
                f"({_fmt_t(t_excess)} > {gate.slope_sigma:g} standard errors above it)")
        elif t > gate.slope_sigma:
            notes.append(f"a trend of {slope:.3g} ± {stderr:.2g} per chunk (t = {_fmt_t(t)}) that is not "
                         f"significantly above the limit {limit:.3g}: within the contract")
        if np.isfinite(ratio) and ratio > gate.max_late_early_ratio:
            assert early is not None and late is not None
            reasons_fail.append(
                f"late-window mean {late.mean:.3g} (chunks {late.first_chunk}..{late.last_chunk}) is {ratio:.3g}x the "
                f"early-window mean {early.mean:.3g} (floored at {floor:.3g}; chunks {early.first_chunk}.."
                f"{early.last_chunk}), limit {gate.max_late_early_ratio:g}x")
    x_b = x_all[finite]
    max_abs = float(bounds_y.max()) if n else float("nan")
    worst_chunk = int(x_b[int(np.argmax(bounds_y))]) if n else -1
    p99 = float(np.percentile(bounds_y, 99)) if n else float("nan")
    mean = float(bounds_y.mean()) if n else float("nan")
    if n and max_abs > tol.atol:
        reasons_fail.append(f"max error {max_abs:.3g} at chunk {worst_chunk} exceeds atol {tol.atol:.3g}")
    if n and p99 > p99_limit:
        reasons_fail.append(f"P99 error {p99:.3g} exceeds its limit {p99_limit:.3g}")
    verdict: StabilityVerdict = "fail" if reasons_fail else "pass"
    return StabilityResult(
        n=n, first_chunk=int(x_b[0]) if n else -1, last_chunk=int(x_b[-1]) if n else -1,
        slope=slope, intercept=intercept, stderr=stderr, stderr_ols=stderr_ols,
        lag1_autocorr=r1, n_eff=n_eff, t=t, t_excess=t_excess, slope_limit=limit,
        sigma=gate.slope_sigma, window=w, early=early, late=late, early_floor=floor, ratio=ratio,
        ratio_limit=gate.max_late_early_ratio, max_abs=max_abs, worst_chunk=worst_chunk, p99=p99, mean=mean,
        max_limit=tol.atol, p99_limit=p99_limit, nonfinite_chunks=nonfinite_chunks, verdict=verdict,
        reasons=reasons_fail, notes=notes, fit_from=int(x[0]) if x.size else -1,
    )


__all__ = ["RunStability", "StabilityResult", "WindowStats", "analyze", "cache_fill_chunks", "fit_trend",
           "judge_run_stability", "slope_limit"]


@dataclass
class RunStability:
    """The stability gate of one closed-loop run: one :class:`StabilityResult` per compared output."""

    backend: str
    precision: str
    results: dict[str, StabilityResult] = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    limits: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    """output -> (atol, warn_atol) of the output's tolerance at this precision."""
    cache_len: dict[int, int] = field(default_factory=dict)
    errored: list[tuple[int, str]] = field(default_factory=list)
    """(chunk, error) of chunks that did not run: the gate cannot be judged."""
    gate_reason: str = ""

    @property
    def verdict(self) -> StabilityVerdict:
        if self.errored or not self.results:
            return "fail"
        verdicts = [r.verdict for r in self.results.values()]
        return "fail" if "fail" in verdicts else "warn" if "warn" in verdicts else "pass"

    def outputs_dict(self) -> dict[str, Any]:
        return {n: {**r.to_dict(), "series": {str(k): v for k, v in self.series[n]},
                    "atol": self.limits[n][0], "warn_atol": self.limits[n][1]} for n, r in self.results.items()}

    def describe(self) -> list[str]:
        """Why the gate failed or warned, one output after the other; empty when it passed."""
        head = f"[{self.backend} closed_loop]"
        if self.errored:
            k, err = self.errored[0]
            return [f"{head} stability cannot be judged: {len(self.errored)} chunk(s) did not run, first: chunk {k}: "
                    f"{err}"]
        if not self.results:
            return [f"{head} no compared output has an error series to judge"]
        bad = {n: r for n, r in self.results.items() if r.verdict != "pass"}
        if not bad:
            return []
        lines = [r.describe(f"{head} output {n!r}") for n, r in bad.items()]
        drift = any(r.t_excess > r.sigma or r.ratio > r.ratio_limit for r in bad.values())
        if self.gate_reason and drift:
            lines.append(f"gate: {self.gate_reason}")
        elif self.verdict == "fail" and any(r.nonfinite_chunks for r in bad.values()):
            lines.append("no trend judged: the error is not finite (NaN or Inf) on some chunks; see the chunk tests")
        elif self.verdict == "fail":
            lines.append("no trend: the errors are bounded-gate failures (max/P99 above the contract's limits), "
                         "not drift")
        return lines


def cache_fill_chunks(contract: Contract) -> int:
    """How many chunks of an unbroken stream start with the attention (channel) cache not yet full: by the
    contract's cache-length rule, chunk k reads ``min(initial + k * step, max)`` cached frames, so the first
    chunk that sees a full cache is ``ceil((max - initial) / step)`` (0 when the cache starts full or never
    grows).  Until then each chunk attends to more context than the one before, and its error rises with it."""
    rule = contract.streaming.cache_len
    if rule.step <= 0 or rule.initial >= rule.max:
        return 0
    return -(-(rule.max - rule.initial) // rule.step)


def judge_run_stability(contract: Contract, backend: str, precision: str, chunks: Sequence[ChunkResult]
                        ) -> RunStability:
    """Judge every compared output's per-chunk max |error| series of a closed-loop run (the trend from the
    first chunk that sees a full attention cache, see :func:`cache_fill_chunks`)."""
    gate = contract.gates.stability
    fill = cache_fill_chunks(contract)
    why = (f"the attention cache is still filling: {contract.streaming.cache_len.max} frames are cached from "
           f"chunk {fill} on")
    run = RunStability(backend, precision, gate_reason=gate.reason or "",
                       cache_len={c.chunk: c.cache_len_out[0] for c in chunks if c.cache_len_out})
    run.errored = [(c.chunk, c.error) for c in chunks if c.error]
    if run.errored:
        return run
    for name in contract.compared_outputs():
        pts = [(c.chunk, c.metrics[name].max_abs) for c in chunks if name in c.metrics]
        if not pts:
            continue
        tol = contract.tolerance(name, precision)
        run.results[name] = analyze([v for _, v in pts], gate, tol, chunks=[k for k, _ in pts],
                                    settle_from=fill, settle_reason=why)
        run.series[name] = pts
        run.limits[name] = (tol.atol, tol.warn_atol)
    return run
