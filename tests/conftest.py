"""Shared helpers for streamparity's own tests."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import io
import os
import pkgutil
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamparity.pytest_plugin.options import PATH_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
TINY_CONTRACT = ROOT / "contracts" / "tiny-parakeet.contract.json"
TINY_ONNX = ROOT / "fixtures" / "tiny" / "encoder.onnx"
TINY_REFERENCE = ROOT / "fixtures" / "tiny" / "reference.jsonl"

# pytester runs the plugin's own pytest sessions in this process (``run_pytest_inprocess``): no interpreter start,
# no second import of numpy, onnxruntime and pytest per run.
pytest_plugins = ["pytester"]


@pytest.fixture(scope="session", autouse=True)
def _own_memo_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What streamparity.memo remembers during the self-tests (and in their subprocesses) stays in a folder of
    theirs, not in the user's ~/.cache.  A fixture, not a configure hook: this conftest is loaded for
    ``pytest -m parity`` too, whose runs use the user's memo as a user's would."""
    before = os.environ.get("STREAMPARITY_CACHE_DIR")
    os.environ["STREAMPARITY_CACHE_DIR"] = str(tmp_path_factory.mktemp("memo"))
    yield
    if before is None:
        os.environ.pop("STREAMPARITY_CACHE_DIR", None)
    else:
        os.environ["STREAMPARITY_CACHE_DIR"] = before


def pytest_collection_finish(session: pytest.Session) -> None:
    if any(item.nodeid.startswith("tests/test_static_checks.py::") for item in session.items):
        from tests import early_mypy

        early_mypy.start(session)  # the package's mypy run, beside the tests before it


def pytest_sessionfinish(session: pytest.Session) -> None:
    if "tests.early_mypy" in sys.modules:
        sys.modules["tests.early_mypy"].stop(session.config)


def join_path_options(args: tuple[str, ...] | list[str]) -> list[str]:
    """``--reference PATH`` -> ``--reference=PATH``, as the README tells users to write path options."""
    out: list[str] = []
    it = iter(args)
    for a in it:
        out.append(f"{a}={next(it)}" if a in PATH_OPTIONS else a)
    return out


_REPORT_ROOT: list[str] = []  # this process's folder of report directories, removed when it exits


def fresh_report_dir() -> str:
    """A new, empty report directory for one run, inside a folder of this process's that goes when it exits
    (a self-test run leaves nothing in the temp folder)."""
    if not _REPORT_ROOT:
        _REPORT_ROOT.append(tempfile.mkdtemp(prefix="streamparity-selftest-"))
        atexit.register(shutil.rmtree, _REPORT_ROOT[0], ignore_errors=True)
    return tempfile.mkdtemp(prefix="reports-", dir=_REPORT_ROOT[0])


def run_pytest(*args: str, cwd: Path = ROOT, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run the suite in a subprocess, as a user would.  Without --report-dir the run gets a fresh one of its own:
    a report directory belongs to one run at a time (concurrent runs on one directory are refused)."""
    args = tuple(join_path_options(args))
    if not any(a.startswith("--report-dir") for a in args):
        args = (*args, f"--report-dir={fresh_report_dir()}")
    env = dict(os.environ)
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess: for what only a whole process shows (the console script, its exit status as a
    process, stdin, the environment).  Everything else uses :func:`run_cli_inprocess`."""
    return subprocess.run([sys.executable, "-m", "streamparity.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)


@dataclass
class Ran:
    """What an in-process run left: the fields of ``subprocess.CompletedProcess`` that the tests read."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def fresh_process_state() -> Iterator[None]:
    """The module-level tables a run fills, put back afterwards as a new process would have them: backend kinds
    that ``-p`` plugins register (``-p streamparity.tools.drift_fault`` adds ``drift``), the ``--runtime`` and
    ``--recorded`` tables, the memo of file digests (keyed by path, size and mtime), and hypothesis's
    initialisation counter (a run outside the repository's pytest.ini loads hypothesis's plugin, and one stopped at
    configure never balances it: every later hypothesis test would warn of side effects at import time)."""
    from streamparity.backends import onnx_models, registry
    from streamparity.backends.external import options as ext

    tables = (registry._FACTORIES, registry._CUDA_ONLY, registry._NAMED, ext._RUNTIMES, ext._RECORDED)
    saved = [t.copy() for t in tables]
    hyp = sys.modules.get("_hypothesis_globals")
    initializing = getattr(hyp, "in_initialization", None)
    onnx_models._memo.clear()
    try:
        yield
    finally:
        for table, copy in zip(tables, saved):
            table.clear()
            table.update(copy)  # type: ignore[attr-defined]
        onnx_models._memo.clear()
        if hyp is not None and initializing is not None:
            hyp.in_initialization = initializing


def run_cli_inprocess(*args: str, cwd: Path = ROOT) -> Ran:
    """``streamparity ARGS`` as ``main(argv)`` in this process, with what ``python -m streamparity.cli`` does
    around it: the exit status of SystemExit (argparse's usage errors), an uncaught exception as a traceback on
    stderr and status 1 (so "no traceback" checks still see one), stdout and stderr captured."""
    from streamparity.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    here = Path.cwd()
    os.chdir(cwd)
    try:
        with fresh_process_state(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if e.code is not None and not isinstance(e.code, int):
                    print(e.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
    return Ran(int(code), out.getvalue(), err.getvalue())


_PRELOAD = ("numpy", "onnx", "onnx.helper", "onnx.numpy_helper", "onnxruntime", "ml_dtypes", "google.protobuf",
            "pybase64", "filelock", "jsonschema", "pytest_benchmark.plugin", "xdist.plugin", "xml.etree.ElementTree")


@pytest.fixture(scope="session")
def inprocess_modules() -> None:
    """Import, once and before any pytester fixture, what an in-process run would import: pytester drops the
    modules imported after its snapshots when a run (and its fixture) ends, and a C extension imported a second
    time (onnx's protobuf registry) aborts the process.  Session scope: set up before function-scoped pytester."""
    import streamparity

    for name in _PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    for info in pkgutil.walk_packages(streamparity.__path__, "streamparity."):
        if not info.name.endswith("__main__"):  # streamparity.cli.__main__ runs the CLI
            with contextlib.suppress(ImportError):
                importlib.import_module(info.name)


@pytest.fixture
def run_pytest_inprocess(inprocess_modules: None, pytester: pytest.Pytester,
                         monkeypatch: pytest.MonkeyPatch) -> Callable[..., Ran]:
    """:func:`run_pytest` in this process (pytester's ``runpytest_inprocess``), from ``cwd`` (the repository),
    with ``env`` added to the environment for that run.  pytester puts back sys.modules, sys.path and the
    working directory; :func:`fresh_process_state` the plugin's module-level tables."""

    def run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> Ran:
        args = tuple(join_path_options(args))
        if not any(a.startswith("--report-dir") for a in args):
            args = (*args, f"--report-dir={fresh_report_dir()}")
        with monkeypatch.context() as mp, fresh_process_state():
            mp.delenv("PYTEST_XDIST_WORKER", raising=False)
            for k, v in (env or {}).items():
                mp.setenv(k, v)
            mp.chdir(cwd)
            r = pytester.runpytest_inprocess(*args)
        return Ran(int(r.ret), "".join(f"{ln}\n" for ln in r.outlines), "".join(f"{ln}\n" for ln in r.errlines))

    return run


@pytest.fixture(scope="session")
def tiny_contract():
    from streamparity.contract.loading import load_contract

    return load_contract(TINY_CONTRACT)
