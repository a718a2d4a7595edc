"""pytest-benchmark integration: machine info for saved runs, and the release gate's up-front baseline check."""

from __future__ import annotations

from typing import Any

import pytest

from streamparity.environment import environment


def machine_info(machine_info: dict[str, Any]) -> None:
    """GPU names and runtime versions go into pytest-benchmark's saved machine info."""
    env = environment()
    machine_info["streamparity"] = {"gpus": list(env["gpus"]), **{
        k: env[k] for k in ("onnxruntime", "onnxruntime-gpu", "onnxruntime_providers", "tensorrt", "torch", "numpy")
        if k in env}}


def check_baseline(session: pytest.Session) -> None:
    """``--benchmark-compare-fail`` without a saved baseline is a clear usage error up front (pytest-benchmark
    would only warn, run every benchmark, then stop with a bare usage error)."""
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is None or not getattr(bs, "compare", None) or not getattr(bs, "compare_fail", None):
        return
    if getattr(bs, "compared_mapping", None) or hasattr(session.config, "workerinput"):
        return
    which = "the latest saved run" if bs.compare is True else f"a saved run matching {bs.compare!r}"
    raise pytest.UsageError(
        f"streamparity release gate: no baseline to compare with: {which} was not found in the benchmark "
        f"storage {bs.storage}.\n  Save a baseline first (same machine, same benchmark selection), e.g.\n"
        "    pytest -m benchmark -p no:xdist --backend=ID --benchmark-save=baseline\n"
        "  then gate a candidate with the same --backend selection\n"
        "    pytest -m benchmark -p no:xdist --backend=ID --onnx=CANDIDATE.onnx --benchmark-compare "
        "--benchmark-compare-fail=median:50%\n"
        "  (--benchmark-storage must name the same folder in both runs)")
