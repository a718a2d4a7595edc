"""The two TensorRT-family runtimes the TensorRT backend drives, and every place their APIs differ.

TensorRT (``tensorrt``, 10.x/11.x) and TensorRT-RTX (``tensorrt_rtx``, 1.x) share the builder, parser and
runtime API that :mod:`~streamparity.backends.tensorrt.loader` and :mod:`~streamparity.backends.tensorrt.runner`
are written against.  They differ in:

- module name and version numbering: TensorRT-RTX 1.7 is newer than TensorRT 10, so versions are never
  compared across flavors and the engine key names the builder module with its own version;
- typing: TensorRT-RTX networks are always strongly typed (no FP16 / OBEY_PRECISION_CONSTRAINTS builder
  flags), so FP16 goes through an FP16 copy of the ONNX with the contract's FP32 layers kept FP32;
- TF32: TensorRT-RTX still exposes the TF32 builder flag (on by default) and the contract's TF32-off is applied
  the same way, but it has no weak-typed precision flags beside it;
- targets: TensorRT-RTX builds ahead of time on a CPU for compute-capability targets (none given: its portable
  default), so its plans do not depend on the build host's GPU; TensorRT builds for the GPU it runs on;
- caches: TensorRT-RTX's timing cache is a no-op (and warns), it has a runtime cache for JIT kernels instead.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from streamparity.errors import BackendUnavailable


@dataclass(frozen=True)
class Flavor:
    kind: str
    """Backend kind in ids (``trt-cuda-fp16``, ``trtrtx-cuda-fp16``)."""
    module: str
    label: str
    install_hint: str
    strongly_typed_only: bool
    builds_without_gpu: bool
    compute_capability_targets: bool
    timing_cache: bool
    runtime_cache: bool

    def typing_mode(self, trt: Any, precision: str) -> str:
        """'strong' where the builder has no weak-typed FP16 (TensorRT 11, TensorRT-RTX), else 'weak'."""
        if self.strongly_typed_only:
            return "strong"
        return "strong" if precision == "fp16" and not hasattr(trt.BuilderFlag, "FP16") else "weak"

    def version(self, trt: Any) -> str:
        return str(getattr(trt, "__version__", "unknown"))


TENSORRT = Flavor(kind="trt", module="tensorrt", label="TensorRT",
                  install_hint="tensorrt is not installed (pip install tensorrt on a CUDA host)",
                  strongly_typed_only=False, builds_without_gpu=False, compute_capability_targets=False,
                  timing_cache=True, runtime_cache=False)
TENSORRT_RTX = Flavor(kind="trtrtx", module="tensorrt_rtx", label="TensorRT-RTX",
                      install_hint="tensorrt_rtx is not installed (pip install -e '.[rtx]')",
                      strongly_typed_only=True, builds_without_gpu=True, compute_capability_targets=True,
                      timing_cache=False, runtime_cache=True)
FLAVORS = {f.kind: f for f in (TENSORRT, TENSORRT_RTX)}

_bound: dict[str, ModuleType] = {}


def import_flavor(flavor: Flavor) -> ModuleType:
    """Import the flavor's module or raise BackendUnavailable (type stubs alone do not count).

    The build and run code binds one TensorRT-family module per process (its module global ``trt``), so a
    second flavor in the same process is refused with that reason instead of silently mixing libraries."""
    if flavor.module in _bound:
        return _bound[flavor.module]
    try:
        mod = importlib.import_module(flavor.module)
    except ImportError as e:
        raise BackendUnavailable(f"{flavor.install_hint}: {e}") from None
    if not hasattr(mod, "Builder"):
        where = ", ".join(str(p) for p in getattr(mod, "__path__", [])) or "?"
        raise BackendUnavailable(f"{flavor.install_hint}: `import {flavor.module}` found only type stubs ({where})")
    other = [k for k in _bound if k != flavor.module]
    if other:
        raise BackendUnavailable(f"{flavor.label} cannot be used in a process that already loaded {other[0]}; "
                                 "run the two backends in separate pytest runs")
    _bound[flavor.module] = mod
    return mod


def bound_module() -> ModuleType | None:
    return next(iter(_bound.values()), None)
