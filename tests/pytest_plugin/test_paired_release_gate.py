"""Paired latency release gate, end to end (real ``pytest -m benchmark`` subprocesses on ONNX Runtime CPU):

* the embedded model against itself passes ``--gate-latency-ratio=1.10``;
* the tiny encoder plus ONE dead 288x288 MatMul (same outputs bit for bit, ~1.5x the step time; the
  release-gate test's 4.5x model has 10 of 256) fails it;
* the verdict reaches JUnit properties and summary.json;
* no --baseline-onnx skips with the reason; a bad one is a one-line error.

Each run takes the default 30 pairs of 20-step blocks (~2 s of timing), 60 or 90 while inconclusive.
Both models are timed in the same process, alternating, so a loaded runner slows both alike (measured
figures: the README's paired-gate section).  The run that must pass is a fresh subprocess; the others run in
this process (``run_pytest_inprocess``).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_CONTRACT, TINY_ONNX, Ran, run_pytest

GATE = ("suite/benchmarks/test_paired_latency.py", "-m", "benchmark", "-p", "no:xdist", "-p", "no:randomly",
        "--backend=ort-cpu-fp32", "--gate-latency-ratio=1.10")
SLOW_LAYERS, SLOW_DIM = 1, 288


@pytest.fixture(scope="module")
def slow_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamparity.tools import onnx_faults

    dst = tmp_path_factory.mktemp("paired") / "slow-1.5x.onnx"
    return onnx_faults.save(onnx_faults.add_dead_work(onnx_faults.load(TINY_ONNX), "outputs", layers=SLOW_LAYERS,
                                                      dim=SLOW_DIM), dst)


def _out(p: object) -> str:
    return f"exit {p.returncode}\n--- stdout ---\n{p.stdout[-4000:]}\n--- stderr ---\n{p.stderr[-2000:]}"  # type: ignore[attr-defined]


def _paired(report: Path) -> dict[str, object]:
    (rec,) = json.loads((report / "summary.json").read_text())["latency_paired"]
    assert isinstance(rec, dict)
    return rec


def test_same_model_passes_the_paired_gate(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    p = run_pytest(*GATE, f"--baseline-onnx={TINY_ONNX}", f"--report-dir={tmp_path}", f"--junitxml={junit}")
    assert p.returncode == 0, _out(p)
    rec = _paired(tmp_path)
    assert rec["verdict"] == "pass" and rec["kind"] == "latency_paired" and rec["pairs"] in (30, 60, 90), rec
    assert rec["ratio_hi"] <= 1.10 and "host only" in str(rec["device_timing"]), rec  # type: ignore[operator]
    props = {e.get("name"): e.get("value") for e in ET.parse(junit).iter("property")}
    assert props.get("latency_paired.verdict") == "pass" and "latency_paired.ratio" in props, props


def test_slower_model_fails_the_paired_gate(tmp_path: Path, slow_onnx: Path,
                                            run_pytest_inprocess: Callable[..., Ran]) -> None:
    import onnxruntime as ort

    from streamparity.contract.loading import load_contract
    from streamparity.reference.reader import ReferenceFile

    c = load_contract(TINY_CONTRACT)
    rec5 = ReferenceFile(c.resolve("reference")).read(5)  # type: ignore[arg-type]
    feeds = {n: rec5.inputs[n] for n in c.input_names}
    outs = [ort.InferenceSession(str(m), providers=["CPUExecutionProvider"]).run(None, feeds)
            for m in (TINY_ONNX, slow_onnx)]
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)  # the extra work is genuine but dead
    p = run_pytest_inprocess(*GATE, f"--onnx={slow_onnx}", f"--baseline-onnx={TINY_ONNX}", f"--report-dir={tmp_path}")
    assert p.returncode == 1, _out(p)
    assert "FAIL: CI lower bound" in p.stdout and "slower than allowed" in p.stdout, _out(p)
    rec = _paired(tmp_path)
    assert rec["verdict"] == "fail" and rec["outcome"] == "failed" and rec["ratio_lo"] > 1.10, rec  # type: ignore[operator]


def test_no_baseline_skips_with_the_reason(tmp_path: Path, run_pytest_inprocess: Callable[..., Ran]) -> None:
    p = run_pytest_inprocess(*GATE, f"--report-dir={tmp_path}", "-rs")
    assert p.returncode == 0 and "1 skipped" in p.stdout, _out(p)
    assert "no --baseline-onnx=PREVIOUS.onnx given" in p.stdout, _out(p)


def test_missing_baseline_file_is_one_clear_line(tmp_path: Path, run_pytest_inprocess: Callable[..., Ran]) -> None:
    """A usage error before collection, in any run (a parity run that does not select the gate included)."""
    for args in (GATE, ("-m", "parity and functional", "--backend=ort-cpu-fp32", "--chunks=0", "-q")):
        p = run_pytest_inprocess(*args, f"--baseline-onnx={tmp_path / 'nope.onnx'}", f"--report-dir={tmp_path}")
        assert p.returncode == pytest.ExitCode.USAGE_ERROR, _out(p)
        assert f"--baseline-onnx={tmp_path / 'nope.onnx'}: file not found" in p.stderr, _out(p)
        assert "Traceback" not in p.stdout + p.stderr and "passed" not in p.stdout, _out(p)
