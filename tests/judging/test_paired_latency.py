"""Statistics of the paired latency gate: sign-test interval of the median ratio, verdict boundaries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streamparity.judging.paired_latency import (
    RatioStats,
    decide,
    judge_paired,
    median_interval,
    min_pairs,
    ratio_stats,
)


def test_min_pairs_for_usual_confidences() -> None:
    # (min, max) of n values covers the median with 1 - 2 / 2**n
    assert min_pairs(0.95) == 6 and min_pairs(0.90) == 5 and min_pairs(0.99) == 8
    with pytest.raises(ValueError):
        min_pairs(1.0)


def test_interval_ranks_and_achieved_confidence() -> None:
    med, lo, hi, achieved = median_interval(list(range(1, 11)), 0.95)  # n = 10: ranks 2 and 9, 97.9%
    assert (med, lo, hi) == (5.5, 2, 9)
    assert achieved == pytest.approx(1 - 2 * 11 / 1024)
    med, lo, hi, achieved = median_interval([3.0, 1.0, 2.0, 6.0, 5.0, 4.0], 0.95)  # n = 6: min and max
    assert (med, lo, hi) == (3.5, 1.0, 6.0) and achieved == pytest.approx(1 - 2 / 64)
    with pytest.raises(ValueError, match="at least 6 needed"):
        median_interval([1.0] * 5, 0.95)


@pytest.mark.parametrize("n", [6, 10, 25])
def test_interval_covers_the_true_median_ratio(n: int) -> None:
    """Coverage on synthetic ratios (lognormal noise around a true median of 1.07, heavy outliers added) is
    at least the nominal 95%, up to Monte-Carlo error."""
    rng = np.random.default_rng(1234)
    true = 1.07
    trials, hits = 2000, 0
    for _ in range(trials):
        r = true * np.exp(rng.normal(0.0, 0.08, n))
        r[rng.random(n) < 0.1] *= 3.0  # a disturbed candidate block
        r[rng.random(n) < 0.1] /= 3.0  # a disturbed baseline block
        _, lo, hi, _ = median_interval(r.tolist(), 0.95)
        hits += lo <= true <= hi
    assert hits / trials >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / trials)


def _stats(lo: float, hi: float) -> RatioStats:
    return RatioStats(1.0, 1.0, (lo + hi) / 2, lo, hi, 0.97, 10)


def test_verdict_boundaries() -> None:
    assert decide(_stats(1.00, 1.10), 1.10) == "pass"  # upper bound exactly at the limit passes
    assert decide(_stats(0.80, 0.95), 1.10) == "pass"  # faster candidate
    assert decide(_stats(1.10, 1.30), 1.10) == "inconclusive"  # lower bound at the limit is not "above"
    assert decide(_stats(1.1001, 1.30), 1.10) == "fail"
    assert decide(_stats(1.05, 1.15), 1.10) == "inconclusive"
    assert decide(_stats(1.05, 1.15), None) == "report"


def test_judge_paired_pass_fail_inconclusive_and_policy() -> None:
    base = [1.0, 1.02, 0.98, 1.01, 0.99, 1.0, 1.03, 0.97, 1.0, 1.01]
    same = judge_paired(base, base, limit=1.10, block_steps=20, warmup_steps=20)
    assert same.verdict == "pass" and not same.failed and same.host.ratio == 1.0
    slow = judge_paired([1.5 * b for b in base], base, limit=1.10)
    assert slow.verdict == "fail" and slow.failed
    assert "CI lower bound 1.5000 > limit 1.1" in slow.describe()
    mixed = [1.02, 1.2, 1.05, 1.15, 1.08, 1.12, 1.04, 1.18, 1.11, 1.09]
    unsure = judge_paired(mixed, [1.0] * 10, limit=1.10)
    assert unsure.verdict == "inconclusive" and unsure.failed
    assert "straddles the limit 1.1" in unsure.describe() and "counted as a failure" in unsure.describe()
    lenient = judge_paired(mixed, [1.0] * 10, limit=1.10, inconclusive_passes=True)
    assert lenient.verdict == "inconclusive" and not lenient.failed
    assert "--latency-inconclusive=pass" in lenient.describe()


def test_message_and_payload_carry_both_medians_interval_pairs_and_rounds() -> None:
    cand, base = [1.2] * 8, [1.0] * 8
    res = judge_paired(cand, base, limit=1.10, block_steps=20, warmup_steps=30,
                       device_timing="host only: CPU backend")
    text = res.describe("[ort-cpu-fp32] paired")
    for part in ("candidate 1.2 ms/step", "baseline 1 ms/step", "ratio 1.2000", "95% CI [1.2000, 1.2000]",
                 "over 8 pairs", "8 rounds", "x 20 steps", "30 warm-up", "FAIL", "host only: CPU backend"):
        assert part in text, (part, text)
    d = res.to_dict()
    assert d["verdict"] == "fail" and d["failed"] and d["pairs"] == 8 and d["rounds"] == 8
    assert d["candidate_ms"] == 1.2 and d["baseline_ms"] == 1.0 and d["ratio_lo"] == d["ratio_hi"] == 1.2
    assert d["compute"] is None and d["limit"] == 1.10 and d["inconclusive_policy"] == "fail"


def test_device_compute_is_reported_not_gated() -> None:
    res = judge_paired([1.0] * 6, [1.0] * 6, limit=1.10, candidate_compute_ms=[0.9] * 6,
                       baseline_compute_ms=[0.3] * 6)
    assert res.verdict == "pass" and res.compute is not None and res.compute.ratio == pytest.approx(3.0)
    assert "device compute (CUDA events)" in res.describe()


def test_bad_samples_are_rejected() -> None:
    with pytest.raises(ValueError, match="6 candidate blocks but 5"):
        ratio_stats([1.0] * 6, [1.0] * 5, 0.95)
    with pytest.raises(ValueError, match="finite and positive; pair 2"):
        ratio_stats([1.0, 1.0, 0.0, 1.0, 1.0, 1.0], [1.0] * 6, 0.95)
    with pytest.raises(ValueError, match="positive number"):
        judge_paired([1.0] * 6, [1.0] * 6, limit=0.0)
