"""Closed loop: the backend's own caches fed back from chunk 0, as a deployed runtime runs."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from streamparity.backends.base import Backend, Stream
from streamparity.contract.model import (
    ROLE_AUDIO,
    ROLE_CACHE_CHANNEL,
    ROLE_CACHE_LEN,
    ROLE_CACHE_TIME,
    ROLE_LENGTH,
    Contract,
)
from streamparity.drivers.bundle_policy import BundlePolicy
from streamparity.environment import usable_cores
from streamparity.judging.chunks import judge_chunk
from streamparity.reference.reader import ChunkRecord, ReferenceFile
from streamparity.results.records import CLOSED_LOOP, ChunkResult, RunResult


def initial_state(contract: Contract, first: ChunkRecord) -> dict[str, np.ndarray]:
    """Caches for chunk 0: the reference's own where it stores them, else zeros from the contract shapes."""
    state: dict[str, np.ndarray] = {}
    audio = first.inputs[contract.input_by_role(ROLE_AUDIO).name]
    bind = {"B": int(audio.shape[0])}
    for role in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME, ROLE_CACHE_LEN):
        spec = contract.input_by_role(role)
        if spec.name in first.inputs:
            state[spec.name] = np.asarray(first.inputs[spec.name])
        else:
            shape = contract.concrete_shape(spec, {**bind, "T_cache": contract.streaming.cache_channel_size})
            fill = contract.streaming.cache_len.initial if role == ROLE_CACHE_LEN else 0
            state[spec.name] = np.full(shape, fill, dtype=spec.dtype)
    return state



JUDGE_LAG_PER_WORKER = 2
"""Chunks with stored caches that may wait for their judging, per judging thread, before the loop waits."""


def default_judge_workers(backend: Backend) -> int:
    """Threads that judge the chunks with stored caches while the loop goes on: none on a CPU backend (the
    runtime has the cores) or where this process may use few cores; beside a GPU backend up to half the
    cores, at most 8 (a full-size chunk's two caches take tens of ms of one core to judge, a few steps)."""
    if backend.device == "cpu":
        return 0
    cores = usable_cores()
    return max(0, min(8, cores - 2, cores // 2))


class _Deferred:
    """A chunk handed to a judging thread, with what its failure bundle needs from the moment it ran."""

    __slots__ = ("at", "feeds", "future", "kept", "ms", "outputs")

    def __init__(self, at: int, future: Future[ChunkResult], ms: float, feeds: dict[str, np.ndarray] | None,
                 kept: Any, outputs: dict[str, np.ndarray] | None) -> None:
        self.at, self.future, self.ms, self.feeds, self.kept, self.outputs = at, future, ms, feeds, kept, outputs

    def settle(self, results: list[ChunkResult], stream: Stream, bundles: BundlePolicy) -> None:
        """The judged result in its place; a failing chunk the policy wants gets its bundle (the kept state comes
        to the host only then)."""
        try:
            r = self.future.result()
            r.step_ms = self.ms
            if self.feeds is not None and self.outputs is not None and bundles.wants(r):
                state = stream.kept_state(self.kept) if self.kept is not None else {}
                r.bundle_inputs, r.bundle_outputs = {**state, **self.feeds}, self.outputs
            results[self.at] = r
        finally:
            if self.kept is not None:
                stream.release_state(self.kept)


def broke_at(at: int, e: BaseException) -> str:
    """The error of the chunk whose step broke the stream."""
    return f"stream broke at chunk {at}: {type(e).__name__}: {e}"


def broken_later(at: int) -> str:
    """The error of a chunk after the one that broke the stream (it was not run)."""
    return f"stream broke at chunk {at} (not run; the error is on chunk {at})"


def run_closed_loop(backend: Backend, contract: Contract, ref: ReferenceFile, *, upto: int | None = None,
                    keep_bundles: bool = True, on_step: Callable[[int, float], None] | None = None,
                    fetch_all_caches: bool = False, judge_workers: int | None = None,
                    bundles: BundlePolicy | None = None) -> RunResult:
    """The backend's own caches fed back from chunk 0 through `upto` (default: the whole reference).

    Per chunk only audio + length go in; the big caches come back only on chunks where the reference stores
    caches to compare with (`fetch_all_caches`: on every chunk), and the state a chunk ran on is copied back
    only when the chunk fails (for its bundle), from streams that keep it (:attr:`Stream.keeps_previous_state`).

    `judge_workers` threads (default :func:`default_judge_workers`) judge the chunks with stored caches, the
    expensive ones (two full-size caches compared), while the loop runs the next chunks; such a chunk's state
    is kept before it runs (:meth:`Stream.keep_state`: a device copy on device-resident streams), for its
    bundle.  The results are the same, in the same order; everything judged in threads is collected before the
    next chunk judged inline, so a judging error is raised before any later chunk's.

    `bundles` says which failing chunks keep what their bundle needs (default: every failing one)."""
    t0 = time.perf_counter()
    policy = bundles if bundles is not None else BundlePolicy()
    ids = ref.chunk_ids
    if upto is not None:
        ids = [k for k in ids if k <= upto]
    audio_name = contract.input_by_role(ROLE_AUDIO).name
    length_name = contract.input_by_role(ROLE_LENGTH).name
    first = ref.read(ids[0])
    big = tuple(o.name for o in contract.outputs if o.role in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME))
    workers = default_judge_workers(backend) if judge_workers is None else max(0, judge_workers)
    judges = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="streamparity-judge") if workers else None
    deferred: deque[_Deferred] = deque()
    # only audio and length go in: a stored chunk's input caches (half a full-size line) are not decoded.  Beside
    # a device backend (judging threads) every line is read ahead: this thread waits on the device meanwhile.
    # Chunk 0 is the record read whole above; the next ones are read while the stream opens.
    chunks = ref.iter_chunks(ids[1:], inputs=(audio_name, length_name), every_line=judges is not None)
    results: list[ChunkResult] = []
    not_run: str | None = None  # once the stream broke: what each later chunk says

    def unjudged(chunk: int, error: str | None = None) -> ChunkResult:
        return ChunkResult(chunk=chunk, mode=CLOSED_LOOP, backend=backend.id, precision=backend.precision,
                           device=backend.device, error=error)

    stream: Stream | None = None
    try:
        stream = backend.open_stream(initial_state(contract, first), fetch_caches=False)
        # bundles need the state a chunk ran on: streams that keep it copy it only when a chunk fails
        snapshot_each = keep_bundles and not stream.keeps_previous_state
        # a chunk is judged in a thread only where its state can be kept for a bundle (else: inline)
        can_keep = type(stream).keep_state is not Stream.keep_state or \
            type(stream).state_snapshot is not Stream.state_snapshot
        for pos, rec in enumerate(itertools.chain([first], chunks)):
            while deferred and deferred[0].future.done():  # collect what is judged, in order
                deferred.popleft().settle(results, stream, policy)
            if not_run:  # said in one line; the error itself is on the chunk that broke the stream
                results.append(unjudged(rec.chunk, not_run))
                continue
            # the big caches come back only where the reference stores some to compare with
            fetch = fetch_all_caches or any(n in rec.outputs for n in big)
            later = judges is not None and any(n in rec.outputs for n in big) and (snapshot_each or can_keep)
            snapshot = stream.state_snapshot() if snapshot_each else {}
            # a chunk judged later keeps the state it runs on (a device copy where the stream is device-resident)
            kept = stream.keep_state() if later and keep_bundles and not snapshot_each else None
            ts = time.perf_counter()
            try:
                out = stream.step(rec.inputs[audio_name], rec.inputs[length_name], fetch_caches=fetch)
            except Exception as e:
                if kept is not None:
                    stream.release_state(kept)
                not_run = broken_later(rec.chunk)
                results.append(unjudged(rec.chunk, broke_at(rec.chunk, e)))
                continue
            ms = (time.perf_counter() - ts) * 1e3
            if on_step:
                on_step(rec.chunk, ms)
            judge = partial(judge_chunk, contract, rec, out, mode=CLOSED_LOOP, backend=backend.id,
                            precision=backend.precision, device=backend.device,
                            cache_len_in=stream.last_cache_len_in, stream_position=pos, inputs=None,
                            unfetched=() if fetch else big)
            if later and judges is not None:
                feeds = outs = None
                if keep_bundles:
                    feeds = {**snapshot, audio_name: rec.inputs[audio_name], length_name: rec.inputs[length_name]}
                    outs = stream.complete_outputs(out)
                deferred.append(_Deferred(len(results), judges.submit(judge), ms, feeds, kept, outs))
                results.append(unjudged(rec.chunk))  # settled below
                while len(deferred) > JUDGE_LAG_PER_WORKER * workers:
                    deferred.popleft().settle(results, stream, policy)
                continue
            while deferred:  # chunks judged in threads come first: their errors, their place
                deferred.popleft().settle(results, stream, policy)
            r = judge()
            r.step_ms = ms
            if keep_bundles and policy.wants(r):
                feeds = dict(snapshot if snapshot_each else stream.previous_state() or {})
                feeds[audio_name] = rec.inputs[audio_name]
                feeds[length_name] = rec.inputs[length_name]
                r.bundle_inputs, r.bundle_outputs = feeds, stream.complete_outputs(out)
            results.append(r)
        while deferred:
            deferred.popleft().settle(results, stream, policy)
    finally:
        chunks.close()
        if stream is not None:
            stream.close()
        if judges is not None:
            judges.shutdown(wait=True, cancel_futures=True)
    return RunResult(backend.id, backend.precision, CLOSED_LOOP, results, backend.describe(),
                     time.perf_counter() - t0)
