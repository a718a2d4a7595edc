"""Draft a contract from an ONNX (I/O, roles, cache layout) and a NeMo encoder (the streaming schedule).

Every drafted value gets a ``provenance`` entry saying where it came from; what cannot be inferred
(tolerances above all) is written as a ``"TODO: ..."`` marker, which the loader refuses until a person
replaces it.  The result validates against the schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamparity.contract.markers import todo
from streamparity.contract.model import (
    ROLE_AUDIO,
    ROLE_CACHE_CHANNEL,
    ROLE_CACHE_LEN,
    ROLE_CACHE_TIME,
    ROLE_ENCODED,
    ROLE_ENCODED_LEN,
    ROLE_LENGTH,
)
from streamparity.contract.model_io import read_onnx_io
from streamparity.errors import ContractError

PRECISIONS = ("fp32", "fp16")
_CACHE = (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME)


def infer_role(name: str, section: str, rank: int) -> str | None:
    """The role a tensor plays, from its name (NeMo's and the checklist's spellings) and rank."""
    n = name.lower()
    if "cache" in n:
        if "len" in n:
            return ROLE_CACHE_LEN
        if "channel" in n:
            return ROLE_CACHE_CHANNEL
        if "time" in n:
            return ROLE_CACHE_TIME
        return None
    if section == "inputs":
        if "len" in n and rank == 1:
            return ROLE_LENGTH
        return ROLE_AUDIO if rank == 3 else None
    if "len" in n and rank == 1:
        return ROLE_ENCODED_LEN
    return ROLE_ENCODED if rank == 3 else None


def detect_layout(shape: list[Any], layers: int | None = None) -> str | None:
    """batch_first when the layer count (a fixed dim) is axis 1 and the batch (symbolic) axis 0; layers_first
    for the reverse.  With a known layer count, that count decides."""
    if len(shape) != 4:
        return None
    a, b = shape[0], shape[1]
    if layers is not None:
        if b == layers and a != layers:
            return "batch_first"
        if a == layers and b != layers:
            return "layers_first"
    if not isinstance(a, int) and isinstance(b, int):
        return "batch_first"
    if isinstance(a, int) and not isinstance(b, int):
        return "layers_first"
    return None


def _last(v: Any) -> int:
    return int(v[-1]) if isinstance(v, (list, tuple)) else int(v)


def nemo_streaming(encoder: Any, args: dict[str, Any] | None, prov: dict[str, str]) -> dict[str, Any]:
    """The streaming block from NeMo's own ``streaming_cfg`` (after ``setup_streaming_params``)."""
    import torch

    cfg = encoder.streaming_cfg
    where = f"NeMo streaming_cfg after setup_streaming_params({', '.join(f'{k}={v}' for k, v in (args or {}).items())})"
    shift, pre = _last(cfg.shift_size), _last(cfg.pre_encode_cache_size)
    drop_extra, cache_drop = int(cfg.drop_extra_pre_encoded), int(cfg.cache_drop_size)
    frames = shift + pre
    with torch.no_grad():
        _, lens = encoder.pre_encode(x=torch.zeros(1, frames, int(encoder._feat_in)), lengths=torch.tensor([frames]))
    pre_len = int(lens[0])
    step = pre_len - drop_extra - cache_drop
    channel, time_ctx = int(cfg.last_channel_cache_size), int(encoder.conv_context_size[0])
    s: dict[str, Any] = {
        "first_chunk_frames": frames, "chunk_frames": frames, "valid_out_len": int(cfg.valid_out_len),
        "cache_channel_size": channel, "cache_time_size": time_ctx,
        "cache_len": {"rule": "saturating_add", "initial": 0, "max": channel,
                      "step": step if step > 0 else todo(f"NeMo's schedule adds {step} frames per chunk ({pre_len} "
                                                         f"pre-encoded - drop_extra {drop_extra} - cache_drop_size "
                                                         f"{cache_drop}): the cache would never carry over; fix the "
                                                         "streaming params"),
                      "reason": f"each chunk appends {pre_len} pre-encoded - {drop_extra} drop_extra_pre_encoded - "
                                f"{cache_drop} cache_drop_size = {step} frames to a {channel}-frame cache"},
        "cache_output_time_dim": "fixed",
        "nemo": {**{k: int(v) for k, v in (args or {}).items() if v is not None},
                 "pre_encode_cache_size": pre, "drop_extra_pre_encoded": drop_extra, "cache_drop_size": cache_drop,
                 "valid_out_len": int(cfg.valid_out_len), "last_channel_cache_size": channel,
                 "att_context_size": [int(x) for x in encoder.att_context_size]},
    }
    prov.update({
        "streaming.first_chunk_frames": f"{where}: shift_size[-1] {shift} + pre_encode_cache_size[-1] {pre}; NeMo's "
                                        "ONNX pads every chunk to this, the first included (pad_and_drop_preencoded)",
        "streaming.chunk_frames": f"{where}: shift_size[-1] {shift} + pre_encode_cache_size[-1] {pre}",
        "streaming.valid_out_len": f"{where}: valid_out_len",
        "streaming.cache_channel_size": f"{where}: last_channel_cache_size",
        "streaming.cache_time_size": "NeMo encoder.conv_context_size[0] (the causal conv's left context)",
        "streaming.cache_len": f"{where}: NeMo's pre_encode gives {pre_len} frames for {frames}; step = {pre_len} - "
                               f"drop_extra_pre_encoded {drop_extra} - cache_drop_size {cache_drop}; max = "
                               "last_channel_cache_size",
        "streaming.cache_output_time_dim": "NeMo's export returns caches at the input cache size",
        "streaming.nemo": f"{where} and encoder.att_context_size",
    })
    return s


def _todo_streaming() -> dict[str, Any]:
    need = "give --nemo-config or --nemo, or read it from the model's streaming_cfg"
    return {
        "first_chunk_frames": todo(f"feature frames of the first chunk ({need})"),
        "chunk_frames": todo(f"feature frames of every later chunk, pre-encode frames included ({need})"),
        "valid_out_len": todo(f"encoder steps each chunk emits ({need})"),
        "cache_channel_size": todo(f"attention cache frames, last_channel_cache_size ({need})"),
        "cache_time_size": todo(f"conv cache frames, the conv left context ({need})"),
        "cache_len": {"rule": "saturating_add", "initial": 0,
                      "step": todo(f"frames the cache grows per chunk ({need})"),
                      "max": todo("the attention cache size")},
    }


def _tensor(section: str, i: int, t: Any, layout: str | None, s: dict[str, Any],
            prov: dict[str, str]) -> dict[str, Any]:
    role = infer_role(t.name, section, len(t.shape))
    if role is None:
        raise ContractError(f"cannot tell the role of {section[:-1]} {t.name!r} {t.shape} from its name and rank "
                            "(expected NeMo's names: audio_signal, length, cache_last_channel, ...)", field=section)
    batch_axis = (1 if layout == "layers_first" else 0) if role in _CACHE else 0
    named: dict[int, int | str] = {batch_axis: "B"}
    if role == ROLE_AUDIO:
        named[2] = "T"
    elif role == ROLE_ENCODED:
        named[2] = s["valid_out_len"] if isinstance(s["valid_out_len"], int) else "T_out"
    elif role == ROLE_CACHE_CHANNEL:
        named[2] = s["cache_channel_size"] if isinstance(s["cache_channel_size"], int) else "C"
    elif role == ROLE_CACHE_TIME:
        named[3] = s["cache_time_size"] if isinstance(s["cache_time_size"], int) else "K"
    shape = [d if isinstance(d, int) and d > 0 else named.get(ax, f"D{ax}") for ax, d in enumerate(t.shape)]
    d: dict[str, Any] = {"name": t.name, "dtype": t.dtype, "shape": shape, "role": role}
    prov[f"{section}.{t.name}"] = (f"ONNX graph {section[:-1]} {i}: {t.dtype} {t.shape}; role {role} from the name; "
                                   f"symbolic dims named {named} (batch, time, cache sizes from the streaming block)")
    return d


def draft_contract(onnx: Path | None, *, encoder: Any = None,
                   streaming_args: dict[str, Any] | None = None, name: str | None = None,
                   source: str | None = None) -> dict[str, Any]:
    """A contract document (a dict) drafted from an ONNX and, where given, a NeMo encoder.

    ``encoder`` is a NeMo encoder already built (from a config or a .nemo, see :mod:`streamparity.tools.generator`)
    with ``streaming_args`` applied; without it the schedule is left as ``TODO:`` markers, like every value the
    files cannot decide.
    """
    if onnx is None:
        raise ContractError("drafting a contract needs the ONNX (its I/O names, dtypes and shapes)")
    prov: dict[str, str] = {}
    streaming = nemo_streaming(encoder, streaming_args, prov) if encoder is not None else _todo_streaming()
    inputs, outputs = read_onnx_io(onnx)
    layers = int(encoder.n_layers) if encoder is not None and hasattr(encoder, "n_layers") else None
    layouts = {detect_layout(t.shape, layers) for t in (*inputs, *outputs)
               if infer_role(t.name, "x", len(t.shape)) in _CACHE}
    layouts.discard(None)
    if len(layouts) > 1:
        raise ContractError(f"the ONNX's caches disagree on their layout ({', '.join(sorted(map(str, layouts)))})",
                            file=str(onnx))
    layout = layouts.pop() if layouts else None
    doc: dict[str, Any] = {
        "schema_version": 1,
        "name": name or f"{onnx.stem}-streaming-encoder",
        "description": f"Drafted by streamparity init-contract from {onnx.name}"
                       + (" and a NeMo encoder config" if encoder is not None else "")
                       + "; fill in every TODO field (tolerances with their reasons) before use.",
        "model": {"onnx": str(onnx), **({"source": source} if source else {})},
        "dims": {"B": {"min": 1, "max": 1}},
        "inputs": [_tensor("inputs", i, t, layout, streaming, prov) for i, t in enumerate(inputs)],
        "outputs": [_tensor("outputs", i, t, layout, streaming, prov) for i, t in enumerate(outputs)],
        "cache_layout": layout or todo("layers_first or batch_first: the ONNX's cache shapes do not show it"),
        "streaming": streaming,
    }
    prov["dims.B"] = "default: one stream per call; raise max for batched runs (and add a batched profile)"
    prov["cache_layout"] = ("detected from where the ONNX's caches put the fixed layer count: axis 1 (batch_first "
                            "[B, layers, ...]) or axis 0 (layers_first [layers, B, ...])")
    _link_feeds(doc)
    if isinstance(streaming["first_chunk_frames"], int):
        frames = sorted({streaming["first_chunk_frames"], streaming["chunk_frames"]})
        doc["dims"]["T"] = {"min": frames[0], "max": frames[-1]}
        doc["profiles"] = _profiles(doc, streaming)
        prov["profiles"] = "one fixed-shape profile per chunk length of the streaming schedule, batch 1"
    doc["tolerances"] = {
        o["name"]: {p: todo(f"atol, rtol and reason for {o['name']} at {p}: measure the runtime's error against the "
                            "reference, then set a bound with headroom and say why") for p in PRECISIONS}
        for o in doc["outputs"] if o["role"] in (ROLE_ENCODED, *_CACHE)
    }
    doc["known_issues"] = []
    doc["provenance"] = prov
    return doc


def _link_feeds(doc: dict[str, Any]) -> None:
    by_role = {t["role"]: t["name"] for t in doc["inputs"]}
    for o in doc["outputs"]:
        if o["role"] in (*_CACHE, ROLE_CACHE_LEN) and o["role"] in by_role:
            o["feeds"] = by_role[o["role"]]


def _profiles(doc: dict[str, Any], s: dict[str, Any]) -> list[dict[str, Any]]:
    lengths = [("chunk", s["chunk_frames"])]
    if s["first_chunk_frames"] != s["chunk_frames"]:
        lengths = [("first_chunk", s["first_chunk_frames"]), *lengths]
    out = []
    for pname, frames in lengths:
        shapes = {}
        for t in doc["inputs"]:
            dims = [1 if d == "B" else frames if d == "T" else d for d in t["shape"]]
            if all(isinstance(d, int) for d in dims):
                shapes[t["name"]] = {"min": dims, "opt": dims, "max": dims}
        out.append({"name": pname, "description": f"{frames} feature frames per chunk, batch 1", "shapes": shapes})
    return out
