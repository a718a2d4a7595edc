"""TensorRT backend (TensorRT 10 and 11, and TensorRT-RTX 1.x: :mod:`~streamparity.backends.tensorrt.flavor`),
CUDA memory through cuda-python.

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
from streamparity.backends.tensorrt.engine_cache import CacheEntry, mark_verified
from streamparity.backends.tensorrt.flavor import FLAVORS, TENSORRT, Flavor
from streamparity.backends.tensorrt.loader import _make_logger, load_tensorrt, numpy_name
from streamparity.backends.tensorrt.plans import build_or_load, check_io, check_profiles, plan_options, read_supplied
from streamparity.backends.tensorrt.runtime_checks import cannot_run_reason, load_runtime_cache, save_runtime_cache
from streamparity.contract.model import ROLE_AUDIO, Contract
from streamparity.errors import BackendUnavailable, EngineCacheError, ModelMismatch

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
    name = numpy_name(t)
    try:
        return np.dtype(name)
    except TypeError:
        raise ModelMismatch(f"engine tensor type {t} has no numpy equivalent") from None


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

    def __init__(self, contract: Contract, onnx: Path, precision: str, opts: Mapping[str, Any],
                 flavor: Flavor = TENSORRT) -> None:
        super().__init__(contract, precision, "cuda")
        self.flavor = flavor
        self.kind = flavor.kind
        globals()["trt"] = load_tensorrt(flavor)
        self.onnx = onnx
        self.logger = _make_logger()
        self.runtime = trt.Runtime(self.logger)
        self.options = plan_options(flavor, trt, contract, precision, opts.get("compute_capabilities") or ())
        self._engine: Any = None
        supplied = (opts.get("engines") or {}).get(f"{flavor.kind}-cuda-{precision}")
        if flavor.builds_without_gpu:  # TensorRT-RTX: build on the CPU, then find out whether it runs here
            self.entry = self._plan(opts, supplied, gpu=None, verify=False)
            try:
                self._attach_gpu(opts)  # select the worker's GPU before deserializing onto it
            except BackendUnavailable as no_gpu:
                self._deserialize_or_skip(also=str(no_gpu))  # what TensorRT-RTX itself says comes first
                raise
            self._deserialize_or_skip()
        else:
            self._attach_gpu(opts)
            self.entry = self._plan(opts, supplied, gpu=(self.gpu_name, self.compute_capability), verify=True)
        self.entry = mark_verified(self.entry, f"{flavor.label} {trt.__version__} on {self.gpu_name}") \
            if not supplied else self.entry
        self.engine: trt.ICudaEngine = self._loaded_engine()
        self._check_io()
        self.context: trt.IExecutionContext = self._create_context()
        self._reserve_buffers()
        self.runner = TrtRunner(self)

    def _attach_gpu(self, opts: Mapping[str, Any]) -> None:
        rt = load_cudart()
        count, why = gpu_count(rt)
        if count == 0:
            raise BackendUnavailable(f"no CUDA GPU is available for {self.flavor.label} ({why or 'no device found'})")
        from streamparity.environment import worker_gpu_index

        self.ops = CudartOps(rt, int(opts.get("gpu_index", worker_gpu_index())) % count)
        self.pool: BufferPool[int] = BufferPool(self.ops)
        self.gpu_name, self.compute_capability = self.ops.gpu()

    def _plan(self, opts: Mapping[str, Any], supplied: Path | None, gpu: tuple[str, str] | None,
              verify: bool) -> CacheEntry:
        if supplied is not None:  # judged as it is: loaded, never rebuilt
            return read_supplied(self.flavor, self.contract, Path(supplied), self.options, str(trt.__version__))
        engine_dir = Path(opts.get("engine_dir") or self.onnx.parent / "engines")
        return build_or_load(self.flavor, trt, self.contract, self.onnx, self.options, engine_dir, gpu=gpu,
                             verify_fn=self._deserialize if verify else None,
                             rebuild=bool(opts.get("rebuild_engines")), rebuild_since=opts.get("rebuild_since"),
                             unverified_reason=f"{self.flavor.label} plans are built without a GPU; deserializing "
                                               "needs one (checked when a backend loads it on a GPU)")

    def _deserialize(self, data: bytes) -> None:
        engine = self.runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise RuntimeError("deserialize_cuda_engine failed: " + (" | ".join(self.logger.errors[-3:]) or "?"))
        self.logger.flush()
        self._engine = engine

    def _loaded_engine(self) -> Any:
        if self._engine is None:  # supplied plans, and TensorRT plans loaded without verify_fn
            self._deserialize_or_skip()
        return self._engine

    def _deserialize_or_skip(self, also: str | None = None) -> None:
        """Load the plan; where it cannot run here, BackendUnavailable with what the runtime said."""
        data = self.entry.read_plan()
        self.logger.clear()
        engine = self.runtime.deserialize_cuda_engine(data)
        if engine is not None:
            self.logger.flush()  # TensorRT's warnings of the load, to logging
            self._engine = engine
            return
        unavailable, text = cannot_run_reason(trt, self.runtime, self.logger, data, self.options)
        text += f"; {also}" if also else ""
        how = "supplied" if self.entry.manifest.get("supplied") else "built" if self.entry.built else \
            "loaded from the engine cache"
        where = f"plan {self.entry.plan_path} ({how})"
        if unavailable:
            raise BackendUnavailable(f"{self.flavor.label} {trt.__version__}: {where}, but it cannot run here: {text}")
        raise EngineCacheError(f"{self.flavor.label} {trt.__version__} cannot load {where}: {text}",
                               file=str(self.entry.plan_path))

    def _create_context(self) -> Any:
        if not self.flavor.runtime_cache:
            return self.engine.create_execution_context()
        self._runtime_config = self.engine.create_runtime_config()
        self._runtime_cache = load_runtime_cache(self._runtime_config, self.entry.plan_path)
        return self.engine.create_execution_context(self._runtime_config)

    def _check_io(self) -> None:
        e = self.engine
        names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        io: dict[str, dict[str, dict[str, Any]]] = {"inputs": {}, "outputs": {}}
        for n in names:
            section = "inputs" if e.get_tensor_mode(n) == trt.TensorIOMode.INPUT else "outputs"
            io[section][n] = {"dtype": numpy_name(e.get_tensor_dtype(n))}
        plan = self.entry.plan_path
        check_io(self.contract, io, plan, "deserialized plan")
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
        if self.entry.manifest.get("supplied"):
            check_profiles(self.options["profiles"], [{n: list(v) for n, v in r.items()} for r in self.ranges],
                           plan, "deserialized plan")
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
                 typing=self.options["typing"], profiles=self.profile_names, tf32=self.options["tf32"],
                 device_bytes=self.pool.total_bytes, **plan_description(self.flavor, self.entry))
        return d

    def close(self) -> None:
        if self.flavor.runtime_cache and getattr(self, "_runtime_cache", None) is not None:
            save_runtime_cache(self._runtime_cache, self.entry.plan_path)
        self.ops.synchronize()
        self.pool.free_all()
        for attr in ("runner", "context", "engine", "_engine"):  # release TensorRT objects before the stream
            self.__dict__.pop(attr, None)
        self.ops.close()


def plan_description(flavor: Flavor, entry: CacheEntry) -> dict[str, Any]:
    """What report and summary record of the plan: path, sha256, size, built/loaded/supplied, verification."""
    m = entry.manifest
    return {"runtime": flavor.label, "engine": str(entry.plan_path), "engine_sha256": m.get("plan_sha256"),
            "engine_bytes": m.get("plan_size"), "engine_built": entry.built,
            "engine_supplied": bool(m.get("supplied")), "build_seconds": m.get("build_seconds"),
            "engine_verified": m.get("verified"), "engine_key": m.get("key")}


def create_trt_backend(spec: BackendSpec, contract: Contract, onnx: Path, opts: dict[str, Any]) -> Backend:
    """Registry factory (kinds ``trt`` and ``trtrtx``); raises BackendUnavailable with the reason where the
    runtime, cuda-python or a usable GPU is missing."""
    flavor = FLAVORS[spec.kind]
    if spec.device != "cuda":
        raise BackendUnavailable(f"{flavor.label} runs on CUDA devices only, not {spec.device!r}")
    if spec.precision not in ("fp32", "fp16"):
        raise BackendUnavailable(f"{flavor.label} {spec.precision} needs calibration or Q/DQ nodes; not supported")
    load_tensorrt(flavor)
    return TrtBackend(contract, Path(onnx), spec.precision, opts, flavor)
