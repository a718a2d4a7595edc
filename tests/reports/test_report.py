"""The run's report end to end: ``pytest -m "closed_loop or stability"`` on the embedded model writes
summary.json, the PNG plots, report.md and JUnit XML properties; the same run on a backend with an
injected slow cache drift fails the stability gate (and says so in every one of them) while every
per-chunk test passes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamparity.reports import plots
from streamparity.reports.markdown import render, write_markdown_report
from tests.conftest import Ran, run_pytest


def is_svg(path: Path) -> bool:
    """A well-formed SVG document (what a browser or a code host renders)."""
    return ET.parse(path).getroot().tag == "{http://www.w3.org/2000/svg}svg"
SELECT = ["-m", "closed_loop or stability", "--chunks", "0-99", "-p", "no:xdist"]


def _run(tmp: Path, *extra: str) -> tuple[Any, dict[str, Any], Path]:
    report = tmp / "report"
    p = run_pytest(*SELECT, f"--report-dir={report}", f"--junitxml={tmp / 'junit.xml'}", *extra, timeout=240)
    summary = report / "summary.json"
    assert summary.is_file(), f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-2000:]}"
    return p, json.loads(summary.read_text()), report


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any], Path]:
    return _run(tmp_path_factory.mktemp("clean"), "--backend=ort-cpu-fp32", "--backend=ort-cpu-fp16")


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, Any], Path]:
    return _run(tmp_path_factory.mktemp("drift"), "-p", "streamparity.tools.drift_fault", "--backend=drift-cpu-fp32")


def _run_of(doc: dict[str, Any], backend: str) -> dict[str, Any]:
    (run,) = [r for r in doc["runs"] if r["backend"] == backend and r["mode"] == "closed_loop"]
    return run


def test_clean_run_writes_summary_plots_and_report(clean: tuple[Any, dict[str, Any], Path]) -> None:
    p, doc, report = clean
    assert p.returncode == 0, p.stdout[-3000:]
    for backend in ("ort-cpu-fp32", "ort-cpu-fp16"):
        run = _run_of(doc, backend)
        assert run["verdict"] == "PASS" and run["stability_outcome"] == "passed"
        st = run["stability"]["outputs"]
        assert st["verdict"] == "pass" and st["n"] == 100 and len(st["series"]) == 100
        assert {"slope", "stderr", "t", "early", "late", "ratio", "max_abs", "p99"} <= set(st)
        assert is_svg(report / plots.error_plot_name(backend, "closed_loop"))
    assert is_svg(report / plots.CACHE_LEN_PLOT)
    md = (report / "report.md").read_text()
    assert "**Overall: PASS**" in md
    for section in ("## Verdicts", "## Stability", "## Latency", "## Known issues", "## Versions and devices"):
        assert section in md
    assert f"]({plots.error_plot_name('ort-cpu-fp32', 'closed_loop')})" in md
    assert f"]({plots.CACHE_LEN_PLOT})" in md
    assert "| ort-cpu-fp32 | closed_loop | outputs | pass |" in md


def test_junit_xml_carries_stability_properties(clean: tuple[Any, dict[str, Any], Path]) -> None:
    _p, _doc, report = clean
    tree = ET.parse(report.parent / "junit.xml")
    cases = [c for c in tree.iter("testcase") if "test_closed_loop_stability" in c.get("name", "")]
    assert len(cases) == 2
    props = {p.get("name"): p.get("value") for p in cases[0].iter("property")}
    assert props["stability.verdict"] == "pass"
    assert "stability.outputs.slope" in props and "stability.outputs.stderr" in props


def test_drifted_run_fails_stability_only(drifted: tuple[Any, dict[str, Any], Path]) -> None:
    p, doc, report = drifted
    assert p.returncode == 1
    out = p.stdout
    assert "FAILED suite/parity/test_stability.py::test_closed_loop_stability[drift-cpu-fp32-closed_loop]" in out
    assert "FAILED suite/parity/test_parity.py::test_closed_loop[" not in out  # every chunk within tolerance
    assert "significantly above the limit 1e-07" in out and "slope" in out and "±" in out
    run = _run_of(doc, "drift-cpu-fp32")
    assert run["failed"] == 0 and run["chunks"] == 100
    assert run["verdict"] == "FAIL" and run["stability_outcome"] == "failed"
    assert run["stability"]["outputs"]["verdict"] == "fail"
    md = (report / "report.md").read_text()
    assert "**Overall: FAIL**" in md and "| drift-cpu-fp32 | outputs | **FAIL** |" in md
    assert is_svg(report / plots.error_plot_name("drift-cpu-fp32", "closed_loop"))


def test_report_from_a_minimal_summary(tmp_path: Path) -> None:
    """A summary without stability, plots or a loadable contract still renders (skips, unknown paths)."""
    doc: dict[str, Any] = {"streamparity_summary": 1, "contract": str(tmp_path / "missing.json"), "runs": [
        {"backend": "trt-cuda-fp16", "mode": "closed_loop", "verdict": "SKIP", "outputs": {}, "gates": [],
         "skip_reason": "no GPU", "cache_len": {}, "step_ms": {}}], "known_issues": [
        {"id": "fp16-softmax", "outputs": ["outputs"], "reason": "FP16 softmax overflow", "status": "open"}]}
    written = write_markdown_report(doc, tmp_path)
    assert written == [tmp_path / "report.md"]
    md = render(doc, {}, tmp_path)
    assert "| trt-cuda-fp16 | closed_loop | – | skip |" in md and "no GPU" in md
    assert "| fp16-softmax | outputs | open | FP16 softmax overflow |" in md


def test_one_chunk_run_says_its_stability_is_bounds_only(tmp_path: Path,
                                                        run_pytest_inprocess: Callable[..., Ran]) -> None:
    """`--chunks 17`: one point cannot give a trend; the report and the plot say so instead of `0 ± –`."""
    p = run_pytest_inprocess("-m", "stability", "--chunks", "17", "--backend=ort-cpu-fp32", f"--report-dir={tmp_path}",
                             "-p", "no:xdist")
    assert p.returncode == 0, p.stdout[-3000:]
    md = (tmp_path / "report.md").read_text()
    row = next(x for x in md.splitlines() if x.startswith("| ort-cpu-fp32 | outputs | "))
    assert "too few chunks; bounds only" in row and "0 ± –" not in md
    assert is_svg(tmp_path / plots.error_plot_name("ort-cpu-fp32", "closed_loop"))
    run = next(r for r in json.loads((tmp_path / "summary.json").read_text())["runs"] if r["mode"] == "closed_loop")
    assert plots._trend(run, "outputs", np.array([17.0]), np.array([1e-6])) is None  # no trend line drawn
