"""Paired timing: a candidate and a baseline stream stepped in the same process, on the same device, over
the same chunks, in alternating blocks, so that machine drift and neighbours' load hit both alike.

Each model's stream is warmed up, then every round times one block of ``block_steps`` closed-loop steps of
each model; the order alternates per round (A B, B A, A B, ...: ABBA), so a steady drift within a round
favours neither.  Each step is timed on the host with ``time.perf_counter``, followed by the backend's
synchronize (all queued device work is included); a block's time is the MEDIAN of its step times (a
preempted step on a shared runner does not move it; the block mean is kept for reference).  On
device-resident streams CUDA events around the compute calls give the block's mean device compute per step
too.  The garbage collector is off while timing.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from streamparity.backends.base import Backend, BackendSpec, Stream
from streamparity.contract.model import ROLE_AUDIO, ROLE_LENGTH, Contract
from streamparity.drivers.closed_loop import initial_state
from streamparity.drivers.device_events import DeviceEventTimer, host_sync, unavailable_reason
from streamparity.reference.reader import ReferenceFile


@dataclass
class TimedStream:
    """One model's closed-loop stream as deployed (caches stay where the backend keeps them), cycling over
    the same chunk feeds as its partner."""

    name: str
    stream: Stream
    feeds: list[tuple[np.ndarray, np.ndarray]]
    sync: Callable[[], None]
    timer: DeviceEventTimer | None = None
    _i: int = 0

    def step(self) -> None:
        a, n = self.feeds[self._i % len(self.feeds)]
        self._i += 1
        self.stream.step(a, n)
        self.sync()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.remove()
        self.stream.close()


def open_timed(name: str, backend: Backend, spec: BackendSpec, contract: Contract, reference: ReferenceFile,
               chunk_ids: Sequence[int], *, device_events: bool) -> TimedStream:
    """A stream of `backend` fed the reference's `chunk_ids` in a loop; device events where they can run."""
    recs = [reference.read(k) for k in chunk_ids]
    audio, length = contract.input_by_role(ROLE_AUDIO).name, contract.input_by_role(ROLE_LENGTH).name
    feeds = [(r.inputs[audio], r.inputs[length]) for r in recs]
    stream = backend.open_stream(initial_state(contract, recs[0]), fetch_caches=False)
    timer = DeviceEventTimer(stream) if device_events and unavailable_reason(stream) is None else None
    return TimedStream(name, stream, feeds, host_sync(spec), timer)


@dataclass
class PairedTiming:
    """Per-round block times, ms per step: block medians (judged) and means; ``*_compute_ms`` (mean device
    compute per step) only where device events ran on both streams."""

    candidate_ms: list[float] = field(default_factory=list)
    baseline_ms: list[float] = field(default_factory=list)
    candidate_mean_ms: list[float] = field(default_factory=list)
    baseline_mean_ms: list[float] = field(default_factory=list)
    candidate_compute_ms: list[float] | None = None
    baseline_compute_ms: list[float] | None = None

    def add(self, is_candidate: bool, steps_ms: list[float], compute_ms: float | None) -> None:
        (self.candidate_ms if is_candidate else self.baseline_ms).append(statistics.median(steps_ms))
        (self.candidate_mean_ms if is_candidate else self.baseline_mean_ms).append(statistics.fmean(steps_ms))
        target = self.candidate_compute_ms if is_candidate else self.baseline_compute_ms
        if target is not None and compute_ms is not None:
            target.append(compute_ms)


def _block(arm: TimedStream, steps: int) -> tuple[list[float], float | None]:
    if arm.timer is not None:
        arm.timer.read()  # drop events of earlier steps
    clock = time.perf_counter
    times = []
    for _ in range(steps):
        t0 = clock()
        arm.step()
        times.append((clock() - t0) * 1e3)
    compute = arm.timer.read()["compute"] / steps if arm.timer is not None else None
    return times, compute


def time_paired(candidate: TimedStream, baseline: TimedStream, *, rounds: int, block_steps: int,
                warmup_steps: int, into: PairedTiming | None = None) -> PairedTiming:
    """Warm both up, then `rounds` rounds of one block each, order alternating per round.  With `into`
    (an earlier call's result), the rounds are appended to it and the alternation continues."""
    if rounds < 1 or block_steps < 1 or warmup_steps < 0:
        raise ValueError(f"need rounds >= 1, block_steps >= 1, warmup_steps >= 0 (got {rounds}, {block_steps}, "
                         f"{warmup_steps})")
    for arm in (candidate, baseline):
        for _ in range(warmup_steps):
            arm.step()
    devices = candidate.timer is not None and baseline.timer is not None
    out = into if into is not None else PairedTiming(candidate_compute_ms=[] if devices else None,
                                                     baseline_compute_ms=[] if devices else None)
    first = len(out.candidate_ms)
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(first, first + rounds):
            order = (candidate, baseline) if r % 2 == 0 else (baseline, candidate)
            for arm in order:
                steps_ms, compute = _block(arm, block_steps)
                out.add(arm is candidate, steps_ms, compute)
    finally:
        if enabled:
            gc.enable()
    return out
