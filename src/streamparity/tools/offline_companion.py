"""The offline companion of a streaming reference: the full-context encoder on the same features.

Chunk 0 of the stream is left-padded with ``shift`` zero frames (NeMo's ONNX always drops
``drop_extra_pre_encoded`` subsampled frames), so the stream's output frame ``t`` sits at feature frame
``t*f + drop*f - shift``.  The offline encoder's output frame ``j`` sits at feature frame ``j*f`` of what it
is given, so the offline features are left-padded by ``shift - drop*f`` zero frames (or cropped, when that
is negative) and then output ``j`` of the offline run is output ``t = j`` of the stream, for every
subsampling factor ``f`` and schedule.  (For parakeet's x8 schedule the pad is 16 - 2*8 = 0; for a x4
model with a 16-frame shift it is 16 - 2*4 = 8 frames, i.e. 2 output frames.)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from streamparity.atomic import atomic_write_bytes


def offline_left_pad(shift: int, drop_extra_pre_encoded: int, subsampling_factor: int) -> int:
    """Zero frames to put before the features (negative: frames to crop) to align offline with the stream."""
    return shift - drop_extra_pre_encoded * subsampling_factor


def offline_features(feats: Any, pad: int) -> Any:
    """`feats` [B, mels, T] (torch) left-padded with `pad` zero frames, or cropped by -pad frames."""
    import torch

    if pad > 0:
        return torch.nn.functional.pad(feats, (pad, 0))
    return feats[..., -pad:] if pad < 0 else feats


def run_offline(encoder: Any, feats: Any, *, pad: int, frames: int, device: str) -> np.ndarray:
    """The offline encoder output aligned with the stream's output frames, at most `frames` of them."""
    import torch

    x = offline_features(feats, pad).to(device)
    with torch.no_grad():
        full, _ = encoder(audio_signal=x, length=torch.tensor([x.shape[-1]], device=device))
    out: np.ndarray = full.float().cpu().numpy()[..., :frames]
    return out


def write_offline(path: Path, encoded: np.ndarray, *, warmup_chunks: int, left_pad: int) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, encoded=encoded, warmup_chunks=np.int64(warmup_chunks),
                        left_pad_frames=np.int64(left_pad))
    atomic_write_bytes(path, buf.getvalue())


def why_no_offline(encoder: Any) -> str | None:
    """Why the offline encoder cannot equal the stream for this encoder (None: it can).  With
    ``att_context_style='regular'`` and lookahead, offline frames see the full right context while streamed
    frames see only the rest of their chunk, so no alignment makes the two equal."""
    style = str(getattr(encoder, "att_context_style", "chunked_limited"))
    att = [int(a) for a in encoder.att_context_size]
    if style != "chunked_limited" and att[1] > 0:
        return (f"att_context_style {style!r} with lookahead {att[1]}: the offline encoder sees more right context "
                "than a streamed chunk, so it cannot be the stream's offline companion")
    return None
