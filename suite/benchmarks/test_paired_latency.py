"""Paired latency release gate (``-m benchmark``): the model under test against ``--baseline-onnx`` in the
same run, same backend, same chunks, in alternating blocks; gated on the median per-pair step-time ratio.

    pytest suite/benchmarks/test_paired_latency.py -m benchmark --backend=ort-cpu-fp32 \\
        --onnx=CANDIDATE.onnx --baseline-onnx=PREVIOUS.onnx --gate-latency-ratio=1.10

Statistics and verdict: streamparity.judging.paired_latency; timing loop: streamparity.drivers.paired_timing;
options: streamparity.pytest_plugin.paired_options.  Skips without ``--baseline-onnx``.  Not a
pytest-benchmark test (nothing is stored or compared; ``--benchmark-only`` skips it): see the README.
"""

from __future__ import annotations

from typing import Any

import pytest

from streamparity.backends.base import Backend, BackendSpec
from streamparity.backends.registry import create_backend
from streamparity.contract.model_io import check_onnx_file
from streamparity.drivers.device_events import unavailable_reason
from streamparity.drivers.paired_timing import open_timed, time_paired
from streamparity.errors import BackendUnavailable, StreamparityError
from streamparity.judging.paired_latency import decide, judge_paired, per_look, ratio_stats
from streamparity.pytest_plugin.paired_options import looks, paired_options
from streamparity.pytest_plugin.session import PROPERTY
from streamparity.session import ParitySession

pytestmark = pytest.mark.benchmark

CHUNKS = 24
KIND = "latency_paired"


def _baseline_backend(parity: ParitySession, spec: BackendSpec, onnx: Any) -> Backend:
    __tracebackhide__ = True
    try:
        check_onnx_file(parity.contract, onnx)
        return create_backend(spec, parity.contract, onnx, {
            "engine_dir": parity.cfg.engine_dir, "rebuild_engines": parity.cfg.rebuild_engines,
            "rebuild_since": parity.cfg.rebuild_since})
    except BackendUnavailable as e:
        pytest.skip(f"{spec.id} (baseline {onnx}): {e}")
    except StreamparityError as e:
        pytest.fail(f"--baseline-onnx={onnx}: {spec.id} cannot run it: {e}", pytrace=False)


def test_paired_step_latency(request: pytest.FixtureRequest, parity: ParitySession,
                             backend_spec: BackendSpec) -> None:
    """Candidate vs baseline step time, paired; fails the --gate-latency-ratio gate when slower."""
    try:
        opts = paired_options(request.config)
    except StreamparityError as e:
        pytest.fail(str(e), pytrace=False)
    if opts.baseline_onnx is None:
        pytest.skip("paired latency gate: no --baseline-onnx=PREVIOUS.onnx given (the candidate is --onnx or the "
                    "contract's model; both are timed in this run, alternating)")
    spec = backend_spec
    try:
        candidate = parity.backend(spec)
    except BackendUnavailable as e:
        pytest.skip(f"{spec.id}: {e}")
    except StreamparityError as e:
        pytest.fail(f"{spec.id} cannot run: {e}", pytrace=False)
    baseline = _baseline_backend(parity, spec, opts.baseline_onnx)
    ids = parity.reference.chunk_ids[:CHUNKS]
    c, ref = parity.contract, parity.reference
    arms = []
    try:
        arms.append(open_timed("candidate", candidate, spec, c, ref, ids, device_events=spec.needs_gpu))
        arms.append(open_timed("baseline", baseline, spec, c, ref, ids, device_events=spec.needs_gpu))
        cand, base = arms
        planned = looks(opts.rounds, opts.max_rounds)
        timing = time_paired(cand, base, rounds=opts.rounds, block_steps=opts.block_steps,
                             warmup_steps=opts.warmup_steps)
        look = 1
        # inconclusive: time more rounds (same streams, alternation continued), up to --paired-max-rounds
        while look < planned and opts.limit is not None and decide(
                ratio_stats(timing.candidate_ms, timing.baseline_ms, per_look(opts.confidence, planned)),
                opts.limit) == "inconclusive":
            more = min(opts.rounds, opts.max_rounds - len(timing.candidate_ms))
            time_paired(cand, base, rounds=more, block_steps=opts.block_steps, warmup_steps=0, into=timing)
            look += 1
        if not spec.needs_gpu:
            device_timing = f"host only: {spec.id} runs on the CPU, there is no device time to take apart"
        elif timing.candidate_compute_ms is None:
            device_timing = f"host only: {unavailable_reason(cand.stream) or unavailable_reason(base.stream)}"
        else:
            note = cand.timer.note if cand.timer is not None else None
            device_timing = "CUDA events around compute (execute) per block" + (f"; {note}" if note else "")
    finally:
        for arm in arms:
            arm.close()
        baseline.close()
    result = judge_paired(timing.candidate_ms, timing.baseline_ms, limit=opts.limit, confidence=opts.confidence,
                          inconclusive_passes=opts.inconclusive_passes, block_steps=opts.block_steps,
                          warmup_steps=opts.warmup_steps, candidate_compute_ms=timing.candidate_compute_ms,
                          baseline_compute_ms=timing.baseline_compute_ms, device_timing=device_timing,
                          looks=planned, look=look,
                          extra={"candidate_block_means_ms": timing.candidate_mean_ms,
                                 "baseline_block_means_ms": timing.baseline_mean_ms,
                                 "block_statistic": "median step time of the block"})
    message = result.describe(f"[{spec.id}] paired latency {parity.onnx.name} vs baseline {opts.baseline_onnx.name}")
    payload = {"kind": KIND, "backend": spec.id, "precision": spec.precision, "device": spec.device,
               "candidate_onnx": str(parity.onnx), "baseline_onnx": str(opts.baseline_onnx),
               "timer": "time.perf_counter", "chunks": len(ids), **result.to_dict(), "message": message}
    props = request.node.user_properties
    props.append((PROPERTY, payload))
    props.append((f"{KIND}.verdict", result.verdict))
    h = result.host
    for key, value in (("ratio", h.ratio), ("ratio_lo", h.ratio_lo), ("ratio_hi", h.ratio_hi),
                       ("candidate_ms", h.candidate_ms), ("baseline_ms", h.baseline_ms)):
        props.append((f"{KIND}.{key}", f"{value:.4g}"))
    props.append((f"{KIND}.pairs", str(h.pairs)))
    print(message)
    if result.failed:
        pytest.fail(message, pytrace=False)
