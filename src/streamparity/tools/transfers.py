"""Bytes a closed loop moves per chunk, counted on the CPU.

A host backend (ONNX Runtime CPU) runs inside the shared device loop on :class:`CountingOps` buffers, so
every host<->device copy the loop would make on a GPU goes through the counter; the model's own writes of its
outputs (what a GPU runtime does on the device) go through a second, uncounted :class:`NumpyOps`.  Two loops
are counted: the parity closed loop (:func:`run_closed_loop`: compares with the reference, keeps what a
failure bundle needs) and the benchmark loop (audio + length in, compared outputs out, nothing else).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamparity.backends.base import Backend, Stream
from streamparity.backends.device_loop import BufferPool, DeviceLoopStream, HostBackendRunner
from streamparity.backends.memory import CountingOps, NumpyOps
from streamparity.contract.model import ROLE_AUDIO, ROLE_LENGTH, Contract
from streamparity.reference.reader import ReferenceFile


class CountedDeviceBackend(Backend):
    """`inner` run through the device loop on counting host buffers."""

    kind = "counted"

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner.contract, inner.precision, inner.device)
        self.inner = inner
        self.ops = CountingOps()
        self.pool: BufferPool[np.ndarray] = BufferPool(self.ops)
        self.keeps_previous_state = True

    @property
    def id(self) -> str:
        return self.inner.id

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.inner.run(feeds)

    def open_stream(self, initial: Mapping[str, np.ndarray], *, fetch_caches: bool = True) -> Stream:
        stream = DeviceLoopStream(self.contract, self.ops, HostBackendRunner(self.inner, NumpyOps()), self.pool,
                                  initial, fetch_caches=fetch_caches)
        if not self.keeps_previous_state:  # the loop as it was: a state snapshot before every chunk
            stream.keeps_previous_state = False
        self.ops.h2d_bytes = self.ops.d2h_bytes = self.ops.device_bytes = 0  # per-chunk figures only
        return stream

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


@dataclass(frozen=True)
class LoopBytes:
    chunks: int
    h2d: int
    d2h: int
    device: int

    def per_chunk(self) -> dict[str, float]:
        n = max(self.chunks, 1)
        return {"h2d": self.h2d / n, "d2h": self.d2h / n, "device_to_device": self.device / n}


def parity_loop_bytes(inner: Backend, contract: Contract, ref: ReferenceFile, *, upto: int,
                      snapshot_each: bool = False) -> LoopBytes:
    """Bytes of :func:`run_closed_loop` over chunks 0..upto (stream opening excluded); `snapshot_each`: the
    loop before issue 13 (a state snapshot before every chunk, every cache fetched on every chunk)."""
    from streamparity.drivers.closed_loop import run_closed_loop

    b = CountedDeviceBackend(inner)
    b.keeps_previous_state = not snapshot_each
    run = run_closed_loop(b, contract, ref, upto=upto, fetch_all_caches=snapshot_each)
    return LoopBytes(len(run.chunks), b.ops.h2d_bytes, b.ops.d2h_bytes, b.ops.device_bytes)


def benchmark_loop_bytes(inner: Backend, contract: Contract, ref: ReferenceFile, *, upto: int) -> LoopBytes:
    """Bytes of the latency benchmark's loop: steps only, caches left on the device."""
    from streamparity.drivers.closed_loop import initial_state

    b = CountedDeviceBackend(inner)
    audio, length = contract.input_by_role(ROLE_AUDIO).name, contract.input_by_role(ROLE_LENGTH).name
    stream = b.open_stream(initial_state(contract, ref.read(0)), fetch_caches=False)
    n = 0
    for rec in ref:
        if rec.chunk > upto:
            break
        stream.step(rec.inputs[audio], rec.inputs[length])
        n += 1
    stream.close()
    return LoopBytes(n, b.ops.h2d_bytes, b.ops.d2h_bytes, b.ops.device_bytes)

