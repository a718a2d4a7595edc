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
    if n >= _BLOCKWISE_FROM:
        return _compare_finite_blocks(a, e, output=output, chunk=chunk, atol=atol, rtol=rtol, region=region,
                                      full=full)
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

_BLOCKWISE_FROM = 16 * _SAMPLE
"""Arrays this large are compared block by block (:func:`_compare_finite_blocks`)."""

_BLOCK = 1 << 16
"""Elements per block: three float64 work buffers of 512 KiB stay in a core's cache."""


def _ranks(n: int, qs: tuple[float, ...]) -> tuple[list[float], list[int]]:
    """numpy's linear-interpolation positions of the percentiles `qs` in n sorted values, and the ranks read."""
    pos = [q / 100.0 * (n - 1) for q in qs]
    kth = sorted({int(np.floor(p)) for p in pos} | {min(int(np.floor(p)) + 1, n - 1) for p in pos})
    return pos, kth


def _threshold(sample: np.ndarray, n: int, lowest_rank: int) -> float | None:
    """A value that a strided sample of n values puts safely below rank `lowest_rank` (4 standard deviations
    of the sample's rank), or None where the sample cannot tell."""
    q = lowest_rank / (n - 1)
    margin = int(4 * np.sqrt(sample.size * q * (1 - q))) + 2
    r = int(q * (sample.size - 1)) - margin
    return float(np.partition(sample, r)[r]) if r > 0 else None


def _from_top(top: np.ndarray, n: int, kth: list[int], *, rest: float | None = None) -> dict[int, float] | None:
    """The values at ranks `kth` of n values, from `top`, the values above a threshold (partially sorted in
    place), when they are few and every rank needed lies among them, or when all the others are `rest`
    (differences of exactly 0 left out); else None."""
    below = n - int(top.size)
    if top.size > n // 4 or (below > kth[0] and rest is None):
        return None
    need = [k - below for k in kth if k >= below]
    if need:
        top.partition(need)
    fill = 0.0 if rest is None else rest  # only read where rest is given
    return {k: float(top[k - below]) if k >= below else fill for k in kth}


def _interpolate(pos: list[float], values: dict[int, float], n: int) -> list[float]:
    out = []
    for p in pos:
        lo = int(np.floor(p))
        v_lo, v_hi = values[lo], values[min(lo + 1, n - 1)]
        t = p - lo
        out.append(v_hi - (v_hi - v_lo) * (1 - t) if t >= 0.5 else v_lo + (v_hi - v_lo) * t)
    return out


def percentiles_of_large(flat: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """numpy's default (linear) percentiles of the 1-D array `flat`, to the last bit, from a partial sort of
    only the elements at or above a threshold that a strided sample puts safely below the lowest rank needed
    (the top ~10% for p95/p99).  Every element below the threshold ranks below every element kept, so ranks
    shift by their count and the values are exact.  When the sample misjudges (structured data), or the
    array is small, `flat` itself is partially sorted in place: it is reordered then."""
    n = int(flat.size)
    pos, kth = _ranks(n, qs)
    values = None
    if n >= 16 * _SAMPLE:
        threshold = _threshold(np.array(flat[::n // _SAMPLE]), n, kth[0])
        if threshold is not None:
            values = _from_top(flat[flat >= threshold], n, kth)
    if values is None:
        flat.partition(kth)
        values = {k: float(flat[k]) for k in kth}
    return _interpolate(pos, values, n)


def _blocks(shape: tuple[int, ...]) -> list[tuple[Any, ...]]:
    """Index tuples that cut an array of `shape` into blocks of at most :data:`_BLOCK` elements (fewer only
    where an axis does not divide), in C order: slices of the innermost axis whose trailing sub-arrays fit."""
    lead = next(i for i in range(len(shape) + 1) if int(np.prod(shape[i:])) <= _BLOCK)
    if lead == 0:
        return [()]
    axis = lead - 1
    rows = max(1, _BLOCK // int(np.prod(shape[lead:])))
    return [(*ix, slice(lo, lo + rows)) for ix in np.ndindex(*shape[:axis]) for lo in range(0, shape[axis], rows)]


def _compare_finite_blocks(a: np.ndarray, e: np.ndarray, *, output: str, chunk: int, atol: float, rtol: float,
                           region: str, full: Any) -> Metrics | None:
    """:func:`_compare_finite` for a large array, block by block in C order through three small float64
    buffers, instead of whole-array float64 temporaries: the inputs are read once, not a dozen times (a
    full-size cache: ~4x less CPU, and little memory traffic beside a runtime's step).  The same per-element
    operations give the same max, index, relative, mismatch and percentile figures; the mean adds block sums,
    so it may differ from one whole-array sum in the last bits."""
    n = int(a.size)
    buf = np.empty((3, _BLOCK), dtype=np.float64)
    floor = max(atol, float(np.finfo(np.float32).tiny))
    pos, kth = _ranks(n, (95.0, 99.0))
    stride = n // _SAMPLE
    at = np.unravel_index(np.arange(0, n, stride), a.shape)  # the whole-array path's strided sample
    with np.errstate(invalid="ignore", over="ignore"):
        sample = np.abs(np.subtract(a[at], e[at], dtype=np.float64))
    threshold = _threshold(sample, n, kth[0]) if np.isfinite(sample).all() else None
    zero = threshold == 0.0  # mostly exact: keep the differences above 0, the others are exactly 0
    tops: list[np.ndarray] = []
    kept = 0
    worst = rel_worst = 0
    max_abs = max_rel = -1.0
    mismatches, total, start = 0, 0.0, 0
    for ix in _blocks(a.shape):
        ab, eb = a[ix], e[ix]
        k = int(ab.size)
        d, mag, rel = (b[:k].reshape(ab.shape) for b in buf)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: the general path reports it
            np.subtract(ab, eb, out=d, dtype=np.float64)
        np.abs(d, out=d)
        j = int(np.argmax(d))
        v = float(d.flat[j])
        if not np.isfinite(v):  # a NaN or inf anywhere: the general path's
            return None
        if v > max_abs:  # the first of equal maxima, as argmax over the whole array
            max_abs, worst = v, start + j
        np.abs(eb, out=mag, dtype=np.float64)
        np.maximum(mag, floor, out=rel)
        with np.errstate(over="ignore"):
            np.divide(d, rel, out=rel)
        j = int(np.argmax(rel))
        v = float(rel.flat[j])
        if v > max_rel:
            max_rel, rel_worst = v, start + j
        if rtol:
            mag *= rtol
            mag += atol
            mismatches += int(np.count_nonzero(d > mag))
        else:
            mismatches += int(np.count_nonzero(d > atol))
        total += float(d.sum())
        if threshold is not None:
            top = d[d > 0.0] if zero else d[d >= threshold]
            kept += int(top.size)
            if kept > n // 4:  # the sample misjudged: stop keeping copies
                threshold, tops = None, []
            else:
                tops.append(top)
        start += k
    values = _from_top(np.concatenate(tops) if tops else np.empty(0), n, kth, rest=0.0 if zero else None) \
        if threshold is not None else None
    if values is None:  # the sample misjudged: the whole array's differences, sorted in part
        flat = np.empty(n, dtype=np.float64)
        np.subtract(a, e, out=flat.reshape(a.shape), dtype=np.float64)
        np.abs(flat, out=flat)
        flat.partition(kth)
        values = {k: float(flat[k]) for k in kth}
    p95, p99 = _interpolate(pos, values, n)
    idx = tuple(int(i) for i in np.unravel_index(worst, a.shape))
    return Metrics(
        output=output, chunk=chunk, numel=n, max_abs=max_abs, mean_abs=total / n,
        max_rel=max_rel, p95_abs=p95, p99_abs=p99, mismatches=mismatches,
        nonfinite=0, worst_index=full(idx), worst_actual=float(a[idx]), worst_expected=float(e[idx]),
        atol=atol, rtol=rtol, region=region,
        rel_index=full(tuple(int(i) for i in np.unravel_index(rel_worst, a.shape))),
    )


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
