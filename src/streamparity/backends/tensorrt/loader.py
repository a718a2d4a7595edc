"""Build a TensorRT-family plan from the ONNX and the contract (shared by TensorRT and TensorRT-RTX, see
:mod:`~streamparity.backends.tensorrt.flavor`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamparity.backends.onnx_models import fp16_variant
from streamparity.backends.tensorrt.engine_cache import load_timing_cache, save_timing_cache
from streamparity.backends.tensorrt.flavor import TENSORRT, Flavor, import_flavor
from streamparity.contract.model import ROLE_AUDIO, Contract, TensorSpec
from streamparity.errors import ContractError, EngineCacheError, ModelMismatch

if TYPE_CHECKING:  # the real module is bound by load_tensorrt() at run time
    import tensorrt as trt



INSTALL_HINT = TENSORRT.install_hint



BUILD_RECIPE = 2  # bump when the build steps below change: it is part of the engine key



log = logging.getLogger("streamparity.tensorrt")

FP32_LAYER_TYPES = ("SOFTMAX", "NORMALIZATION")

FP32_ONNX_OPS = ("Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization",
                 "InstanceNormalization", "ReduceMean", "Pow", "Sqrt")


def load_tensorrt(flavor: Flavor = TENSORRT) -> Any:
    """Import TensorRT (or TensorRT-RTX) and bind it as this module's ``trt``; raise BackendUnavailable."""
    mod = import_flavor(flavor)
    globals()["trt"] = mod
    return mod



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



def build_options(contract: Contract, precision: str, typing_mode: str, *, timing_cache: bool = True,
                  compute_capabilities: Sequence[str] = ()) -> dict[str, Any]:
    b = contract.build
    opts: dict[str, Any] = {
        "recipe": BUILD_RECIPE,
        "precision": precision,
        "typing": typing_mode,
        "profiles": profile_table(contract),
        "tf32": not (precision == "fp32" and b.fp32_disable_tf32),
        "fp32_layers": list(b.fp16_fp32_layers) if precision == "fp16" else [],
        "fp32_layer_types": list(FP32_LAYER_TYPES) if precision == "fp16" else [],
        "workspace_mib": b.workspace_mib,
    }
    if not timing_cache:
        opts["timing_cache"] = False
    if compute_capabilities:
        opts["compute_capabilities"] = list(compute_capabilities)
    return opts


def _make_logger() -> Any:
    class _Logger(trt.ILogger):  # type: ignore[misc]
        """Keeps TensorRT's messages for exception messages and for logging after the call (:meth:`flush`).

        The callback only appends: TensorRT calls it from its own threads too, and a callback that does more
        Python work (``logging`` takes locks, walks frames) can give up the GIL at a bytecode boundary while
        TensorRT holds its logger's mutex; a second TensorRT thread then takes the GIL and waits on that mutex
        (seen: a parser error under pytest-xdist hung in ``logging.findCaller``)."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            self.messages.append((severity, msg))
            if len(self.messages) > 2000:  # a long-lived runtime's logger keeps the latest
                del self.messages[:1000]

        def clear(self) -> None:
            self.messages.clear()

        @property
        def errors(self) -> list[str]:
            top = int(trt.ILogger.Severity.ERROR)
            # TensorRT-RTX repeats every error with a catchCudaError no-driver line
            return [m for sev, m in self.messages if int(sev) <= top and "catchCudaError" not in m]

        def flush(self) -> None:
            """Forward the kept messages to logging (errors, warnings, the rest at debug level)."""
            kept, self.messages = self.messages, []
            for sev, msg in kept:
                level = int(sev)
                if level <= int(trt.ILogger.Severity.ERROR):
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



def network_io(network: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """The parsed network's inputs and outputs (name -> dtype, shape): what the plan's I/O will be."""
    def one(t: Any) -> dict[str, Any]:
        return {"dtype": str(numpy_name(t.dtype)), "shape": [int(d) for d in t.shape]}
    return {"inputs": {network.get_input(i).name: one(network.get_input(i)) for i in range(network.num_inputs)},
            "outputs": {network.get_output(i).name: one(network.get_output(i)) for i in range(network.num_outputs)}}


def numpy_name(t: Any) -> str:
    """numpy dtype name of a TensorRT DataType ('float32', 'int64', ...), or the TensorRT name."""
    table = {"FLOAT": "float32", "HALF": "float16", "INT32": "int32", "INT64": "int64", "BOOL": "bool",
             "INT8": "int8", "UINT8": "uint8", "BF16": "bfloat16"}
    for name, np_name in table.items():
        if t == getattr(trt.DataType, name, None):
            return np_name
    return str(t)


def _set_targets(config: Any, targets: Sequence[str], logger: Any) -> None:
    """TensorRT-RTX ahead-of-time targets (``SM86``...); none: the library's portable default."""
    caps: Any = trt.ComputeCapability  # type: ignore[attr-defined]  # TensorRT-RTX only (TensorRT 10 has none)
    known = sorted(n for n in dir(caps) if n.startswith("SM") or n == "CURRENT")
    config.num_compute_capabilities = len(targets)
    for i, name in enumerate(targets):
        cc = getattr(caps, name.upper(), None)
        if cc is None:
            raise ContractError(f"unknown compute capability target {name!r} (TensorRT-RTX "
                                f"{trt.__version__} knows {', '.join(known)})", field="compute_capabilities")
        if not config.set_compute_capability(cc, i):
            raise ContractError(f"TensorRT-RTX refused compute capability target {name}: "
                                + (" | ".join(logger.errors) or "no reason given"), field="compute_capabilities")


def build_plan(onnx: Path, contract: Contract, options: Mapping[str, Any], timing_path: Path,
               io: dict[str, Any] | None = None) -> bytes:
    """Build a serialized engine for `options` (see :func:`build_options`); `io`, when given, receives the
    network's inputs and outputs (:func:`network_io`) for the manifest."""
    logger = _make_logger()
    try:
        return _build_plan(onnx, contract, options, timing_path, io, logger)
    finally:
        logger.flush()


def _build_plan(onnx: Path, contract: Contract, options: Mapping[str, Any], timing_path: Path,
                io: dict[str, Any] | None, logger: Any) -> bytes:
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
        raise ModelMismatch(f"{_label()}'s ONNX parser rejected the model: " + " | ".join(errors), file=str(onnx))
    if io is not None:
        io.update(network_io(network))
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
            try:
                profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
            except RuntimeError as e:  # negative dims raise; min > opt > max only logs and fails the add below
                raise ModelMismatch(f"{_label()} rejected optimization profile {prof['name']!r} for {name}: {e} "
                                    f"({' | '.join(logger.errors)})", file=str(contract.path),
                                    field="profiles") from None
        if not profile or config.add_optimization_profile(profile) < 0:
            raise ModelMismatch(f"{_label()} rejected optimization profile {prof['name']!r}: "
                                + " | ".join(logger.errors), file=str(contract.path), field="profiles")
    if not options["tf32"] and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if options["precision"] == "fp16" and not strong:
        config.set_flag(trt.BuilderFlag.FP16)
        pinned = _pin_fp32_layers(network, options["fp32_layers"])
        if pinned:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        log.info("FP16 build of %s: %d layer(s) pinned to FP32", onnx.name, len(pinned))
    if options.get("compute_capabilities"):
        _set_targets(config, options["compute_capabilities"], logger)
    if options.get("timing_cache", True):
        _attach_timing_cache(config, timing_path)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineCacheError(f"{_label()} build failed: " + (" | ".join(logger.errors) or "no error reported"),
                               file=str(onnx))
    if options.get("timing_cache", True):
        save_timing_cache(timing_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan))


def _label() -> str:
    return "TensorRT-RTX" if trt.__name__.startswith("tensorrt_rtx") else "TensorRT"


def _attach_timing_cache(config: Any, timing_path: Path) -> None:
    prev = load_timing_cache(timing_path) or b""
    try:
        timing = config.create_timing_cache(prev)
    except Exception as e:  # a corrupt or foreign timing cache only costs tuning time
        log.warning("ignoring unusable timing cache %s (%s)", timing_path, e)
        timing = config.create_timing_cache(b"")
    if not config.set_timing_cache(timing, False):
        log.warning("TensorRT refused timing cache %s; building without it", timing_path)


def check_contract_profiles(contract: Contract) -> int:
    """Every profile of the contract, used or not, through the bound builder's own validation (no network
    needed): the number accepted, or ModelMismatch with the builder's words for the first it rejects."""
    logger = _make_logger()
    try:
        return _check_profiles(contract, logger)
    finally:
        logger.flush()


def _check_profiles(contract: Contract, logger: Any) -> int:
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    for p in contract.profiles:
        profile = builder.create_optimization_profile()
        for name, s in p.shapes.items():
            try:
                profile.set_shape(name, trt.Dims(list(s.min)), trt.Dims(list(s.opt)), trt.Dims(list(s.max)))
            except RuntimeError as e:
                raise ModelMismatch(f"{_label()} rejected profile {p.name!r} input {name}: {e}",
                                    file=str(contract.path), field=f"profiles.{p.name}.shapes.{name}") from None
        if not profile or config.add_optimization_profile(profile) < 0:
            raise ModelMismatch(f"{_label()} rejected profile {p.name!r}: " + " | ".join(dict.fromkeys(logger.errors)),
                                file=str(contract.path), field=f"profiles.{p.name}")
    return len(contract.profiles)
