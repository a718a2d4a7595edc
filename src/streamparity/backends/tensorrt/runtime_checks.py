"""What the TensorRT-family runtime says about a plan it could not load, and TensorRT-RTX's runtime cache.

A plan that deserializes nowhere here is either unusable on this host (no driver, a compute capability the
plan was not built for: the parity tests skip with that text) or broken (a malformed plan, another version:
an error)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamparity.atomic import atomic_write_bytes

log = logging.getLogger("streamparity.tensorrt")

UNUSABLE_HERE = ("OLD_CUDA_DRIVER", "OLD_CUDA_RUNTIME", "UNSUPPORTED_CC", "CUDA_ERROR", "INSUFFICIENT_GPU_MEMORY")
BROKEN = ("MALFORMED_ENGINE", "VERSION_MISMATCH")
NO_DRIVER_MARKS = ("cudaError 35", "cudaError 100", "driver version is insufficient", "no CUDA-capable device")


def validity(trt: Any, runtime: Any, data: bytes) -> tuple[str, list[str]]:
    """(validity name, diagnostic names) from ``Runtime.get_engine_validity`` (TensorRT-RTX); ('', []) without it."""
    check = getattr(runtime, "get_engine_validity", None)
    if check is None:
        return "", []
    state, diag = check(data)
    enum = trt.EngineInvalidityDiagnostics
    names = [n for n in (*UNUSABLE_HERE, *BROKEN) if hasattr(enum, n) and int(diag) & int(getattr(enum, n))]
    return str(getattr(state, "name", state)), names


def cannot_run_reason(trt: Any, runtime: Any, logger: Any, data: bytes,
                      options: Mapping[str, Any]) -> tuple[bool, str]:
    """(unusable here rather than broken, the runtime's own words) after ``deserialize_cuda_engine`` failed."""
    errors = list(dict.fromkeys(logger.errors))
    state, diags = validity(trt, runtime, data)
    errors += [e for e in dict.fromkeys(logger.errors) if e not in errors]
    text = " | ".join(errors) or "deserialize_cuda_engine returned None"
    if state:
        text += f"; get_engine_validity: {state}" + (f" ({', '.join(diags)})" if diags else "")
    if "UNSUPPORTED_CC" in diags:
        targets = options.get("compute_capabilities") or ["portable default"]
        known = sorted(n for n in dir(trt.ComputeCapability) if n.startswith("SM"))
        text += (f"; the plan targets {', '.join(targets)}; this TensorRT-RTX supports "
                 f"{', '.join(known)}")
    broken = any(d in BROKEN for d in diags)
    no_driver = any(m in text for m in NO_DRIVER_MARKS)
    return (not broken and (no_driver or any(d in UNUSABLE_HERE for d in diags))), text


def runtime_cache_path(plan: Path) -> Path:
    return plan.with_suffix(".runtime-cache")


def load_runtime_cache(runtime_config: Any, plan: Path) -> Any:
    """TensorRT-RTX JIT-kernel cache beside the plan, attached to `runtime_config` (cold when absent or
    rejected: the runtime validates it against this GPU, driver and version)."""
    cache = runtime_config.create_runtime_cache()
    path = runtime_cache_path(plan)
    if path.is_file() and not cache.deserialize(path.read_bytes()):
        log.info("runtime cache %s does not match this GPU/driver/version; starting cold", path)
    if not runtime_config.set_runtime_cache(cache):
        log.warning("TensorRT-RTX refused the runtime cache for %s", plan)
    return cache


def save_runtime_cache(cache: Any, plan: Path) -> None:
    try:
        atomic_write_bytes(runtime_cache_path(plan), bytes(memoryview(cache.serialize())))
    except Exception as e:  # only costs JIT time on the next run
        log.warning("could not save the runtime cache of %s: %s", plan, e)
