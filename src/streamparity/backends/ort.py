"""ONNX Runtime backend: CPU (FP32, FP16 model variant) and the CUDA provider where present."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from streamparity.backends.base import Backend, Stream
from streamparity.backends.device_loop import BindOutput, BufferPool, DeviceLoopStream
from streamparity.backends.memory import DeviceTensor, HostStaging, Shape
from streamparity.backends.onnx_models import fp16_variant
from streamparity.contract.model import ROLE_AUDIO, Contract
from streamparity.contract.model_io import check_model_io
from streamparity.errors import BackendUnavailable, ContractError, ModelMismatch

_SOURCE_LOCATION = re.compile(r"[/\\][^\s:]+\.(?:h|hpp|cc|cpp):\d+ [^()]*\((?:[^()]|\([^()]*\))*\)\s*")
"""ONNX Runtime's C++ source location and function signature before the reason, in its load errors."""


def ort_reason(e: BaseException, limit: int = 600) -> str:
    """ONNX Runtime's error as one line, without its source location and C++ signature (the opset-99 error's
    reason comes after ~250 characters of signature), at most `limit` characters."""
    text = " ".join(_SOURCE_LOCATION.sub(" ", str(e)).split()) or "no message"
    return text if len(text) <= limit else text[:limit - 3] + "..."


class OrtBackend(Backend):
    kind = "ort"

    def __init__(self, contract: Contract, onnx_path: Path, *, precision: str = "fp32", device: str = "cpu",
                 cache_dir: Path | None = None, threads: int = 1) -> None:
        super().__init__(contract, precision, device)
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - dependency
            raise BackendUnavailable(f"onnxruntime is not installed ({e})") from None
        self._ort = ort
        providers: list[Any]
        if device == "cuda":
            preload = getattr(ort, "preload_dlls", None)
            if preload is not None:  # ORT >= 1.21: CUDA/cuDNN from the nvidia-* wheels, if that is where they are
                try:
                    preload()
                except Exception:  # best effort; the session check below decides
                    pass
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    "ONNX Runtime's CUDAExecutionProvider is not available (install onnxruntime-gpu on a CUDA host); "
                    f"providers here: {', '.join(ort.get_available_providers())}")
            cuda_opts: dict[str, Any] = {"device_id": _gpu_index()}
            if precision == "fp32" and contract.build.fp32_disable_tf32:
                cuda_opts["use_tf32"] = 0  # ORT's CUDA provider uses TF32 for FP32 matmuls and convs by default
            providers = [("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]
        elif device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            raise BackendUnavailable(f"unknown ONNX Runtime device {device!r}")
        model = onnx_path
        if precision == "fp16":
            model = fp16_variant(onnx_path, cache_dir or onnx_path.parent)
        elif precision != "fp32":
            raise BackendUnavailable(f"ONNX Runtime backend has no {precision} variant")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.model_path = model
        try:
            self.session = ort.InferenceSession(str(model), sess_options=so, providers=providers)
        except Exception as e:  # ORT raises its own exception types for unreadable or invalid models
            raise ModelMismatch(f"ONNX Runtime cannot load the model ({type(e).__name__}: {ort_reason(e)})",
                                file=str(model)) from None
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            # ORT falls back to the CPU, with only a log line, when the CUDA provider's libraries fail to load
            raise BackendUnavailable("ONNX Runtime could not start its CUDAExecutionProvider (CUDA or cuDNN libraries "
                                     "missing or mismatched) and fell back to "
                                     f"{', '.join(self.session.get_providers())}; nothing would run on the GPU")
        # extra outputs are the session's up-front check's to refuse: bisect runs models with intermediates exposed
        check_model_io(contract, onnx_path, self.session.get_inputs(), self.session.get_outputs(), extra_outputs=True)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._pool: BufferPool[Any] | None = None
        self._staging: HostStaging[Any] | None = None
        self._ptr: Callable[[Any], int] = int
        self.pinned_staging = os.environ.get("STREAMPARITY_PINNED_STAGING", "1") != "0"
        """On CUDA: the caches a closed loop compares come to the host through reused page-locked buffers
        (environment STREAMPARITY_PINNED_STAGING=0: into fresh pageable arrays, as before)."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self.session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, (np.asarray(r) for r in res)))

    def open_stream(self, initial: Mapping[str, np.ndarray], *, fetch_caches: bool = True) -> Stream:
        """On CUDA: caches stay on the GPU (IOBinding + the shared device loop); on CPU: host ping-pong."""
        if self.device != "cuda":
            return super().open_stream(initial, fetch_caches=fetch_caches)
        if self._pool is None:  # one set of device ops (one CUDA stream) for every stream of this backend
            ops, self._ptr = cuda_ops()
            self._pool, self._staging = BufferPool(ops), HostStaging(ops)
        ops = self._pool.ops
        runner = OrtIOBindingRunner(self, self._ptr, device_type="cuda", device_id=_gpu_index(), sync=ops.synchronize)
        return DeviceLoopStream(self.contract, ops, runner, self._pool, initial, fetch_caches=fetch_caches,
                                staging=self._staging if self.pinned_staging else None)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(onnxruntime=self._ort.__version__, providers=self.session.get_providers(),
                 model=str(self.model_path))
        return d


class OrtIOBindingRunner:
    """:class:`~streamparity.backends.device_loop.DeviceRunner` through ONNX Runtime's IOBinding.

    Inputs and outputs are bound to device buffers by pointer, so nothing crosses to the host.  Output
    shapes must be static once the batch is known (ORT would otherwise allocate them itself).  The same
    runner binds host buffers with ``device_type="cpu"``, which is how it is tested without a GPU.
    """

    timing_note = ("ONNX Runtime's run_with_iobinding blocks the host until its own stream is done, so "
                   "'compute' is that whole call: binding, host overhead and kernels")

    def __init__(self, backend: OrtBackend, ptr: Callable[[Any], int], *, device_type: str, device_id: int,
                 sync: Callable[[], None] | None = None) -> None:
        self.backend = backend
        self.ptr = ptr
        self.device_type = device_type
        self.device_id = device_id
        self.sync = sync

    def execute(self, inputs: Mapping[str, DeviceTensor[Any]], bind_output: BindOutput) -> dict[str, Shape]:
        c = self.backend.contract
        batch = inputs[c.input_by_role(ROLE_AUDIO).name].shape[0]
        io = self.backend.session.io_binding()
        for name, t in inputs.items():
            io.bind_input(name, self.device_type, self.device_id, t.dtype, list(t.shape), self.ptr(t.buf))
        shapes: dict[str, Shape] = {}
        for spec in c.outputs:
            try:
                shape = c.concrete_shape(spec, {"B": batch})
            except ContractError:
                raise BackendUnavailable(
                    f"IOBinding needs static output shapes; {spec.name} is {spec.shape_str()}") from None
            buf = bind_output(spec.name, shape)
            io.bind_output(spec.name, self.device_type, self.device_id, np.dtype(spec.dtype), list(shape),
                           self.ptr(buf))
            shapes[spec.name] = shape
        if self.sync is not None:
            self.sync()  # our copies ran on another stream
        self.backend.session.run_with_iobinding(io)
        return shapes


def cuda_ops() -> tuple[Any, Callable[[Any], int]]:
    """Device ops on this worker's GPU: cuda-python when present, else PyTorch."""
    try:
        from streamparity.backends.memory import CudartOps, load_cudart

        return CudartOps(load_cudart(), _gpu_index()), int
    except (BackendUnavailable, ImportError, RuntimeError):
        pass
    try:
        import torch

        from streamparity.backends.memory import TorchOps
    except ImportError:
        raise BackendUnavailable("device-resident ORT CUDA needs cuda-python or PyTorch with CUDA") from None
    if not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA GPU visible to PyTorch")
    return TorchOps(f"cuda:{_gpu_index()}"), lambda t: int(t.data_ptr())


def _gpu_index() -> int:
    from streamparity.environment import worker_gpu_index

    return worker_gpu_index()
