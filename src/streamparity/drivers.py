"""Drivers: run a backend over a reference in functional mode (reference caches in) or closed loop
(the backend's own caches fed back, for the whole reference)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends.base import Backend
from .compare import Metrics, Verdict, compare_output, describe_failure, verdict, worst
from .contract import (
    ROLE_AUDIO,
    ROLE_CACHE_CHANNEL,
    ROLE_CACHE_LEN,
    ROLE_CACHE_TIME,
    ROLE_ENCODED,
    ROLE_LENGTH,
    Contract,
)
from .invariants import Violation, check_outputs
from .reference import ChunkRecord, ReferenceFile

FUNCTIONAL = "functional"
CLOSED_LOOP = "closed_loop"
MODES = (FUNCTIONAL, CLOSED_LOOP)


@dataclass
class ChunkResult:
    chunk: int
    mode: str
    backend: str
    precision: str
    metrics: dict[str, Metrics] = field(default_factory=dict)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    cache_len_in: list[int] = field(default_factory=list)
    cache_len_out: list[int] = field(default_factory=list)
    encoded: np.ndarray | None = None
    step_ms: float = 0.0
    error: str | None = None
    bundle_inputs: dict[str, np.ndarray] | None = None
    bundle_outputs: dict[str, np.ndarray] | None = None

    def describe(self, contract: Contract) -> list[str]:
        """What failed or warned and how far: the lines of a pytest failure and of ``streamparity repro``."""
        head = f"[{self.backend} {self.mode} chunk {self.chunk}]"
        lines: list[str] = []
        if self.error:
            lines.append(f"{head} runtime error: {self.error}")
        for v in self.violations:
            lines.append(f"{head} CONTRACT VIOLATION {v.field}: {v.message}")
        for name, m in self.metrics.items():
            vd = self.verdicts.get(name)
            if vd in ("fail", "warn"):
                tol = contract.tolerance(name, self.precision)
                label = "FAIL" if vd == "fail" else "WARN"
                lines.append(f"{head} {label} " + describe_failure(m, tol, what=f"{self.backend} vs reference"))
        return lines or [f"{head} ok"]

    @property
    def verdict(self) -> Verdict:
        if self.error or self.violations:
            return "fail"
        return worst(*self.verdicts.values()) if self.verdicts else "pass"


@dataclass
class RunResult:
    backend: str
    precision: str
    mode: str
    chunks: list[ChunkResult]
    describe: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    def by_chunk(self) -> dict[int, ChunkResult]:
        return {c.chunk: c for c in self.chunks}


def _ints(a: Any) -> list[int]:
    return [int(x) for x in np.asarray(a).reshape(-1)]


def judge_chunk(contract: Contract, rec: ChunkRecord, outputs: Mapping[str, np.ndarray], *, mode: str,
                backend: str, precision: str, cache_len_in: np.ndarray, stream_position: int | None,
                inputs: Mapping[str, np.ndarray] | None) -> ChunkResult:
    """Compare one chunk's outputs with the reference and check the contract invariants."""
    res = ChunkResult(chunk=rec.chunk, mode=mode, backend=backend, precision=precision)
    res.violations = check_outputs(contract, rec.chunk, outputs, cache_len_in=cache_len_in, inputs=inputs,
                                   stream_position=stream_position)
    len_out = contract.output_by_role(ROLE_CACHE_LEN).name
    ref_len = rec.outputs.get(len_out)
    expected_len = int(np.asarray(ref_len).reshape(-1)[0]) if ref_len is not None else None
    for name in contract.compared_outputs():
        if name not in rec.outputs or name not in outputs:
            continue
        m = compare_output(contract, name, outputs[name], rec.outputs[name], chunk=rec.chunk, precision=precision,
                           cache_len=expected_len)
        res.metrics[name] = m
        res.verdicts[name] = verdict(m, contract.tolerance(name, precision))
    res.cache_len_in = _ints(cache_len_in)
    if len_out in outputs:
        res.cache_len_out = _ints(outputs[len_out])
    enc = contract.output_by_role(ROLE_ENCODED).name
    if enc in outputs:
        res.encoded = np.asarray(outputs[enc]).copy()
    return res


def run_functional(backend: Backend, contract: Contract, ref: ReferenceFile, chunks: Iterable[int], *,
                   keep_bundles: bool = True) -> RunResult:
    """Reference caches in, every chunk independently."""
    t0 = time.perf_counter()
    results: list[ChunkResult] = []
    len_in = contract.input_by_role(ROLE_CACHE_LEN).name
    for k in chunks:
        rec = ref.read(k)
        feeds = {n: rec.inputs[n] for n in contract.input_names if n in rec.inputs}
        missing = [n for n in contract.input_names if n not in feeds]
        if missing:
            r = ChunkResult(chunk=k, mode=FUNCTIONAL, backend=backend.id, precision=backend.precision,
                            error=f"reference chunk {k} lacks inputs {missing} needed in functional mode")
            results.append(r)
            continue
        ts = time.perf_counter()
        try:
            out = backend.run(feeds)
        except Exception as e:  # runtime errors are verdicts, not crashes
            results.append(ChunkResult(chunk=k, mode=FUNCTIONAL, backend=backend.id, precision=backend.precision,
                                       error=f"{type(e).__name__}: {e}"))
            continue
        ms = (time.perf_counter() - ts) * 1e3
        r = judge_chunk(contract, rec, out, mode=FUNCTIONAL, backend=backend.id, precision=backend.precision,
                        cache_len_in=feeds[len_in], stream_position=None, inputs=feeds)
        r.step_ms = ms
        if keep_bundles and r.verdict == "fail":
            r.bundle_inputs, r.bundle_outputs = dict(feeds), dict(out)
        results.append(r)
    return RunResult(backend.id, backend.precision, FUNCTIONAL, results, backend.describe(),
                     time.perf_counter() - t0)


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
                    keep_bundles: bool = True, on_step: Callable[[int, float], None] | None = None) -> RunResult:
    """The backend's own caches fed back from chunk 0 through `upto` (default: the whole reference)."""
    t0 = time.perf_counter()
    ids = ref.chunk_ids
    if upto is not None:
        ids = [k for k in ids if k <= upto]
    audio_name = contract.input_by_role(ROLE_AUDIO).name
    length_name = contract.input_by_role(ROLE_LENGTH).name
    first, last = ref.read(ids[0]), ids[-1]
    stream = backend.open_stream(initial_state(contract, first), fetch_caches=True)
    results: list[ChunkResult] = []
    broken: str | None = None
    try:
        for pos, rec in enumerate(ref):
            if rec.chunk > last:  # chunks are consecutive (the index enforces it)
                break
            if broken:
                results.append(ChunkResult(chunk=rec.chunk, mode=CLOSED_LOOP, backend=backend.id,
                                           precision=backend.precision, error=broken))
                continue
            snapshot = stream.state_snapshot() if keep_bundles else {}
            ts = time.perf_counter()
            try:
                out = stream.step(rec.inputs[audio_name], rec.inputs[length_name])
            except Exception as e:
                broken = f"stream broke at chunk {rec.chunk}: {type(e).__name__}: {e}"
                results.append(ChunkResult(chunk=rec.chunk, mode=CLOSED_LOOP, backend=backend.id,
                                           precision=backend.precision, error=broken))
                continue
            ms = (time.perf_counter() - ts) * 1e3
            if on_step:
                on_step(rec.chunk, ms)
            r = judge_chunk(contract, rec, out, mode=CLOSED_LOOP, backend=backend.id, precision=backend.precision,
                            cache_len_in=stream.last_cache_len_in, stream_position=pos, inputs=None)
            r.step_ms = ms
            if keep_bundles and r.verdict == "fail":
                feeds = dict(snapshot)
                feeds[audio_name] = rec.inputs[audio_name]
                feeds[length_name] = rec.inputs[length_name]
                r.bundle_inputs, r.bundle_outputs = feeds, dict(out)
            results.append(r)
    finally:
        stream.close()
    return RunResult(backend.id, backend.precision, CLOSED_LOOP, results, backend.describe(),
                     time.perf_counter() - t0)
