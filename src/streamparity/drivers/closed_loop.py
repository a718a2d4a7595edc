"""Closed loop: the backend's own caches fed back from chunk 0, as a deployed runtime runs."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from streamparity.backends.base import Backend
from streamparity.contract.model import (
    ROLE_AUDIO,
    ROLE_CACHE_CHANNEL,
    ROLE_CACHE_LEN,
    ROLE_CACHE_TIME,
    ROLE_LENGTH,
    Contract,
)
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



def run_closed_loop(backend: Backend, contract: Contract, ref: ReferenceFile, *, upto: int | None = None,
                    keep_bundles: bool = True, on_step: Callable[[int, float], None] | None = None,
                    fetch_all_caches: bool = False) -> RunResult:
    """The backend's own caches fed back from chunk 0 through `upto` (default: the whole reference).

    Per chunk only audio + length go in; the big caches come back only on chunks where the reference stores
    caches to compare with (`fetch_all_caches`: on every chunk), and the state a chunk ran on is copied back
    only when the chunk fails (for its bundle), from streams that keep it (:attr:`Stream.keeps_previous_state`).
    """
    t0 = time.perf_counter()
    ids = ref.chunk_ids
    if upto is not None:
        ids = [k for k in ids if k <= upto]
    audio_name = contract.input_by_role(ROLE_AUDIO).name
    length_name = contract.input_by_role(ROLE_LENGTH).name
    first, last = ref.read(ids[0]), ids[-1]
    big = tuple(o.name for o in contract.outputs if o.role in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME))
    stream = backend.open_stream(initial_state(contract, first), fetch_caches=False)
    # bundles need the state a chunk ran on: streams that keep it copy it only when a chunk fails
    snapshot_each = keep_bundles and not stream.keeps_previous_state
    results: list[ChunkResult] = []
    broken: str | None = None
    try:
        for pos, rec in enumerate(ref):
            if rec.chunk > last:  # chunks are consecutive (the index enforces it)
                break
            if broken:
                results.append(ChunkResult(chunk=rec.chunk, mode=CLOSED_LOOP, backend=backend.id,
                                           precision=backend.precision,
                            device=backend.device, error=broken))
                continue
            snapshot = stream.state_snapshot() if snapshot_each else {}
            # the big caches come back only where the reference stores some to compare with
            fetch = fetch_all_caches or any(n in rec.outputs for n in big)
            ts = time.perf_counter()
            try:
                out = stream.step(rec.inputs[audio_name], rec.inputs[length_name], fetch_caches=fetch)
            except Exception as e:
                broken = f"stream broke at chunk {rec.chunk}: {type(e).__name__}: {e}"
                results.append(ChunkResult(chunk=rec.chunk, mode=CLOSED_LOOP, backend=backend.id,
                                           precision=backend.precision,
                            device=backend.device, error=broken))
                continue
            ms = (time.perf_counter() - ts) * 1e3
            if on_step:
                on_step(rec.chunk, ms)
            r = judge_chunk(contract, rec, out, mode=CLOSED_LOOP, backend=backend.id, precision=backend.precision,
                            device=backend.device,
                            cache_len_in=stream.last_cache_len_in, stream_position=pos, inputs=None,
                            unfetched=() if fetch else big)
            r.step_ms = ms
            if keep_bundles and r.verdict == "fail":
                feeds = dict(snapshot if snapshot_each else stream.previous_state() or {})
                feeds[audio_name] = rec.inputs[audio_name]
                feeds[length_name] = rec.inputs[length_name]
                r.bundle_inputs, r.bundle_outputs = feeds, stream.complete_outputs(out)
            results.append(r)
    finally:
        stream.close()
    return RunResult(backend.id, backend.precision, CLOSED_LOOP, results, backend.describe(),
                     time.perf_counter() - t0)
