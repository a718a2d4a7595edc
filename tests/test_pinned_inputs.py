"""Inputs pinned for the run: a reference (or model, contract) that changes while the suite judges it fails the
tests that follow, with one line naming the file, and summary.json records it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, TINY_CONTRACT, TINY_ONNX, TINY_REFERENCE

TOUCHER = '''
import os
def pytest_runtest_teardown(item):
    if item.name.startswith("test_functional[") and not os.environ.get("_TOUCHED"):
        os.environ["_TOUCHED"] = "1"
        with open(os.environ["STREAMPARITY_TEST_TOUCH"], "ab") as f:
            f.write(b"\\n")
'''


def test_a_reference_changed_during_the_run_fails_what_follows(tmp_path: Path) -> None:
    ref = tmp_path / "reference.jsonl"
    shutil.copy(TINY_REFERENCE, ref)
    (tmp_path / "toucher.py").write_text(TOUCHER)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "STREAMPARITY_TEST_TOUCH": str(ref)}
    env.pop("PYTEST_XDIST_WORKER", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", "parity and functional", "-p", "toucher",
                        "-p", "no:xdist", "-q", f"--contract={TINY_CONTRACT}", f"--onnx={TINY_ONNX}",
                        f"--reference={ref}", "--backend=ort-cpu-fp32", "--chunks=0-2",
                        f"--report-dir={tmp_path / 'r'}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=env, check=False)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-2000:]
    assert f"reference {ref} changed during the run" in r.stdout, r.stdout[-3000:]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["inputs"]["changed_during_run"] and summary["inputs"]["reference"]["path"] == str(ref)
