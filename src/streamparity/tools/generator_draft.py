"""The generator's own contract draft: a contract derived from a NeMo encoder's ``streaming_cfg``.

``make-reference`` without ``--contract`` needs a schedule (chunk frames, cache sizes, cache-length
progression, I/O names and shapes) before it can step the encoder.  :func:`draft_contract` derives it
from the built encoder and the exported ONNX; it has the signature of the contract drafter
(``draft_contract(onnx, nemo_config) -> dict``) plus an optional ``encoder`` so that the generator does
not build the model twice, and can be replaced by that drafter without touching the generator.

Tolerances are placeholders marked "needs calibration" (streamparity.contract.calibration_state);
``streamparity calibrate`` measures and replaces them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from streamparity.contract.calibration_state import placeholder_reason
from streamparity.errors import StreamparityError

# NeMo's export names -> roles (inputs, then outputs; cache outputs feed the input of the same stem)
_IN_ROLES = {"audio_signal": "audio", "length": "length", "cache_last_channel": "cache_channel",
             "cache_last_time": "cache_time", "cache_last_channel_len": "cache_len"}
_OUT_ROLES = {"outputs": "encoded", "encoded_lengths": "encoded_len", "cache_last_channel_next": "cache_channel",
              "cache_last_time_next": "cache_time", "cache_last_channel_next_len": "cache_len"}
_FEEDS = {"cache_last_channel_next": "cache_last_channel", "cache_last_time_next": "cache_last_time",
          "cache_last_channel_next_len": "cache_last_channel_len"}
_DRAFT_TOL = {"fp32": (1e-4, 1e-4), "fp16": (2e-2, 1e-2)}


def _last(v: Any) -> int:
    return int(v[-1]) if isinstance(v, (list, tuple)) else int(v)


def nemo_schedule(encoder: Any) -> dict[str, Any]:
    """The streaming schedule NeMo's ``setup_streaming_params`` chose, in contract terms."""
    cfg = encoder.streaming_cfg
    shift, pre = _last(cfg.shift_size), _last(cfg.pre_encode_cache_size)
    valid, drop_cache = int(cfg.valid_out_len), int(cfg.cache_drop_size)
    att = [int(a) for a in encoder.att_context_size]
    c, t, _ = encoder.get_initial_cache_state(batch_size=1)
    factor = int(encoder.subsampling_factor)
    n_layers = int(c.shape[0])
    kernel = int(t.shape[-1]) + 1
    # the zero-padded first chunk reaches att_left + kernel-1 output frames further per layer
    warmup = math.ceil(n_layers * (max(att[0], 0) + kernel - 1) / valid) + 2
    return {
        "shift": shift, "pre_encode": pre, "drop_extra_pre_encoded": int(cfg.drop_extra_pre_encoded),
        "valid_out_len": valid, "cache_drop_size": drop_cache, "cache_channel_size": int(cfg.last_channel_cache_size),
        "cache_time_size": int(t.shape[-1]), "subsampling_factor": factor, "att_context_size": att,
        "n_layers": n_layers, "d_model": int(c.shape[-1]), "feat_in": int(encoder._feat_in),
        "offline_warmup_chunks": warmup,
    }


def _onnx_io(onnx: Path) -> tuple[list[str], list[str]]:
    import onnx as onnx_mod

    m = onnx_mod.load(str(onnx), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    return [v.name for v in m.graph.input if v.name not in inits], [v.name for v in m.graph.output]


def _tol(prec: str, what: str) -> dict[str, Any]:
    atol, rtol = _DRAFT_TOL[prec]
    return {"atol": atol, "rtol": rtol, "reason": placeholder_reason(
        f"drafted {prec} default for {what}; run `streamparity calibrate` to measure this model's error")}


def draft_contract(onnx: Path, nemo_config: Path | None, *, encoder: Any, cache_layout: str = "batch_first",
                   name: str | None = None, reference: str = "reference.jsonl",
                   offline_reference: str | None = "offline.npz", source: str = "",
                   streaming_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """A schema-valid contract document for `encoder`, exported as `onnx`; paths relative to onnx's folder.
    `streaming_args` are the ``setup_streaming_params`` arguments used (chunk_size, shift_size, left_chunks, in
    output frames); absent ones are NeMo's defaults from ``att_context_size``."""
    s = nemo_schedule(encoder)
    att = s["att_context_size"]
    given = {k: v for k, v in (streaming_args or {}).items() if v is not None}
    chunk = int(given.get("chunk_size", att[1] + 1))
    nemo_args = {"chunk_size": chunk, "shift_size": int(given.get("shift_size", chunk)),
                 "left_chunks": int(given.get("left_chunks", max(att[0], 0) // max(chunk, 1)))}
    ins, outs = _onnx_io(onnx)
    unknown = [n for n in ins if n not in _IN_ROLES] + [n for n in outs if n not in _OUT_ROLES]
    if unknown:
        raise StreamparityError(f"cannot draft a contract: ONNX I/O {', '.join(unknown)} are not NeMo's "
                                "cache-aware export names", file=str(onnx))
    L, C, D, T = s["n_layers"], s["cache_channel_size"], s["d_model"], s["cache_time_size"]
    frames = s["shift"] + s["pre_encode"]

    def lay(*rest: int) -> list[Any]:
        return ["B", L, *rest] if cache_layout == "batch_first" else [L, "B", *rest]

    shapes: dict[str, list[Any]] = {
        "audio_signal": ["B", s["feat_in"], "T"], "length": ["B"], "cache_last_channel": lay(C, D),
        "cache_last_time": lay(D, T), "cache_last_channel_len": ["B"], "outputs": ["B", D, s["valid_out_len"]],
        "encoded_lengths": ["B"], "cache_last_channel_next": lay(C, D), "cache_last_time_next": lay(D, T),
        "cache_last_channel_next_len": ["B"]}
    dtypes = {"length": "int64", "cache_last_channel_len": "int64", "encoded_lengths": "int64",
              "cache_last_channel_next_len": "int64"}

    def tensor(n: str, roles: dict[str, str]) -> dict[str, Any]:
        d: dict[str, Any] = {"name": n, "dtype": dtypes.get(n, "float32"), "shape": shapes[n], "role": roles[n]}
        if n in _FEEDS:
            d["feeds"] = _FEEDS[n]
        return d

    def concrete(n: str) -> list[int]:
        return [1 if x == "B" else frames if x == "T" else int(x) for x in shapes[n]]

    step = s["valid_out_len"] - s["cache_drop_size"]
    model: dict[str, Any] = {"onnx": onnx.name, "reference": reference,
                             "source": source or "NeMo ConformerEncoder, contract drafted by make-reference"}
    if offline_reference:
        model["offline_reference"] = offline_reference
    if nemo_config is not None:
        model["nemo_config"] = str(nemo_config)
    floats = [n for n in outs if n in ("outputs", "cache_last_channel_next", "cache_last_time_next")]
    return {
        "schema_version": 1,
        "name": name or onnx.parent.name or "my-encoder",
        "description": f"drafted by streamparity make-reference: {L} layers, d_model {D}, {s['feat_in']} mels, "
                       f"subsampling x{s['subsampling_factor']}, att_context_size {s['att_context_size']}",
        "model": model,
        "dims": {"B": {"min": 1, "max": 1}},
        "inputs": [tensor(n, _IN_ROLES) for n in ins],
        "outputs": [tensor(n, _OUT_ROLES) for n in outs],
        "cache_layout": cache_layout,
        "streaming": {
            "first_chunk_frames": frames, "chunk_frames": frames, "valid_out_len": s["valid_out_len"],
            "cache_channel_size": C, "cache_time_size": T,
            "cache_len": {"rule": "saturating_add", "initial": 0, "step": step, "max": C,
                          "reason": f"NeMo streaming_cfg: each chunk appends valid_out_len {s['valid_out_len']} - "
                                    f"cache_drop_size {s['cache_drop_size']} frames to a {C}-frame cache"},
            "cache_output_time_dim": "fixed",
            "nemo": {**nemo_args, "pre_encode_cache_size": s["pre_encode"],
                     "drop_extra_pre_encoded": s["drop_extra_pre_encoded"],
                     "att_context_size": s["att_context_size"]},
        },
        "profiles": [{"name": "chunk", "description": f"every chunk: {s['shift']} new + {s['pre_encode']} "
                      "pre-encode frames (the first is zero-padded)",
                      "shapes": {n: {"min": concrete(n), "opt": concrete(n), "max": concrete(n)} for n in ins}}],
        "tolerances": {n: {p: _tol(p, n) for p in ("fp32", "fp16")} for n in floats},
        "gates": {
            "vs_baseline_factor": 4.0, "vs_baseline_floor": {"fp32": 5e-6, "fp16": 2e-3},
            "offline_atol": 1e-4, "offline_warmup_chunks": s["offline_warmup_chunks"],
            "offline_reason": f"the zero-padded first chunk reaches {L} layers x (att left {s['att_context_size'][0]}"
                              f" + conv {T}) output frames; after that streaming equals the offline encoder run on "
                              "identically left-padded features",
            "reason": "drafted defaults: a runtime may be at most 4x worse than ONNX Runtime CPU at its precision",
        },
        "known_issues": [],
    }
