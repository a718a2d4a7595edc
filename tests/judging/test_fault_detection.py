"""The suite must fail altered models, naming the chunk and the output, and pass the clean one.

Each fault is a real modification of the embedded ONNX (streamparity.tools.onnx_faults), judged by the
same session code that `pytest -m parity` uses.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streamparity.backends.registry import parse_backend_spec
from streamparity.results.records import CLOSED_LOOP, FUNCTIONAL
from streamparity.session import ParitySession, SessionConfig
from streamparity.tools import onnx_faults as F
from tests.conftest import TINY_CONTRACT, TINY_ONNX

FP32 = parse_backend_spec("ort-cpu-fp32")

FAULTS = {
    # name: (builder, output or field expected in the first failure, first failing chunk)
    "weights-1pct": (lambda m: F.scale_initializer(m, r"layers\.2\.conv\.pointwise_conv1\.weight", 1.01),
                     "outputs", 0),
    "cache-time-offset-0.01": (lambda m: F.offset_output(m, "cache_last_time_next", 0.01),
                               "cache_last_time_next", 0),
    "cache-channel-reset": (lambda m: F.scale_output(m, "cache_last_channel_next", 0.0),
                            "cache_last_channel_next", 0),
    "cache-len-stuck-at-0": (lambda m: F.freeze_output(m, "cache_last_channel_next_len", 0),
                             "cache_last_channel_next_len", 0),
    "cache-len-passthrough": (lambda m: F.passthrough(m, "cache_last_channel_next_len", "cache_last_channel_len"),
                              "cache_last_channel_next_len", 0),
    "nan-in-cache": (lambda m: F.nan_output(m, "cache_last_time_next"), "cache_last_time_next", 0),
    "encoder-output-offset": (lambda m: F.offset_output(m, "outputs", 5e-4), "outputs", 0),
}


@pytest.fixture(scope="module")
def base_model():
    return F.load(TINY_ONNX)


def _session(onnx: Path | None = None) -> ParitySession:
    return ParitySession(SessionConfig(contract=TINY_CONTRACT, onnx=onnx))


def _first_failure(run):
    return next((c for c in run.chunks if c.verdict == "fail"), None)


def _named(res) -> set[str]:
    return {v.field for v in res.violations} | {k for k, v in res.verdicts.items() if v == "fail"}


def test_clean_model_passes_every_chunk_and_gate():
    s = _session()
    for mode in (FUNCTIONAL, CLOSED_LOOP):
        run = s.run(FP32, mode)
        assert _first_failure(run) is None
        assert all(not g.failed for g in s.gates(FP32, mode))
    assert len(s.run(FP32, CLOSED_LOOP).chunks) >= 300


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("mode", [FUNCTIONAL, CLOSED_LOOP])
def test_altered_model_fails_naming_chunk_and_output(tmp_path, base_model, fault, mode):
    build, output, chunk = FAULTS[fault]
    onnx = F.save(build(base_model), tmp_path / f"{fault}.onnx")
    run = _session(onnx).run(FP32, mode)
    first = _first_failure(run)
    assert first is not None, f"{fault} passed in {mode}"
    assert first.chunk == chunk
    assert output in _named(first), _named(first)


def test_stuck_cache_len_is_reported_as_not_carrying_over(tmp_path, base_model):
    onnx = F.save(F.passthrough(base_model, "cache_last_channel_next_len", "cache_last_channel_len"),
                  tmp_path / "stuck.onnx")
    first = _first_failure(_session(onnx).run(FP32, CLOSED_LOOP))
    msg = " ".join(v.message for v in first.violations)
    assert "0 -> 0" in msg and "stuck" in msg


def test_small_weight_drift_fails_a_run_gate(tmp_path, base_model):
    """0.1% on one bias stays under the per-chunk atol but moves the run's P95 above its gate."""
    onnx = F.save(F.scale_initializer(base_model, r"layers\.1\.feed_forward1\.linear2\.bias", 1.01),
                  tmp_path / "drift.onnx")
    s = _session(onnx)
    failed = [(g.output, k) for g in s.gates(FP32, CLOSED_LOOP) for k in g.failed]
    assert ("outputs", "p95") in failed


def test_baseline_gate_compares_with_ort_at_the_same_precision():
    s = _session()
    # ONNX Runtime CPU is its own baseline: no self-comparison
    for prec in ("fp32", "fp16"):
        gates = s.gates(parse_backend_spec(f"ort-cpu-{prec}"), CLOSED_LOOP)
        assert not [k for g in gates for k in g.checks if k.startswith("vs_")]


def test_runtime_much_worse_than_ort_fails_the_baseline_gate():
    """A runtime whose caches drift is judged against ORT FP32 on the same ONNX and found 4x+ worse."""
    from streamparity.backends.ort import OrtBackend
    from streamparity.tools.drift_fault import DriftBackend

    s = _session()
    spec = parse_backend_spec("drift-cpu-fp32", check_kind=False)  # the kind is registered by the -p plugin only
    s._backends[spec.id] = DriftBackend(OrtBackend(s.contract, s.onnx), 5e-7)
    checks = {g.output: g.checks for g in s.gates(spec, CLOSED_LOOP).gates}
    vs = checks["outputs"]["vs_ort_cpu_fp32"]
    assert not vs["ok"] and vs["value"] > vs["limit"] == 4.0 * max(vs["baseline_p95"], vs["floor"])
