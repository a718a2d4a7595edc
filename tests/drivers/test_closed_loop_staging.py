"""Issue 13: the closed loop with the compared caches fetched into reused host buffers (pinned on a GPU) gives the
results of fresh host arrays, to the bit, while threads judge them late; a staging that ignored who still reads a
buffer would not (the control below shows the test sees it)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from streamparity.backends.base import Backend, Stream
from streamparity.backends.device_loop import DeviceLoopStream, HostBackendRunner
from streamparity.backends.memory import HostStaging, NumpyOps, _Slot
from streamparity.backends.ort import OrtBackend
from streamparity.contract.loading import load_contract
from streamparity.drivers import closed_loop
from streamparity.drivers.closed_loop import run_closed_loop
from streamparity.reference.reader import ReferenceFile
from streamparity.results.records import ChunkResult
from streamparity.tools.drift_fault import DriftBackend
from streamparity.tools.transfers import CountedDeviceBackend
from tests.conftest import TINY_CONTRACT, TINY_ONNX, TINY_REFERENCE
from tests.drivers.test_closed_loop_judging import _plain, _same


class _Careless(HostStaging[np.ndarray]):
    """The bug the leases prevent: one buffer, written again whoever still reads it."""

    def _take(self, nbytes: int) -> _Slot | None:
        if not self._slots:
            self._slots.append(_Slot(self.ops.alloc_host(1 << 20), 1 << 20))
        return self._slots[0]


class _Staged(CountedDeviceBackend):
    """The device loop on counting host buffers, its big caches fetched through `staging`."""

    def __init__(self, inner: Backend, careless: bool = False) -> None:
        super().__init__(inner)
        self.staging: HostStaging[np.ndarray] = _Careless(self.ops) if careless else HostStaging(self.ops)

    def open_stream(self, initial: Mapping[str, np.ndarray], *, fetch_caches: bool = True) -> Stream:
        self.ops.h2d_bytes = self.ops.d2h_bytes = self.ops.device_bytes = 0
        return DeviceLoopStream(self.contract, self.ops, HostBackendRunner(self.inner, NumpyOps()), self.pool,
                                initial, fetch_caches=fetch_caches, staging=self.staging)


@pytest.fixture
def slow_judging(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads judge a chunk with stored caches only after the loop has stepped (and fetched) further."""
    real = closed_loop.judge_chunk

    def late(*a: Any, **kw: Any) -> ChunkResult:
        if kw.get("unfetched") == ():
            time.sleep(0.004)
        return real(*a, **kw)

    monkeypatch.setattr(closed_loop, "judge_chunk", late)


@pytest.mark.parametrize("drift", [True, False], ids=["failing", "passing"])
@pytest.mark.parametrize("workers", [1, 3])
def test_staged_fetches_give_the_same_results_and_bundles(slow_judging: None, workers: int, drift: bool) -> None:
    contract = load_contract(TINY_CONTRACT)
    ref = ReferenceFile(TINY_REFERENCE)
    ort = OrtBackend(contract, TINY_ONNX)

    def backend() -> Backend:
        return DriftBackend(ort, 2e-3) if drift else ort

    fresh = run_closed_loop(CountedDeviceBackend(backend()), contract, ref, upto=70, judge_workers=0)
    staged_backend = _Staged(backend())
    staged = run_closed_loop(staged_backend, contract, ref, upto=70, judge_workers=workers)
    _same(fresh, staged)
    staging = staged_backend.staging
    assert staging.fallbacks == 0 and staging.fetches == 2 * 48
    failed = [c.chunk for c in staged.chunks[:48] if c.verdict == "fail"]
    assert bool(failed) == drift
    # a failing chunk's bundle keeps its fetched caches (and so their buffers); the others are given back
    assert staging.slots >= 2 * len(failed)
    if not drift:
        assert staging.slots <= 2 * (2 * workers + 3), "buffers were reused"


def test_the_control_a_careless_staging_is_caught(slow_judging: None) -> None:
    contract = load_contract(TINY_CONTRACT)
    ref = ReferenceFile(TINY_REFERENCE)
    ort = OrtBackend(contract, TINY_ONNX)
    fresh = run_closed_loop(CountedDeviceBackend(ort), contract, ref, upto=60, judge_workers=0)
    careless = run_closed_loop(_Staged(ort, careless=True), contract, ref, upto=60, judge_workers=2)
    differ = [x.chunk for x, y in zip(fresh.chunks, careless.chunks, strict=True) if _plain(x) != _plain(y)]
    assert differ and all(k < 48 for k in differ), differ
