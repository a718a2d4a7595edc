"""Backend registry: ``kind-device-precision`` ids (``ort-cpu-fp32``, ``trt-cuda-fp16``) to factories."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..contract import Contract
from ..errors import BackendUnavailable
from .base import Backend

_SPEC = re.compile(r"^(?P<kind>[a-z]+)-(?P<device>cpu|cuda)-(?P<precision>fp32|fp16)$")
_SHORT = {"trt-fp32": "trt-cuda-fp32", "trt-fp16": "trt-cuda-fp16", "ort-fp32": "ort-cpu-fp32",
          "ort-fp16": "ort-cpu-fp16"}


@dataclass(frozen=True)
class BackendSpec:
    kind: str
    device: str
    precision: str

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.device}-{self.precision}"

    @property
    def needs_gpu(self) -> bool:
        return self.device == "cuda"


Factory = Callable[[BackendSpec, Contract, Path, dict[str, Any]], Backend]


def _ort(spec: BackendSpec, contract: Contract, onnx: Path, opts: dict[str, Any]) -> Backend:
    from .ort import OrtBackend

    return OrtBackend(contract, onnx, precision=spec.precision, device=spec.device,
                      cache_dir=opts.get("engine_dir"), threads=int(opts.get("threads", 1)))


def _trt(spec: BackendSpec, contract: Contract, onnx: Path, opts: dict[str, Any]) -> Backend:
    from .tensorrt import create_trt_backend

    backend: Backend = create_trt_backend(spec, contract, onnx, opts)
    return backend


def _torch(spec: BackendSpec, contract: Contract, onnx: Path, opts: dict[str, Any]) -> Backend:
    from .torch_nemo import create_torch_backend

    backend: Backend = create_torch_backend(spec, contract, onnx, opts)
    return backend


FACTORIES: dict[str, Factory] = {"ort": _ort, "trt": _trt, "torch": _torch}


def available_kinds() -> list[str]:
    return sorted(FACTORIES)


def parse_backend_spec(text: str) -> BackendSpec:
    """argparse-style validator: raises ArgumentTypeError with the accepted forms."""
    t = _SHORT.get(text.strip().lower(), text.strip().lower())
    m = _SPEC.match(t)
    if not m or m.group("kind") not in FACTORIES:
        raise argparse.ArgumentTypeError(
            f"invalid backend {text!r}: expected KIND-DEVICE-PRECISION with KIND in {available_kinds()}, "
            "DEVICE cpu|cuda, PRECISION fp32|fp16 (e.g. ort-cpu-fp32, trt-cuda-fp16)")
    if m.group("kind") == "trt" and m.group("device") != "cuda":
        raise argparse.ArgumentTypeError(f"invalid backend {text!r}: TensorRT runs on cuda only (trt-cuda-fp32, "
                                         "trt-cuda-fp16)")
    return BackendSpec(m.group("kind"), m.group("device"), m.group("precision"))


def create_backend(spec: BackendSpec, contract: Contract, onnx: Path, options: dict[str, Any] | None = None
                   ) -> Backend:
    """Build a backend; raises BackendUnavailable (a skip reason) when it cannot run here."""
    factory = FACTORIES.get(spec.kind)
    if factory is None:
        raise BackendUnavailable(f"unknown backend kind {spec.kind!r}")
    return factory(spec, contract, onnx, dict(options or {}))
