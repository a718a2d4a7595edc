"""TensorRT backend (TensorRT 10 and 11 Python API, CUDA memory through cuda-python).

Build: ONNX parser -> one optimization profile per contract profile -> FP32 (TF32 off when the contract
says so) or FP16 (TensorRT 10: FP16 flag with matching layers and softmax / normalization pinned to FP32;
TensorRT 11, which has no weak typing: a strongly typed network over an FP16 copy of the ONNX with the
same layers kept FP32).  Plans go through :mod:`streamparity.backends.tensorrt.engine_cache`, keyed by the ONNX bytes,
TensorRT version, GPU and every option above, with a shared timing cache.

Run: device buffers allocated once at the max profile shapes; streams keep their caches on the GPU
(:class:`~streamparity.backends.device_loop.DeviceLoopStream`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamparity.backends.base import Backend, Stream
from streamparity.backends.device_loop import BindOutput, BufferPool, DeviceLoopStream, run_once
from streamparity.backends.memory import CudartOps, DeviceTensor, Shape, gpu_count, load_cudart, nbytes_of
from streamparity.backends.tensorrt.engine_cache import CacheEntry, get_or_build, key_material
from streamparity.backends.tensorrt.loader import _make_logger, build_options, build_plan, load_tensorrt
from streamparity.contract.model import ROLE_AUDIO, Contract
from streamparity.errors import BackendUnavailable, ModelMismatch

if TYPE_CHECKING:  # the real module is bound by load_tensorrt() at run time
    import tensorrt as trt

    from streamparity.backends.base import BackendSpec

log = logging.getLogger("streamparity.tensorrt")



# -- availability -------------------------------------------------------------------------------------










# -- CUDA device ops (DeviceOps[int]) -----------------------------------------------------------------




# -- build ---------------------------------------------------------------------------------------------




















# -- runtime -------------------------------------------------------------------------------------------


def dims(d: trt.Dims) -> Shape:
    return tuple(int(d[i]) for i in range(len(d)))


def numpy_dtype(t: trt.DataType) -> np.dtype[Any]:
    table = {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64, "BOOL": np.bool_,
             "INT8": np.int8, "UINT8": np.uint8}
    for name, np_type in table.items():
        if t == getattr(trt.DataType, name, None):
            return np.dtype(np_type)
    raise ModelMismatch(f"engine tensor type {t} has no numpy equivalent")


def choose_profile(ranges: Sequence[Mapping[str, tuple[Shape, Shape, Shape]]], shapes: Mapping[str, Shape],
                   prefer: str) -> int:
    """First profile whose min <= shape <= max for every input, one whose opt equals `prefer`'s shape first."""
    fits = [i for i, r in enumerate(ranges)
            if all(n not in r or (len(s) == len(r[n][0]) and all(a <= x <= b for a, x, b in
                                                                   zip(r[n][0], s, r[n][2], strict=True)))
                   for n, s in shapes.items())]
    if not fits:
        want = {n: list(s) for n, s in shapes.items() if n == prefer}
        have = [{n: f"{list(r[n][0])}..{list(r[n][2])}" for n in want if n in r} for r in ranges]
        raise ValueError(f"no optimization profile accepts shape {want}; profiles allow {have}")
    exact = [i for i in fits if prefer in ranges[i] and tuple(ranges[i][prefer][1]) == shapes.get(prefer)]
    return exact[0] if exact else fits[0]


class TrtRunner:
    """:class:`~streamparity.backends.device_loop.DeviceRunner` over one execution context."""

    def __init__(self, backend: TrtBackend, outputs: Sequence[str] | None = None) -> None:
        self.b = backend
        self.outputs = list(backend.output_names if outputs is None else outputs)
        self.active = -1

    def execute(self, inputs: Mapping[str, DeviceTensor[int]], bind_output: BindOutput) -> dict[str, Shape]:
        b = self.b
        ctx = b.context
        shapes = {n: t.shape for n, t in inputs.items()}
        p = choose_profile(b.ranges, shapes, b.audio_name)
        if p != self.active:
            if not ctx.set_optimization_profile_async(p, b.ops.handle):
                raise RuntimeError(f"TensorRT could not switch to optimization profile {p} ({b.profile_names[p]})")
            self.active = p
        for name in b.input_names:
            t = inputs[name]
            if not ctx.set_input_shape(name, t.shape):
                lo, _, hi = b.ranges[p][name]
                raise ValueError(f"TensorRT rejected shape {list(t.shape)} for input {name!r} (profile "
                                 f"{b.profile_names[p]!r} allows {list(lo)}..{list(hi)})")
            ctx.set_tensor_address(name, t.buf)
        out: dict[str, Shape] = {}
        for name in self.outputs:
            shape = dims(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output {name!r} has a data-dependent shape {list(shape)}; not supported")
            ctx.set_tensor_address(name, bind_output(name, shape))
            out[name] = shape
        if not ctx.execute_async_v3(b.ops.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed: " + " | ".join(b.logger.errors[-3:]))
        return out


class TrtBackend(Backend):
    kind = "trt"

    def __init__(self, contract: Contract, onnx: Path, precision: str, opts: Mapping[str, Any]) -> None:
        super().__init__(contract, precision, "cuda")
        load_tensorrt()
        rt = load_cudart()
        count, why = gpu_count(rt)
        if count == 0:
            raise BackendUnavailable(f"no CUDA GPU is available for TensorRT ({why or 'no device found'})")
        from streamparity.environment import worker_gpu_index

        self.ops = CudartOps(rt, int(opts.get("gpu_index", worker_gpu_index())) % count)
        self.pool: BufferPool[int] = BufferPool(self.ops)
        self.onnx = onnx
        self.logger = _make_logger()
        self.runtime = trt.Runtime(self.logger)
        self.gpu_name, self.compute_capability = self.ops.gpu()
        typing_mode = "strong" if precision == "fp16" and not hasattr(trt.BuilderFlag, "FP16") else "weak"
        self.options = build_options(contract, precision, typing_mode)
        material = key_material(onnx=onnx, builder="tensorrt", builder_version=str(trt.__version__),
                                gpu_name=self.gpu_name, compute_capability=self.compute_capability,
                                options=self.options)
        engine_dir = Path(opts.get("engine_dir") or onnx.parent / "engines")
        self._engine: Any = None
        self.entry: CacheEntry = get_or_build(
            engine_dir, onnx.stem, material, lambda timing: build_plan(onnx, contract, self.options, timing),
            rebuild=bool(opts.get("rebuild_engines")), verify_fn=self._deserialize,
            fresh_after=opts.get("rebuild_since"))
        self.engine: trt.ICudaEngine = self._loaded_engine()
        self._check_io()
        self.context: trt.IExecutionContext = self.engine.create_execution_context()
        self._reserve_buffers()
        self.runner = TrtRunner(self)

    def _deserialize(self, data: bytes) -> None:
        engine = self.runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise RuntimeError("deserialize_cuda_engine failed: " + (" | ".join(self.logger.errors[-3:]) or "?"))
        self._engine = engine

    def _loaded_engine(self) -> Any:
        if self._engine is None:  # pragma: no cover - verify_fn has run on the fast path and after builds
            self._deserialize(self.entry.read_plan())
        return self._engine

    def _check_io(self) -> None:
        e = self.engine
        names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        ins = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        plan = str(self.entry.plan_path)
        for section, specs, got in (("inputs", self.contract.inputs, ins), ("outputs", self.contract.outputs, outs)):
            for spec in specs:
                if spec.name not in got:
                    raise ModelMismatch(f"engine has no {section[:-1]} {spec.name!r} (engine {section}: "
                                        f"{', '.join(got)})", file=plan, field=f"{section}.{spec.name}")
                dtype = numpy_dtype(e.get_tensor_dtype(spec.name))
                if dtype != np.dtype(spec.dtype):
                    raise ModelMismatch(f"{spec.name} is {dtype} in the engine, {spec.dtype} in the contract",
                                        file=plan, field=f"{section}.{spec.name}")
        self.input_names = [s.name for s in self.contract.inputs]
        self.output_names = [s.name for s in self.contract.outputs]
        self.audio_name = self.contract.input_by_role(ROLE_AUDIO).name
        self.profile_names = [str(p["name"]) for p in self.options["profiles"]]
        self.ranges: list[dict[str, tuple[Shape, Shape, Shape]]] = []
        for p in range(e.num_optimization_profiles):
            r: dict[str, tuple[Shape, Shape, Shape]] = {}
            for n in self.input_names:
                lo, opt, hi = (dims(d) for d in e.get_tensor_profile_shape(n, p))
                r[n] = (lo, opt, hi)
            self.ranges.append(r)
        while len(self.profile_names) < len(self.ranges):
            self.profile_names.append(f"#{len(self.profile_names)}")

    def _reserve_buffers(self) -> None:
        """Allocate every buffer once, at the largest shapes any profile allows."""
        cap: dict[str, int] = {}
        dt = {s.name: np.dtype(s.dtype) for s in (*self.contract.inputs, *self.contract.outputs)}
        for p, r in enumerate(self.ranges):
            if not self.context.set_optimization_profile_async(p, self.ops.handle):
                raise RuntimeError(f"cannot select optimization profile {p}")
            for n in self.input_names:
                hi = r[n][2]
                if not self.context.set_input_shape(n, hi):
                    raise ValueError(f"TensorRT rejected max shape {list(hi)} for input {n!r}")
                cap[n] = max(cap.get(n, 0), nbytes_of(hi, dt[n]))
            for n in self.output_names:
                shape = dims(self.context.get_tensor_shape(n))
                if any(d < 0 for d in shape):
                    raise ModelMismatch(f"output {n!r} has a data-dependent shape; not supported",
                                        file=str(self.entry.plan_path))
                cap[n] = max(cap.get(n, 0), nbytes_of(shape, dt[n]))
        self.ops.synchronize()
        for n in self.input_names:
            self.pool.get("in:" + n, cap[n])
        for out_name, in_name in self.contract.cache_feeds().items():
            for half in (0, 1):
                self.pool.get(f"pp:{in_name}:{half}", max(cap[in_name], cap[out_name]))
            if self.contract.streaming.cache_output_time_dim == "dynamic_pad_to_input":
                self.pool.get("scratch:" + out_name, cap[out_name])
        for n in self.output_names:
            self.pool.get("out:" + n, cap[n])

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_once(self.contract, self.ops, self.runner, self.pool, feeds)

    def engine_outputs(self) -> dict[str, np.dtype[Any]]:
        """Every output tensor of the engine with its dtype, in engine order."""
        e = self.engine
        names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        return {n: numpy_dtype(e.get_tensor_dtype(n)) for n in names
                if e.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT}

    def run_all_outputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every engine output, the marked intermediates of an instrumented ONNX included (for bisection).

        Buffers for the extra outputs come from the same pool (allocated on first use, reused after).
        Shape-tensor outputs live in host memory in TensorRT and are refused with their names: mark
        only floating-point tensors (what ``streamparity bisect`` does for TensorRT)."""
        outputs = self.engine_outputs()
        host = [n for n in outputs if self.engine.is_shape_inference_io(n)]
        if host:
            raise ModelMismatch(f"engine outputs {', '.join(host[:5])} are shape tensors (host memory in TensorRT); "
                                "do not mark them as outputs", file=str(self.onnx))
        return run_once(self.contract, self.ops, TrtRunner(self, list(outputs)), self.pool, feeds,
                        out_dtypes=outputs)

    def open_stream(self, initial: Mapping[str, np.ndarray], *, fetch_caches: bool = True) -> Stream:
        return DeviceLoopStream(self.contract, self.ops, self.runner, self.pool, initial, fetch_caches=fetch_caches)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(tensorrt=str(trt.__version__), gpu=self.gpu_name, compute_capability=self.compute_capability,
                 engine=str(self.entry.plan_path), engine_built=self.entry.built,
                 build_seconds=self.entry.manifest.get("build_seconds"), typing=self.options["typing"],
                 profiles=self.profile_names, tf32=self.options["tf32"], device_bytes=self.pool.total_bytes)
        return d

    def close(self) -> None:
        self.ops.synchronize()
        self.pool.free_all()
        for attr in ("runner", "context", "engine", "_engine"):  # release TensorRT objects before the stream
            self.__dict__.pop(attr, None)
        self.ops.close()


def create_trt_backend(spec: BackendSpec, contract: Contract, onnx: Path, opts: dict[str, Any]) -> Backend:
    """Registry factory; raises BackendUnavailable when TensorRT, cuda-python or a GPU is missing."""
    if spec.device != "cuda":
        raise BackendUnavailable(f"TensorRT runs on CUDA devices only, not {spec.device!r}")
    if spec.precision not in ("fp32", "fp16"):
        raise BackendUnavailable(f"TensorRT {spec.precision} needs calibration or Q/DQ nodes; not supported here")
    load_tensorrt()
    return TrtBackend(contract, Path(onnx), spec.precision, opts)
