"""The plan a TensorRT-family backend runs: built (or loaded) through the engine cache, or supplied by the user
(``--engine=ID=PATH``) and judged as it is.  Shared by the backend and ``streamparity build-engine``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from streamparity.backends.tensorrt.engine_cache import CacheEntry, VerifyFn, get_or_build, key_material
from streamparity.backends.tensorrt.flavor import Flavor
from streamparity.backends.tensorrt.loader import build_options, build_plan
from streamparity.contract.model import Contract
from streamparity.errors import EngineCacheError, ModelMismatch, StreamparityError

AOT_GPU = "ahead-of-time"
"""GPU name in TensorRT-RTX key material: its plans are built on the CPU for targets, not for the host's GPU."""


def plan_options(flavor: Flavor, trt: Any, contract: Contract, precision: str,
                 compute_capabilities: Sequence[str] = ()) -> dict[str, Any]:
    targets = list(compute_capabilities) if flavor.compute_capability_targets else []
    return build_options(contract, precision, flavor.typing_mode(trt, precision),
                         timing_cache=flavor.timing_cache, compute_capabilities=targets)


def plan_key(flavor: Flavor, trt: Any, onnx: Path, options: Mapping[str, Any],
             gpu: tuple[str, str] | None) -> dict[str, Any]:
    """Key material: the builder module and its own version (TensorRT-RTX 1.7 is not TensorRT 1.7), the GPU
    (TensorRT) or the ahead-of-time targets (TensorRT-RTX), the ONNX bytes and every option."""
    if gpu is None:
        gpu = (AOT_GPU, ",".join(options.get("compute_capabilities", [])) or "portable")
    return key_material(onnx=onnx, builder=flavor.module, builder_version=flavor.version(trt), gpu_name=gpu[0],
                        compute_capability=gpu[1], options=options)


def build_or_load(flavor: Flavor, trt: Any, contract: Contract, onnx: Path, options: Mapping[str, Any],
                  engine_dir: Path, *, gpu: tuple[str, str] | None, verify_fn: VerifyFn | None,
                  rebuild: bool = False, rebuild_since: float | None = None,
                  unverified_reason: str | None = None) -> CacheEntry:
    material = plan_key(flavor, trt, onnx, options, gpu)
    io: dict[str, Any] = {}
    extra: dict[str, Any] = {"io": io, "flavor": flavor.kind}
    return get_or_build(engine_dir, onnx.stem, material,
                        lambda timing: build_plan(onnx, contract, options, timing, io=io),
                        rebuild=rebuild, verify_fn=verify_fn, fresh_after=rebuild_since, manifest_extra=extra,
                        unverified_reason=unverified_reason)


# -- supplied plans --------------------------------------------------------------------------------------

def check_io(contract: Contract, io: Mapping[str, Any], plan: Path, how: str) -> None:
    """Every contract input and output is in the plan with the contract's dtype, or one ModelMismatch naming
    the plan and the tensor.  `io` as :func:`streamparity.backends.tensorrt.loader.network_io` writes it."""
    for section, specs in (("inputs", contract.inputs), ("outputs", contract.outputs)):
        got = io.get(section, {})
        for spec in specs:
            if spec.name not in got:
                raise ModelMismatch(f"plan has no {section[:-1]} {spec.name!r} that the contract needs (plan "
                                    f"{section}: {', '.join(got) or 'none'}; {how})", file=str(plan),
                                    field=f"{section}.{spec.name}")
            dtype = got[spec.name].get("dtype")
            if dtype is not None and dtype != spec.dtype:
                raise ModelMismatch(f"{section[:-1]} {spec.name!r} is {dtype} in the plan, {spec.dtype} in the "
                                    f"contract ({how})", file=str(plan), field=f"{section}.{spec.name}")


def check_profiles(expected: Sequence[Mapping[str, Any]], got: Sequence[Mapping[str, Sequence[Sequence[int]]]],
                   plan: Path, how: str) -> None:
    """The plan's optimization profiles are the contract's (min/opt/max of every input, in order)."""
    if len(got) != len(expected):
        raise ModelMismatch(f"plan has {len(got)} optimization profile(s), the contract {len(expected)} "
                            f"({', '.join(str(p['name']) for p in expected)}; {how})", file=str(plan),
                            field="profiles")
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        for name, shapes in want["shapes"].items():
            h = [list(map(int, s)) for s in have.get(name, [])]
            if h != [list(s) for s in shapes]:
                raise ModelMismatch(f"profile {i} ({want['name']}): input {name!r} is min/opt/max {h or 'absent'} "
                                    f"in the plan, {[list(s) for s in shapes]} in the contract ({how})",
                                    file=str(plan), field=f"profiles.{want['name']}.{name}")


def _sidecar(plan: Path, digest: str) -> dict[str, Any] | None:
    """The build manifest beside the plan (as the engine cache and build-engine write it), if it is this plan's."""
    path = plan.with_suffix(".json")
    try:
        m = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return m if isinstance(m, dict) and m.get("plan_sha256") == digest else None


def read_supplied(flavor: Flavor, contract: Contract, plan: Path, options: Mapping[str, Any],
                  runtime_version: str | None) -> CacheEntry:
    """Check a supplied plan as far as is possible without deserializing it; the entry to load, never rebuilt.

    With its build manifest (same sha256): the builder and version, the I/O names and dtypes and the profiles
    are checked against the contract.  Without one nothing can be checked before the plan is deserialized
    (that needs a GPU it runs on), where the same checks run on the engine itself."""
    try:
        data = plan.read_bytes()
    except OSError as e:
        raise StreamparityError(f"supplied plan cannot be read ({e.strerror or e})", file=str(plan),
                                field="--engine") from None
    if not data:
        raise StreamparityError("supplied plan is empty", file=str(plan), field="--engine")
    digest = hashlib.sha256(data).hexdigest()
    m = _sidecar(plan, digest)
    info: dict[str, Any] = {"supplied": True, "plan_sha256": digest, "plan_size": len(data),
                            "plan_file": plan.name, "verified": False}
    if m is not None:
        b = m.get("key_material", {}).get("builder", {})
        if b.get("name") not in (None, flavor.module):
            raise EngineCacheError(f"plan was built by {b.get('name')} {b.get('version')}, not {flavor.label} "
                                   f"({flavor.module})", file=str(plan), field="--engine")
        if runtime_version is not None and b.get("version") not in (None, runtime_version):
            raise EngineCacheError(f"plan was built by {flavor.label} {b.get('version')}; this runtime is "
                                   f"{flavor.label} {runtime_version}: rebuild it with that version "
                                   "(streamparity build-engine)", file=str(plan), field="--engine")
        built_for = m.get("key_material", {}).get("options", {}).get("precision")
        if options.get("precision") and built_for not in (None, options["precision"]):
            raise EngineCacheError(f"plan was built for {built_for}, not {options['precision']}: pass it as "
                                   f"--engine={flavor.kind}-cuda-{built_for}=...", file=str(plan), field="--engine")
        how = f"from its build manifest {plan.with_suffix('.json').name}"
        if m.get("io"):
            check_io(contract, m["io"], plan, how)
        profiles = m.get("key_material", {}).get("options", {}).get("profiles")
        if profiles is not None:
            check_profiles(options["profiles"], [p["shapes"] for p in profiles], plan, how)
        info.update(checked_without_deserializing="builder, version, I/O names and dtypes, profiles (manifest)",
                    key_material=m.get("key_material"), build_seconds=m.get("build_seconds"))
    else:  # the plan bytes do not hold every I/O name verbatim (measured: TensorRT-RTX 1.7 keeps no "encoded")
        info.update(checked_without_deserializing="nothing: no build manifest beside the plan; its I/O names, "
                                                  "dtypes and profiles are checked when it is deserialized (needs a "
                                                  "GPU the plan runs on)")
    return CacheEntry(plan, info, built=False)


def precheck_supplied(backend_id: str, plan: Path, contract: Contract) -> CacheEntry:
    """The checks of :func:`read_supplied` for ``--engine=ID=PATH`` before any test is collected: the runtime's
    version is compared when its module imports here, the plan is not deserialized."""
    from streamparity.backends.tensorrt.flavor import FLAVORS, import_flavor
    from streamparity.backends.tensorrt.loader import profile_table
    from streamparity.errors import BackendUnavailable

    kind = backend_id.split("-", 1)[0]
    flavor = FLAVORS.get(kind)
    if flavor is None:
        raise StreamparityError(f"{kind} is not a TensorRT-family backend "
                                f"({', '.join(f'{k}-cuda-fp32/fp16' for k in FLAVORS)})", field="--engine")
    try:
        version: str | None = flavor.version(import_flavor(flavor))
    except BackendUnavailable:
        version = None
    options = {"profiles": profile_table(contract), "precision": backend_id.rsplit("-", 1)[-1]}
    return read_supplied(flavor, contract, plan, options, version)
