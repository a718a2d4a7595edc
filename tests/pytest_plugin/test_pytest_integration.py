"""The user-facing pytest run: ids, markers, failure messages with repro lines, summary, xdist.

The runs are in this process (``run_pytest_inprocess``, pytester) where what is checked is the plugin's
behaviour; xdist and the contract named in the environment keep a real ``python -m pytest`` subprocess."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex

import pytest

from streamparity.tools import onnx_faults as F
from tests.conftest import ROOT, TINY_ONNX, run_pytest

HAS_XDIST = importlib.util.find_spec("xdist") is not None


@pytest.fixture(scope="module")
def stuck_len_onnx(tmp_path_factory):
    p = tmp_path_factory.mktemp("faults") / "stuck.onnx"
    return F.save(F.passthrough(F.load(TINY_ONNX), "cache_last_channel_next_len", "cache_last_channel_len"), p)


def test_ids_and_markers_are_readable(run_pytest_inprocess):
    r = run_pytest_inprocess("-m", "parity", "--collect-only", "-q", "--chunks", "17")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test_closed_loop[ort-cpu-fp16]" in r.stdout  # a closed loop is one run: one test per backend
    assert "test_functional[ort-cpu-fp32-chunk017]" in r.stdout
    assert "test_closed_loop_gates[ort-cpu-fp32-closed_loop]" in r.stdout
    r = run_pytest_inprocess("-m", "parity", "--collect-only", "-q", "--chunks", "17", "--closed-loop-items=chunk")
    assert "test_closed_loop[ort-cpu-fp16-chunk017]" in r.stdout and "test_closed_loop[ort-cpu-fp16]" not in r.stdout


def test_clean_run_passes_and_writes_summary(tmp_path, run_pytest_inprocess):
    r = run_pytest_inprocess("-m", "parity", "--chunks", "0-29", "--report-dir", str(tmp_path), "-q")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "streamparity summary" in r.stdout
    doc = json.loads((tmp_path / "summary.json").read_text())
    modes = {(run["backend"], run["mode"]): run["verdict"] for run in doc["runs"]}
    want = {(b, m): "PASS" for b in ("ort-cpu-fp32", "ort-cpu-fp16") for m in ("functional", "closed_loop")}
    assert {k: v for k, v in modes.items() if k[0].startswith("ort")} == want
    trt = [run for run in doc["runs"] if run["backend"].startswith("trt")]
    if importlib.util.find_spec("tensorrt") is None or not hasattr(__import__("tensorrt"), "Builder"):
        # no TensorRT here: its tests are reported as skipped, with the reason, never as passed
        assert trt and all(run["verdict"] == "SKIP" and "tensorrt" in run["skip_reason"] for run in trt)
        assert "SKIPPED" in r.stdout and "tensorrt is not installed" in r.stdout
    assert doc["reference_check"]["ok"] is True


def test_report_header_lists_versions_and_devices(run_pytest_inprocess):
    r = run_pytest_inprocess("-m", "parity", "--collect-only", "--chunks", "0")
    head = r.stdout
    assert "streamparity 0.1.0: contract" in head and "versions: onnxruntime" in head
    assert "devices:" in head


def test_failure_names_backend_mode_chunk_output_tolerance_and_repro(tmp_path, stuck_len_onnx, run_pytest_inprocess):
    r = run_pytest_inprocess("-m", "parity and closed_loop", "--onnx", str(stuck_len_onnx), "--backend", "ort-cpu-fp32",
                   "--chunks", "3", "--report-dir", str(tmp_path), "-q")
    assert r.returncode == 1
    out = r.stdout
    assert "[ort-cpu-fp32 closed_loop chunk 3] CONTRACT VIOLATION cache_last_channel_next_len" in out
    assert "requires" in out
    repro = [ln for ln in out.splitlines() if ln.startswith("repro: pytest ")]
    assert repro, out[-3000:]
    # the repro command reruns just that case and fails the same way
    args = shlex.split(repro[0][len("repro: "):])[1:]
    again = run_pytest_inprocess(*args, "-q", "--report-dir", str(tmp_path / "again"))
    assert again.returncode == 1
    assert re.search(r"1 failed", again.stdout), again.stdout[-2000:]
    assert "[ort-cpu-fp32 closed_loop chunk 3] CONTRACT VIOLATION" in again.stdout


def test_bad_backend_option_is_a_usage_error(run_pytest_inprocess):
    r = run_pytest_inprocess("-m", "parity", "--backend", "ort-gpu-fp99", "--collect-only")
    assert r.returncode == 4
    assert "invalid backend 'ort-gpu-fp99'" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_contract_is_a_usage_error(tmp_path, run_pytest_inprocess):
    r = run_pytest_inprocess("-m", "parity", "--contract", str(tmp_path / "none.json"), "--collect-only")
    assert r.returncode == 4
    assert "none.json: contract file not found" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


@pytest.mark.skipif(not HAS_XDIST, reason="pytest-xdist is not installed")
def test_xdist_gives_the_same_verdicts_as_serial(tmp_path, stuck_len_onnx):
    common = ["-m", "parity", "--onnx", str(stuck_len_onnx), "--chunks", "0-20", "-q"]
    serial = run_pytest(*common, "--report-dir", str(tmp_path / "serial"))
    para = run_pytest(*common, "-n", "2", "--report-dir", str(tmp_path / "xdist"))

    def verdicts(d):
        doc = json.loads((tmp_path / d / "summary.json").read_text())
        return {(r["backend"], r["mode"]): (r["verdict"], r["passed"], r["warned"], r["failed"],
                                            {o: v["series"] for o, v in r["outputs"].items()})
                for r in doc["runs"]}

    assert serial.returncode == para.returncode == 1
    assert verdicts("serial") == verdicts("xdist")
    # the controller's summary merges both workers' chunks, and says which worker judged how many
    merged = json.loads((tmp_path / "xdist" / "summary.json").read_text())["runs"]
    workers = {place.split()[0] for r in merged for place in r["placements"]}
    assert workers == {"gw0", "gw1"}, merged[0]["placements"]
    for r in merged:
        assert sum(r["placements"].values()) == r["chunks"]
    serial_runs = json.loads((tmp_path / "serial" / "summary.json").read_text())["runs"]
    assert {p for r in serial_runs for p in r["placements"]} == {"main cpu"}
    count = re.search(r"(\d+) failed, (\d+) passed", serial.stdout)
    assert count is not None and count.groups() == re.search(r"(\d+) failed, (\d+) passed", para.stdout).groups()


def test_root_is_repository():
    assert (ROOT / "pytest.ini").is_file()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--onnx", str(ROOT / "fixtures" / "tiny" / "encoder_config.json")], "not a readable ONNX model"),
        (["--offline-reference", str(TINY_ONNX)], "not an offline reference .npz"),
        (["--reference", str(ROOT / "fixtures")], "reference is a directory, not a file"),
        (["--chunks", "999"], "--chunks 999 selects no chunk of the reference (0..299)"),
        (["--backend", "trt-cpu-fp32"], "TensorRT runs on cuda only"),
        (["--backend", "ort-cpu-int8"], "invalid backend 'ort-cpu-int8'"),
    ],
    ids=["onnx-not-a-model", "offline-not-npz", "reference-is-dir", "chunks-outside", "trt-on-cpu", "int8"],
)
def test_bad_inputs_are_one_usage_error(args, needle, run_pytest_inprocess):
    r = run_pytest_inprocess("-m", "parity", *args, "--collect-only", "-q")
    out = r.stdout + r.stderr
    assert r.returncode == 4, out[-2000:]
    assert needle in out and "Traceback" not in out


def test_contract_by_name_in_the_environment():
    import os
    import subprocess
    import sys

    env = {**os.environ, "STREAMPARITY_CONTRACT": "no-such-contract"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", "parity", "--collect-only", "-q"], cwd=ROOT,
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode == 4 and "$STREAMPARITY_CONTRACT: unknown contract 'no-such-contract'" in r.stderr


def test_require_backends_turns_skips_into_failures(tmp_path, run_pytest_inprocess):
    if importlib.util.find_spec("tensorrt") is not None and hasattr(__import__("tensorrt"), "Builder"):
        pytest.skip("TensorRT is installed here")
    r = run_pytest_inprocess("-m", "parity and closed_loop", "--backend", "trt-cuda-fp32", "--chunks", "0",
                   "--require-backends", "--report-dir", str(tmp_path), "-q")
    assert r.returncode == 1 and "(--require-backends)" in r.stdout


def test_failures_past_the_first_few_are_one_line_and_write_no_bundle(stuck_len_onnx, tmp_path,
                                                                       run_pytest_inprocess):
    """A run whose every chunk fails: the first --max-chunk-failures chunks in full with bundles, the rest one
    line each (with their repro line); the summary table names the first cause."""
    r = run_pytest_inprocess("-m", "parity and functional", "--onnx", str(stuck_len_onnx), "--backend", "ort-cpu-fp32",
                   "--chunks", "0-7", "--max-chunk-failures=3", f"--report-dir={tmp_path}", "-p", "no:xdist", "-q")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    # The failure messages themselves, not pytest's short summary (which repeats them whole when $CI is set).
    one_line = [ln for ln in r.stdout.splitlines()
                if "-- failing chunk" in ln and "(--max-chunk-failures)" in ln and not ln.startswith("FAILED ")]
    assert len(one_line) == 5 and "failing chunk 4 of 8" in one_line[0] and "repro: pytest" in one_line[0]
    assert len(list((tmp_path / "bundles").glob("*.npz"))) == 3
    assert "contract invariants" in r.stdout and "8 chunk(s) violate, first @chunk 0" in r.stdout
    r = run_pytest_inprocess("-m", "parity and functional", "--onnx", str(stuck_len_onnx), "--backend", "ort-cpu-fp32",
                   "--chunks", "0-7", "--max-chunk-failures=3", "--all-bundles", f"--report-dir={tmp_path / 'all'}",
                   "-p", "no:xdist", "-q")
    assert len(list((tmp_path / "all" / "bundles").glob("*.npz"))) == 8


def test_a_failing_closed_loop_is_one_test_naming_each_failing_chunk(stuck_len_onnx, tmp_path, run_pytest_inprocess):
    """The closed loop is one test per backend: its failure names every failing chunk, the first
    --max-chunk-failures in full with a bundle and both repro lines, later ones one line each; the summary counts
    chunks, not tests."""
    r = run_pytest_inprocess("-m", "parity and closed_loop and not stability", "--onnx", str(stuck_len_onnx),
                             "--backend", "ort-cpu-fp32", "--chunks", "0-7", "--max-chunk-failures=3",
                             f"--report-dir={tmp_path}", "-p", "no:xdist", "-q")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    out = r.stdout
    assert "FAILED suite/parity/test_parity.py::test_closed_loop[ort-cpu-fp32]" in out
    assert "[ort-cpu-fp32 closed_loop] 8 of 8 chunks fail: 0-7" in out
    chunk_lines = set(re.findall(r"--chunks=(\S+)", out))
    assert {"0", "1", "2"} <= chunk_lines and "3" not in chunk_lines
    bundle_lines = {ln for ln in out.splitlines() if ln.startswith("repro: streamparity repro ")}  # $CI repeats
    assert len(bundle_lines) == 3 and len(list((tmp_path / "bundles").glob("*.npz"))) == 3
    assert "past the first 3 (--max-chunk-failures), one line each, no bundle:" in out
    assert all(f"[ort-cpu-fp32 closed_loop chunk {k}] CONTRACT VIOLATION" in out for k in range(3, 8))
    assert "repro (every failing chunk): pytest 'suite/parity/test_parity.py::test_closed_loop[ort-cpu-fp32]'" in out
    assert "--chunks=0-7" in out
    runs = json.loads((tmp_path / "summary.json").read_text())["runs"]
    assert [(x["mode"], x["chunks"], x["failed"]) for x in runs] == [("closed_loop", 8, 8)]
    r = run_pytest_inprocess("-m", "parity and closed_loop and not stability", "--onnx", str(stuck_len_onnx),
                             "--backend", "ort-cpu-fp32", "--chunks", "0-7", "--max-chunk-failures=3", "--all-bundles",
                             "--closed-loop-items=chunk", f"--report-dir={tmp_path / 'all'}", "-p", "no:xdist", "-q")
    assert len(list((tmp_path / "all" / "bundles").glob("*.npz"))) == 8
    assert "test_closed_loop[ort-cpu-fp32-chunk007]" in r.stdout and "--closed-loop-items=chunk" in r.stdout


def test_closed_loop_items_is_validated(run_pytest_inprocess):
    r = run_pytest_inprocess("-m", "parity", "--collect-only", "-q", "--closed-loop-items=window")
    assert r.returncode == 4 and "invalid choice 'window': use run or chunk" in r.stderr


def test_a_run_with_tests_of_its_own_is_not_frozen(tmp_path, run_pytest_inprocess) -> None:
    """gc.freeze only in a run of parity tests alone: another test's garbage collection must behave as always,
    also after a parity run in the same process left its freeze in place (gc_policy)."""
    parity = run_pytest_inprocess("-m", "parity", "--collect-only", "-q", f"--report-dir={tmp_path / 'r'}")
    assert parity.returncode == 0, parity.stdout + parity.stderr
    t = tmp_path / "test_gc_user.py"
    t.write_text("import gc, weakref\n\n\nclass Node:\n    pass\n\n\n"
                 "def test_a_dropped_cycle_is_collected():\n"
                 "    a, b = Node(), Node()\n    a.b, b.a = b, a\n    r = weakref.ref(a)\n    del a, b\n"
                 "    gc.collect()\n    assert r() is None and gc.get_freeze_count() == 0\n")
    r = run_pytest_inprocess(str(t), "-q", "-p", "no:randomly", "-p", "no:cacheprovider", f"--rootdir={tmp_path}",
                             cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    # nor does a run of other tests write a parity report (it used to check the reference and write report.md)
    assert "streamparity: wrote" not in r.stdout and not (tmp_path / "reports" / "summary.json").exists()


def test_chunks_given_twice_are_joined_not_replaced(run_pytest_inprocess) -> None:
    r = run_pytest_inprocess("-m", "parity and functional", "--backend=ort-cpu-fp32", "--chunks=0-1",
                             "--chunks=5", "--collect-only", "-q")
    assert r.returncode == 0, r.stdout + r.stderr
    ids = [line.split("[")[1].rstrip("]") for line in r.stdout.splitlines() if "test_functional[" in line]
    assert ids == ["ort-cpu-fp32-chunk000", "ort-cpu-fp32-chunk001", "ort-cpu-fp32-chunk005"], r.stdout


def test_an_installation_without_shipped_contracts_still_runs_other_tests(tmp_path, monkeypatch,
                                                                          run_pytest_inprocess) -> None:
    """An installed wheel holds no contracts/ or fixtures/: a pytest run of the user's own tests must not fail on
    the plugin's missing default; a test that asks for the parity session fails with one line saying why."""
    monkeypatch.setattr("streamparity.contract.shipped.contracts_folder", lambda: tmp_path / "not-installed")
    t = tmp_path / "test_mine.py"
    t.write_text("def test_mine():\n    assert True\n\n\ndef test_needs_parity(parity):\n    pass\n")
    # outside the repository's pytest.ini: hypothesis's plugin is left out by hand (a run stopped at configure
    # would leave its initialisation counter raised, and every later hypothesis test warning)
    quiet = ("-q", "-p", "no:randomly", "-p", "no:hypothesispytest", f"--rootdir={tmp_path}")
    r = run_pytest_inprocess(str(t), *quiet, cwd=tmp_path)
    assert r.returncode == 1 and "1 passed, 1 error" in r.stdout, r.stdout + r.stderr
    assert "ships no contracts" in r.stdout and "pass --contract=PATH" in r.stdout and "Traceback" not in r.stdout
    bad = run_pytest_inprocess(str(t), *quiet, f"--contract={tmp_path / 'nope.json'}", cwd=tmp_path)
    assert bad.returncode == pytest.ExitCode.USAGE_ERROR and "contract file not found" in bad.stderr  # given: at once
