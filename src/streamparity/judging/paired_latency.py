"""Paired latency statistics and the release-gate verdict on the candidate/baseline step-time ratio.

Input: per-pair block times of a candidate and a baseline timed in the same run (one pair per round of
alternating blocks, see streamparity.drivers.paired_timing).  Statistic: the per-pair ratio
``candidate / baseline``, its median and a distribution-free confidence interval for that median from the
sign test (binomial order statistics: exact, deterministic, robust to the odd disturbed block).

Verdict against a limit L (e.g. 1.10, "at most 10% slower"):

* ``fail``: the interval's lower bound is above L (slower than allowed, with confidence);
* ``pass``: the interval's upper bound is at most L;
* ``inconclusive``: the interval straddles L (more pairs, bigger blocks or a quieter machine decide it);
* ``report``: no limit given, figures only.

A run may look more than once (extend while inconclusive): with ``looks`` planned looks each interval is
taken at ``1 - (1 - confidence) / looks`` (Bonferroni), so the run's error rate stays within the stated one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

VERDICTS = ("pass", "fail", "inconclusive", "report")


def _binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(min(k, n) + 1)) / 2.0 ** n


def per_look(confidence: float, looks: int) -> float:
    """Confidence of each of `looks` intervals so that all hold together with `confidence` (Bonferroni)."""
    if looks < 1:
        raise ValueError(f"looks must be >= 1, got {looks}")
    return 1.0 - (1.0 - confidence) / looks


def min_pairs(confidence: float) -> int:
    """The fewest pairs for which the sign-test interval (min, max) reaches `confidence`."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = 1
    while 1.0 - 2.0 * _binom_cdf_half(0, n) < confidence:
        n += 1
    return n


def median_interval(values: Sequence[float], confidence: float) -> tuple[float, float, float, float]:
    """(median, low, high, achieved confidence) of the median of `values`: the interval is
    ``[x_(k), x_(n+1-k)]`` with the largest rank k whose exact coverage ``1 - 2 P(Bin(n, 1/2) <= k-1)`` is at
    least `confidence` (so the achieved confidence is at least the nominal one).  Raises ValueError with
    too few values for that confidence."""
    xs = sorted(float(v) for v in values)
    n = len(xs)
    need = min_pairs(confidence)
    if n < need:
        raise ValueError(f"{n} pairs cannot give a {confidence:.0%} interval for the median: at least {need} needed")
    k = 1
    while k + 1 <= n // 2 and 1.0 - 2.0 * _binom_cdf_half(k, n) >= confidence:
        k += 1
    achieved = 1.0 - 2.0 * _binom_cdf_half(k - 1, n)
    mid = n // 2
    median = xs[mid] if n % 2 else 0.5 * (xs[mid - 1] + xs[mid])
    return median, xs[k - 1], xs[n - k], achieved


@dataclass(frozen=True)
class RatioStats:
    """Median and interval of per-pair ratios, with the medians of both arms (ms per step)."""

    candidate_ms: float
    baseline_ms: float
    ratio: float
    ratio_lo: float
    ratio_hi: float
    achieved_confidence: float
    pairs: int


def ratio_stats(candidate: Sequence[float], baseline: Sequence[float], confidence: float) -> RatioStats:
    """Per-pair ratio statistics; `candidate[i]` and `baseline[i]` are the same pair's times (any unit)."""
    if len(candidate) != len(baseline):
        raise ValueError(f"{len(candidate)} candidate blocks but {len(baseline)} baseline blocks")
    bad = [i for i, (c, b) in enumerate(zip(candidate, baseline, strict=True))
           if not (math.isfinite(c) and math.isfinite(b) and c > 0 and b > 0)]
    if bad:
        raise ValueError(f"block times must be finite and positive; pair {bad[0]} has "
                         f"{candidate[bad[0]]!r} / {baseline[bad[0]]!r}")
    ratios = [c / b for c, b in zip(candidate, baseline, strict=True)]
    med, lo, hi, achieved = median_interval(ratios, confidence)
    return RatioStats(statistics.median(candidate), statistics.median(baseline), med, lo, hi, achieved, len(ratios))


def decide(stats: RatioStats, limit: float | None) -> str:
    """pass / fail / inconclusive against the ratio `limit`; ``report`` without one."""
    if limit is None:
        return "report"
    if stats.ratio_lo > limit:
        return "fail"
    if stats.ratio_hi <= limit:
        return "pass"
    return "inconclusive"


@dataclass(frozen=True)
class PairedLatencyResult:
    """The paired gate's outcome: host-time statistics (judged), device-compute statistics where measured
    (reported), and how the samples were taken."""

    host: RatioStats
    verdict: str
    limit: float | None
    confidence: float
    inconclusive_passes: bool
    rounds: int
    block_steps: int
    warmup_steps: int
    candidate_blocks_ms: list[float]
    baseline_blocks_ms: list[float]
    compute: RatioStats | None = None
    device_timing: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    looks: int = 1
    look: int = 1

    @property
    def per_look_confidence(self) -> float:
        return per_look(self.confidence, self.looks)

    @property
    def failed(self) -> bool:
        return self.verdict == "fail" or (self.verdict == "inconclusive" and not self.inconclusive_passes)

    def describe(self, head: str = "paired latency") -> str:
        h = self.host
        pct = f"{self.confidence:.0%}"
        lines = [f"{head}: candidate {h.candidate_ms:.4g} ms/step vs baseline {h.baseline_ms:.4g} ms/step "
                 f"(medians of block medians); ratio {h.ratio:.4f}, {pct} CI [{h.ratio_lo:.4f}, {h.ratio_hi:.4f}] "
                 f"(sign test, achieved {h.achieved_confidence:.1%}) over {h.pairs} pairs"
                 + (f" (look {self.look} of at most {self.looks}, each at {self.per_look_confidence:.1%})"
                    if self.looks > 1 else ""),
                 f"  sampling: {self.rounds} rounds of 2 alternating blocks (ABBA order) x {self.block_steps} steps, "
                 f"after {self.warmup_steps} warm-up steps per model; same process, device and chunks"]
        if self.limit is None:
            lines.append("  gate: none (--gate-latency-ratio not given): reported only")
        else:
            rule = {"fail": f"CI lower bound {h.ratio_lo:.4f} > limit {self.limit:g}: slower than allowed",
                    "pass": f"CI upper bound {h.ratio_hi:.4f} <= limit {self.limit:g}",
                    "inconclusive": f"CI [{h.ratio_lo:.4f}, {h.ratio_hi:.4f}] straddles the limit {self.limit:g}; "
                                    + ("counted as a pass (--latency-inconclusive=pass)" if self.inconclusive_passes
                                       else "counted as a failure (use more --paired-rounds or "
                                            "--paired-block-steps, or --latency-inconclusive=pass)")}
            lines.append(f"  gate --gate-latency-ratio={self.limit:g}: {self.verdict.upper()}: {rule[self.verdict]}")
        if self.compute is not None:
            c = self.compute
            lines.append(f"  device compute (CUDA events): candidate {c.candidate_ms:.4g} ms/step vs baseline "
                         f"{c.baseline_ms:.4g} ms/step; ratio {c.ratio:.4f}, {pct} CI [{c.ratio_lo:.4f}, "
                         f"{c.ratio_hi:.4f}] (reported, not gated)")
        elif self.device_timing:
            lines.append(f"  device timing: {self.device_timing}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The ``latency_paired`` payload body (JSON-ready)."""
        return {"verdict": self.verdict, "failed": self.failed, "limit": self.limit,
                "inconclusive_policy": "pass" if self.inconclusive_passes else "fail",
                "confidence": self.confidence, "looks": self.looks, "look": self.look,
                "per_look_confidence": self.per_look_confidence, "statistic": "median of per-pair ratios, sign-test CI",
                **asdict(self.host), "rounds": self.rounds, "block_steps": self.block_steps,
                "warmup_steps": self.warmup_steps, "order": "ABBA",
                "candidate_blocks_ms": self.candidate_blocks_ms, "baseline_blocks_ms": self.baseline_blocks_ms,
                "compute": asdict(self.compute) if self.compute is not None else None,
                "device_timing": self.device_timing, **self.extra}


def judge_paired(candidate_ms: Sequence[float], baseline_ms: Sequence[float], *, limit: float | None,
                 confidence: float = 0.95, inconclusive_passes: bool = False, block_steps: int = 1,
                 warmup_steps: int = 0, candidate_compute_ms: Sequence[float] | None = None,
                 baseline_compute_ms: Sequence[float] | None = None, device_timing: str = "",
                 extra: dict[str, Any] | None = None, looks: int = 1, look: int = 1) -> PairedLatencyResult:
    """Judge per-pair block times (ms per step): host times decide, device compute times are reported.
    `looks`: how many times this run may judge (intervals at the Bonferroni-adjusted confidence); `look`:
    which one this is."""
    if limit is not None and not (math.isfinite(limit) and limit > 0):
        raise ValueError(f"the latency ratio limit must be a positive number, got {limit!r}")
    level = per_look(confidence, looks)
    host = ratio_stats(candidate_ms, baseline_ms, level)
    compute = None
    if candidate_compute_ms is not None and baseline_compute_ms is not None:
        compute = ratio_stats(candidate_compute_ms, baseline_compute_ms, level)
    return PairedLatencyResult(host, decide(host, limit), limit, confidence, inconclusive_passes, host.pairs,
                               block_steps, warmup_steps, [float(v) for v in candidate_ms],
                               [float(v) for v in baseline_ms], compute, device_timing, dict(extra or {}),
                               looks, look)
