"""The package's mypy run, started as soon as collection ends when its test is selected, in a process beside the
suite: on the 2-core machine mypy checks the package on one core (~35 s from a cold cache) while the tests before
it run on the other.  ``test_mypy_strict_on_the_package`` then waits for its result; the two other mypy runs reuse
its cache once it is done (one cache, one mypy at a time).  Not under xdist workers: there, the test runs mypy
itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_ID = "tests/test_static_checks.py::test_mypy_strict_on_the_package"


def tool_path(name: str) -> str | None:
    """A dev tool's executable (on PATH, or beside this Python), or None where it is not installed."""
    exe = shutil.which(name) or str(Path(sys.executable).with_name(name))
    return exe if os.path.exists(exe) else None


def package_command(mypy: str, cache_dir: str) -> list[str]:
    return [mypy, "--no-error-summary", "--cache-dir", cache_dir]


@dataclass
class EarlyRun:
    proc: subprocess.Popen[bytes]
    cache_dir: str
    out: Path

    def result(self, timeout: float = 600) -> tuple[int, str]:
        """(exit status, output) of the run, once it is done."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        return rc, self.out.read_text(errors="replace")


_KEY = pytest.StashKey[EarlyRun]()


def start(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workerinput") or _KEY in config.stash:
        return
    if not any(item.nodeid == TEST_ID for item in session.items):
        return
    mypy = tool_path("mypy")
    if mypy is None:
        return  # the test skips with its reason
    cache_dir = tempfile.mkdtemp(prefix="streamparity-mypy-cache-")
    out = Path(cache_dir) / "package-run.txt"
    with out.open("wb") as f:
        proc = subprocess.Popen(package_command(mypy, cache_dir), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    config.stash[_KEY] = EarlyRun(proc, cache_dir, out)


def get(config: pytest.Config) -> EarlyRun | None:
    return config.stash.get(_KEY, None)


def stop(config: pytest.Config) -> None:
    """At session end: a run still going (its test deselected by -x or an interrupt) is stopped, its cache removed."""
    run = config.stash.get(_KEY, None)
    if run is None:
        return
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait()
    shutil.rmtree(run.cache_dir, ignore_errors=True)
