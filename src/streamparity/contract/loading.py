"""Loading a contract: JSON schema validation (every violation names its JSON path), semantic checks, parsing."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from streamparity.contract.model import (
    CACHE_ROLES,
    ROLE_AUDIO,
    ROLE_CACHE_CHANNEL,
    ROLE_CACHE_LEN,
    ROLE_CACHE_TIME,
    ROLE_ENCODED,
    ROLE_ENCODED_LEN,
    ROLE_LENGTH,
    BuildOptions,
    CacheLenRule,
    Contract,
    Gates,
    KnownIssue,
    Latency,
    Profile,
    ProfileShape,
    StabilityGate,
    Streaming,
    TensorSpec,
    Tolerance,
)
from streamparity.errors import ContractError


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    text = resources.files("streamparity").joinpath("contract/schema/contract.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded



def _json_path(path: Sequence[Any]) -> str:
    out = "$"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out



def _nonfinite(doc: Any, path: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """Path of the first NaN or Infinity in a parsed document (Python's json accepts both)."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return path
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        found = _nonfinite(v, (*path, k))
        if found is not None:
            return found
    return None



def validate_document(doc: Any, file: str) -> None:
    bad = _nonfinite(doc)
    if bad is not None:  # JSON Schema's "number" lets NaN through, and a NaN tolerance passes every comparison
        raise ContractError(f"schema violation at {_json_path(bad)}: NaN and Infinity are not valid numbers "
                            "in a contract", file=file, field=_json_path(bad))
    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = errors[0]
        shown = "; ".join(f"{_json_path(e.absolute_path)}: {e.message}" for e in errors[1:4])
        more = f" (also {shown})" if shown else ""
        more += f" (+{len(errors) - 4} more)" if len(errors) > 4 else ""
        raise ContractError(
            f"schema violation at {_json_path(err.absolute_path)}: {err.message}{more}",
            file=file,
            field=_json_path(err.absolute_path),
        )



def _tensor(d: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(
        name=d["name"],
        dtype=d["dtype"],
        shape=tuple(d["shape"]),
        role=d["role"],
        feeds=d.get("feeds"),
        compare=d.get("compare", True),
    )



def _semantic_checks(c: Contract) -> None:
    f = str(c.path)
    for role in (ROLE_AUDIO, ROLE_LENGTH, ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME, ROLE_CACHE_LEN):
        c.input_by_role(role)
    for role in (ROLE_ENCODED, ROLE_ENCODED_LEN, ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME, ROLE_CACHE_LEN):
        c.output_by_role(role)
    names = set(c.input_names)
    for o in c.outputs:
        if o.role in CACHE_ROLES:
            if o.feeds is None:
                raise ContractError(f"cache output {o.name!r} must name the input it feeds", file=f,
                                    field=f"outputs.{o.name}.feeds")
            if o.feeds not in names:
                raise ContractError(f"cache output {o.name!r} feeds unknown input {o.feeds!r}", file=f,
                                    field=f"outputs.{o.name}.feeds")
    for out_name, per in c.tolerances.items():
        if out_name not in c.output_names:
            raise ContractError(f"tolerance for unknown output {out_name!r}", file=f, field=f"tolerances.{out_name}")
        for prec, tol in per.items():
            if tol.known_issue and c.known_issue(tol.known_issue) is None:
                raise ContractError(f"tolerance refers to unknown known issue {tol.known_issue!r}", file=f,
                                    field=f"tolerances.{out_name}.{prec}.known_issue")
            if tol.warn_atol is not None and tol.warn_atol > tol.atol:
                raise ContractError(f"warn_atol {tol.warn_atol:g} is above atol {tol.atol:g}", file=f,
                                    field=f"tolerances.{out_name}.{prec}.warn_atol")
    enc = c.output_by_role(ROLE_ENCODED)
    if enc.name not in c.tolerances:
        raise ContractError(f"the encoded output {enc.name!r} has no tolerance", file=f, field="tolerances")
    rule = c.streaming.cache_len
    if rule.max != c.streaming.cache_channel_size:
        raise ContractError(
            f"cache_len.max {rule.max} differs from cache_channel_size {c.streaming.cache_channel_size}",
            file=f, field="streaming.cache_len.max")
    for p in c.profiles:
        for tname, ps in p.shapes.items():
            if tname not in names:
                raise ContractError(f"profile {p.name!r} names unknown input {tname!r}", file=f,
                                    field=f"profiles.{p.name}.shapes")
            if not (len(ps.min) == len(ps.opt) == len(ps.max)):
                raise ContractError(f"profile {p.name!r} input {tname!r}: min/opt/max ranks differ", file=f,
                                    field=f"profiles.{p.name}.shapes.{tname}")
            if any(a > b for a, b in zip(ps.min, ps.opt)) or any(a > b for a, b in zip(ps.opt, ps.max)):
                raise ContractError(f"profile {p.name!r} input {tname!r}: need min <= opt <= max", file=f,
                                    field=f"profiles.{p.name}.shapes.{tname}")



def parse_contract(doc: Any, path: Path) -> Contract:
    validate_document(doc, str(path))
    s = doc["streaming"]
    cl = s["cache_len"]
    streaming = Streaming(
        first_chunk_frames=s["first_chunk_frames"],
        chunk_frames=s["chunk_frames"],
        valid_out_len=s["valid_out_len"],
        cache_channel_size=s["cache_channel_size"],
        cache_time_size=s["cache_time_size"],
        cache_len=CacheLenRule(cl["rule"], cl["initial"], cl["step"], cl["max"]),
        cache_output_time_dim=s.get("cache_output_time_dim", "fixed"),
        nemo=dict(s.get("nemo", {})),
    )
    tolerances = {
        out: {prec: Tolerance(**t) for prec, t in per.items()} for out, per in doc["tolerances"].items()
    }
    g = doc.get("gates", {})
    gates = Gates(
        vs_baseline_factor=g.get("vs_baseline_factor", 4.0),
        vs_baseline_floor=dict(g.get("vs_baseline_floor", {})),
        offline_atol=g.get("offline_atol"),
        offline_warmup_chunks=g.get("offline_warmup_chunks", 0),
        offline_reason=g.get("offline_reason", ""),
        stability=StabilityGate(**g.get("stability", {})),
        reason=g.get("reason", ""),
    )
    lat = doc.get("latency")
    b = doc.get("build", {})
    c = Contract(
        name=doc["name"],
        path=path,
        description=doc.get("description", ""),
        model=dict(doc.get("model", {})),
        dims={k: (v["min"], v["max"]) for k, v in doc.get("dims", {}).items()},
        inputs=tuple(_tensor(t) for t in doc["inputs"]),
        outputs=tuple(_tensor(t) for t in doc["outputs"]),
        cache_layout=doc["cache_layout"],
        streaming=streaming,
        profiles=tuple(
            Profile(
                name=p["name"],
                description=p.get("description", ""),
                used=p.get("used", True),
                shapes={k: ProfileShape(tuple(v["min"]), tuple(v["opt"]), tuple(v["max"]))
                        for k, v in p["shapes"].items()},
            )
            for p in doc.get("profiles", [])
        ),
        tolerances=tolerances,
        gates=gates,
        latency=Latency(**{**lat, "backends": tuple(lat.get("backends", ()))}) if lat else None,
        build=BuildOptions(
            fp32_disable_tf32=b.get("fp32_disable_tf32", True),
            fp16_fp32_layers=tuple(b.get("fp16_fp32_layers", ())),
            workspace_mib=b.get("workspace_mib", 4096),
            reason=b.get("reason", ""),
        ),
        known_issues=tuple(
            KnownIssue(k["id"], tuple(k["outputs"]), k["reason"], k.get("status", "open"))
            for k in doc.get("known_issues", [])
        ),
    )
    _semantic_checks(c)
    return c



def load_contract(path: str | Path) -> Contract:
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except FileNotFoundError:
        raise ContractError("contract file not found", file=str(p)) from None
    except OSError as e:
        raise ContractError(f"cannot read contract: {e.strerror}", file=str(p)) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ContractError(f"invalid JSON: {e.msg}", file=str(p), line=e.lineno) from None
    return parse_contract(doc, p.resolve())
