"""Contract loading: schema validation (every violation listable), undecided-field refusal, parsing, semantics."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamparity import memo, strictjson
from streamparity.contract.markers import json_path, undecided_fields
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

if TYPE_CHECKING:
    import jsonschema


def _schema_file() -> Any:
    return resources.files("streamparity").joinpath("contract/schema/contract.schema.json")


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    text = _schema_file().read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded



def _nonfinite(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every NaN or Infinity in a parsed document (Python's json accepts both)."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return [path]
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    return [p for k, v in items for p in _nonfinite(v, (*path, k))]


INT_BOUND = 2**31 - 1
"""Largest integer a contract may hold (sizes, shapes, counts): a shape product cannot overflow int64."""


def _big_ints(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if type(doc) is int and abs(doc) > INT_BOUND:
        return [path]
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    return [p for k, v in items for p in _big_ints(v, (*path, k))]


def _is_integer(checker: Any, instance: Any) -> bool:
    """JSON Schema calls 1.0 an integer; a contract's counts and sizes are written as integers."""
    return type(instance) is int


@lru_cache(maxsize=1)
def _validator() -> Any:
    """The schema's validator (jsonschema is imported here: a contract found in :mod:`streamparity.memo` needs none)."""
    import jsonschema

    cls = jsonschema.validators.extend(
        jsonschema.Draft202012Validator,
        type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer))
    return cls(schema())


def schema_violations(doc: Any) -> list[tuple[str, str]]:
    """Every schema violation as (JSON path, message), outermost first."""
    # JSON Schema's "number" lets NaN through, and a NaN tolerance passes every comparison
    found = [(json_path(p), "NaN and Infinity are not valid numbers in a contract") for p in _nonfinite(doc)]
    found += [(json_path(p), f"integer out of range (at most {INT_BOUND} in magnitude)") for p in _big_ints(doc)]
    validator = _validator()
    errors = sorted((leaf for e in validator.iter_errors(doc) for leaf in _leaves(e)),
                    key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    return found + [(json_path(e.absolute_path), _short(e.message)) for e in errors]


def _short(message: str, limit: int = 80) -> str:
    """jsonschema quotes the whole offending value; an error line stays readable."""
    return message if len(message) <= limit else message[:limit - 3] + "..."


def _leaves(err: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """A value-or-TODO ``anyOf`` failure, reported as the branch the value meant (its own errors, not 'any of')."""
    if err.validator != "anyOf" or not err.context:
        return [err]
    meant_todo = isinstance(err.instance, str) and err.instance.startswith("TODO")
    branch = [c for c in err.context if c.relative_schema_path and c.relative_schema_path[0] == int(meant_todo)]
    return [leaf for c in branch for leaf in _leaves(c)] or [err]


_MEMO_KIND = "contract-schema-valid"


@lru_cache(maxsize=1)
def _proof_inputs() -> tuple[bytes, ...]:
    """What a schema verdict depends on besides the document: the schema, this module's code (the validator and
    the NaN and integer checks), jsonschema's version."""
    from streamparity.environment import installed_version

    schema_bytes = _schema_file().read_bytes()
    code = Path(sys.modules[__name__].__file__ or "").read_bytes()
    return schema_bytes, code, (installed_version("jsonschema") or "unknown").encode()


def _memo_key(doc: Any) -> str | None:
    """The document's key in :mod:`streamparity.memo`: its canonical JSON (``1`` and ``1.0``, ``true`` and ``1``
    stay apart, as the validator keeps them apart) with :func:`_proof_inputs`; None for a document with NaN or
    Infinity (never valid) or that has no JSON form."""
    try:
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return memo.key(canonical.encode("utf-8"), *_proof_inputs())


def validate_document(doc: Any, file: str) -> None:
    """Raises one :class:`ContractError` naming the first schema violation (and up to three more).  A document
    proven valid before is found in :mod:`streamparity.memo` and not validated again: jsonschema's import and a
    validation cost ~50 ms of an embedded parity run."""
    key = _memo_key(doc)
    if key is not None and memo.proven(_MEMO_KIND, key):
        return
    errors = schema_violations(doc)
    if not errors:
        if key is not None:
            memo.remember(_MEMO_KIND, key)
    else:
        where, message = errors[0]
        shown = "; ".join(f"{p}: {m}" for p, m in errors[1:4])
        more = f" (also {_short(shown, 120)})" if shown else ""
        more += f" (+{len(errors) - 4} more)" if len(errors) > 4 else ""
        raise ContractError(f"schema violation at {where}: {message}{more}", file=file, field=where)


def refuse_undecided(doc: Any, file: str) -> None:
    """A drafted or imported contract still holding ``TODO:`` markers is refused, naming each such field."""
    todos = undecided_fields(doc)
    if todos:
        raise ContractError(f"{len(todos)} field(s) still marked TODO, decide and fill them in: "
                            + ", ".join(p for p, _ in todos), file=file, field=todos[0][0])



def _tensor(d: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(
        name=d["name"],
        dtype=d["dtype"],
        shape=tuple(d["shape"]),
        role=d["role"],
        feeds=d.get("feeds"),
        compare=d.get("compare", True),
    )



def _duplicates(values: list[str]) -> list[str]:
    seen: set[str] = set()
    return [v for v in values if v in seen or seen.add(v)]  # type: ignore[func-returns-value]


def _unique_and_declared(c: Contract) -> None:
    """Names are unique (a second tensor of a name would shadow the first), roles are taken once per side,
    ranges are ordered and known issues name real outputs."""
    f = str(c.path)
    for section, specs in (("inputs", c.inputs), ("outputs", c.outputs)):
        for kind, values in (("name", [t.name for t in specs]), ("role", [t.role for t in specs])):
            dup = _duplicates(values)
            if dup:
                raise ContractError(f"two {section} have the {kind} {dup[0]!r}", file=f, field=f"{section}.{kind}")
    for kind, field, values in (("profile", "profiles", [p.name for p in c.profiles]),
                                ("known issue", "known_issues", [k.id for k in c.known_issues])):
        dup = _duplicates(values)
        if dup:
            raise ContractError(f"two {kind}s are named {dup[0]!r}", file=f, field=field)
    for name, (lo, hi) in c.dims.items():
        if lo > hi:
            raise ContractError(f"dim {name!r}: min {lo} is above max {hi}", file=f, field=f"dims.{name}")
    rule = c.streaming.cache_len
    if rule.initial > rule.max:
        raise ContractError(f"cache_len.initial {rule.initial} is above cache_len.max {rule.max}", file=f,
                            field="streaming.cache_len.initial")
    for k in c.known_issues:
        for out in k.outputs:
            if out not in c.output_names:
                raise ContractError(f"known issue {k.id!r} names unknown output {out!r}", file=f,
                                    field=f"known_issues.{k.id}.outputs")


def _semantic_checks(c: Contract) -> None:
    f = str(c.path)
    _unique_and_declared(c)
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
    _precision_coverage(c)
    _cache_shapes(c)
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



def _precision_coverage(c: Contract) -> None:
    """No silent fallback: every compared output has a tolerance at every precision any output has."""
    wanted = set(c.precisions)
    for name in c.compared_outputs():
        missing = sorted(wanted - set(c.tolerances[name]))
        if missing:
            raise ContractError(f"output {name!r} has no {', '.join(missing)} tolerance while other outputs do "
                                "(there is no fallback to another precision: give one, with its reason)",
                                file=str(c.path), field=f"tolerances.{name}.{missing[0]}")


def _cache_shapes(c: Contract) -> None:
    """cache_layout, cache_channel_size and cache_time_size agree with the cache tensors' fixed dims."""
    f = str(c.path)
    layers_axis, batch_axis = c.cache_axes()
    s = c.streaming
    for section, specs in (("inputs", c.inputs), ("outputs", c.outputs)):
        for i, t in enumerate(specs):
            if t.role not in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME):
                continue
            where = f"{section}[{i}].shape"
            if len(t.shape) != 4:
                raise ContractError(f"cache {t.name} has rank {len(t.shape)}, caches are rank 4", file=f, field=where)
            if isinstance(t.shape[batch_axis], int) and isinstance(t.shape[layers_axis], str):
                other = "batch_first" if c.cache_layout == "layers_first" else "layers_first"
                raise ContractError(f"cache layout mismatch: {t.name} {t.shape_str()} has its layer count at axis "
                                    f"{batch_axis} ({other}), the contract says {c.cache_layout}", file=f, field=where)
            if t.role == ROLE_CACHE_TIME:
                axis, size, key = 3, s.cache_time_size, "cache_time_size"
            else:
                axis, size, key = 2, s.cache_channel_size, "cache_channel_size"
            dim = t.shape[axis]
            if isinstance(dim, int) and dim != size and not (section == "outputs" and
                                                            s.cache_output_time_dim == "dynamic_pad_to_input"):
                raise ContractError(f"{t.name} {t.shape_str()} has {dim} cache frames at axis {axis}, "
                                    f"streaming.{key} says {size}", file=f, field=f"streaming.{key}")


def parse_contract(doc: Any, path: Path) -> Contract:
    validate_document(doc, str(path))
    refuse_undecided(doc, str(path))
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
        cache_pad_side=s.get("cache_pad_side", "left"),
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
        data = p.read_bytes()
    except FileNotFoundError:
        raise ContractError("contract file not found", file=str(p)) from None
    except OSError as e:
        raise ContractError(f"cannot read contract: {e.strerror}", file=str(p)) from None
    # NaN/Infinity parse here so that schema_violations names their JSON path
    doc = strictjson.loads(data, file=str(p), what="contract", error=ContractError, allow_nonfinite=True)
    return parse_contract(doc, p.resolve())
