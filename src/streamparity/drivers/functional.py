"""Functional mode: the reference's caches in, every chunk on its own."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from streamparity.backends.base import Backend
from streamparity.contract.model import ROLE_CACHE_LEN, Contract
from streamparity.drivers.bundle_policy import BundlePolicy
from streamparity.judging.chunks import judge_chunk
from streamparity.reference.reader import ReferenceFile
from streamparity.results.records import FUNCTIONAL, ChunkResult, RunResult


def run_functional(backend: Backend, contract: Contract, ref: ReferenceFile, chunks: Iterable[int], *,
                   keep_bundles: bool = True, on_step: Callable[[int, float], None] | None = None,
                   bundles: BundlePolicy | None = None) -> RunResult:
    """Reference caches in, every chunk independently; `on_step(chunk, ms)` after each chunk run; `bundles`
    says which failing chunks keep what their bundle needs (default: every failing one)."""
    t0 = time.perf_counter()
    policy = bundles if bundles is not None else BundlePolicy()
    results: list[ChunkResult] = []
    len_in = contract.input_by_role(ROLE_CACHE_LEN).name
    for k in chunks:
        rec = ref.read(k)
        feeds = {n: rec.inputs[n] for n in contract.input_names if n in rec.inputs}
        missing = [n for n in contract.input_names if n not in feeds]
        if missing:
            r = ChunkResult(chunk=k, mode=FUNCTIONAL, backend=backend.id, precision=backend.precision,
                            device=backend.device,
                            error=f"reference chunk {k} lacks inputs {missing} needed in functional mode")
            results.append(r)
            continue
        ts = time.perf_counter()
        try:
            out = backend.run(feeds)
        except Exception as e:  # runtime errors are verdicts, not crashes
            results.append(ChunkResult(chunk=k, mode=FUNCTIONAL, backend=backend.id, precision=backend.precision,
                            device=backend.device,
                                       error=f"{type(e).__name__}: {e}"))
            continue
        ms = (time.perf_counter() - ts) * 1e3
        if on_step:
            on_step(k, ms)
        r = judge_chunk(contract, rec, out, mode=FUNCTIONAL, backend=backend.id, precision=backend.precision,
                            device=backend.device,
                        cache_len_in=feeds[len_in], stream_position=None, inputs=feeds)
        r.step_ms = ms
        if keep_bundles and policy.wants(r):
            r.bundle_inputs, r.bundle_outputs = dict(feeds), dict(out)
        results.append(r)
    return RunResult(backend.id, backend.precision, FUNCTIONAL, results, backend.describe(),
                     time.perf_counter() - t0)
