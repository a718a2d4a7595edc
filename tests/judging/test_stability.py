"""Unit tests of the stability analysis on synthetic series, and the drift fault end to end in-process:
the clean closed loop of the embedded model passes the stability gate, a slow cache drift fails it while
every chunk stays inside the per-chunk tolerance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from streamparity.backends.base import Backend
from streamparity.backends.registry import parse_backend_spec
from streamparity.contract.model import StabilityGate, Tolerance
from streamparity.drivers.closed_loop import run_closed_loop
from streamparity.judging.stability import StabilityResult, analyze, cache_fill_chunks, fit_trend
from streamparity.results.records import RunResult
from streamparity.session import ParitySession, SessionConfig
from streamparity.tools.drift_fault import DEFAULT_RATE, DriftBackend

REPO = Path(__file__).resolve().parents[2]
GATE = StabilityGate(max_slope_per_chunk=1e-7, slope_sigma=3.0, max_late_early_ratio=3.0, window=50,
                     max_slope_fraction_of_atol=None)  # the absolute limit only
TOL = Tolerance(atol=1e-4, rtol=1e-4, reason="test", warn_atol=2e-5, p99_max_abs=5e-5)


def noise(n: int, level: float = 1e-6, seed: int = 0) -> np.ndarray:
    return level * (1 + 0.2 * np.random.default_rng(seed).standard_normal(n))


def test_fit_trend_recovers_slope_and_stderr() -> None:
    x = np.arange(300, dtype=np.float64)
    y = 2e-6 + 3e-8 * x + 1e-7 * np.random.default_rng(1).standard_normal(300)
    slope, icpt, se = fit_trend(x, y)
    assert abs(slope - 3e-8) < 4 * se
    assert se == pytest.approx(1e-7 * np.sqrt(12 / 300**3), rel=0.2)
    assert icpt == pytest.approx(2e-6, abs=5e-8)


def test_flat_noise_passes() -> None:
    r = analyze(noise(300), GATE, TOL)
    assert r.verdict == "pass", r.describe()
    assert abs(r.t) < 4 and r.ratio < 1.5 and r.early is not None and r.early.n == 50


def test_slow_drift_under_tolerance_fails_on_slope() -> None:
    # 5e-7 per chunk: chunk 49 is at ~2.6e-5, far below atol 1e-4, but the trend is 5x the limit
    y = noise(300) + 5e-7 * np.arange(300)
    assert y[:50].max() < TOL.atol
    r = analyze(y, GATE, Tolerance(atol=1e-3, rtol=0, reason="wide", p99_max_abs=1e-3))
    assert r.verdict == "fail"
    assert any("significantly above the limit" in s for s in r.reasons), r.describe()
    text = r.describe("drift")
    assert "slope" in text and "±" in text and "limit 1e-07" in text and "late window" in text


def test_ratio_gate_and_near_zero_floor() -> None:
    # 1e-9 noise that "triples" is still noise: the early mean is floored at 1% of atol
    tiny = np.r_[np.full(50, 1e-9), np.full(50, 3.5e-9)]
    r = analyze(tiny, GATE, TOL)
    assert r.ratio < 0.01 and not any("late-window" in s for s in r.reasons), r.describe()
    # a real step to 4x a visible error fails the ratio gate even without a significant slope limit breach
    step = np.r_[np.full(50, 5e-6), np.full(50, 2e-5)]
    r = analyze(step, StabilityGate(max_slope_per_chunk=1.0, window=50, max_late_early_ratio=3.0), TOL)
    assert r.verdict == "fail" and any("late-window mean" in s for s in r.reasons), r.describe()


def test_non_finite_fails_and_names_chunks() -> None:
    y = noise(100)
    y[[17, 42]] = [np.nan, np.inf]
    r = analyze(y, GATE, TOL)
    assert r.verdict == "fail" and r.nonfinite_chunks == [17, 42]
    assert "17, 42" in r.reasons[0]


def test_bounds_max_and_p99() -> None:
    y = noise(100)
    y[60] = 2e-4
    r = analyze(y, GATE, TOL)
    assert r.verdict == "fail" and any("chunk 60 exceeds atol" in s for s in r.reasons), r.describe()
    y = noise(100)
    y[::10] = 6e-5  # 10% of the chunks above the P99 limit 5e-5, all under atol
    r = analyze(y, StabilityGate(max_slope_per_chunk=1.0, max_late_early_ratio=100), TOL)
    assert any("P99" in s for s in r.reasons), r.describe()


def test_sparse_chunks_and_short_series() -> None:
    ks = list(range(0, 300, 6))
    y = 1e-6 + 1e-6 * np.asarray(ks)  # 1e-6 per chunk on a sparse grid
    r = analyze(y, GATE, TOL, chunks=ks)
    assert r.slope == pytest.approx(1e-6) and r.verdict == "fail"
    r = analyze([1e-6, 2e-6], GATE, TOL)
    assert r.verdict == "pass" and "too few" in r.notes[0]
    with pytest.raises(ValueError):
        analyze([1.0, 2.0], GATE, TOL, chunks=[0])


def test_staircase_is_not_a_trend() -> None:
    """Cache errors behave like a sliding maximum (a frame lives ~12 chunks): the autocorrelation widens the
    standard error so that a few steps are not called significant growth."""
    y = np.repeat([1.0e-6, 1.2e-6, 1.4e-6, 1.4e-6], 12)[:48]
    naive = fit_trend(np.arange(48.0), y)
    r = analyze(y, GATE, TOL)
    assert r.lag1_autocorr > 0.5 and r.stderr > 2 * naive[2]
    assert r.verdict != "fail", r.describe()


def test_constant_and_exact_line() -> None:
    assert analyze(np.full(100, 1e-6), GATE, TOL).verdict == "pass"
    r = analyze(1e-6 + 2e-7 * np.arange(100), GATE, TOL)  # exact line: zero residual, infinitely significant
    assert r.verdict == "fail" and r.stderr < 1e-15


def test_a_trend_inside_the_limits_is_a_note_and_never_called_growth() -> None:
    """A significant slope that is not significantly above the contract's limit passes; its wording says it is
    within the contract rather than that the error "grows" (issue 12)."""
    y = noise(300, seed=3) + 5e-8 * np.arange(300)  # t >> 3, but 5e-8 < the 1e-7 limit
    r = analyze(y, GATE, Tolerance(atol=1e-3, rtol=0, reason="wide", p99_max_abs=1e-3))
    assert r.t > GATE.slope_sigma and r.verdict == "pass", r.describe()
    assert not r.reasons and any("within the contract" in n for n in r.notes)
    assert "grows" not in r.describe()


def test_cache_fill_up_is_left_out_of_the_trend() -> None:
    """While the attention cache fills, each chunk sees more context and its error rises: on a short selection
    that rise is not drift.  Points before ``settle_from`` leave the trend and windows but keep the bounds."""
    k = np.arange(21)  # chunks 0..20 of a cache that is full from chunk 12 on
    rise = 1e-6 + 4e-5 * (np.minimum(k, 12) / 12) ** 2 + 3e-7 * (-1.0) ** k
    assert analyze(rise, GATE, TOL).verdict == "fail"
    r = analyze(rise, GATE, TOL, settle_from=12, settle_reason="the cache is filling")
    assert r.verdict == "pass" and r.fit_from == 12 and r.first_chunk == 0, r.describe()
    assert any("before chunk 12" in n and "the cache is filling" in n for n in r.notes)
    assert "fitted on chunks 12..20" in r.describe() and r.max_abs == pytest.approx(rise.max())
    over = rise.copy()
    over[3] = 1.0  # a bound broken during the fill-up still fails
    assert analyze(over, GATE, TOL, settle_from=12).verdict == "fail"


def test_cache_fill_chunks_follows_the_contract_rule() -> None:
    from streamparity.contract.loading import load_contract

    tiny = load_contract(REPO / "contracts" / "tiny-parakeet.contract.json")
    rule = tiny.streaming.cache_len
    fill = cache_fill_chunks(tiny)
    assert rule.expected_at(fill)[0] == rule.max and rule.expected_at(fill - 1)[0] < rule.max


def test_slope_fraction_of_atol_raises_the_limit() -> None:
    g = StabilityGate(max_slope_per_chunk=1e-7, max_slope_fraction_of_atol=1e-3, max_late_early_ratio=1e9)
    fp16 = Tolerance(atol=2e-2, rtol=1e-2, reason="fp16")
    y = 2e-3 + 5e-6 * np.arange(300)  # 5e-6/chunk < 1e-3 * atol = 2e-5
    assert analyze(y, g, fp16).slope_limit == pytest.approx(2e-5)
    assert analyze(y, g, fp16).verdict != "fail"


# -- end to end on the embedded model ------------------------------------------------------------------
@pytest.fixture(scope="module")
def session() -> Iterator[ParitySession]:
    s = ParitySession(SessionConfig(contract=REPO / "contracts" / "tiny-parakeet.contract.json"))
    yield s
    s.close()


def _judge(session: ParitySession, backend: Backend) -> tuple[dict[str, StabilityResult], RunResult]:
    run = run_closed_loop(backend, session.contract, session.reference, keep_bundles=False)
    gate = session.contract.gates.stability
    results = {}
    for name in session.contract.compared_outputs():
        pts = [(c.chunk, c.metrics[name].max_abs) for c in run.chunks if name in c.metrics]
        results[name] = analyze([v for _, v in pts], gate, session.contract.tolerance(name, "fp32"),
                                chunks=[k for k, _ in pts])
    return results, run


def test_clean_closed_loop_passes_and_drift_fails(session: ParitySession) -> None:
    base = session.backend(parse_backend_spec("ort-cpu-fp32"))
    clean, _ = _judge(session, base)
    assert all(r.verdict == "pass" for r in clean.values()), {k: r.describe() for k, r in clean.items()}
    enc = session.encoded_name()
    assert abs(clean[enc].slope) < session.contract.gates.stability.max_slope_per_chunk / 10

    drifted, run = _judge(session, DriftBackend(base, DEFAULT_RATE))
    # every chunk -- the first 50 included -- is inside the per-chunk tolerance ...
    first50 = [c for c in run.chunks if c.chunk < 50]
    assert len(first50) == 50 and all(c.verdict != "fail" for c in first50)
    assert all(c.verdict != "fail" for c in run.chunks)
    # ... yet the stability gate fails on the encoder output and on the cache it corrupts
    assert drifted[enc].verdict == "fail", drifted[enc].describe()
    assert drifted["cache_last_channel_next"].verdict == "fail"
    assert drifted[enc].slope > 2 * session.contract.gates.stability.max_slope_per_chunk


def test_a_short_fp16_selection_is_not_called_drift(session: ParitySession) -> None:
    """FP16 over chunks 0..20 only: the cache-channel error rises while the cache fills (chunks 0..11), which
    a trend over all 21 chunks called "error grows ... state corruption accumulating"; judged from the first
    chunk with a full cache it passes, and says why the first chunks were left out."""
    from streamparity.judging.stability import judge_run_stability

    fp16 = session.backend(parse_backend_spec("ort-cpu-fp16"))
    run = run_closed_loop(fp16, session.contract, session.reference, upto=20, keep_bundles=False)
    judged = judge_run_stability(session.contract, "ort-cpu-fp16", "fp16", run.chunks)
    assert judged.verdict == "pass", judged.describe()
    cache = judged.results["cache_last_channel_next"]
    assert cache.fit_from == cache_fill_chunks(session.contract) and "filling" in " ".join(cache.notes)


def test_a_fill_up_longer_than_the_series_still_judges_a_trend() -> None:
    """Full size: the cache fills for 128 chunks and a reference holds 60; leaving the fill-up out would leave
    nothing to fit and the drift gate would judge no trend at all."""
    drift = 1e-6 + 5e-7 * np.arange(60) + 1e-8 * (-1.0) ** np.arange(60)
    r = analyze(drift, GATE, Tolerance(atol=1e-3, rtol=0, reason="wide", p99_max_abs=1e-3), settle_from=128,
                settle_reason="the cache fills")
    assert r.verdict == "fail" and r.fit_from == 0, r.describe()
    assert any("includes the fill-up" in n for n in r.notes)
