"""Loading TensorRT and building plans: parser, optimization profiles from the contract, precision options."""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamparity.backends.onnx_models import fp16_variant
from streamparity.backends.tensorrt.engine_cache import load_timing_cache, save_timing_cache
from streamparity.contract.model import ROLE_AUDIO, Contract, TensorSpec
from streamparity.errors import BackendUnavailable, ContractError, EngineCacheError, ModelMismatch

if TYPE_CHECKING:  # the real module is bound by load_tensorrt() at run time
    import tensorrt as trt



INSTALL_HINT = "tensorrt is not installed (pip install tensorrt on a CUDA host)"



BUILD_RECIPE = 1  # bump when the build steps below change: it is part of the engine key



log = logging.getLogger("streamparity.tensorrt")

FP32_LAYER_TYPES = ("SOFTMAX", "NORMALIZATION")

FP32_ONNX_OPS = ("Softmax", "LogSoftmax", "LayerNormalization", "GroupNormalization",
                 "InstanceNormalization", "ReduceMean", "Pow", "Sqrt")


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
