"""Failing chunks keep what their bundle needs only where the report will write a bundle: the first
--max-chunk-failures of the selection (warn chunks too under --fail-on-warn), not every one (a stuck cache
length fails all 300 chunks: ~15 GB at full size)."""

from __future__ import annotations

from pathlib import Path

from streamparity.backends.registry import parse_backend_spec
from streamparity.drivers.bundle_policy import BundlePolicy
from streamparity.drivers.selection import parse_chunks
from streamparity.results.records import CLOSED_LOOP, FUNCTIONAL, ChunkResult
from streamparity.session import ParitySession, SessionConfig
from streamparity.tools import onnx_faults as F
from tests.conftest import TINY_CONTRACT, TINY_ONNX

FP32 = parse_backend_spec("ort-cpu-fp32")


def _result(chunk: int, verdict: str) -> ChunkResult:
    r = ChunkResult(chunk=chunk, mode=CLOSED_LOOP, backend="x", precision="fp32", device="cpu")
    if verdict != "pass":
        r.verdicts = {"out": verdict}
    return r


def test_the_first_failing_chunks_of_the_selection_are_taken() -> None:
    p = BundlePolicy.of(2, False, [1, 2, 3, 5])
    wanted = [k for k, v in [(0, "fail"), (1, "pass"), (2, "warn"), (3, "fail"), (4, "fail"), (5, "fail"),
                             (6, "fail")] if p.wants(_result(k, v))]
    assert wanted == [3, 5]
    warn = BundlePolicy.of(None, True, None)
    assert [k for k, v in [(0, "warn"), (1, "pass"), (2, "fail")] if warn.wants(_result(k, v))] == [0, 2]
    assert not BundlePolicy.of(0, False, None).wants(_result(0, "fail"))


def test_a_stuck_cache_length_keeps_only_the_bundles_the_report_writes(tmp_path: Path) -> None:
    onnx = F.save(F.freeze_output(F.load(TINY_ONNX), "cache_last_channel_next_len", 0), tmp_path / "stuck.onnx")
    chunks = parse_chunks("4-40")
    s = ParitySession(SessionConfig(contract=TINY_CONTRACT, onnx=onnx, backends=[FP32], chunks=chunks,
                                    bundle_limit=3))
    for mode in (CLOSED_LOOP, FUNCTIONAL):
        run = s.run(FP32, mode)
        failing = [c for c in run.chunks if c.verdict == "fail"]
        kept = [c.chunk for c in run.chunks if c.bundle_inputs is not None]
        selected_failing = [c.chunk for c in failing if c.chunk in chunks]
        assert len(failing) > 3 and kept == selected_failing[:3], (mode, kept)
        assert all(c.bundle_outputs for c in run.chunks if c.bundle_inputs is not None)
    s.close()


def test_fail_on_warn_chunks_get_their_bundle(tmp_path: Path, run_pytest_inprocess) -> None:
    """A warn chunk fails the closed loop under --fail-on-warn: it is reported in full, with its bundle."""
    onnx = F.save(F.offset_output(F.load(TINY_ONNX), "outputs", 5e-5), tmp_path / "warn.onnx")  # warn < 5e-5 < atol
    r = run_pytest_inprocess("-q", "-p", "no:randomly", "-m", "parity and closed_loop", "--backend=ort-cpu-fp32",
                             f"--onnx={onnx}", "--chunks=0-4", "--fail-on-warn", "--max-chunk-failures=2",
                             f"--report-dir={tmp_path / 'r'}")
    assert r.returncode == 1, r.stdout[-3000:]
    bundles = sorted(p.name for p in (tmp_path / "r" / "bundles").glob("*.npz"))
    assert bundles == ["ort-cpu-fp32-closed_loop-chunk000.npz", "ort-cpu-fp32-closed_loop-chunk001.npz"], bundles
    assert "repro: streamparity repro" in r.stdout
