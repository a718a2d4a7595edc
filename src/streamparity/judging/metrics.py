"""Comparison: per-output, per-chunk error metrics and pass/warn/fail verdicts from contract tolerances."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from streamparity.contract.model import ROLE_CACHE_CHANNEL, Contract, TensorSpec, Tolerance
from streamparity.judging.verdict import Verdict


@dataclass
class Metrics:
    """How far `actual` is from `expected` for one output of one chunk."""

    output: str
    chunk: int
    numel: int
    max_abs: float
    mean_abs: float
    max_rel: float
    p95_abs: float
    p99_abs: float
    mismatches: int
    nonfinite: int
    worst_index: tuple[int, ...]
    worst_actual: float
    worst_expected: float
    atol: float
    rtol: float
    region: str = "all"
    shape_error: str | None = None
    rel_index: tuple[int, ...] = ()

    @property
    def mismatch_pct(self) -> float:
        return 100.0 * self.mismatches / self.numel if self.numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["worst_index"] = list(self.worst_index)
        d["rel_index"] = list(self.rel_index)
        d["mismatch_pct"] = self.mismatch_pct
        return d


def compare_arrays(
    actual: np.ndarray,
    expected: np.ndarray,
    *,
    output: str,
    chunk: int,
    atol: float,
    rtol: float,
    region: str = "all",
    offset: tuple[int, ...] = (),
) -> Metrics:
    """Elementwise comparison; an element mismatches when |a-e| > atol + rtol*|e| or a is not finite.

    `offset` is where the compared arrays start inside the full tensors (a cache compared on its valid
    frames), so that reported indices point into the full tensor.  The relative difference divides by
    max(|e|, atol): elements whose expected value is ~0 are judged by atol, not by a huge ratio."""
    a = np.asarray(actual)
    e = np.asarray(expected)
    if a.shape != e.shape:
        return Metrics(output, chunk, int(e.size), float("inf"), float("inf"), float("inf"), float("inf"),
                       float("inf"), int(e.size), 0, (), float("nan"), float("nan"), atol, rtol, region,
                       shape_error=f"shape {list(a.shape)} != expected {list(e.shape)}")
    if a.size == 0:
        return Metrics(output, chunk, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, (), 0.0, 0.0, atol, rtol, region)
    full = (lambda ix: tuple(i + o for i, o in zip(ix, offset, strict=True))) if offset else (lambda ix: ix)
    if a.dtype.kind == "f" and e.dtype.kind == "f":
        fast = _compare_finite(a, e, output=output, chunk=chunk, atol=atol, rtol=rtol, region=region, full=full)
        if fast is not None:
            return fast
    a64 = a.astype(np.float64)
    e64 = e.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: counted below as non-finite
        diff = np.abs(a64 - e64)
    nonfinite_mask = ~np.isfinite(a64) | ~np.isfinite(e64)
    nonfinite = int(nonfinite_mask.sum())
    diff = np.where(nonfinite_mask, np.inf, diff)
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite elements are counted, not warned about
        rel = np.where(nonfinite_mask, np.inf,
                       diff / np.maximum(np.abs(e64), max(atol, float(np.finfo(np.float32).tiny))))
        allowed = atol + rtol * np.abs(e64)
        mism = (diff > allowed) | nonfinite_mask
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
    rel_idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(rel)), rel.shape))
    finite_diff = diff[np.isfinite(diff)]
    return Metrics(
        output=output,
        chunk=chunk,
        numel=int(a.size),
        max_abs=float(diff.max()),
        mean_abs=float(finite_diff.mean()) if finite_diff.size else float("inf"),
        max_rel=float(rel.max()),
        p95_abs=float(np.percentile(finite_diff, 95)) if finite_diff.size else float("inf"),
        p99_abs=float(np.percentile(finite_diff, 99)) if finite_diff.size else float("inf"),
        mismatches=int(mism.sum()),
        nonfinite=nonfinite,
        worst_index=full(idx),
        worst_actual=float(a64[idx]),
        worst_expected=float(e64[idx]),
        atol=atol,
        rtol=rtol,
        region=region,
        rel_index=full(rel_idx),
    )


def _compare_finite(a: np.ndarray, e: np.ndarray, *, output: str, chunk: int, atol: float, rtol: float,
                    region: str, full: Any) -> Metrics | None:
    """:func:`compare_arrays` for two float arrays without a non-finite value: the same float64 figures from
    in-place operations (the float64 casts happen inside the ufuncs, no cast copies) and a partial sort of only
    the largest differences, instead of masks, copies and two full percentile sorts (a sixth of the time on a
    full-size cache).  Returns None, for the general path, when any difference is not finite."""
    n = int(a.size)
    flat = np.empty(n, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: the general path reports it
        np.subtract(a, e, out=flat.reshape(a.shape), dtype=np.float64)
    np.abs(flat, out=flat)
    worst = int(np.argmax(flat))
    max_abs = float(flat[worst])
    if not np.isfinite(max_abs):  # argmax stops at the first NaN, so a NaN anywhere lands here too
        return None
    mag = np.empty(n, dtype=np.float64)
    np.abs(e, out=mag.reshape(e.shape), dtype=np.float64)
    rel = np.maximum(mag, max(atol, float(np.finfo(np.float32).tiny)))
    with np.errstate(over="ignore"):
        np.divide(flat, rel, out=rel)
    rel_worst = int(np.argmax(rel))
    max_rel = float(rel[rel_worst])
    del rel
    if rtol:
        mag *= rtol
        mag += atol
        mismatches = int(np.count_nonzero(flat > mag))
    else:  # atol + 0 * |e| is atol: one comparison with a scalar
        mismatches = int(np.count_nonzero(flat > atol))
    del mag
    mean_abs = float(flat.mean())
    idx = tuple(int(i) for i in np.unravel_index(worst, a.shape))
    p95, p99 = percentiles_of_large(flat, (95.0, 99.0))  # last: it may reorder the differences
    return Metrics(
        output=output, chunk=chunk, numel=n, max_abs=max_abs, mean_abs=mean_abs,
        max_rel=max_rel, p95_abs=p95, p99_abs=p99, mismatches=mismatches,
        nonfinite=0, worst_index=full(idx), worst_actual=float(a[idx]), worst_expected=float(e[idx]),
        atol=atol, rtol=rtol, region=region,
        rel_index=full(tuple(int(i) for i in np.unravel_index(rel_worst, a.shape))),
    )


_SAMPLE = 8192
"""Elements of the strided sample that :func:`percentiles_of_large` picks its threshold from."""


def percentiles_of_large(flat: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """numpy's default (linear) percentiles of the 1-D array `flat`, to the last bit, from a partial sort of
    only the elements at or above a threshold that a strided sample puts safely below the lowest rank needed
    (the top ~10% for p95/p99).  Every element below the threshold ranks below every element kept, so ranks
    shift by their count and the values are exact.  When the sample misjudges (structured data), or the
    array is small, `flat` itself is partially sorted in place: it is reordered then."""
    n = int(flat.size)
    pos = [q / 100.0 * (n - 1) for q in qs]
    kth = sorted({int(np.floor(p)) for p in pos} | {min(int(np.floor(p)) + 1, n - 1) for p in pos})
    values: dict[int, float] = {}
    if n >= 16 * _SAMPLE:
        sample = np.array(flat[::n // _SAMPLE])
        q = kth[0] / (n - 1)
        margin = int(4 * np.sqrt(sample.size * q * (1 - q))) + 2  # 4 standard deviations of the sample's rank
        r = int(q * (sample.size - 1)) - margin
        if r > 0:
            threshold = np.partition(sample, r)[r]
            top = flat[flat >= threshold]
            below = n - int(top.size)
            if below <= kth[0] and top.size <= n // 4:
                top.partition([k - below for k in kth])
                values = {k: float(top[k - below]) for k in kth}
    if not values:
        flat.partition(kth)
        values = {k: float(flat[k]) for k in kth}
    out = []
    for p in pos:
        lo = int(np.floor(p))
        v_lo, v_hi = values[lo], values[min(lo + 1, n - 1)]
        t = p - lo
        out.append(v_hi - (v_hi - v_lo) * (1 - t) if t >= 0.5 else v_lo + (v_hi - v_lo) * t)
    return out


def valid_region(spec: TensorSpec, array: np.ndarray,
                 cache_len: int | None) -> tuple[np.ndarray, str, tuple[int, ...]]:
    """Restrict a cache_channel tensor to its valid frames, the last `cache_len` along the time axis (2).
    Returns the view, a label, and the view's offset inside `array`."""
    if spec.role == ROLE_CACHE_CHANNEL and cache_len is not None and array.ndim == 4:
        n = max(0, min(int(cache_len), array.shape[2]))
        start = array.shape[2] - n
        return array[:, :, start:, :], f"frames {start}..{array.shape[2] - 1} of {array.shape[2]} " \
            f"(the last {n} = cache_len)", (0, 0, start, 0)
    return array, "all", ()


def compare_output(
    contract: Contract,
    name: str,
    actual: np.ndarray,
    expected: np.ndarray,
    *,
    chunk: int,
    precision: str,
    cache_len: int | None = None,
) -> Metrics:
    spec = contract.output(name)
    tol = contract.tolerance(name, precision)
    a, region, offset = valid_region(spec, np.asarray(actual), cache_len)
    e, _, _ = valid_region(spec, np.asarray(expected), cache_len)
    return compare_arrays(a, e, output=name, chunk=chunk, atol=tol.atol, rtol=tol.rtol, region=region,
                          offset=offset if a.shape == e.shape else ())


def verdict(m: Metrics, tol: Tolerance) -> Verdict:
    """fail: any mismatch (non-finite values always mismatch); warn: max_abs above warn_atol."""
    if m.shape_error or m.nonfinite or m.mismatches:
        return "fail"
    if tol.warn_atol is not None and m.max_abs > tol.warn_atol:
        return "warn"
    return "pass"




def percentile(values: list[float], q: float) -> float:
    arr = np.asarray([v for v in values], dtype=np.float64)
    if arr.size == 0:
        return float("nan")
    if not np.all(np.isfinite(arr)):
        return float("inf")
    return float(np.percentile(arr, q))
