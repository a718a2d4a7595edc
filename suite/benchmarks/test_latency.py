"""Latency benchmarks (``-m benchmark``, pytest-benchmark): per-chunk ``Stream.step`` of each backend.

Run serially: ``pytest -m benchmark -p no:xdist`` (pytest-benchmark disables itself under xdist; these
tests skip on xdist workers with a reason).  Each benchmark opens a closed-loop stream, warms it up, then
times ``rounds`` single steps over the reference's chunks.  ``benchmark.extra_info`` gets P50/P95/P99 in
ms (pytest-benchmark has no percentiles), the contract's latency target and whether it was enforced, and
on GPU backends the split of a step into compute and copies, timed with CUDA events.

The contract's target (``latency.target_ms``, compared with the P95 step) is enforced only when the
running GPU matches ``latency.device`` (and the backend runs on it at ``latency.precision``); anywhere
else it is only reported.  Release gate (baseline vs candidate): see tests/pytest_plugin/test_release_gate.py.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from streamparity.backends.base import BackendSpec
from streamparity.contract.model import ROLE_AUDIO, ROLE_LENGTH, Contract
from streamparity.drivers.closed_loop import initial_state
from streamparity.drivers.device_events import gpu_split, host_sync
from streamparity.environment import gpu_names
from streamparity.errors import BackendUnavailable, StreamparityError
from streamparity.pytest_plugin.release_gate import gate, not_run
from streamparity.pytest_plugin.session import PROPERTY
from streamparity.session import ParitySession

pytestmark = pytest.mark.benchmark

WARMUP_STEPS = 20
ROUNDS = int(os.environ.get("STREAMPARITY_BENCH_ROUNDS", "200"))
CHUNKS = 24
GPU_SPLIT_STEPS = 50


def _percentiles_ms(data: list[float]) -> dict[str, float]:
    ms = np.asarray(data, dtype=np.float64) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "rounds": int(ms.size)}


def target_status(contract: Contract, spec: BackendSpec, p95_ms: float | None) -> dict[str, Any]:
    """Whether the contract's latency target applies here, and if so whether it is met."""
    lat = contract.latency
    if lat is None:
        return {"target_status": "no latency target in the contract"}
    info: dict[str, Any] = {"target_ms": lat.target_ms, "target_device": lat.device,
                            "target_precision": lat.precision, "target_backends": list(lat.backends)}
    gpus = list(gpu_names())
    matching = [g for g in gpus if lat.device.lower() in g.lower()]
    why_not = None
    if not matching:
        why_not = f"running GPU {', '.join(gpus) or 'none'} does not match the contract's {lat.device!r}"
    elif not spec.needs_gpu:
        why_not = f"{spec.id} does not run on the GPU"
    elif lat.backends and spec.kind not in lat.backends:
        why_not = f"target is for {', '.join(lat.backends)} backends, this one is {spec.kind}"
    elif lat.precision is not None and lat.precision != spec.precision:
        why_not = f"target is for {lat.precision}, this backend runs {spec.precision}"
    if why_not or p95_ms is None:
        info["target_status"] = f"reported only: {why_not or 'benchmarks disabled'}"
        info["target_enforced"] = False
        return info
    info["target_enforced"] = True
    info["target_status"] = "met" if p95_ms <= lat.target_ms else "MISSED"
    return info


def test_step_latency(benchmark: Any, request: pytest.FixtureRequest, parity: ParitySession,
                      backend_spec: BackendSpec) -> None:
    """Per-chunk closed-loop step latency of one backend after warm-up."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        not_run(request, "latency benchmarks run serially: pytest-benchmark disables itself under xdist; "
                "rerun with `pytest -m benchmark -p no:xdist`")
    spec = backend_spec
    try:
        backend = parity.backend(spec)
    except BackendUnavailable as e:
        not_run(request, f"{spec.id}: {e}")
        raise
    except StreamparityError as e:
        pytest.fail(f"{spec.id} cannot run: {e}", pytrace=False)
    c = parity.contract
    audio_name = c.input_by_role(ROLE_AUDIO).name
    length_name = c.input_by_role(ROLE_LENGTH).name
    ids = parity.reference.chunk_ids[:CHUNKS]
    recs = [parity.reference.read(k) for k in ids]
    feeds = [(r.inputs[audio_name], r.inputs[length_name]) for r in recs]
    # as deployed: caches stay where the backend keeps them (device-resident on GPUs), buffers are
    # preallocated, and only the encoder output and the lengths come back each chunk
    stream = backend.open_stream(initial_state(c, recs[0]), fetch_caches=False)
    sync = host_sync(spec)
    i = 0

    def step() -> None:
        nonlocal i
        a, n = feeds[i % len(feeds)]
        i += 1
        stream.step(a, n)
        sync()  # the timer must include all queued device work

    try:
        for _ in range(WARMUP_STEPS):
            step()
        benchmark.group = "stream.step"
        benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=0)
        stats = getattr(benchmark, "stats", None)
        data = list(stats.stats.data) if stats is not None else []
        info: dict[str, Any] = {"backend": spec.id, "precision": spec.precision, "device": spec.device,
                                "warmup_steps": WARMUP_STEPS, "onnx": str(parity.onnx)}
        info.update(_percentiles_ms(data) if data else {"p50_ms": None, "p95_ms": None, "p99_ms": None})
        info["h2d_bytes_per_step"], info["d2h_bytes_per_step"] = stream.bytes_moved
        if spec.needs_gpu:
            info.update(gpu_split(stream, step, GPU_SPLIT_STEPS))
        else:
            info["gpu_split"] = "skipped: CPU backend (no device copies to split)"
        info.update(target_status(c, spec, info.get("p95_ms")))
    finally:
        stream.close()
    g = gate(request.config)
    verdict = g.judge(benchmark.fullname, stats.stats) if g is not None and stats is not None else None
    if verdict is not None:
        info["release_gate"] = verdict[2]
    benchmark.extra_info.update(info)
    request.node.user_properties.append((PROPERTY, {"kind": "latency", **info}))
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        if info.get(key) is not None:
            request.node.user_properties.append((f"latency.{key}", f"{info[key]:.4g}"))
    if verdict is not None and not verdict[0]:
        pytest.fail(verdict[1], pytrace=False)
    if info.get("target_enforced") and info.get("target_status") == "MISSED":
        lat = c.latency
        assert lat is not None
        pytest.fail(f"[{spec.id}] latency target missed on {', '.join(gpu_names())}: P95 step "
                    f"{info['p95_ms']:.3f} ms > target {lat.target_ms:g} ms (P50 {info['p50_ms']:.3f}, P99 "
                    f"{info['p99_ms']:.3f}) -- {lat.reason}", pytrace=False)
