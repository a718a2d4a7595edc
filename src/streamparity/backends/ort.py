"""ONNX Runtime backend: CPU (FP32, FP16 model variant) and the CUDA provider where present."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import Contract
from ..errors import BackendUnavailable, ModelMismatch
from .base import Backend

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


def fp16_variant(onnx_path: Path, cache_dir: Path) -> Path:
    """An FP16 copy of the model (weights and math in FP16, I/O kept FP32), cached by content hash."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
    out = cache_dir / f"{onnx_path.stem}.fp16-{digest}.onnx"
    if out.is_file():
        return out
    model = onnx.load(str(onnx_path))
    m16 = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    from ..reference import atomic_write_bytes

    atomic_write_bytes(out, m16.SerializeToString())
    return out


def check_model_io(contract: Contract, onnx_path: Path, inputs: list[Any], outputs: list[Any]) -> None:
    """The ONNX's I/O names, ranks, static dims and dtypes must agree with the contract."""
    file = str(onnx_path)
    got_in = {i.name: i for i in inputs}
    got_out = {o.name: o for o in outputs}
    for section, specs, got in (("inputs", contract.inputs, got_in), ("outputs", contract.outputs, got_out)):
        for spec in specs:
            if spec.name not in got:
                raise ModelMismatch(f"model has no {section[:-1]} {spec.name!r} (model {section}: "
                                    f"{', '.join(got)})", file=file, field=f"{section}.{spec.name}")
            node = got[spec.name]
            dtype = _ORT_DTYPES.get(node.type, node.type)
            if dtype != spec.dtype:
                raise ModelMismatch(f"{spec.name} is {dtype} in the model, {spec.dtype} in the contract",
                                    file=file, field=f"{section}.{spec.name}")
            shape = list(node.shape)
            if len(shape) != len(spec.shape):
                raise ModelMismatch(f"{spec.name} has rank {len(shape)} in the model ({shape}), contract says "
                                    f"{spec.shape_str()}", file=file, field=f"{section}.{spec.name}")
            for axis, (m, c) in enumerate(zip(shape, spec.shape)):
                if isinstance(m, int) and isinstance(c, int) and m != c:
                    raise ModelMismatch(f"{spec.name} dim {axis} is {m} in the model, {c} in the contract",
                                        file=file, field=f"{section}.{spec.name}")


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
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    "ONNX Runtime's CUDAExecutionProvider is not available (install onnxruntime-gpu on a CUDA host); "
                    f"providers here: {', '.join(ort.get_available_providers())}")
            providers = [("CUDAExecutionProvider", {"device_id": _gpu_index()}), "CPUExecutionProvider"]
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
        self.session = ort.InferenceSession(str(model), sess_options=so, providers=providers)
        check_model_io(contract, onnx_path, self.session.get_inputs(), self.session.get_outputs())
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        res = self.session.run(self.output_names, dict(feeds))
        return dict(zip(self.output_names, (np.asarray(r) for r in res)))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(onnxruntime=self._ort.__version__, providers=self.session.get_providers(),
                 model=str(self.model_path))
        return d


def _gpu_index() -> int:
    from ..devices import worker_gpu_index

    return worker_gpu_index()
