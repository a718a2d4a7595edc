"""Device discovery: GPU names and versions for the report header, and per-xdist-worker GPU choice."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from functools import lru_cache
from typing import Any


def worker_gpu_index() -> int:
    """GPU for this pytest-xdist worker: worker gwN uses GPU N mod count (0 when serial)."""
    wid = os.environ.get("PYTEST_XDIST_WORKER", "")
    m = re.fullmatch(r"gw(\d+)", wid)
    count = len(gpu_names()) or 1
    return int(m.group(1)) % count if m else 0


@lru_cache(maxsize=1)
def gpu_names() -> tuple[str, ...]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ()
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def _version(mod: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:
        return None


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": list(gpu_names()),
    }
    for pkg in ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "torch", "nemo-toolkit",
                "pytest", "pytest-benchmark"):
        v = _version(pkg)
        if v:
            env[pkg] = v
    return env
