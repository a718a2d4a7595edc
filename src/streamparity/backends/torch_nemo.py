"""PyTorch backend: the NeMo encoder itself (rebuilt from the contract's ``nemo_config``), on CPU or CUDA.

It runs ``cache_aware_stream_step`` exactly as the reference generator does, so on CPU FP32 it
reproduces the reference; on CUDA its streams keep the caches on the GPU through
:class:`~streamparity.backends.device_loop.DeviceLoopStream` with :class:`TorchOps`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamparity.backends.base import Backend, Stream
from streamparity.backends.device_loop import BindOutput, BufferPool, DeviceLoopStream, run_once
from streamparity.backends.memory import DeviceTensor, Shape, TorchOps, _torch_dtype
from streamparity.contract.model import (
    ROLE_AUDIO,
    ROLE_CACHE_CHANNEL,
    ROLE_CACHE_LEN,
    ROLE_CACHE_TIME,
    ROLE_ENCODED,
    ROLE_ENCODED_LEN,
    ROLE_LENGTH,
    Contract,
)
from streamparity.errors import BackendUnavailable, StreamparityError

if TYPE_CHECKING:
    import torch

    from streamparity.backends.base import BackendSpec


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise BackendUnavailable(f"PyTorch is not installed ({e}); pip install 'streamparity[nemo]'") from None
    return torch






class TorchNemoBackend(Backend):
    kind = "torch"

    def __init__(self, contract: Contract, encoder: Any, *, precision: str, device: str, config_path: Path) -> None:
        super().__init__(contract, precision, "cuda" if device.startswith("cuda") else "cpu")
        tm = _torch()
        self.torch = tm
        self.torch_device = tm.device(device)
        self.config_path = config_path
        self.encoder = encoder.half() if precision == "fp16" else encoder.float()
        self.float_dtype = tm.float16 if precision == "fp16" else tm.float32
        c = contract
        self.names = {r: c.input_by_role(r).name for r in (ROLE_AUDIO, ROLE_LENGTH, ROLE_CACHE_CHANNEL,
                                                            ROLE_CACHE_TIME, ROLE_CACHE_LEN)}
        self.out_names = {r: c.output_by_role(r).name for r in (ROLE_ENCODED, ROLE_ENCODED_LEN, ROLE_CACHE_CHANNEL,
                                                                ROLE_CACHE_TIME, ROLE_CACHE_LEN)}
        cfg = getattr(encoder, "streaming_cfg", None)
        default_drop = int(getattr(cfg, "drop_extra_pre_encoded", 0) or 0)
        self.drop = int(c.streaming.nemo.get("drop_extra_pre_encoded", default_drop))
        self.batch_first = c.cache_layout == "batch_first"
        self.out_dtypes = {o.name: np.dtype(o.dtype) for o in c.outputs}
        if self.device == "cuda":
            self.ops: TorchOps | None = TorchOps(device)
            self.pool: BufferPool[torch.Tensor] | None = BufferPool(self.ops)
        else:
            self.ops, self.pool = None, None

    def _layout(self, t: torch.Tensor) -> torch.Tensor:
        """Contract cache layout <-> NeMo's layers-first (an involution for 4-D caches)."""
        return t.transpose(0, 1).contiguous() if self.batch_first and t.dim() == 4 else t

    def step_tensors(self, x: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One NeMo streaming step on device tensors in contract layout; outputs in contract layout/dtypes."""
        n, o = self.names, self.out_names
        fd = self.float_dtype
        with self.torch.inference_mode():
            enc, enc_len, cc, ct, cl = self.encoder.cache_aware_stream_step(
                processed_signal=x[n[ROLE_AUDIO]].to(fd), processed_signal_length=x[n[ROLE_LENGTH]].long(),
                cache_last_channel=self._layout(x[n[ROLE_CACHE_CHANNEL]]).to(fd),
                cache_last_time=self._layout(x[n[ROLE_CACHE_TIME]]).to(fd),
                cache_last_channel_len=x[n[ROLE_CACHE_LEN]].long(), keep_all_outputs=False,
                drop_extra_pre_encoded=self.drop)
        raw = {o[ROLE_ENCODED]: enc, o[ROLE_ENCODED_LEN]: enc_len, o[ROLE_CACHE_CHANNEL]: self._layout(cc),
               o[ROLE_CACHE_TIME]: self._layout(ct), o[ROLE_CACHE_LEN]: cl}
        return {name: v.to(_torch_dtype(self.out_dtypes[name])).contiguous() for name, v in raw.items()}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.ops is not None and self.pool is not None:
            return run_once(self.contract, self.ops, TorchRunner(self, self.ops), self.pool, feeds)
        x = {k: self.torch.from_numpy(np.array(v)).to(self.torch_device) for k, v in feeds.items()}
        return {k: v.cpu().numpy() for k, v in self.step_tensors(x).items()}

    def open_stream(self, initial: Mapping[str, np.ndarray], *, fetch_caches: bool = True) -> Stream:
        if self.ops is None or self.pool is None:
            return super().open_stream(initial, fetch_caches=fetch_caches)
        return DeviceLoopStream(self.contract, self.ops, TorchRunner(self, self.ops), self.pool, initial,
                                fetch_caches=fetch_caches)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(torch=str(self.torch.__version__), nemo_config=str(self.config_path),
                 drop_extra_pre_encoded=self.drop)
        return d

    def close(self) -> None:
        if self.pool is not None:
            self.pool.free_all()


class TorchRunner:
    """:class:`~streamparity.backends.device_loop.DeviceRunner` for :class:`TorchNemoBackend` on CUDA."""

    def __init__(self, backend: TorchNemoBackend, ops: TorchOps) -> None:
        self.b = backend
        self.ops = ops

    def execute(self, inputs: Mapping[str, DeviceTensor[torch.Tensor]], bind_output: BindOutput
                ) -> dict[str, Shape]:
        ops = self.ops
        x = {name: ops.view(t.buf, t.shape, t.dtype) for name, t in inputs.items()}
        shapes: dict[str, Shape] = {}
        for name, value in self.b.step_tensors(x).items():
            shape = tuple(int(d) for d in value.shape)
            ops.view(bind_output(name, shape), shape, self.b.out_dtypes[name]).copy_(value)
            shapes[name] = shape
        return shapes


def create_torch_backend(spec: BackendSpec, contract: Contract, onnx: Path, opts: dict[str, Any]) -> Backend:
    """Registry factory; BackendUnavailable when torch, NeMo, a GPU or the encoder config is missing."""
    torch = _torch()
    if spec.precision not in ("fp32", "fp16"):
        raise BackendUnavailable(f"the PyTorch backend has no {spec.precision} mode")
    if spec.device == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailable(f"no CUDA GPU for PyTorch (torch {torch.__version__}, "
                                     f"built for CUDA {torch.version.cuda or 'none'})")
        from streamparity.environment import worker_gpu_index

        device = f"cuda:{int(opts.get('gpu_index', worker_gpu_index())) % torch.cuda.device_count()}"
        if contract.build.fp32_disable_tf32:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
    elif spec.precision == "fp16":
        raise BackendUnavailable("the PyTorch backend runs FP16 on CUDA only")
    else:
        device = "cpu"
    config_path = contract.resolve("nemo_config")
    if config_path is None:
        raise BackendUnavailable(f"contract {contract.path} has no model.nemo_config to rebuild the encoder from")
    try:
        from streamparity.tools.generator import build_encoder, load_config
    except ImportError as e:
        raise BackendUnavailable(f"streamparity.tools.generator is unavailable ({e})") from None
    try:
        import nemo  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(f"NeMo is not installed ({e}); pip install 'streamparity[nemo]'") from None
    try:
        encoder = build_encoder(load_config(config_path), device)
    except StreamparityError as e:
        raise BackendUnavailable(f"cannot rebuild the NeMo encoder: {e}") from None
    return TorchNemoBackend(contract, encoder, precision=spec.precision, device=device, config_path=config_path)
