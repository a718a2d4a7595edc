"""Shared helpers for streamparity's own tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from streamparity.pytest_plugin.options import PATH_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
TINY_CONTRACT = ROOT / "contracts" / "tiny-parakeet.contract.json"
TINY_ONNX = ROOT / "fixtures" / "tiny" / "encoder.onnx"
TINY_REFERENCE = ROOT / "fixtures" / "tiny" / "reference.jsonl"


def join_path_options(args: tuple[str, ...] | list[str]) -> list[str]:
    """``--reference PATH`` -> ``--reference=PATH``, as the README tells users to write path options."""
    out: list[str] = []
    it = iter(args)
    for a in it:
        out.append(f"{a}={next(it)}" if a in PATH_OPTIONS else a)
    return out


def run_pytest(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run the suite in a subprocess, as a user would.  Without --report-dir the run gets a fresh one of its own:
    a report directory belongs to one run at a time (concurrent runs on one directory are refused)."""
    args = tuple(join_path_options(args))
    if not any(a.startswith("--report-dir") for a in args):
        args = (*args, f"--report-dir={tempfile.mkdtemp(prefix='streamparity-reports-')}")
    env = dict(os.environ)
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamparity.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def tiny_contract():
    from streamparity.contract.loading import load_contract

    return load_contract(TINY_CONTRACT)
