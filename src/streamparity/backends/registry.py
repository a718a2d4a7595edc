"""Backend registry: ``kind-device-precision`` ids (``ort-cpu-fp32``, ``trt-cuda-fp16``) to factories."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from streamparity.backends.base import Backend, BackendSpec
from streamparity.contract.model import Contract
from streamparity.errors import BackendUnavailable

_SPEC = re.compile(r"^(?P<kind>[a-z]+)-(?P<device>[a-z][a-z0-9]*)-(?P<precision>fp32|fp16)$")
_SHORT = {"trt-fp32": "trt-cuda-fp32", "trt-fp16": "trt-cuda-fp16", "ort-fp32": "ort-cpu-fp32",
          "ort-fp16": "ort-cpu-fp16"}


Factory = Callable[[BackendSpec, Contract, Path, dict[str, Any]], Backend]


def _ort(spec: BackendSpec, contract: Contract, onnx: Path, opts: dict[str, Any]) -> Backend:
    from streamparity.backends.ort import OrtBackend

    return OrtBackend(contract, onnx, precision=spec.precision, device=spec.device,
                      cache_dir=opts.get("engine_dir"), threads=int(opts.get("threads", 1)))


def _trt(spec: BackendSpec, contract: Contract, onnx: Path, opts: dict[str, Any]) -> Backend:
    from streamparity.backends.tensorrt.runner import create_trt_backend

    backend: Backend = create_trt_backend(spec, contract, onnx, opts)
    return backend


def _trtrtx(spec: BackendSpec, contract: Contract, onnx: Path, opts: dict[str, Any]) -> Backend:
    from streamparity.backends.tensorrt.runner import create_trt_backend

    backend: Backend = create_trt_backend(spec, contract, onnx, opts)
    return backend


def _torch(spec: BackendSpec, contract: Contract, onnx: Path, opts: dict[str, Any]) -> Backend:
    from streamparity.backends.torch_nemo import create_torch_backend

    backend: Backend = create_torch_backend(spec, contract, onnx, opts)
    return backend


_FACTORIES: dict[str, Factory] = {"ort": _ort, "trt": _trt, "trtrtx": _trtrtx, "torch": _torch}
_CUDA_ONLY = {"trt", "trtrtx"}
_NAMED: set[str] = set()  # kinds whose middle part is a runtime's name, not cpu|cuda (ext-NAME-fp32)


def register_backend(kind: str, factory: Factory, *, cuda_only: bool = False, replace: bool = False,
                     named: bool = False) -> None:
    """Add a backend kind: ``factory(spec, contract, onnx, options)`` builds a :class:`Backend` for
    ``KIND-DEVICE-PRECISION`` ids of that kind (or raises BackendUnavailable with a skip reason).  The public
    way to bring your own runtime; pytest plugins use the ``pytest_streamparity_backends`` hook, which calls this."""
    if not re.fullmatch(r"[a-z]+", kind):
        raise ValueError(f"backend kind {kind!r} must be lower-case letters only (it is the first part of an id)")
    if kind in _FACTORIES and not replace and _FACTORIES[kind] is not factory:
        raise ValueError(f"backend kind {kind!r} is already registered")
    _FACTORIES[kind] = factory
    if cuda_only:
        _CUDA_ONLY.add(kind)
    if named:  # ids KIND-NAME-PRECISION: NAME lower-case letters and digits, other than cpu and cuda
        _NAMED.add(kind)


def available_kinds() -> list[str]:
    return sorted(_FACTORIES)


def parse_backend_spec(text: str, *, check_kind: bool = True) -> BackendSpec:
    """argparse-style validator: raises ArgumentTypeError with the accepted forms.  ``check_kind=False`` checks
    the form only (command-line parsing, before plugins have registered their kinds)."""
    t = _SHORT.get(text.strip().lower(), text.strip().lower())
    m = _SPEC.match(t) if t.isascii() else None  # "İ".lower() and other non-ASCII letters are no kind names
    shown = repr(text[:40] + ("..." if len(text) > 40 else ""))
    if m and m.group("device") not in ("cpu", "cuda") and check_kind and m.group("kind") not in _NAMED:
        m = None
    if not m or (check_kind and m.group("kind") not in _FACTORIES):
        raise argparse.ArgumentTypeError(
            f"invalid backend {shown}: expected KIND-DEVICE-PRECISION with KIND in {available_kinds()}, "
            "DEVICE cpu|cuda (a runtime's NAME for ext and rec), PRECISION fp32|fp16 (e.g. ort-cpu-fp32, "
            "trt-cuda-fp16, ext-cpp-fp16)")
    if m.group("kind") in _CUDA_ONLY and m.group("device") != "cuda":
        k = m.group("kind")
        label = {"trt": "TensorRT", "trtrtx": "TensorRT-RTX"}.get(k, k)
        raise argparse.ArgumentTypeError(f"invalid backend {shown}: {label} runs on cuda "
                                         f"only ({k}-cuda-fp32, {k}-cuda-fp16)")
    return BackendSpec(m.group("kind"), m.group("device"), m.group("precision"))


def create_backend(spec: BackendSpec, contract: Contract, onnx: Path, options: dict[str, Any] | None = None
                   ) -> Backend:
    """Build a backend; raises BackendUnavailable (a skip reason) when it cannot run here."""
    factory = _FACTORIES.get(spec.kind)
    if factory is None:
        raise BackendUnavailable(f"unknown backend kind {spec.kind!r}")
    return factory(spec, contract, onnx, dict(options or {}))
