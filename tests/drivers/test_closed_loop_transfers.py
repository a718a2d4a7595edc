"""Issue 13: the parity closed loop moves per chunk only what it compares; failure bundles are unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamparity.backends.base import HostStream
from streamparity.backends.device_loop import BufferPool, DeviceLoopStream, HostBackendRunner
from streamparity.backends.memory import NumpyOps
from streamparity.backends.ort import OrtBackend
from streamparity.contract.loading import load_contract
from streamparity.drivers.closed_loop import run_closed_loop
from streamparity.reference.reader import ReferenceFile
from streamparity.results.records import RunResult
from streamparity.tools.drift_fault import DriftBackend
from streamparity.tools.transfers import CountedDeviceBackend, benchmark_loop_bytes, parity_loop_bytes
from tests.backends.test_device_loop import STEP, _chunks, initial_caches, make_tiny_encoder
from tests.conftest import TINY_CONTRACT, TINY_ONNX, TINY_REFERENCE


@pytest.mark.parametrize("pad", [False, True], ids=["fixed", "dynamic_pad"])
@pytest.mark.parametrize("device", [False, True], ids=["host", "device_loop"])
def test_previous_state_and_completed_outputs_equal_the_old_copies(tmp_path: Path, pad: bool, device: bool) -> None:
    contract, onnx_path = make_tiny_encoder(tmp_path, pad=pad)
    backend = OrtBackend(contract, onnx_path)
    ops = NumpyOps()
    ref_stream = HostStream(backend, initial_caches(contract), fetch_caches=True)
    stream = (DeviceLoopStream(contract, ops, HostBackendRunner(backend, ops), BufferPool(ops),
                               initial_caches(contract), fetch_caches=False) if device
              else HostStream(backend, initial_caches(contract), fetch_caches=False))
    length = np.array([STEP], np.int64)
    for k, audio in enumerate(_chunks(8)):
        before = ref_stream.state_snapshot()
        want = ref_stream.step(audio, length)
        got = stream.step(audio, length, fetch_caches=k % 3 == 0)
        prev = stream.previous_state()
        assert prev is not None and list(prev) == list(before)
        for name, value in before.items():
            np.testing.assert_array_equal(prev[name], value, err_msg=f"chunk {k} state {name}")
        full = stream.complete_outputs(got)
        assert list(full) == list(want)
        for name, value in want.items():
            assert full[name].dtype == value.dtype
            np.testing.assert_array_equal(full[name], value, err_msg=f"chunk {k} output {name}")


def _bundles(run: RunResult) -> dict[int, tuple[Any, Any]]:
    return {c.chunk: (c.bundle_inputs, c.bundle_outputs) for c in run.chunks if c.verdict == "fail"}


@pytest.mark.parametrize("device", [False, True], ids=["host", "device_loop"])
def test_failure_bundles_are_identical_to_the_snapshot_loop(device: bool) -> None:
    contract = load_contract(TINY_CONTRACT)
    ref = ReferenceFile(TINY_REFERENCE)
    ort = OrtBackend(contract, TINY_ONNX)
    inner = DriftBackend(ort, 2e-4)
    new_b = CountedDeviceBackend(inner) if device else inner
    new = _bundles(run_closed_loop(new_b, contract, ref, upto=60))
    inner = DriftBackend(ort, 2e-4)  # its drift restarts
    old_b = CountedDeviceBackend(inner) if device else inner
    if device:
        assert isinstance(old_b, CountedDeviceBackend)
        old_b.keeps_previous_state = False
    old = _bundles(run_closed_loop(old_b, contract, ref, upto=60, fetch_all_caches=True))
    assert new and sorted(new) == sorted(old)
    assert any(k >= 48 for k in new), "some failing chunks must lie where the reference stores no caches"
    for k, (ins, outs) in new.items():
        oins, oouts = old[k]
        assert ins is not None and outs is not None and oins is not None and oouts is not None
        assert list(ins) == list(oins) and list(outs) == list(oouts)
        for name in oins:
            np.testing.assert_array_equal(ins[name], oins[name], err_msg=f"chunk {k} input {name}")
        for name in oouts:
            np.testing.assert_array_equal(outs[name], oouts[name], err_msg=f"chunk {k} output {name}")


def test_the_parity_loop_moves_no_more_than_the_benchmark_loop_where_no_caches_are_stored() -> None:
    contract = load_contract(TINY_CONTRACT)
    ref = ReferenceFile(TINY_REFERENCE)
    cached = [k for k in ref.chunk_ids if ref.meta(k).get("has_caches", True)]
    assert cached and max(cached) < 60
    backend = OrtBackend(contract, TINY_ONNX)
    lo, hi = max(cached) + 1, max(cached) + 40
    bench = benchmark_loop_bytes(backend, contract, ref, upto=hi)
    parity = parity_loop_bytes(backend, contract, ref, upto=hi)
    before = parity_loop_bytes(backend, contract, ref, upto=hi, snapshot_each=True)
    assert parity.h2d == bench.h2d  # audio + length only
    assert bench.d2h < parity.d2h < before.d2h / 3
    # beyond the cached chunks the parity loop copies back exactly what the benchmark loop does
    parity_lo = parity_loop_bytes(backend, contract, ref, upto=lo - 1)
    bench_lo = benchmark_loop_bytes(backend, contract, ref, upto=lo - 1)
    assert parity.d2h - parity_lo.d2h == bench.d2h - bench_lo.d2h
