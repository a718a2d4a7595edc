"""``streamparity build-engine``: build (or load from the engine cache) the contract's TensorRT / TensorRT-RTX plan.

Prints the plan path, its size, the build seconds, whether it was built now or loaded, and the key material.
TensorRT-RTX builds ahead of time on the CPU (no GPU needed); TensorRT builds for the GPU it runs on.
Pass the plan to the suite as it is with ``pytest --engine=BACKEND_ID=PATH``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from streamparity.errors import BackendUnavailable, StreamparityError


def register(sub: Any) -> None:
    from streamparity.backends.registry import parse_backend_spec
    from streamparity.contract.shipped import contract_by_name_or_path

    p = sub.add_parser("build-engine", help="build or load the contract's TensorRT / TensorRT-RTX plan",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", required=True, type=parse_backend_spec, metavar="ID",
                   help="trtrtx-cuda-fp32, trtrtx-cuda-fp16, trt-cuda-fp32 or trt-cuda-fp16")
    p.add_argument("--engine-dir", required=True, type=Path, metavar="DIR", help="engine cache folder")
    p.add_argument("--contract", type=contract_by_name_or_path, default=None, metavar="PATH|NAME",
                   help="contract JSON or shipped name (default: tiny-parakeet, the embedded model)")
    p.add_argument("--onnx", type=Path, default=None, metavar="PATH", help="ONNX model (default: the contract's)")
    p.add_argument("--compute-capability", action="append", default=None, metavar="SMxx",
                   help="TensorRT-RTX target, repeatable, e.g. SM86 (default: TensorRT-RTX's portable targets)")
    p.add_argument("--rebuild", action="store_true", help="build even when the cache holds the plan (default: off)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamparity.backends.tensorrt.flavor import FLAVORS
    from streamparity.backends.tensorrt.loader import check_contract_profiles, load_tensorrt
    from streamparity.backends.tensorrt.plans import build_or_load, plan_options
    from streamparity.contract.loading import load_contract
    from streamparity.contract.model_io import check_onnx_file
    from streamparity.contract.shipped import default_contract

    spec = args.backend
    flavor = FLAVORS.get(spec.kind)
    if flavor is None:
        raise StreamparityError(f"{spec.id} is not a TensorRT-family backend "
                                f"({', '.join(f'{k}-cuda-fp32/fp16' for k in FLAVORS)})", field="--backend")
    if args.compute_capability and not flavor.compute_capability_targets:
        raise StreamparityError(f"--compute-capability is a TensorRT-RTX option; {flavor.label} builds for the "
                                "GPU it runs on", field="--compute-capability")
    contract = load_contract(args.contract or default_contract())
    onnx = args.onnx or contract.resolve("onnx")
    if onnx is None or not Path(onnx).is_file():
        raise StreamparityError("ONNX model not found", file=str(onnx), field="--onnx")
    onnx = Path(onnx)
    check_onnx_file(contract, onnx)
    trt = load_tensorrt(flavor)
    check_contract_profiles(contract)  # every profile, used or not, through the real builder's validation
    options = plan_options(flavor, trt, contract, spec.precision, args.compute_capability or ())
    gpu = None if flavor.builds_without_gpu else _gpu(flavor.label)
    t0 = time.perf_counter()
    entry = build_or_load(flavor, trt, contract, onnx, options, args.engine_dir, gpu=gpu, verify_fn=None,
                          rebuild=args.rebuild, rebuild_since=time.time() if args.rebuild else None,
                          unverified_reason="built by streamparity build-engine, not deserialized")
    m = entry.manifest
    print(f"plan: {entry.plan_path}")
    print(f"size: {m.get('plan_size')} bytes")
    print(f"build seconds: {m.get('build_seconds')}" + ("" if entry.built else
                                                       f" (when built; loaded now in {time.perf_counter() - t0:.2f}s)"))
    print(f"built or loaded: {'built' if entry.built else 'loaded from the engine cache'}")
    print(f"verified: {m.get('verified')}" + (f" ({m['not_verified_reason']})" if m.get("not_verified_reason") else ""))
    print(f"key: {m.get('key')}")
    print("key material: " + json.dumps(m.get("key_material"), sort_keys=True))
    print(f"use it as it is: pytest --engine={spec.id}={entry.plan_path}")
    return 0


def _gpu(label: str) -> tuple[str, str]:
    from streamparity.backends.memory import CudartOps, gpu_count, load_cudart

    rt = load_cudart()
    count, why = gpu_count(rt)
    if count == 0:
        raise BackendUnavailable(f"{label} builds for the GPU it runs on; no CUDA GPU here ({why or 'none found'})")
    ops = CudartOps(rt, 0)
    try:
        return ops.gpu()
    finally:
        ops.close()
