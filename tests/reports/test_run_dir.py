"""The report directory describes the run that wrote it: checked before any test runs, one run at a time, an
earlier run's files never left looking current, a killed run recognisable as incomplete."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from streamparity.reports.run_dir import RUN_FILE, ReportDirError, RunDir
from tests.conftest import Ran

SMALL = ("-m", "parity and functional", "--backend=ort-cpu-fp32", "--chunks=0-1", "-p", "no:xdist", "-q")
EARLIER_RUN = json.dumps({"streamparity_run": 1, "id": "0123456789ab", "started": "then", "pid": 1,
                          "complete": True})


def test_a_report_dir_that_is_a_file_is_a_usage_error_before_any_test(tmp_path: Path,
                                                                      run_pytest_inprocess: Callable[..., Ran]) -> None:
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    r = run_pytest_inprocess(*SMALL, f"--report-dir={f}")
    assert r.returncode == pytest.ExitCode.USAGE_ERROR, r.stdout[-2000:] + r.stderr[-2000:]
    assert "--report-dir is a file" in r.stderr and "passed" not in r.stdout


def test_a_report_dir_that_cannot_be_created_is_a_usage_error(tmp_path: Path,
                                                              run_pytest_inprocess: Callable[..., Ran]) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    r = run_pytest_inprocess(*SMALL, f"--report-dir={f / 'sub'}")
    assert r.returncode == pytest.ExitCode.USAGE_ERROR, r.stdout[-2000:] + r.stderr[-2000:]
    assert "cannot be written" in r.stderr and "Traceback" not in r.stderr


def test_an_earlier_runs_files_are_removed_and_the_new_summary_names_its_run(
        tmp_path: Path, run_pytest_inprocess: Callable[..., Ran]) -> None:
    d = tmp_path / "reports"
    (d / "bundles").mkdir(parents=True)
    (d / RUN_FILE).write_text(EARLIER_RUN)
    (d / "summary.json").write_text('{"verdict": "PASS", "stale": true}')
    (d / "report.md").write_text("stale")
    (d / "error_old-backend_closed_loop.png").write_bytes(b"")  # an older version's figure
    (d / "error_old-backend_functional.svg").write_text("<svg/>")
    (d / "bundles" / "old-backend-closed_loop-chunk007.npz").write_bytes(b"")
    (d / "bundles" / ".x.npz.123.tmp").write_bytes(b"")
    (d / ".summary.json.abc.tmp").write_bytes(b"")
    (d / "notes.txt").write_text("the user's own file")
    r = run_pytest_inprocess(*SMALL, f"--report-dir={d}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((d / "summary.json").read_text())
    run = json.loads((d / RUN_FILE).read_text())
    assert "stale" not in summary and summary["verdict"] == "PASS"
    assert summary["run"]["id"] == run["id"] and run["complete"] is True and "finished" in run
    assert run["id"] in (d / "report.md").read_text()
    assert not list((d / "bundles").iterdir()) and not (d / "error_old-backend_closed_loop.png").exists()
    assert not (d / "error_old-backend_functional.svg").exists()
    assert not list(d.glob(".*.tmp")) and (d / "notes.txt").read_text() == "the user's own file"


def test_a_run_that_never_finished_is_marked_incomplete(tmp_path: Path) -> None:
    d = tmp_path / "reports"
    (d).mkdir()
    (d / RUN_FILE).write_text(EARLIER_RUN)
    (d / "summary.json").write_text("{}")
    rd = RunDir(d)
    rd.open()  # ... and the process is killed before it writes its report
    run = json.loads((d / RUN_FILE).read_text())
    assert run["complete"] is False and run["id"] == rd.run_id and not (d / "summary.json").exists()
    rd._lock.release()


def test_a_second_run_on_the_same_report_dir_is_refused(tmp_path: Path,
                                                        run_pytest_inprocess: Callable[..., Ran]) -> None:
    d = tmp_path / "reports"
    holder = RunDir(d)
    holder.open()
    try:
        with pytest.raises(ReportDirError, match="another streamparity run"):
            RunDir(d).open()
        r = run_pytest_inprocess(*SMALL, f"--report-dir={d}")
        assert r.returncode == pytest.ExitCode.USAGE_ERROR, r.stdout[-2000:] + r.stderr[-2000:]
        assert f"run {holder.run_id}" in r.stderr and "own --report-dir" in r.stderr
    finally:
        holder.close(complete=True)


def test_files_no_run_wrote_are_never_removed_the_run_is_refused(tmp_path: Path,
                                                                 run_pytest_inprocess: Callable[..., Ran]) -> None:
    """A folder of the user's that holds a report.md (no run.json of a run): nothing in it is touched."""
    d = tmp_path / "docs"
    (d / "bundles").mkdir(parents=True)
    (d / "report.md").write_text("the user's own report")
    (d / "bundles" / "figures.npz").write_bytes(b"mine")
    r = run_pytest_inprocess(*SMALL, f"--report-dir={d}")
    assert r.returncode == pytest.ExitCode.USAGE_ERROR, r.stdout[-2000:] + r.stderr[-2000:]
    assert "holds bundles/figures.npz, report.md, which no streamparity run wrote" in r.stderr
    assert "Traceback" not in r.stderr and "passed" not in r.stdout
    assert sorted(p.name for p in d.rglob("*")) == ["bundles", "figures.npz", "report.md"]
    assert (d / "report.md").read_text() == "the user's own report"


def test_a_run_of_other_tests_leaves_no_report_dir(tmp_path: Path, run_pytest_inprocess: Callable[..., Ran]) -> None:
    t = tmp_path / "test_user.py"
    t.write_text("def test_mine():\n    assert True\n")
    d = tmp_path / "reports"
    r = run_pytest_inprocess(str(t), "-q", "-p", "no:randomly", "-p", "no:hypothesispytest", f"--rootdir={tmp_path}",
                             f"--report-dir={d}", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not d.exists()
