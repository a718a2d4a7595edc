"""Import the checklist project's contracts (its ``encoder_streaming.contract.json`` or the
``encoder.streaming_io`` section of its whole-model contract) into a streamparity contract.

What maps is mapped, with a ``provenance`` entry each; every decision the source cannot settle
(cache padding side, cache_drop_size, the 0.1 cache_last_time waiver, the cache-length step,
tolerances it never gave) is a ``"TODO: ..."`` marker the loader refuses until a person resolves it.
"""

from __future__ import annotations

from typing import Any

from streamparity.contract.draft import PRECISIONS, detect_layout, infer_role
from streamparity.contract.markers import todo
from streamparity.contract.model import ROLE_CACHE_CHANNEL, ROLE_CACHE_LEN, ROLE_CACHE_TIME, ROLE_ENCODED
from streamparity.errors import ContractError

WAIVER_ID = "KI-checklist-cache-last-time-waiver"
_CACHE = (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME)


def _pair(v: Any, key: str, file: str) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return v[0], v[1]
    raise ContractError(f"expected an integer or [first, later] pair, got {v!r}", file=file, field=key)


def _source_kind(doc: Any, file: str) -> str:
    if isinstance(doc, dict) and isinstance(doc.get("encoder"), dict) and "streaming_io" in doc["encoder"]:
        return "model"
    if isinstance(doc, dict) and "inputs" in doc and "streaming" in doc and "runtime_contract" in doc:
        return "encoder"
    raise ContractError("not a checklist contract: expected encoder_streaming.contract.json (inputs, streaming, "
                        "runtime_contract) or a model contract with encoder.streaming_io", file=file)


def import_checklist(doc: Any, file: str) -> dict[str, Any]:
    """Our contract document (a dict, TODO markers included) from one of the checklist's two formats."""
    kind = _source_kind(doc, file)
    s = doc["streaming"]
    io = doc["encoder"]["streaming_io"] if kind == "model" else doc
    sec = "encoder.streaming_io" if kind == "model" else ""
    prov: dict[str, str] = {}
    try:
        chunk, pre = _pair(s["chunk_size"], "streaming.chunk_size", file), \
            _pair(s["pre_encode_cache_size"], "streaming.pre_encode_cache_size", file)
        valid = s["valid_out_len"] if kind == "model" else s["valid_out_len_expected"]
        channel = s["cache"]["last_channel_size"] if kind == "model" else s["cache_size"]
        time_ctx = s["cache"]["time_context_size"] if kind == "model" else s["time_ctx"]
        layers = doc["encoder"]["architecture"]["num_layers"] if kind == "model" else s["layers"]
        drop_extra = s["drop_extra_pre_encoded"]
    except (KeyError, TypeError) as e:
        raise ContractError(f"checklist contract lacks streaming key {e}", file=file, field="streaming") from None
    tensors = {}
    for section in ("inputs", "outputs"):
        tensors[section] = [_tensor(section, i, t, f"{sec}.{section}" if sec else section, valid, channel, time_ctx,
                                    prov, file) for i, t in enumerate(io[section])]
    layouts = {detect_layout(t["shape"], layers) for ts in tensors.values() for t in ts if t["role"] in _CACHE}
    layouts.discard(None)
    layout = s.get("cache_layout") if kind == "model" else None
    layout = layout or (layouts.pop() if len(layouts) == 1 else None)
    by_role = {t["role"]: t["name"] for t in tensors["inputs"]}
    for o in tensors["outputs"]:
        if o["role"] in (*_CACHE, ROLE_CACHE_LEN):
            o["feeds"] = by_role.get(o["role"], o["name"])
    pad_side = _pad_side(doc, kind)
    out: dict[str, Any] = {
        "schema_version": 1,
        "name": (f"{doc['model_id']}-streaming-encoder" if kind == "model" else "encoder-streaming") + "-imported",
        "description": f"Imported by streamparity import-contract from the checklist's {file.rsplit('/', 1)[-1]}; "
                       "resolve every TODO field before use.",
        "model": {"source": str(doc.get("model") or doc.get("model_id") or file)},
        "dims": {},
        "inputs": tensors["inputs"],
        "outputs": tensors["outputs"],
        "cache_layout": layout or todo("the source's cache shapes do not show the layout"),
        "streaming": {
            "first_chunk_frames": chunk[0] + pre[0], "chunk_frames": chunk[1] + pre[1], "valid_out_len": valid,
            "cache_channel_size": channel, "cache_time_size": time_ctx,
            "cache_len": {"rule": "saturating_add", "initial": 0, "max": channel, "step": todo(
                f"the checklist asserts only 0 <= len <= {channel}, non-decreasing. Its cache grows by pre_len(T) - "
                f"drop_extra_pre_encoded {drop_extra} - cache_drop_size per chunk (pre_len: the 8x subsampled "
                f"length), i.e. 1 on a {chunk[0] + pre[0]}-frame first chunk and 3 on {chunk[1] + pre[1]}-frame "
                "later ones with cache_drop_size 3; set the step your reference shows (one step per chunk)")},
            "cache_output_time_dim": "dynamic_pad_to_input",
            "cache_pad_side": todo(f"the checklist pads short cache outputs on the {pad_side or 'right'} (valid "
                                   "prefix); NeMo keeps the newest frames at the end (left padding). Say which "
                                   "your runtime returns: left or right"),
            "nemo": {"pre_encode_cache_size": pre[1], "drop_extra_pre_encoded": drop_extra, "valid_out_len": valid,
                     "last_channel_cache_size": channel, "cache_drop_size": todo(
                         f"the checklist used {s.get('cache_drop_size')!r}, a generator override of NeMo's default "
                         "(72 gave a negative cache length); confirm the value your ONNX and reference were made "
                         "with")},
        },
    }
    prov.update({
        "streaming.first_chunk_frames": f"checklist streaming.chunk_size[0] {chunk[0]} + pre_encode_cache_size[0] "
                                        f"{pre[0]}",
        "streaming.chunk_frames": f"checklist streaming.chunk_size[1] {chunk[1]} + pre_encode_cache_size[1] {pre[1]}",
        "streaming.valid_out_len": "checklist streaming." + ("valid_out_len" if kind == "model"
                                                              else "valid_out_len_expected"),
        "streaming.cache_channel_size": "checklist " + ("streaming.cache.last_channel_size" if kind == "model"
                                                        else "streaming.cache_size"),
        "streaming.cache_time_size": "checklist " + ("streaming.cache.time_context_size" if kind == "model"
                                                     else "streaming.time_ctx"),
        "streaming.cache_output_time_dim": "checklist cache outputs are C_out/K_out, padded before the next call",
        "cache_layout": "checklist streaming.cache_layout" if kind == "model" and s.get("cache_layout") else
                        f"detected from the cache shapes (layer count {layers} at axis 1 = batch_first)",
    })
    profiles, dims = _profiles(doc, kind, out["inputs"], prov)
    out["dims"] = dims
    if profiles:
        out["profiles"] = profiles
    out["tolerances"], out["known_issues"] = _tolerances(doc, kind, out["outputs"], prov)
    out["provenance"] = prov
    return out


def _tensor(section: str, i: int, t: Any, where: str, valid: int, channel: int, time_ctx: int,
            prov: dict[str, str], file: str) -> dict[str, Any]:
    try:
        name, dtype, shape = t["name"], t["dtype"], list(t["shape"])
    except (KeyError, TypeError):
        raise ContractError("tensor entry lacks name, dtype or shape", file=file, field=f"{where}[{i}]") from None
    role = infer_role(name, section, len(shape))
    if role is None:
        raise ContractError(f"cannot tell the role of {name!r} {shape} from its name and rank", file=file,
                            field=f"{where}[{i}]")
    fixed = {"T_out": valid, "C_out": channel, "K_out": time_ctx}
    new = [fixed.get(d, d) if isinstance(d, str) else d for d in shape]
    prov[f"{section}.{name}"] = (f"checklist {where}[{i}] {dtype} {shape}"
                                 + ("; T_out = valid_out_len, C_out/K_out = the sizes they are padded to"
                                    if new != shape else ""))
    return {"name": name, "dtype": dtype, "shape": new, "role": role}


def _pad_side(doc: dict[str, Any], kind: str) -> str | None:
    if kind == "model":
        side = (doc["streaming"].get("cache_pad") or {}).get("side")
    else:
        pads = (doc.get("runtime_contract") or {}).get("cache_padding") or {}
        sides = {v.get("side") for v in pads.values() if isinstance(v, dict)}
        side = sides.pop() if len(sides) == 1 else None
    return side if isinstance(side, str) else None


def _profiles(doc: dict[str, Any], kind: str, inputs: list[dict[str, Any]],
              prov: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    raw = ((doc.get("trt") or {}).get("profiles") or {}).get("encoder_streaming", []) if kind == "model" \
        else doc.get("trt_optimization_profiles", [])
    out: list[dict[str, Any]] = []
    t_all: list[int] = []
    b_all: list[int] = []
    for p in raw:
        if kind == "model":
            t, b = p.get("audio_signal_T"), p.get("batch")
        else:
            t, b = (p.get("dimensions") or {}).get("audio_signal.T"), (p.get("dimensions") or {}).get("B")
        if not isinstance(t, dict) or not isinstance(b, dict):
            continue
        t_all += [t["min"], t["max"]]
        b_all += [b["min"], b["max"]]
        shapes = {}
        for inp in inputs:
            shapes[inp["name"]] = {k: [b[k] if d == "B" else t[k] if d == "T" else d for d in inp["shape"]]
                                   for k in ("min", "opt", "max")}
        out.append({"name": p.get("name", f"profile{len(out)}"), "description": p.get("description", ""),
                    "used": "unified" in str(p.get("name", "")), "shapes": shapes})
    dims = {"B": {"min": min(b_all, default=1), "max": max(b_all, default=1)}}
    if t_all:
        dims["T"] = {"min": min(t_all), "max": max(t_all)}
    prov["profiles"] = ("checklist " + ("trt.profiles.encoder_streaming" if kind == "model"
                                         else "trt_optimization_profiles")
                        + "; only the unified one marked used (the validated engine was built with one profile)")
    prov["dims"] = "min/max over the checklist's profiles"
    return out, dims


def _tolerances(doc: dict[str, Any], kind: str, outputs: list[dict[str, Any]],
                prov: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if kind == "model":
        ort = ((doc.get("trt") or {}).get("tolerances") or {}).get("ort") or {}
        atol, rtol, waiver = ort.get("default_atol"), ort.get("default_rtol"), ort.get("cache_last_time_atol")
        where = "trt.tolerances.ort"
    else:
        tol = (doc.get("validation") or {}).get("tolerance") or {}
        atol, rtol, waiver, where = tol.get("atol"), tol.get("rtol"), None, "validation.tolerance"
    tols: dict[str, Any] = {}
    issues: list[dict[str, Any]] = []
    for o in outputs:
        if o["role"] not in (ROLE_ENCODED, *_CACHE):
            continue
        per: dict[str, Any] = {}
        for p in PRECISIONS:
            if p == "fp32" and isinstance(atol, (int, float)) and isinstance(rtol, (int, float)) and not (
                    o["role"] == ROLE_CACHE_TIME and waiver is not None):
                per[p] = {"atol": atol, "rtol": rtol,
                          "reason": f"checklist {where} (its rule passes when max_abs <= atol OR max_rel <= rtol; "
                                    "ours fails any element over atol + rtol*|ref|)"}
                prov[f"tolerances.{o['name']}.{p}"] = f"checklist {where}"
            elif o["role"] == ROLE_CACHE_TIME and waiver is not None:
                per[p] = todo(f"the checklist waived {o['name']} to atol {waiver} (known issue {WAIVER_ID}); a "
                              "correct FP32 engine reaches ~1e-4. Give a bound and reason; a loosened one names "
                              f"known_issue {WAIVER_ID}")
            else:
                per[p] = todo(f"the checklist gives no {p} tolerance for {o['name']}: measure, then set atol, rtol "
                              "and reason")
        tols[o["name"]] = per
        if o["role"] == ROLE_CACHE_TIME and waiver is not None:
            issues.append({"id": WAIVER_ID, "outputs": [o["name"]],
                           "reason": f"the checklist accepted {o['name']} errors up to {waiver} as non-propagating "
                                     "while its cache length stayed 0; with a carried cache they are real (TF32 "
                                     "outliers up to 0.36; 1.4e-4 with TF32 off)",
                           "status": todo("open, resolved or rejected: whether this waiver still stands")})
            prov[f"known_issues.{WAIVER_ID}"] = f"checklist {where}.cache_last_time_atol"
    return tols, issues
