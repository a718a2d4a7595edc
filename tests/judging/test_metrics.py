"""Failure messages point at the right element: full-tensor indices for caches compared on their valid
frames, a relative difference that near-zero expected values cannot blow up, and NaN named as such."""

from __future__ import annotations

import numpy as np
import pytest

from streamparity.contract.loading import load_contract
from streamparity.contract.model import ROLE_CACHE_CHANNEL
from streamparity.judging.metrics import compare_arrays, compare_output
from streamparity.judging.wording import describe_failure
from tests.conftest import TINY_CONTRACT


def _cache_channel_name() -> str:
    c = load_contract(TINY_CONTRACT)
    return next(s.name for s in c.outputs if s.role == ROLE_CACHE_CHANNEL)


def test_cache_index_points_into_the_full_tensor() -> None:
    c = load_contract(TINY_CONTRACT)
    name = _cache_channel_name()
    shape = c.concrete_shape(c.output(name), {"B": 1})
    rng = np.random.default_rng(0)
    expected = rng.standard_normal(shape).astype(np.float32)
    actual = expected.copy()
    frames = shape[2]
    where = (0, 1, frames - 3, 5)  # inside the valid region (the last 8 frames)
    actual[where] += 0.5
    m = compare_output(c, name, actual, expected, chunk=3, precision="fp32", cache_len=8)
    assert m.worst_index == where and m.rel_index == where
    assert m.worst_actual == float(actual[where]) and m.worst_expected == float(expected[where])
    text = describe_failure(m, c.tolerance(name, "fp32"), what="x")
    assert f"at index {where}" in text and f"frames {frames - 8}..{frames - 1} of {frames}" in text


def test_relative_difference_is_floored_at_atol() -> None:
    c = load_contract(TINY_CONTRACT)
    name = "outputs"
    shape = c.concrete_shape(c.output(name), {"B": 1})
    expected = np.full(shape, 1e-30, dtype=np.float32)
    actual = expected.copy()
    actual.reshape(-1)[7] = 1e-3
    m = compare_output(c, name, actual, expected, chunk=0, precision="fp32")
    atol = c.tolerance(name, "fp32").atol
    assert m.max_rel < 1e-3 / atol * 1.001  # not 1e27


def test_nan_is_named_not_shown_as_inf() -> None:
    c = load_contract(TINY_CONTRACT)
    shape = c.concrete_shape(c.output("outputs"), {"B": 1})
    expected = np.zeros(shape, dtype=np.float32)
    actual = expected.copy()
    actual[0, 3, 1] = np.nan
    m = compare_output(c, "outputs", actual, expected, chunk=0, precision="fp32")
    text = describe_failure(m, c.tolerance("outputs", "fp32"), what="x")
    assert "non-finite elements: 1 (first at index (0, 3, 1): actual nan" in text
    assert "greatest absolute difference: not finite" in text and " inf " not in text


@pytest.mark.parametrize("rtol", [1e-2, 0.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", [(1,), (3,), (1, 64, 2), (1, 3, 24, 64), (2, 5, 7, 3), (1, 4, 300, 256)])
def test_float32_path_agrees_with_the_float64_path(dtype, shape, rtol) -> None:
    """The fast path (finite inputs) reports exactly what the general path does; the largest shape takes
    the sampled percentiles, and is compared as a view (a cache's valid frames)."""
    from unittest import mock

    from streamparity.judging import metrics

    rng = np.random.default_rng(sum(shape))
    e = rng.standard_normal(shape).astype(dtype)
    a = (e + rng.standard_normal(shape) * 1e-3).astype(dtype)
    a.reshape(-1)[-1] += dtype(0.5)
    if len(shape) == 4 and shape[2] > 100:
        a, e = a[:, :, 44:, :], e[:, :, 44:, :]
    fast = compare_arrays(a, e, output="x", chunk=1, atol=1e-3, rtol=rtol, offset=(0,) * len(shape))
    with mock.patch.object(metrics, "_compare_finite", lambda *args, **kw: None):
        slow = compare_arrays(a, e, output="x", chunk=1, atol=1e-3, rtol=rtol, offset=(0,) * len(shape))
    _same_figures(fast, slow)
    bad = a.copy()
    bad.reshape(-1)[0] = np.nan  # not finite: the float64 path judges it, and names it
    assert compare_arrays(bad, e, output="x", chunk=1, atol=1e-3, rtol=1e-2).nonfinite == 1


def _same_figures(fast, slow) -> None:
    """Every figure to the bit, but the mean: the blockwise path adds block sums (last bits may differ)."""
    for name in ("max_abs", "max_rel", "p95_abs", "p99_abs", "worst_actual", "worst_expected"):
        got, want = getattr(fast, name), getattr(slow, name)
        assert got == want or (np.isnan(got) and np.isnan(want)), name
    assert fast.mean_abs == pytest.approx(slow.mean_abs, rel=1e-12, abs=0.0)
    for name in ("mismatches", "nonfinite", "worst_index", "rel_index", "numel"):
        assert getattr(fast, name) == getattr(slow, name), name


@pytest.mark.parametrize("case", ["ties_across_blocks", "exact", "mostly_exact", "one_block_wrong", "long_1d",
                                  "odd_view", "sorted_errors", "nan_late", "inf_expected", "exact_but_last_block",
                                  "exact_with_the_same_nan", "exact_but_signed_zero", "exact_strided_view",
                                  "exact_view"])
def test_blockwise_comparison_agrees_with_the_float64_path(case: str) -> None:
    """Large arrays are compared block by block: the same figures whatever the data's structure (the sample's
    threshold misjudged, equal maxima in several blocks, blocks that do not divide an axis, a view)."""
    from unittest import mock

    from streamparity.judging import metrics

    rng = np.random.default_rng(7)
    shape = (1, 6, 256, 128)
    e = rng.standard_normal(shape).astype(np.float32)
    a = (e + rng.standard_normal(shape).astype(np.float32) * 1e-4).astype(np.float32)
    if case == "ties_across_blocks":
        a = e.copy()
        for where in [(0, 1, 3, 5), (0, 4, 200, 7)]:  # the same greatest difference, in two blocks
            e[where], a[where] = 0.5, 1.5
    elif case == "exact":
        a = e.copy()  # every difference 0: the first index, percentiles 0
    elif case == "mostly_exact":  # 3% of the elements differ: p95 is 0, p99 is not
        a = e.copy()
        where = rng.random(shape) < 0.03
        a[where] += rng.standard_normal(int(where.sum())).astype(np.float32) * 1e-3
    elif case == "one_block_wrong":
        a = e.copy()
        a[0, 5, 100:140] += rng.random((40, 128)).astype(np.float32)  # errors in one region only
    elif case == "long_1d":
        e, a = e.reshape(-1), a.reshape(-1)
    elif case == "odd_view":
        e, a = e[:, :, 37:, 1:], a[:, :, 37:, 1:]  # 219 x 127: blocks do not divide the axes
    elif case == "sorted_errors":
        a = (e + np.linspace(0, 1, e.size, dtype=np.float32).reshape(shape)).astype(np.float32)
    elif case == "nan_late":
        a[0, 5, 255, 127] = np.nan
    elif case == "inf_expected":
        e[0, 3, 0, 0] = np.inf
    elif case == "exact_but_last_block":  # leading blocks equal to the bit, then one that is not
        a = e.copy()
        a[0, 5, 250, 3] += 0.25
    elif case == "exact_with_the_same_nan":  # equal bits, but a NaN is still a mismatch
        e[0, 2, 9, 9] = np.nan
        a = e.copy()
    elif case == "exact_but_signed_zero":  # -0.0 and 0.0: different bits, a difference of 0
        e[0, 0, 0, :] = 0.0
        a = e.copy()
        a[0, 0, 0, :] = -0.0
    elif case == "exact_strided_view":  # no contiguous last axis: compared in full
        e = rng.standard_normal((1, 12, 256, 128)).astype(np.float32)
        a = e.copy()
        e, a = e[..., ::2], a[..., ::2]
    elif case == "exact_view":  # a cache's valid frames: blocks equal to the bit inside a view
        e = rng.standard_normal((1, 12, 256, 128)).astype(np.float32)
        a = e.copy()
        e, a = e[:, :, 100:, :], a[:, :, 100:, :]
    assert a.size >= metrics._SAMPLED_FROM
    fast = compare_arrays(a, e, output="x", chunk=1, atol=1e-3, rtol=1e-2, offset=(0,) * a.ndim)
    with mock.patch.object(metrics, "_compare_finite", lambda *args, **kw: None):
        slow = compare_arrays(a, e, output="x", chunk=1, atol=1e-3, rtol=1e-2, offset=(0,) * a.ndim)
    _same_figures(fast, slow)
    if case == "ties_across_blocks":
        assert fast.worst_index == (0, 1, 3, 5)


def test_blocks_cover_the_array_once_in_order() -> None:
    from streamparity.judging.metrics import _BLOCK, _blocks

    for shape in [(1, 24, 256, 1024), (3 * _BLOCK + 5,), (1, 7, 219, 127), (2, 3), (5, 1, _BLOCK * 2 + 1)]:
        seen = np.concatenate([np.arange(int(np.prod(shape))).reshape(shape)[ix].reshape(-1) for ix in _blocks(shape)])
        assert seen.tolist() == list(range(int(np.prod(shape)))), shape
        assert all(np.zeros(shape)[ix].size <= _BLOCK for ix in _blocks(shape))


@pytest.mark.parametrize("kind", ["normal", "mostly_zero", "all_zero", "sorted", "reversed", "periodic", "ties",
                                  "one_hot_block"])
@pytest.mark.parametrize("n", [1000, 131_072, 1_000_003])
def test_percentiles_of_large_arrays_are_numpys_to_the_bit(kind: str, n: int) -> None:
    """The sampled threshold either holds (exact ranks, shifted) or the whole array is sorted: never an
    approximation, whatever the data's structure (the differences of `data` from zeros are `data` itself)."""
    rng = np.random.default_rng(n)
    data = {
        "normal": lambda: np.abs(rng.standard_normal(n)),
        "mostly_zero": lambda: np.where(rng.random(n) < 0.97, 0.0, rng.random(n)),
        "all_zero": lambda: np.zeros(n),
        "sorted": lambda: np.sort(rng.random(n)),
        "reversed": lambda: np.sort(rng.random(n))[::-1].copy(),
        "periodic": lambda: np.resize(np.r_[np.zeros(1000), np.ones(24)], n),
        "ties": lambda: rng.integers(0, 3, n).astype(np.float64),
        "one_hot_block": lambda: np.r_[np.zeros(n - n // 50), rng.random(n // 50)],  # errors in one region
    }[kind]()
    want = [float(np.percentile(data, 95)), float(np.percentile(data, 99))]
    m = compare_arrays(data, np.zeros(n), output="x", chunk=0, atol=1e-3, rtol=0.0)
    assert [m.p95_abs, m.p99_abs] == want
