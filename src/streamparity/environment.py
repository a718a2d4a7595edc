"""Device discovery: GPU names and versions for the report header, and per-xdist-worker GPU choice."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from typing import Any


def usable_cores() -> int:
    """The cores this process may run on (xdist workers, CPU quotas and affinity masks count), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worker_gpu_index() -> int:
    """GPU for this pytest-xdist worker: worker gwN uses GPU N mod count (0 when serial)."""
    wid = os.environ.get("PYTEST_XDIST_WORKER", "")
    m = re.fullmatch(r"gw(\d+)", wid)
    count = len(gpu_names()) or 1
    return int(m.group(1)) % count if m else 0


def placement(device: str) -> str:
    """Where this process runs a backend of `device`: the xdist worker (``main`` when serial) and, for CUDA,
    the GPU it picks (``gw1 cuda:1 NVIDIA H100 80GB HBM3``).  Recorded per chunk, so a merged summary shows
    which worker and GPU judged what."""
    worker = os.environ.get("PYTEST_XDIST_WORKER") or "main"
    if device != "cuda":
        return f"{worker} {device}"
    names = gpu_names()
    idx = worker_gpu_index()
    return f"{worker} cuda:{idx}" + (f" {names[idx]}" if idx < len(names) else "")


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


def _normalized(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


@lru_cache(maxsize=1)
def _installed() -> dict[str, str]:
    """Normalized distribution name -> version, from the ``NAME-VERSION.dist-info`` (or ``.egg-info``) folder names
    on ``sys.path``, the first one found, as importlib finds it: one directory listing per path entry, where
    ``importlib.metadata.version`` walks every entry again for each name (~2 ms each)."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as listing:
                names = [d.name for d in listing]
        except OSError:  # not a folder (a zip, a missing entry)
            continue
        for n in names:
            stem = n[:-len(".dist-info")] if n.endswith(".dist-info") else \
                n[:-len(".egg-info")] if n.endswith(".egg-info") else None
            if stem:
                name, sep, version = stem.partition("-")
                if sep and version:
                    found.setdefault(_normalized(name), version.split("-")[0])
    return found


def installed_version(dist: str) -> str | None:
    """The installed version of distribution `dist` (``None`` when it is not installed)."""
    return _installed().get(_normalized(dist))


_MODULES = {"numpy": "numpy", "onnx": "onnx", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt",
            "torch": "torch", "nemo-toolkit": "nemo"}
"""Distribution name -> the module whose ``__version__`` is what actually runs."""


def _module_version(dist: str) -> str | None:
    """The version of the module that ``import`` resolves to, where it is loaded (or cheap to load: the hard
    dependencies).  Installed-distribution metadata can disagree: an ``onnxruntime-gpu`` found first on
    ``PYTHONPATH`` shadows an installed CPU ``onnxruntime`` whose metadata still says its own version."""
    import importlib

    name = _MODULES.get(dist)
    if name is None:
        return None
    mod = sys.modules.get(name)
    if mod is None and dist in ("numpy", "onnxruntime"):  # onnx: its metadata (importing it costs ~0.7 s)
        try:
            mod = importlib.import_module(name)
        except Exception:
            return None
    v = getattr(mod, "__version__", None) if mod is not None else None
    return str(v) if v else None


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
        v = _module_version(pkg) or installed_version(pkg)
        if v:
            env[pkg] = v
    try:
        import onnxruntime

        env["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
    except Exception:
        pass
    return env
