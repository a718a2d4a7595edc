"""The library is typed and linted: mypy (strict, with tensorrt-stubs) and ruff run as part of the suite."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests import early_mypy
from tests.conftest import ROOT


def _tool(name: str) -> str:
    exe = early_mypy.tool_path(name)
    if exe is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return exe


@pytest.fixture(scope="module")
def mypy_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One incremental cache for the three mypy runs of this module: the first one checks the standard library
    and numpy stubs, the others reuse them (a module whose stubs or options differ is checked again).  Where the
    package's run started at collection (:mod:`tests.early_mypy`), its cache, once that run is done."""
    early = early_mypy.get(request.config)
    if early is not None:
        early.result()
        return early.cache_dir
    return str(tmp_path_factory.mktemp("mypy-cache"))


@pytest.mark.slow
def test_mypy_strict_on_the_package(request, mypy_cache):
    early = early_mypy.get(request.config)
    if early is not None:  # started when collection ended, beside the tests before this one
        rc, out = early.result()
        assert rc == 0, out[-6000:]
        return
    r = subprocess.run(early_mypy.package_command(_tool("mypy"), mypy_cache), cwd=ROOT,
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_ruff_clean():
    r = subprocess.run([_tool("ruff"), "check", "src", "suite", "tests", "tools", "conftest.py"], cwd=ROOT,
                       capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stdout[-4000:]


@pytest.mark.slow
def test_tensorrt_backend_typechecks_against_stubs(tmp_path, mypy_cache):
    """backends/tensorrt.py under mypy --strict with the real (repaired) TensorRT stubs, not `trt: Any`."""
    import importlib.metadata

    try:
        importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs)")
    mypy = _tool("mypy")
    stubs = tmp_path / "stubs"
    prep = subprocess.run([sys.executable, str(ROOT / "tools" / "prepare_tensorrt_stubs.py"), str(stubs)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert prep.returncode == 0, prep.stdout[-2000:] + prep.stderr[-2000:]
    assert (stubs / "tensorrt" / "__init__.pyi").is_file(), prep.stdout
    env = {**__import__("os").environ, "MYPYPATH": str(stubs)}
    # the stubs must really be in force: a misuse of the TensorRT API has to be reported
    probe = tmp_path / "probe_trt_misuse.py"
    probe.write_text("import tensorrt as trt\n\n\ndef f(b: trt.Builder) -> None:\n"
                     "    b.create_network(\"not flags\")\n    b.no_such_method()\n")
    cmd = [mypy, "--strict", "--no-warn-unused-ignores", "--cache-dir", mypy_cache]
    r = subprocess.run([*cmd, str(probe)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 1 and "no_such_method" in r.stdout and "create_network" in r.stdout, \
        "mypy did not see the TensorRT stubs:\n" + r.stdout[-3000:] + r.stderr[-2000:]
    # `# type: ignore[misc]` on the ILogger subclass is needed where trt is Any, so unused ignores are allowed
    r = subprocess.run([*cmd, "src/streamparity/backends/tensorrt/"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


@pytest.mark.slow
def test_tensorrt_rtx_run_path_typechecks_against_generated_stubs(tmp_path, mypy_cache):
    """The build and run code under mypy --strict against stubs generated from the installed TensorRT-RTX (it
    ships none): a misuse of the RTX API is reported, and the only errors in the package are the TensorRT 10
    weak-typed FP16 flags that TensorRT-RTX does not have (that branch never runs there: networks are strongly
    typed)."""
    import importlib.util
    import os
    import re

    if importlib.util.find_spec("tensorrt_rtx") is None:
        pytest.skip("tensorrt_rtx is not installed (pip install -e '.[rtx]')")
    mypy = _tool("mypy")
    stubs = tmp_path / "stubs"
    prep = subprocess.run([sys.executable, str(ROOT / "tools" / "prepare_tensorrt_rtx_stubs.py"), str(stubs),
                           "--as-tensorrt"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert prep.returncode == 0, prep.stdout[-2000:] + prep.stderr[-2000:]
    env = {**os.environ, "MYPYPATH": str(stubs)}
    cmd = [mypy, "--no-warn-unused-ignores", "--cache-dir", mypy_cache]
    probe = tmp_path / "probe_rtx_misuse.py"
    probe.write_text("import tensorrt_rtx as trt\n\n\ndef f(c: trt.IBuilderConfig) -> int:\n"
                     "    c.set_flag(trt.BuilderFlag.FP16)\n    return c.get_compute_capability(0)\n")
    r = subprocess.run([*cmd, "--strict", str(probe)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600, check=False)
    assert r.returncode == 1 and '"FP16"' in r.stdout and "ComputeCapability" in r.stdout, r.stdout[-3000:]
    r = subprocess.run([*cmd, "src/streamparity/backends/tensorrt/"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600, check=False)
    errors = [line for line in r.stdout.splitlines() if ": error:" in line]
    unexpected = [e for e in errors if not re.search(r'has no attribute "(FP16|OBEY_PRECISION_CONSTRAINTS)"', e)]
    assert not unexpected and len(errors) == 2, r.stdout[-4000:] + r.stderr[-2000:]
