"""Comparison: per-output, per-chunk error metrics and pass/warn/fail verdicts from contract tolerances."""

from __future__ import annotations

import math
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
    """:func:`compare_arrays` for two float arrays without a non-finite value: the same float64 figures, block by
    block in C order through three small float64 buffers (the float64 casts happen inside the ufuncs), instead of
    masks, cast copies and whole-array temporaries: the inputs are read once, not a dozen times (a full-size
    cache: ~3x less CPU, and little memory traffic beside a runtime's step).  p95/p99 come from a partial sort of
    only the largest differences where the array is large (:func:`_sampled_threshold`).  Every figure is the
    general path's to the bit, but the mean of an array of several blocks, which adds block sums (last bits).
    Leading blocks equal to the bit (a runtime that reproduces its reference) cost two passes, not a dozen:
    :func:`_same_bits`, until the first that is not.  Returns None, for the general path, when any difference is
    not finite."""
    n = int(a.size)
    buf = np.empty((3, min(n, _BLOCK)), dtype=np.float64)
    floor = max(atol, float(np.finfo(np.float32).tiny))
    pos, kth = _ranks(n, (95.0, 99.0))
    threshold = _sampled_threshold(a, e, n, kth[0])  # None: every difference is kept for the percentiles
    # equal bits give differences of exactly 0: looked for only where the percentiles keep no zeros
    bits = _bits_of(a, e) if threshold is not None else None
    flags = np.empty(min(n, _BLOCK), dtype=bool) if bits is not None else None
    zero = threshold == 0.0  # mostly exact: keep the differences above 0, the others are exactly 0
    blocks = _blocks(a.shape)
    kept: list[np.ndarray] = []
    kept_n = 0
    worst = rel_worst = 0
    max_abs = max_rel = -1.0
    mismatches, total, start = 0, 0.0, 0
    for ix in blocks:
        ab, eb = a[ix], e[ix]
        k = int(ab.size)
        if bits is not None and flags is not None:
            same = _same_bits(ab, eb, bits, flags[:k])
            if same is None:  # equal, but not finite: the general path counts it
                return None
            if same:  # every difference is 0: nothing kept, nothing mismatches (atol, rtol >= 0)
                if max_abs < 0.0:  # the first of equal maxima
                    max_abs, worst, max_rel, rel_worst = 0.0, start, 0.0, start
                start += k
                continue
            bits = None  # from the first block that differs on, the arrays are compared in full
        flat, mag, rel = buf[0, :k], buf[1, :k], buf[2, :k]
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: the general path reports it
            np.subtract(ab, eb, out=flat.reshape(ab.shape), dtype=np.float64)
        np.abs(flat, out=flat)
        j = int(np.argmax(flat))
        v = float(flat[j])
        if not np.isfinite(v):  # argmax stops at the first NaN, so a NaN anywhere lands here too
            return None
        if v > max_abs:  # the first of equal maxima, as argmax over the whole array
            max_abs, worst = v, start + j
        np.abs(eb, out=mag.reshape(eb.shape), dtype=np.float64)
        np.maximum(mag, floor, out=rel)
        with np.errstate(over="ignore"):
            np.divide(flat, rel, out=rel)
        j = int(np.argmax(rel))
        v = float(rel[j])
        if v > max_rel:
            max_rel, rel_worst = v, start + j
        if rtol:
            mag *= rtol
            mag += atol
            mismatches += int(np.count_nonzero(flat > mag))
        else:  # atol + 0 * |e| is atol: one comparison with a scalar
            mismatches += int(np.count_nonzero(flat > atol))
        total += float(flat.sum())
        if threshold is None:
            kept.append(flat if len(blocks) == 1 else flat.copy())  # one block: the buffer is not needed again
        elif kept_n <= n // 4:
            top = flat[flat > 0.0] if zero else flat[flat >= threshold]
            kept_n += int(top.size)
            kept.append(top)
        start += k
    values: dict[int, float] | None
    if threshold is None:
        every = kept[0] if len(kept) == 1 else np.concatenate(kept)
        every.partition(kth)
        values = {r: float(every[r]) for r in kth}
    else:
        values = None if kept_n > n // 4 else _from_top(np.concatenate(kept) if kept else np.empty(0), n, kth,
                                                        rest=0.0 if zero else None)
    if values is None:  # the sample misjudged: the whole array's differences, sorted in part
        every = np.empty(n, dtype=np.float64)
        np.subtract(a, e, out=every.reshape(a.shape), dtype=np.float64)
        np.abs(every, out=every)
        every.partition(kth)
        values = {r: float(every[r]) for r in kth}
    p95, p99 = _interpolate(pos, values, n)
    idx = tuple(int(i) for i in np.unravel_index(worst, a.shape))
    return Metrics(
        output=output, chunk=chunk, numel=n, max_abs=max_abs, mean_abs=total / n,
        max_rel=max_rel, p95_abs=p95, p99_abs=p99, mismatches=mismatches,
        nonfinite=0, worst_index=full(idx), worst_actual=float(a[idx]), worst_expected=float(e[idx]),
        atol=atol, rtol=rtol, region=region,
        rel_index=full(tuple(int(i) for i in np.unravel_index(rel_worst, a.shape))),
    )


def _bits_of(a: np.ndarray, e: np.ndarray) -> np.dtype[Any] | None:
    """The unsigned integer type whose values are the bits of both arrays' elements, or None (different float
    types, or a float type numpy has no such integer for)."""
    if a.dtype != e.dtype or a.dtype.byteorder not in "=|" or a.dtype.itemsize not in (2, 4, 8):
        return None
    return np.dtype(f"u{a.dtype.itemsize}")


def _same_bits(ab: np.ndarray, eb: np.ndarray, bits: np.dtype[Any], flags: np.ndarray) -> bool | None:
    """Whether two blocks hold the same bits, all finite (True); the same bits with a value that is not
    finite (None); or different bits (False).  `flags`: a bool buffer of the blocks' size."""
    if ab.ndim and (ab.strides[-1] != ab.itemsize or eb.strides[-1] != eb.itemsize):
        return False  # the integer view needs a contiguous last axis: compared in full
    np.equal(ab.view(bits), eb.view(bits), out=flags.reshape(ab.shape))
    if not flags.all():
        return False
    np.isfinite(ab, out=flags.reshape(ab.shape))
    return True if flags.all() else None


_SAMPLE = 8192
"""Elements of the strided sample that :func:`_sampled_threshold` picks its threshold from."""

_SAMPLED_FROM = 16 * _SAMPLE
"""Arrays this large keep only their largest differences for the percentiles."""

_BLOCK = 1 << 16
"""Elements per block: three float64 work buffers of 512 KiB stay in a core's cache."""


def _ranks(n: int, qs: tuple[float, ...]) -> tuple[list[float], list[int]]:
    """numpy's linear-interpolation positions of the percentiles `qs` in n sorted values, and the ranks read."""
    pos = [q / 100.0 * (n - 1) for q in qs]
    kth = sorted({int(np.floor(p)) for p in pos} | {min(int(np.floor(p)) + 1, n - 1) for p in pos})
    return pos, kth


def _sampled_threshold(a: np.ndarray, e: np.ndarray, n: int, lowest_rank: int) -> float | None:
    """For an array of at least :data:`_SAMPLED_FROM` elements, a difference that a strided sample of |a - e|
    puts safely below rank `lowest_rank` (4 standard deviations of the sample's rank): every element below it
    ranks below every element kept, so ranks shift by their count and the values stay exact.  None for smaller
    arrays, a sample that is not finite, or one that cannot tell."""
    if n < _SAMPLED_FROM:
        return None
    at = np.unravel_index(np.arange(0, n, n // _SAMPLE), a.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        sample = np.abs(np.subtract(a[at], e[at], dtype=np.float64))
    if not np.isfinite(sample).all():
        return None
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


def _blocks(shape: tuple[int, ...]) -> list[tuple[Any, ...]]:
    """Index tuples that cut an array of `shape` into blocks of at most :data:`_BLOCK` elements (fewer only
    where an axis does not divide), in C order: slices of the innermost axis whose trailing sub-arrays fit."""
    lead = next(i for i in range(len(shape) + 1) if math.prod(shape[i:]) <= _BLOCK)
    if lead == 0:
        return [()]
    axis = lead - 1
    rows = max(1, _BLOCK // math.prod(shape[lead:]))
    return [(*ix, slice(lo, lo + rows)) for ix in np.ndindex(*shape[:axis]) for lo in range(0, shape[axis], rows)]


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
