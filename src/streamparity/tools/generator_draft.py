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

_DRAFT_TOL = {"fp32": (1e-4, 1e-4), "fp16": (2e-2, 1e-2)}


def _model_facts(encoder: Any, valid_out_len: int) -> dict[str, Any]:
    """What the generator's part of the draft needs beyond the streaming schedule (which contract.draft reads from
    NeMo's streaming_cfg): the encoder's size and the offline companion's warm-up."""
    att = [int(a) for a in encoder.att_context_size]
    c, t, _ = encoder.get_initial_cache_state(batch_size=1)
    n_layers, kernel = int(c.shape[0]), int(t.shape[-1]) + 1
    # the zero-padded first chunk reaches att_left + kernel-1 output frames further per layer
    warmup = math.ceil(n_layers * (max(att[0], 0) + kernel - 1) / valid_out_len) + 2
    return {"att_context_size": att, "n_layers": n_layers, "d_model": int(c.shape[-1]),
            "feat_in": int(encoder._feat_in), "subsampling_factor": int(encoder.subsampling_factor),
            "cache_time_size": int(t.shape[-1]), "offline_warmup_chunks": warmup}


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

    att = [int(a) for a in encoder.att_context_size]
    given = {k: v for k, v in (streaming_args or {}).items() if v is not None}
    chunk = int(given.get("chunk_size", att[1] + 1))  # NeMo's defaults from att_context_size where not given
    nemo_args = {"chunk_size": chunk, "shift_size": int(given.get("shift_size", chunk)),
                 "left_chunks": int(given.get("left_chunks", max(att[0], 0) // max(chunk, 1)))}
    doc = draft_from_onnx(onnx, encoder=encoder, streaming_args=nemo_args,
                          name=name or onnx.parent.name or "my-encoder",
                          source=source or "NeMo ConformerEncoder, contract drafted by make-reference")
    s = _model_facts(encoder, int(doc["streaming"]["valid_out_len"]))
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
