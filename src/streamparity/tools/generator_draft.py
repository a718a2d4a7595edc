"""The contract ``make-reference`` drafts when given no contract: ``streamparity.contract.draft.draft_contract``
(I/O, roles, cache layout, streaming schedule, profiles from the ONNX and NeMo's ``streaming_cfg``) completed with
what only the generator knows: the files it writes, the offline companion's warm-up, and placeholder tolerances
marked "needs calibration" (streamparity.contract.calibration_state) that ``streamparity calibrate`` replaces."""

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


def _tol(prec: str, what: str) -> dict[str, Any]:
    atol, rtol = _DRAFT_TOL[prec]
    return {"atol": atol, "rtol": rtol, "reason": placeholder_reason(
        f"drafted {prec} default for {what}; run `streamparity calibrate` to measure this model's error")}


def draft_contract(onnx: Path, nemo_config: Path | None, *, encoder: Any, cache_layout: str = "batch_first",
                   name: str | None = None, reference: str = "reference.jsonl",
                   offline_reference: str | None = "offline.npz", source: str = "",
                   streaming_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """A loadable contract document for `encoder`, exported as `onnx`; paths relative to onnx's folder.
    `streaming_args` are the ``setup_streaming_params`` arguments used (chunk_size, shift_size, left_chunks)."""
    from streamparity.contract.draft import draft_contract as draft_from_onnx

    s = nemo_schedule(encoder)
    att = s["att_context_size"]
    given = {k: v for k, v in (streaming_args or {}).items() if v is not None}
    chunk = int(given.get("chunk_size", att[1] + 1))  # NeMo's defaults from att_context_size where not given
    nemo_args = {"chunk_size": chunk, "shift_size": int(given.get("shift_size", chunk)),
                 "left_chunks": int(given.get("left_chunks", max(att[0], 0) // max(chunk, 1)))}
    doc = draft_from_onnx(onnx, encoder=encoder, streaming_args=nemo_args,
                          name=name or onnx.parent.name or "my-encoder",
                          source=source or "NeMo ConformerEncoder, contract drafted by make-reference")
    if doc["cache_layout"] != cache_layout:
        raise StreamparityError(f"the exported ONNX's caches are {doc['cache_layout']}, make-reference was asked for "
                                f"{cache_layout}", file=str(onnx), field="cache_layout")
    model: dict[str, Any] = {"onnx": onnx.name, "reference": reference, "source": doc["model"].get("source", "")}
    if offline_reference:
        model["offline_reference"] = offline_reference
    if nemo_config is not None:
        model["nemo_config"] = str(nemo_config)
    doc["model"] = model
    doc["description"] = (f"drafted by streamparity make-reference: {s['n_layers']} layers, d_model {s['d_model']}, "
                          f"{s['feat_in']} mels, subsampling x{s['subsampling_factor']}, att_context_size "
                          f"{s['att_context_size']}")
    doc["tolerances"] = {n: {p: _tol(p, n) for p in ("fp32", "fp16")} for n in doc["tolerances"]}
    doc["provenance"]["tolerances"] = "placeholders until `streamparity calibrate` measures this model's error"
    doc["gates"] = {
        "vs_baseline_factor": 4.0, "vs_baseline_floor": {"fp32": 5e-6, "fp16": 2e-3},
        "offline_atol": 1e-4, "offline_warmup_chunks": s["offline_warmup_chunks"],
        "offline_reason": f"the zero-padded first chunk reaches {s['n_layers']} layers x (att left "
                          f"{s['att_context_size'][0]} + conv {s['cache_time_size']}) output frames; after that "
                          "streaming equals the offline encoder run on identically left-padded features",
        "reason": "drafted defaults: a runtime may be at most 4x worse than ONNX Runtime CPU at its precision",
    }
    return doc
