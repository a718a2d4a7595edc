"""Issue 13: the reused host buffers the device loop fetches its big caches into (pinned on a GPU), on the CPU.

`HostStaging` over `NumpyOps` runs the same slot logic as over cuda-python or PyTorch: a buffer is written again
only once no array made from its last fetch is left, so a judging thread never sees its bytes change.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamparity.backends.base import HostStream
from streamparity.backends.device_loop import BufferPool, DeviceLoopStream, HostBackendRunner
from streamparity.backends.memory import CountingOps, HostStaging, NumpyOps
from streamparity.backends.ort import OrtBackend
from tests.backends.test_device_loop import STEP, _chunks, initial_caches, make_tiny_encoder


def _on_device(ops: NumpyOps, a: np.ndarray) -> np.ndarray:
    buf = ops.alloc(a.nbytes)
    ops.h2d(buf, a)
    return buf


def _data(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def _cache(seed: int, shape: tuple[int, ...] = (2, 3, 4)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_a_fetch_gives_the_device_bytes_and_reuses_its_buffer_once_dropped() -> None:
    ops = NumpyOps()
    staging: HostStaging[np.ndarray] = HostStaging(ops)
    a = _cache(0)
    src = _on_device(ops, a)
    got = staging.fetch(src, a.shape, a.dtype)
    assert got.dtype == a.dtype and got.shape == a.shape and got.flags.c_contiguous and got.flags.writeable
    assert got.tobytes() == a.tobytes()
    where = _data(got)
    del got
    again = staging.fetch(src, a.shape, np.dtype(np.float32))
    assert _data(again) == where and again.tobytes() == a.tobytes()
    assert (staging.slots, staging.allocations, staging.fetches, staging.fallbacks) == (1, 1, 2, 0)


def test_a_buffer_is_not_written_while_a_view_of_its_fetch_lives() -> None:
    ops = NumpyOps()
    staging: HostStaging[np.ndarray] = HostStaging(ops)
    a, b, c = _cache(1), _cache(2), _cache(3)
    first = staging.fetch(_on_device(ops, a), a.shape, a.dtype)
    held = {"cache": first[0, 1:].reshape(-1)}  # a view of a view, in a dict, as a bundle keeps it
    copied = first.copy()
    del first
    second = staging.fetch(_on_device(ops, b), b.shape, b.dtype)
    assert not np.shares_memory(second, held["cache"])
    assert held["cache"].tobytes() == a[0, 1:].tobytes() and second.tobytes() == b.tobytes()
    assert staging.slots == 2
    del second, copied  # a copy holds nothing
    third = staging.fetch(_on_device(ops, c), c.shape, c.dtype)
    assert staging.slots == 2 and held["cache"].tobytes() == a[0, 1:].tobytes()
    del held
    for seed in range(4, 10):  # two buffers are enough while at most one fetch is held
        third = staging.fetch(_on_device(ops, _cache(seed)), c.shape, c.dtype)
        assert third.tobytes() == _cache(seed).tobytes()
    assert staging.slots == 2


def test_threads_reading_fetched_caches_see_exactly_the_fetched_bytes() -> None:
    """As the closed loop judges: the loop fetches on, threads read the earlier fetches later."""
    ops = NumpyOps()
    staging: HostStaging[np.ndarray] = HostStaging(ops)
    shape = (4, 64, 32)
    devices = [_on_device(ops, _cache(k, shape)) for k in range(40)]
    rng = np.random.default_rng(7)
    lag = 6
    pending: list[Future[bool]] = []
    errors: list[str] = []

    def judge(k: int, got: np.ndarray, delay: float) -> bool:
        time.sleep(delay)
        if got.tobytes() != _cache(k, shape).tobytes():
            errors.append(f"chunk {k}: its fetched bytes changed")
        return True

    with ThreadPoolExecutor(max_workers=3) as pool:
        for k, src in enumerate(devices):
            got = staging.fetch(src, shape, np.dtype(np.float32))
            pending.append(pool.submit(judge, k, got, float(rng.uniform(0, 0.004))))
            del got
            while len(pending) > lag:
                pending.pop(0).result()
        for f in pending:
            f.result()
    assert not errors, errors
    assert staging.fallbacks == 0 and staging.slots <= lag + 3 < len(devices)


def test_past_its_limit_a_staging_falls_back_to_fresh_arrays() -> None:
    ops = NumpyOps()
    a = _cache(11)
    staging: HostStaging[np.ndarray] = HostStaging(ops, max_bytes=a.nbytes)
    src = _on_device(ops, a)
    first = staging.fetch(src, a.shape, a.dtype)
    second = staging.fetch(src, a.shape, a.dtype)  # the one buffer is held: a fresh array
    assert second.flags.owndata and second.tobytes() == a.tobytes() and not np.shares_memory(first, second)
    assert (staging.slots, staging.fallbacks) == (1, 1)
    del first, second
    big = _cache(12, (4, 3, 4))
    staging.max_bytes = big.nbytes
    got = staging.fetch(_on_device(ops, big), big.shape, big.dtype)  # the small free buffer is given back
    assert got.tobytes() == big.tobytes() and staging.slots == 1 and staging.total_bytes == big.nbytes
    empty = staging.fetch(src, (0, 4), np.dtype(np.float32))
    assert empty.shape == (0, 4)


def test_counting_ops_count_staged_fetches() -> None:
    ops = CountingOps()
    a = _cache(13)
    got = HostStaging(ops).fetch(_on_device(ops, a), a.shape, a.dtype)
    assert ops.d2h_bytes == a.nbytes and got.tobytes() == a.tobytes()


def test_torch_ops_stage_into_host_tensors() -> None:
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    from streamparity.backends.memory import TorchOps

    ops = TorchOps("cpu")  # pinned beside a CUDA device
    a = _cache(14)
    src = ops.alloc(a.nbytes)
    ops.h2d(src, a)
    staging: HostStaging[Any] = HostStaging(ops)
    first = staging.fetch(src, a.shape, a.dtype)
    buf = staging._slots[0].buffer
    assert isinstance(buf.handle, torch.Tensor) and first.tobytes() == a.tobytes()
    staging.free_all()
    del buf
    assert first.tobytes() == a.tobytes()  # the array keeps the forgotten tensor's memory


def test_the_staging_must_copy_on_the_streams_own_ops(tmp_path: Path) -> None:
    contract, onnx_path = make_tiny_encoder(tmp_path)
    ops = NumpyOps()
    with pytest.raises(ValueError, match="own device ops"):
        DeviceLoopStream(contract, ops, HostBackendRunner(OrtBackend(contract, onnx_path), ops), BufferPool(ops),
                         initial_caches(contract), fetch_caches=True, staging=HostStaging(NumpyOps()))


@pytest.mark.parametrize("pad", [False, True], ids=["fixed", "dynamic_pad"])
def test_a_staged_device_loop_equals_host_stream_and_reuses_its_buffers(tmp_path: Path, pad: bool) -> None:
    contract, onnx_path = make_tiny_encoder(tmp_path, pad=pad)
    backend = OrtBackend(contract, onnx_path)
    ops = NumpyOps()
    staging: HostStaging[np.ndarray] = HostStaging(ops)
    host = HostStream(backend, initial_caches(contract), fetch_caches=True)
    dev = DeviceLoopStream(contract, ops, HostBackendRunner(backend, ops), BufferPool(ops), initial_caches(contract),
                           fetch_caches=True, staging=staging)
    length = np.array([STEP], np.int64)
    kept: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = []
    for audio in _chunks(10, seed=3):
        want = host.step(audio, length)
        kept.append(({k: v.copy() for k, v in want.items()}, dev.step(audio, length)))
    big = sorted(dev.big_caches)
    assert staging.fetches == 10 * len(big) and staging.slots == 10 * len(big)  # every fetch held: new buffers
    for k, (want, got) in enumerate(kept):  # none overwritten by a later chunk's fetch
        assert list(got) == list(want)
        for name in want:
            assert got[name].dtype == want[name].dtype
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"chunk {k} {name}")
    kept.clear()
    for audio in _chunks(6, seed=4):
        out = dev.step(audio, length)
        np.testing.assert_array_equal(out[big[0]], host.step(audio, length)[big[0]])
    assert staging.slots == 10 * len(big) and staging.allocations == 10 * len(big), "released buffers are reused"
