"""Release gate, end to end: save a latency baseline of the embedded model with pytest-benchmark, then
compare candidates against it with ``--benchmark-compare-fail=median:50%``.

* the same model passes the gate;
* a genuinely slower model (the tiny encoder plus a chain of 256x256 MatMuls whose result is multiplied by
  0 and added to the output: same outputs bit for bit, ~4.5x the work per chunk) fails it;
* no saved baseline gives a clear usage error up front, not a traceback.

Every run is ``pytest -m benchmark`` on the repository's tests with its own benchmark storage.  Timer:
``time.process_time`` (CPU time of the process), so that other load on a shared runner cannot fail the same-model
comparison; the 4.5x model is far beyond the 50% threshold either way.  The baseline and every run that must
pass the gate are real subprocesses (a fresh process, timed as the baseline was; pytest-benchmark's warnings
reach stderr); the runs that must fail, or are refused, run in this process (``run_pytest_inprocess``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Ran

REPO = Path(__file__).resolve().parents[2]
TINY_ONNX = REPO / "fixtures" / "tiny" / "encoder.onnx"
GATE = "--benchmark-compare-fail=median:50%"
EXTRA_LAYERS = 10
EXTRA_DIM = 256


def add_dead_work(src: Path, dst: Path, *, layers: int = EXTRA_LAYERS, dim: int = EXTRA_DIM,
                  output: str = "outputs") -> Path:
    """A slower copy of `src` with identical results (see streamparity.tools.onnx_faults.add_dead_work)."""
    from streamparity.tools import onnx_faults

    return onnx_faults.save(onnx_faults.add_dead_work(onnx_faults.load(src), output, layers=layers, dim=dim), dst)


ROUNDS = {"STREAMPARITY_BENCH_ROUNDS": "200"}


def _bench_args(tmp: Path, storage: Path, *args: str) -> list[str]:
    return ["suite/benchmarks/test_latency.py", "-m", "benchmark", "-p", "no:xdist", f"--rootdir={REPO}",
            "--backend=ort-cpu-fp32", f"--report-dir={tmp / 'report'}", f"--benchmark-storage=file://{storage}",
            "--benchmark-timer=time.process_time", *args]


def run_bench(tmp: Path, storage: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pytest", *_bench_args(tmp, storage, *args)]
    env = {**os.environ, **ROUNDS}
    env.pop("PYTEST_XDIST_WORKER", None)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180, env=env, check=False)


@pytest.fixture
def run_bench_here(run_pytest_inprocess: Callable[..., Ran]) -> Callable[..., Ran]:
    """:func:`run_bench` in this process."""

    def run(tmp: Path, storage: Path, *args: str) -> Ran:
        return run_pytest_inprocess(*_bench_args(tmp, storage, *args), cwd=REPO, env=ROUNDS)

    return run


def _out(p: subprocess.CompletedProcess[str] | Ran) -> str:
    return f"exit {p.returncode}\n--- stdout ---\n{p.stdout[-4000:]}\n--- stderr ---\n{p.stderr[-3000:]}"


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("release")
    storage = tmp / "benchmarks"
    p = run_bench(tmp, storage, "--benchmark-save=baseline")
    assert p.returncode == 0, _out(p)
    saved = list(storage.rglob("0001_baseline.json"))
    assert saved, f"no baseline saved under {storage}\n{_out(p)}"
    return storage


def test_baseline_records_machine_and_percentiles(baseline: Path) -> None:
    doc = json.loads(next(baseline.rglob("0001_baseline.json")).read_text())
    info = doc["machine_info"].get("streamparity")
    assert info is not None and "gpus" in info and "onnxruntime" in info, doc["machine_info"]
    (bench,) = doc["benchmarks"]
    extra = bench["extra_info"]
    assert {"p50_ms", "p95_ms", "p99_ms", "target_status"} <= set(extra), extra
    assert extra["p50_ms"] <= extra["p95_ms"] <= extra["p99_ms"]
    assert extra["target_enforced"] is False and "reported only" in extra["target_status"]


def test_same_model_passes_the_gate(baseline: Path, tmp_path: Path) -> None:
    p = run_bench(tmp_path, baseline, "--benchmark-compare=0001", GATE)
    assert p.returncode == 0, _out(p)
    assert "Comparing against benchmarks from" in p.stdout + p.stderr
    assert "Performance has regressed" not in p.stdout + p.stderr


def test_slower_model_fails_the_gate(baseline: Path, tmp_path: Path, run_bench_here: Callable[..., Ran]) -> None:
    import onnxruntime as ort

    slow = add_dead_work(TINY_ONNX, tmp_path / "slow.onnx")
    # same results, bit for bit, on a real chunk (the extra work is genuine but dead)
    from streamparity.contract.loading import load_contract
    from streamparity.reference.reader import ReferenceFile

    c = load_contract(REPO / "contracts" / "tiny-parakeet.contract.json")
    ref = ReferenceFile(c.resolve("reference"))  # type: ignore[arg-type]
    rec = ref.read(5)
    feeds = {n: rec.inputs[n] for n in c.input_names}
    outs = [ort.InferenceSession(str(m), providers=["CPUExecutionProvider"]).run(None, feeds)
            for m in (TINY_ONNX, slow)]
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    p = run_bench_here(tmp_path, baseline, f"--onnx={slow}", "--benchmark-compare=0001", GATE)
    text = p.stdout + p.stderr
    assert p.returncode != 0, "a ~4.5x slower model passed the median:50% release gate\n" + _out(p)
    assert "Performance has regressed" in text and "'median' has failed" in text, _out(p)


def test_missing_baseline_is_a_clear_usage_error(tmp_path: Path, run_bench_here: Callable[..., Ran]) -> None:
    p = run_bench_here(tmp_path, tmp_path / "empty-storage", "--benchmark-compare=0001", GATE)
    assert p.returncode == pytest.ExitCode.USAGE_ERROR, _out(p)
    assert "no baseline to compare with" in p.stderr and "--benchmark-save=baseline" in p.stderr, _out(p)
    assert "Traceback" not in p.stdout + p.stderr, _out(p)


def test_a_truncated_baseline_is_named_not_called_missing(baseline: Path, tmp_path: Path,
                                                           run_bench_here: Callable[..., Ran]) -> None:
    import shutil

    storage = tmp_path / "truncated"
    shutil.copytree(baseline, storage)
    saved = next(storage.rglob("0001_baseline.json"))
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    p = run_bench_here(tmp_path, storage, "--benchmark-compare=0001", GATE)
    assert p.returncode == pytest.ExitCode.USAGE_ERROR, _out(p)
    assert "is in the benchmark storage but cannot be read" in p.stderr and "0001_baseline.json" in p.stderr, _out(p)
    assert "JSONDecodeError" in p.stderr and "Traceback" not in p.stdout + p.stderr, _out(p)


def test_a_truncated_latest_baseline_is_not_replaced_by_an_older_one(baseline: Path, tmp_path: Path,
                                                                     run_bench_here: Callable[..., Ran]) -> None:
    """pytest-benchmark skips a saved run it cannot parse and would compare with the one before it in silence."""
    import shutil

    storage = tmp_path / "two"
    shutil.copytree(baseline, storage)
    saved = next(storage.rglob("0001_baseline.json"))
    newer = saved.with_name("0002_newer.json")
    newer.write_bytes(saved.read_bytes()[:100])
    p = run_bench_here(tmp_path, storage, "--benchmark-compare", GATE)
    assert p.returncode == pytest.ExitCode.USAGE_ERROR, _out(p)
    assert "the latest saved run is in the benchmark storage but cannot be read" in p.stderr, _out(p)
    assert "0002_newer.json" in p.stderr, _out(p)


def test_regression_is_one_line_and_a_recorded_failure(baseline: Path, tmp_path: Path,
                                                       run_bench_here: Callable[..., Ran]) -> None:
    """The failing gate is one line per benchmark (no PerformanceRegression traceback) and a failure in JUnit,
    summary.json and report.md, with the compared numbers."""
    slow = add_dead_work(TINY_ONNX, tmp_path / "slow.onnx")
    junit = tmp_path / "junit.xml"
    p = run_bench_here(tmp_path, baseline, f"--onnx={slow}", "--benchmark-compare=0001", GATE, f"--junitxml={junit}")
    text = p.stdout + p.stderr
    assert p.returncode == 1, _out(p)
    assert "Traceback" not in text and "PerformanceRegression" not in text, _out(p)
    lines = [ln for ln in text.splitlines() if "release gate:" in ln and "regressed" in ln]
    assert lines and "vs baseline" in lines[0] and "limit +50%" in lines[0], _out(p)
    assert 'failures="1"' in junit.read_text(), junit.read_text()[:2000]
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    (lat,) = summary["latency"]
    assert lat["outcome"] == "failed" and lat["release_gate"]["verdict"] == "fail", lat
    (check,) = lat["release_gate"]["checks"]
    assert check["field"] == "median" and check["change"] > 50 and check["baseline_ms"] > 0, check
    assert "Overall: **FAIL**" in (tmp_path / "report" / "report.md").read_text() or \
        "Overall: FAIL" in (tmp_path / "report" / "report.md").read_text()


def test_a_benchmark_without_a_baseline_entry_fails_the_gate(baseline: Path, tmp_path: Path,
                                                             run_bench_here: Callable[..., Ran]) -> None:
    """Baseline saved for ort-cpu-fp32, candidate run on ort-cpu-fp16: nothing to compare with is a failure."""
    p = run_bench_here(tmp_path, baseline, "--backend=ort-cpu-fp16", "--benchmark-compare=0001", GATE)
    assert p.returncode == 1, _out(p)
    assert "was not compared" in p.stdout and "has no result for it" in p.stdout, _out(p)


def test_a_gate_on_benchmarks_that_cannot_run_fails(baseline: Path, tmp_path: Path,
                                                    run_bench_here: Callable[..., Ran]) -> None:
    """Every selected benchmark skipped (TensorRT is not usable here): the gate compared nothing and fails."""
    cmd_args = ["--backend=trt-cuda-fp16", "--benchmark-compare=0001", GATE]
    p = run_bench_here(tmp_path, baseline, *cmd_args)
    assert p.returncode == 1, _out(p)
    assert "did not run, so it was not compared" in p.stdout, _out(p)


def test_gate_refuses_xdist_and_a_missing_compare(baseline: Path, tmp_path: Path,
                                                  run_bench_here: Callable[..., Ran]) -> None:
    p = run_bench_here(tmp_path, baseline, GATE)
    assert p.returncode == pytest.ExitCode.USAGE_ERROR, _out(p)
    assert "--benchmark-compare-fail needs --benchmark-compare" in p.stderr and "Traceback" not in p.stderr, _out(p)
    cmd = [sys.executable, "-m", "pytest", "suite/benchmarks/test_latency.py", "-m", "benchmark", "-n", "2",
           "--backend=ort-cpu-fp32", f"--benchmark-storage=file://{baseline}", "--benchmark-compare=0001", GATE,
           f"--report-dir={tmp_path / 'r'}"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert p.returncode == pytest.ExitCode.USAGE_ERROR and "cannot run under xdist" in p.stderr, _out(p)


def test_baseline_from_another_environment_compares_with_one_line(baseline: Path, tmp_path: Path) -> None:
    """A saved run whose machine info differs (another runner) is compared, with a one-line note of what differs;
    no INTERNALERROR although the storage lies outside the working directory."""
    other = tmp_path / "other"
    saved = next(baseline.rglob("0001_baseline.json"))
    dst = other / saved.parent.name / saved.name
    dst.parent.mkdir(parents=True)
    doc = json.loads(saved.read_text())
    doc["machine_info"]["node"] = "another-runner"
    dst.write_text(json.dumps(doc))
    # the point is the note and the comparison running, not the timing: a wide gate keeps a loaded machine's
    # noise (seen: +92% on a 2-core box running another suite) from failing it
    p = run_bench(tmp_path, other, "--benchmark-compare=0001", "--benchmark-compare-fail=median:1000%")
    text = p.stdout + p.stderr
    assert p.returncode == 0 and "INTERNALERROR" not in text, _out(p)
    note = [ln for ln in text.splitlines() if "saved on another machine" in ln]
    assert note and "node" in note[0] and len(note[0]) < 400, _out(p)


def test_a_baseline_missing_its_stats_is_a_usage_error(baseline: Path, tmp_path: Path,
                                                       run_bench_here: Callable[..., Ran]) -> None:
    """A saved run whose stats lack a figure (edited, or written by something else) is refused up front: it
    would end pytest-benchmark's own comparison table in a traceback, after a gate line that said PASS."""
    import json
    import shutil

    storage = tmp_path / "edited"
    shutil.copytree(baseline, storage)
    saved = next(storage.rglob("0001_baseline.json"))
    doc = json.loads(saved.read_text())
    del doc["benchmarks"][0]["stats"]["median"]
    saved.write_text(json.dumps(doc))
    p = run_bench_here(tmp_path, storage, "--benchmark-compare", "--benchmark-compare-fail=median:50%")
    out = _out(p)
    assert p.returncode == 4 and "has no numeric stats.median" in out and "Traceback" not in out, out
