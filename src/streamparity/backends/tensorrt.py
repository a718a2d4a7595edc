"""TensorRT backend (TensorRT 10 and 11 Python API, CUDA memory through cuda-python).

Build: ONNX parser -> one optimization profile per contract profile -> FP32 (TF32 off when the contract
says so) or FP16 (TensorRT 10: FP16 flag with matching layers and softmax / normalization pinned to FP32;
TensorRT 11, which has no weak typing: a strongly typed network over an FP16 copy of the ONNX with the
same layers kept FP32).  Plans go through :mod:`streamparity.engine_cache`, keyed by the ONNX bytes,
TensorRT version, GPU and every option above, with a shared timing cache.

Run: device buffers allocated once at the max profile shapes; streams keep their caches on the GPU
(:class:`~streamparity.backends.device_loop.DeviceLoopStream`).
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..contract import ROLE_AUDIO, Contract, TensorSpec
from ..engine_cache import CacheEntry, get_or_build, key_material, load_timing_cache, save_timing_cache
from ..errors import BackendUnavailable, ContractError, EngineCacheError, ModelMismatch
from ..onnx_files import fp16_variant
from .base import Backend, Stream
from .device_loop import BindOutput, BufferPool, DeviceLoopStream, DeviceTensor, Shape, nbytes_of, run_once

if TYPE_CHECKING:  # the real module is bound by load_tensorrt() at run time
    import tensorrt as trt

    from .registry import BackendSpec

log = logging.getLogger("streamparity.tensorrt")

INSTALL_HINT = "tensorrt is not installed (pip install tensorrt on a CUDA host)"
BUILD_RECIPE = 1  # bump when the build steps below change: it is part of the engine key
FP32_LAYER_TYPES = ("SOFTMAX", "NORMALIZATION")
FP32_ONNX_OPS = ("Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization",
                 "InstanceNormalization", "ReduceMean", "Pow", "Sqrt")


# -- availability -------------------------------------------------------------------------------------


def load_tensorrt() -> Any:
    """Import TensorRT or raise BackendUnavailable (type stubs alone do not count)."""
    try:
        mod = importlib.import_module("tensorrt")
    except ImportError as e:
        raise BackendUnavailable(f"{INSTALL_HINT}: {e}") from None
    if not hasattr(mod, "Builder"):
        where = ", ".join(str(p) for p in getattr(mod, "__path__", [])) or "?"
        raise BackendUnavailable(f"{INSTALL_HINT}: `import tensorrt` found only type stubs ({where})")
    globals()["trt"] = mod
    return mod


def load_cudart() -> Any:
    """cuda-python's runtime bindings, or BackendUnavailable."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BackendUnavailable("cuda-python is not installed (pip install cuda-python); the TensorRT backend "
                             "uses it for device memory and streams")


def _cuda_call(rt: Any, result: Any, what: str) -> Any:
    """Unpack a cuda-python (err, value...) tuple; raise RuntimeError naming the call on error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        _, text = rt.cudaGetErrorString(err)
        msg = text.decode() if isinstance(text, bytes) else str(text)
        raise RuntimeError(f"{what} failed: {getattr(err, 'name', err)}: {msg}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else tuple(rest)


def gpu_count(rt: Any) -> tuple[int, str]:
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess:
        _, text = rt.cudaGetErrorString(err)
        return 0, text.decode() if isinstance(text, bytes) else str(text)
    return int(count), ""


# -- CUDA device ops (DeviceOps[int]) -----------------------------------------------------------------


class CudartOps:
    """:class:`~streamparity.backends.device_loop.DeviceOps` on one GPU and one CUDA stream."""

    def __init__(self, rt: Any, device: int) -> None:
        self.rt = rt
        self.device = device
        _cuda_call(rt, rt.cudaSetDevice(device), f"cudaSetDevice({device})")
        self.stream = _cuda_call(rt, rt.cudaStreamCreate(), "cudaStreamCreate")
        self.handle = int(self.stream)
        self._kind = rt.cudaMemcpyKind

    def alloc(self, nbytes: int) -> int:
        return int(_cuda_call(self.rt, self.rt.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))

    def free(self, buf: int) -> None:
        _cuda_call(self.rt, self.rt.cudaFree(buf), "cudaFree")

    def h2d(self, dst: int, src: np.ndarray) -> None:
        a = np.ascontiguousarray(src)
        _cuda_call(self.rt, self.rt.cudaMemcpyAsync(dst, a.ctypes.data, a.nbytes, self._kind.cudaMemcpyHostToDevice,
                                                    self.stream), "cudaMemcpyAsync(H2D)")
        # pageable source: the call returns once the bytes are staged, so `a` may be freed afterwards

    def d2h(self, src: int, shape: Shape, dtype: np.dtype[Any]) -> np.ndarray:
        out = np.empty(shape, dtype=dtype)
        if out.nbytes:
            _cuda_call(self.rt, self.rt.cudaMemcpyAsync(out.ctypes.data, src, out.nbytes,
                                                        self._kind.cudaMemcpyDeviceToHost, self.stream),
                       "cudaMemcpyAsync(D2H)")
        self.synchronize()
        return out

    def memset0(self, dst: int, nbytes: int) -> None:
        if nbytes:
            _cuda_call(self.rt, self.rt.cudaMemsetAsync(dst, 0, nbytes, self.stream), "cudaMemsetAsync")

    def copy2d(self, dst: int, dst_offset: int, dst_pitch: int, src: int, src_pitch: int, width: int,
               rows: int) -> None:
        if rows and width:
            _cuda_call(self.rt, self.rt.cudaMemcpy2DAsync(dst + dst_offset, dst_pitch, src, src_pitch, width, rows,
                                                          self._kind.cudaMemcpyDeviceToDevice, self.stream),
                       "cudaMemcpy2DAsync(D2D)")

    def synchronize(self) -> None:
        _cuda_call(self.rt, self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def gpu(self) -> tuple[str, str]:
        """(GPU name, compute capability 'major.minor')."""
        prop = _cuda_call(self.rt, self.rt.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        raw = prop.name
        name = raw.split(b"\0", 1)[0].decode() if isinstance(raw, bytes) else str(raw)
        return name.strip(), f"{prop.major}.{prop.minor}"

    def close(self) -> None:
        if self.stream is not None:
            self.rt.cudaStreamDestroy(self.stream)
            self.stream = None


# -- build ---------------------------------------------------------------------------------------------


def _fixed_shape(contract: Contract, spec: TensorSpec) -> tuple[int, ...]:
    bind = {"B": 1, "T_cache": contract.streaming.cache_channel_size}
    try:
        return contract.concrete_shape(spec, bind)
    except ContractError:
        raise ContractError(f"input {spec.name!r} has symbolic dims {spec.shape_str()} but no optimization profile "
                            "gives its shape", file=str(contract.path), field="profiles") from None


def profile_table(contract: Contract) -> list[dict[str, Any]]:
    """The profiles to build, each {name, shapes: {input: [min, opt, max]}}, every input covered."""
    used = [p for p in contract.profiles if p.used]
    if not used:
        audio = contract.input_by_role(ROLE_AUDIO)
        s = contract.streaming
        lo, hi = sorted((s.first_chunk_frames, s.chunk_frames))
        base = list(_fixed_shape_or(contract, audio, lo))
        shapes = {audio.name: [[*base[:-1], lo], [*base[:-1], s.chunk_frames], [*base[:-1], hi]]}
        return [{"name": "default", "shapes": _complete(contract, shapes)}]
    return [{"name": p.name, "shapes": _complete(contract, {k: [list(v.min), list(v.opt), list(v.max)]
                                                            for k, v in p.shapes.items()})} for p in used]


def _fixed_shape_or(contract: Contract, spec: TensorSpec, t: int) -> tuple[int, ...]:
    return contract.concrete_shape(spec, {"B": 1, "T": t, "T_cache": contract.streaming.cache_channel_size})


def _complete(contract: Contract, shapes: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
    out = dict(shapes)
    for spec in contract.inputs:
        if spec.name not in out:
            fixed = list(_fixed_shape(contract, spec))
            out[spec.name] = [fixed, fixed, fixed]
    return out


def build_options(contract: Contract, precision: str, typing_mode: str) -> dict[str, Any]:
    b = contract.build
    return {
        "recipe": BUILD_RECIPE,
        "precision": precision,
        "typing": typing_mode,
        "profiles": profile_table(contract),
        "tf32": not (precision == "fp32" and b.fp32_disable_tf32),
        "fp32_layers": list(b.fp16_fp32_layers) if precision == "fp16" else [],
        "fp32_layer_types": list(FP32_LAYER_TYPES) if precision == "fp16" else [],
        "workspace_mib": b.workspace_mib,
    }


def _make_logger() -> Any:
    class _Logger(trt.ILogger):  # type: ignore[misc]
        """Forwards TensorRT messages to logging and keeps the errors for exception messages."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)
            if level <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif level == int(trt.ILogger.Severity.WARNING):
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger()


def _fp16_onnx(onnx: Path, fp32_layers: Sequence[str], cache_dir: Path) -> Path:
    """TensorRT 11 FP16: an FP16 copy of the model, with matching nodes and softmax/norm ops kept FP32."""
    import onnx as onnx_lib

    graph = onnx_lib.load(str(onnx), load_external_data=False)
    pats = [re.compile(p) for p in fp32_layers]
    keep = [n.name for n in graph.graph.node if n.name and any(p.search(n.name) for p in pats)]
    return fp16_variant(onnx, cache_dir, op_block_list=FP32_ONNX_OPS, node_block_list=keep)


def _pin_fp32_layers(network: Any, patterns: Sequence[str]) -> list[str]:
    """TensorRT 10 FP16: pin matching layers (by name or type) to FP32 compute and FP32 outputs."""
    pats = [re.compile(p) for p in patterns]
    types = {getattr(trt.LayerType, t) for t in FP32_LAYER_TYPES if hasattr(trt.LayerType, t)}
    floats = (trt.DataType.FLOAT, trt.DataType.HALF)
    pinned: list[str] = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type not in types and not any(p.search(layer.name) for p in pats):
            continue
        layer.precision = trt.DataType.FLOAT
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in floats:
                layer.set_output_type(j, trt.DataType.FLOAT)
        pinned.append(layer.name)
    return pinned


def build_plan(onnx: Path, contract: Contract, options: Mapping[str, Any], timing_path: Path) -> bytes:
    """Build a serialized engine for `options` (see :func:`build_options`)."""
    logger = _make_logger()
    builder = trt.Builder(logger)
    strong = options["typing"] == "strong"
    flags = (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) if strong else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # from the file: weights kept as external data (models over 2 GB) resolve beside it
    model_file = _fp16_onnx(onnx, options["fp32_layers"], timing_path.parent) \
        if strong and options["precision"] == "fp16" else onnx
    if not parser.parse_from_file(str(model_file)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors or ["unknown"]
        raise ModelMismatch("TensorRT's ONNX parser rejected the model: " + " | ".join(errors), file=str(onnx))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options["workspace_mib"]) << 20)
    net_inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    for prof in options["profiles"]:
        profile = builder.create_optimization_profile()
        for name, tensor in net_inputs.items():
            if name not in prof["shapes"]:
                raise ModelMismatch(f"network input {name!r} is not in the contract", file=str(onnx))
            lo, opt, hi = (tuple(s) for s in prof["shapes"][name])
            if len(lo) != len(tensor.shape):
                raise ModelMismatch(f"profile {prof['name']!r}: {name} has rank {len(tensor.shape)} in the model, "
                                    f"{len(lo)} in the profile", file=str(onnx))
            profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
        if config.add_optimization_profile(profile) < 0:
            raise ModelMismatch(f"TensorRT rejected optimization profile {prof['name']!r}: "
                                + " | ".join(logger.errors), file=str(contract.path), field="profiles")
    if not options["tf32"] and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if options["precision"] == "fp16" and not strong:
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = _pin_fp32_layers(network, options["fp32_layers"])
        if pinned:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log.info("FP16 build of %s: %d layer(s) pinned to FP32", onnx.name, len(pinned))
    prev = load_timing_cache(timing_path) or b""
    try:
        timing = config.create_timing_cache(prev)
    except Exception as e:  # a corrupt or foreign timing cache only costs tuning time
        log.warning("ignoring unusable timing cache %s (%s)", timing_path, e)
        timing = config.create_timing_cache(b"")
    if not config.set_timing_cache(timing, False):
        log.warning("TensorRT refused timing cache %s; building without it", timing_path)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineCacheError("TensorRT build failed: " + (" | ".join(logger.errors) or "no error reported"),
                               file=str(onnx))
    save_timing_cache(timing_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan))


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
        from ..devices import worker_gpu_index

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
