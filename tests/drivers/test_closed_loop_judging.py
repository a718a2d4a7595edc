"""Issue 13: judging the chunks with stored caches in threads gives the same results, in the same order."""

from __future__ import annotations

import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamparity.backends.ort import OrtBackend
from streamparity.contract.loading import load_contract
from streamparity.drivers.closed_loop import default_judge_workers, run_closed_loop
from streamparity.reference.reader import ReferenceFile
from streamparity.results.records import ChunkResult, RunResult
from streamparity.tools.drift_fault import DriftBackend
from streamparity.tools.transfers import CountedDeviceBackend
from tests.conftest import TINY_CONTRACT, TINY_ONNX, TINY_REFERENCE

_TIMING = {"step_ms"}


def _plain(c: ChunkResult) -> dict[str, Any]:
    d = {k: v for k, v in vars(c).items() if k not in _TIMING and not k.startswith("bundle_") and k != "encoded"}
    d["metrics"] = {n: asdict(m) for n, m in c.metrics.items()}
    d["violations"] = [repr(v) for v in c.violations]
    return d


def _same(a: RunResult, b: RunResult) -> None:
    assert [c.chunk for c in a.chunks] == [c.chunk for c in b.chunks]
    for x, y in zip(a.chunks, b.chunks, strict=True):
        assert _plain(x) == _plain(y), f"chunk {x.chunk}"
        assert x.step_ms is not None and y.step_ms is not None
        for ours, theirs in ((x.encoded, y.encoded), (x.bundle_inputs, y.bundle_inputs),
                             (x.bundle_outputs, y.bundle_outputs)):
            assert (ours is None) == (theirs is None), f"chunk {x.chunk}"
            if isinstance(ours, dict) and isinstance(theirs, dict):
                assert list(ours) == list(theirs), f"chunk {x.chunk}"
                for name in ours:
                    np.testing.assert_array_equal(ours[name], theirs[name], err_msg=f"chunk {x.chunk} {name}")
            elif ours is not None:
                np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("read_ahead", [False, True], ids=["inline_reads", "read_ahead"])
@pytest.mark.parametrize("device", [False, True], ids=["host", "device_loop"])
@pytest.mark.parametrize("workers", [1, 3])
def test_threaded_judging_gives_the_same_results_and_bundles(device: bool, workers: int, read_ahead: bool,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from streamparity.reference import reader

    if read_ahead:  # every line counts as large: read ahead in threads, into per-thread buffers
        monkeypatch.setattr(reader, "_REUSE_BYTES", 1)
    contract = load_contract(TINY_CONTRACT)
    ref = ReferenceFile(TINY_REFERENCE)
    ort = OrtBackend(contract, TINY_ONNX)

    def backend() -> Any:
        inner = DriftBackend(ort, 2e-3)  # fails chunks with stored caches and chunks without
        return CountedDeviceBackend(inner) if device else inner

    assert ref.read_ahead is read_ahead
    inline = run_closed_loop(backend(), contract, ref, upto=70, judge_workers=0)
    threaded = run_closed_loop(backend(), contract, ref, upto=70, judge_workers=workers)
    failed = [c.chunk for c in inline.chunks if c.verdict == "fail"]
    stored = [k for k in ref.chunk_ids if ref.meta(k).get("has_caches", True)]
    assert any(k in stored for k in failed) and any(k not in stored for k in failed)
    assert all(c.bundle_inputs for c in threaded.chunks if c.verdict == "fail")
    _same(inline, threaded)


@pytest.mark.parametrize("failing", [(5,), (46, 48)], ids=["one", "threaded-then-inline"])
def test_a_judging_error_is_raised_not_lost_and_in_chunk_order(monkeypatch: pytest.MonkeyPatch,
                                                               failing: tuple[int, ...]) -> None:
    """As judging inline: the first failing chunk's error, raised before the loop goes far past it (46 is judged
    in a thread, 48 is the first chunk without stored caches, judged inline)."""
    from streamparity.drivers import closed_loop

    contract = load_contract(TINY_CONTRACT)
    ref = ReferenceFile(TINY_REFERENCE)
    real = closed_loop.judge_chunk
    steps: list[int] = []

    def broken(*a: Any, **kw: Any) -> ChunkResult:
        if a[1].chunk in failing:
            raise RuntimeError(f"judging chunk {a[1].chunk} broke")
        return real(*a, **kw)

    monkeypatch.setattr(closed_loop, "judge_chunk", broken)
    for workers in (0, 2):
        steps.clear()
        with pytest.raises(RuntimeError, match=f"judging chunk {failing[0]} broke"):
            run_closed_loop(OrtBackend(contract, TINY_ONNX), contract, ref, upto=80, judge_workers=workers,
                            on_step=lambda k, ms: steps.append(k))
        assert max(steps) <= max(failing[0] + 2 * workers + 1, 48), (workers, max(steps))


def test_a_broken_stream_gives_its_kept_state_back() -> None:
    from streamparity.backends.device_loop import DeviceLoopStream

    contract = load_contract(TINY_CONTRACT)
    ref = ReferenceFile(TINY_REFERENCE)
    ort = OrtBackend(contract, TINY_ONNX)
    calls = [0]
    real_run = ort.run

    def run(feeds: Any) -> Any:
        calls[0] += 1
        if calls[0] == 11:
            raise RuntimeError("runtime died")
        return real_run(feeds)

    ort.run = run  # type: ignore[method-assign]
    backend = CountedDeviceBackend(ort)
    opened: list[DeviceLoopStream[Any]] = []
    real_open = backend.open_stream

    def spy(*a: Any, **kw: Any) -> Any:
        s = real_open(*a, **kw)
        opened.append(s)
        return s

    backend.open_stream = spy  # type: ignore[method-assign]
    res = run_closed_loop(backend, contract, ref, upto=20, judge_workers=2)
    assert res.chunks[10].error and "runtime died" in res.chunks[10].error
    stream = opened[0]
    assert stream._kept_slots and sorted(stream._kept_free) == list(range(stream._kept_slots))


def test_cpu_backends_judge_inline() -> None:
    contract = load_contract(TINY_CONTRACT)
    assert default_judge_workers(OrtBackend(contract, TINY_ONNX)) == 0


def test_a_kept_state_stays_on_the_device_until_asked_for(tmp_path: Path) -> None:
    from streamparity.backends.device_loop import BufferPool, DeviceLoopStream, HostBackendRunner
    from streamparity.backends.memory import CountingOps
    from tests.backends.test_device_loop import STEP, _chunks, initial_caches, make_tiny_encoder

    contract, onnx_path = make_tiny_encoder(tmp_path)
    backend = OrtBackend(contract, onnx_path)
    ops = CountingOps()
    pool: BufferPool[np.ndarray] = BufferPool(ops)
    stream = DeviceLoopStream(contract, ops, HostBackendRunner(backend, ops), pool, initial_caches(contract),
                              fetch_caches=False)
    length = np.array([STEP], np.int64)
    chunks = iter(_chunks(4))
    stream.step(next(chunks), length)
    want = stream.state_snapshot()
    before = ops.d2h_bytes
    kept = stream.keep_state()
    assert ops.d2h_bytes == before, "keeping a state copies nothing to the host"
    stream.step(next(chunks), length)
    stream.step(next(chunks), length)  # the ping-pong halves are both overwritten by now
    got = stream.kept_state(kept)
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    size = pool.total_bytes
    stream.release_state(kept)
    stream.release_state(stream.keep_state())
    assert pool.total_bytes == size, "a released slot is reused"


@pytest.mark.parametrize("workers", [0, 2])
def test_each_chunk_is_read_once_and_the_reads_start_before_the_stream_opens(
        workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunk 0 is the record read whole for the initial state; the others are read ahead from before the stream
    opens (every line beside judging threads, large ones otherwise)."""
    from streamparity.reference import reader

    monkeypatch.setattr(reader, "_REUSE_BYTES", 1)  # every line counts as large: read ahead
    contract = load_contract(TINY_CONTRACT)
    ref = ReferenceFile(TINY_REFERENCE, cache_bytes=0)
    reads: list[int] = []
    real_read = ref.read
    monkeypatch.setattr(ref, "read", lambda k, **how: reads.append(k) or real_read(k, **how))
    backend = CountedDeviceBackend(OrtBackend(contract, TINY_ONNX))
    real_open = backend.open_stream
    read_before_open: list[int] = []

    def opening(*a: Any, **kw: Any) -> Any:
        for _ in range(200):  # the read-ahead's threads have started by now, or soon
            if len(reads) > 1:
                break
            threading.Event().wait(0.01)
        read_before_open.extend(reads)
        return real_open(*a, **kw)

    monkeypatch.setattr(backend, "open_stream", opening)
    run = run_closed_loop(backend, contract, ref, upto=20, judge_workers=workers)
    assert [c.chunk for c in run.chunks] == list(range(21))
    assert sorted(reads) == list(range(21))  # chunk 0 once, not again by the loop
    assert len(read_before_open) > 1 and read_before_open[0] == 0
