"""Reference generator: a NeMo cache-aware encoder, stepped chunk by chunk, written as reference JSONL.

Facts this module is built around (NeMo 3.0.0):

* ``setup_streaming_params`` must run *before* ``export``; an ONNX exported with the default
  streaming config keeps ``cache_last_channel_len`` at 0 (the checklist's bug).  We re-apply the
  params after export and verify that the exported ONNX reproduces NeMo's step.
* NeMo's ONNX always behaves like ``pad_and_drop_preencoded``: every chunk, the first included,
  has ``shift + pre_encode_cache`` frames and ``drop_extra_pre_encoded`` frames are dropped.  So
  the first chunk is left-padded with zeros, and the torch reference steps the same way.
* NeMo exports caches batch-first; ``get_initial_cache_state`` is layers-first.  The contract's
  ``cache_layout`` says which one the files use.
* CUDA references run with TF32 off: TF32 convolutions produced cache_last_time errors of
  0.01-0.1 in the checklist's project.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamparity.atomic import atomic_write_bytes
from streamparity.contract.model import (
    ROLE_AUDIO,
    ROLE_CACHE_CHANNEL,
    ROLE_CACHE_LEN,
    ROLE_CACHE_TIME,
    ROLE_ENCODED,
    ROLE_ENCODED_LEN,
    ROLE_LENGTH,
    Contract,
)
from streamparity.errors import StreamparityError
from streamparity.reference.writer import ReferenceWriter

FAULTS = ("none", "reset-cache", "stale-cache-len")


class GeneratorError(StreamparityError):
    pass


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise GeneratorError(f"PyTorch is needed to generate references ({e}); pip install 'streamparity[nemo]'") \
            from None
    return torch


def load_config(path: Path) -> dict[str, Any]:
    try:
        cfg: dict[str, Any] = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise GeneratorError(f"cannot read encoder config ({e})", file=str(path)) from None
    for key in ("encoder", "seed", "streaming"):
        if key not in cfg:
            raise GeneratorError(f"encoder config lacks {key!r}", file=str(path), field=key)
    return cfg


def apply_streaming(encoder: Any, streaming: dict[str, Any]) -> None:
    encoder.setup_streaming_params(
        chunk_size=streaming.get("chunk_size"),
        shift_size=streaming.get("shift_size"),
        left_chunks=streaming.get("left_chunks"),
    )


def build_encoder(config: dict[str, Any], device: str = "cpu") -> Any:
    """A NeMo ConformerEncoder with seeded random weights, in eval mode, with streaming params applied."""
    torch = _torch()
    try:
        from nemo.collections.asr.modules import ConformerEncoder
    except ImportError as e:
        raise GeneratorError(f"NeMo is needed to generate references ({e}); pip install 'streamparity[nemo]'") \
            from None
    torch.manual_seed(int(config["seed"]))
    enc = ConformerEncoder(**config["encoder"])
    # give batch-norm layers non-trivial statistics so that they matter numerically
    g = torch.Generator().manual_seed(int(config["seed"]) + 1)
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    enc.eval()
    apply_streaming(enc, config["streaming"])
    return enc.to(device)


def load_nemo_encoder(path: Path, streaming: dict[str, Any], device: str) -> Any:
    try:
        from nemo.collections.asr.models import ASRModel
    except ImportError as e:
        raise GeneratorError(f"NeMo is needed to restore {path} ({e})", file=str(path)) from None
    model = ASRModel.restore_from(str(path), map_location=device)
    enc = model.encoder
    enc.eval()
    apply_streaming(enc, streaming)
    return enc


def export_onnx(encoder: Any, streaming: dict[str, Any], out: Path, *, cache_layout: str = "batch_first") -> None:
    """Export with cache support, atomically; streaming params are applied before and re-applied after.
    A layers-first layout wraps NeMo's batch-first cache I/O in transposes (streamparity.tools.onnx_layout)."""
    apply_streaming(encoder, streaming)
    encoder.export_cache_support = True
    tmp = out.with_name(f".{out.name}.partial.onnx")
    try:
        encoder.export(str(tmp))
        data = tmp.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)
    if cache_layout == "layers_first":
        import onnx

        from streamparity.tools.onnx_layout import to_layers_first

        model = to_layers_first(onnx.load_from_string(data), ("cache_last_channel", "cache_last_time"),
                                ("cache_last_channel_next", "cache_last_time_next"))
        data = model.SerializeToString()
    atomic_write_bytes(out, data)
    apply_streaming(encoder, streaming)  # export may reset them (set_export_config)


def check_streaming_matches_contract(encoder: Any, contract: Contract) -> dict[str, Any]:
    cfg = encoder.streaming_cfg
    s = contract.streaming
    shift = _last(cfg.shift_size)
    pre = _last(cfg.pre_encode_cache_size)
    got = {
        "chunk_frames": shift + pre,
        "valid_out_len": int(cfg.valid_out_len),
        "cache_channel_size": int(cfg.last_channel_cache_size),
        "drop_extra_pre_encoded": int(cfg.drop_extra_pre_encoded),
    }
    want = {
        "chunk_frames": s.chunk_frames,
        "valid_out_len": s.valid_out_len,
        "cache_channel_size": s.cache_channel_size,
        "drop_extra_pre_encoded": int(s.nemo.get("drop_extra_pre_encoded", got["drop_extra_pre_encoded"])),
    }
    bad = {k: (got[k], want[k]) for k in got if got[k] != want[k]}
    if bad:
        detail = ", ".join(f"{k}: NeMo {g} vs contract {w}" for k, (g, w) in bad.items())
        raise GeneratorError(f"NeMo streaming config disagrees with the contract ({detail})", file=str(contract.path),
                             field="streaming")
    return {"shift": shift, "pre_encode": pre, "drop_extra_pre_encoded": got["drop_extra_pre_encoded"]}


def _last(v: Any) -> int:
    return int(v[-1]) if isinstance(v, (list, tuple)) else int(v)


@dataclass
class GenerateResult:
    reference: Path
    onnx: Path | None
    offline: Path | None
    chunks: int
    seconds: float
    contract: Path | None = None


def _to_layout(t: Any, contract: Contract) -> np.ndarray:
    a: np.ndarray = t.detach().float().cpu().numpy() if t.dtype.is_floating_point else t.detach().cpu().numpy()
    if contract.cache_layout == "batch_first" and a.ndim == 4:
        a = np.ascontiguousarray(a.transpose(1, 0, 2, 3))
    return a


def _draft_and_load(encoder: Any, onnx_path: Path, out_dir: Path, *, config_path: Path | None, name: str | None,
                    cache_layout: str, offline: bool, reference_name: str, streaming_args: dict[str, Any],
                    log: Any) -> Contract:
    """make-reference without --contract: draft one from the encoder and the ONNX, write it, load it."""
    import json

    from streamparity.atomic import atomic_write_text
    from streamparity.contract.loading import load_contract
    from streamparity.tools.generator_draft import draft_contract

    cfg_rel = None
    if config_path is not None:
        try:
            cfg_rel = Path(config_path).resolve().relative_to(out_dir.resolve()).as_posix()
        except ValueError:
            cfg_rel = str(Path(config_path).resolve())
    doc = draft_contract(onnx_path, Path(cfg_rel) if cfg_rel else None, encoder=encoder, cache_layout=cache_layout,
                         name=name, reference=reference_name, offline_reference="offline.npz" if offline else None,
                         streaming_args=streaming_args)
    path = out_dir / f"{doc['name']}.contract.json"
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    log(f"drafted {path} (tolerances need calibration: streamparity calibrate {path})")
    return load_contract(path)


def generate(
    contract: Contract | None,
    *,
    out_dir: Path,
    config_path: Path | None = None,
    nemo_path: Path | None = None,
    num_chunks: int = 300,
    functional_chunks: int | None = None,
    seed: int = 42,
    device: str = "cpu",
    export: bool = True,
    offline: bool = True,
    fault: str = "none",
    reference_name: str = "reference.jsonl",
    name: str | None = None,
    cache_layout: str = "batch_first",
    log: Any = print,
    on_step: Any = None,
) -> GenerateResult:
    torch = _torch()
    if fault not in FAULTS:
        raise GeneratorError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")
    if contract is None and not export:
        raise GeneratorError("--no-export needs --contract: the contract is drafted from the exported ONNX")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    streaming = dict(contract.streaming.nemo) if contract is not None else {}
    streaming_args: dict[str, Any] = {k: streaming[k] for k in ("chunk_size", "shift_size", "left_chunks")
                                      if k in streaming}
    config_sha = None
    if config_path is not None:
        cfg = load_config(config_path)
        config_sha = hashlib.sha256(config_path.read_bytes()).hexdigest()
        streaming_args = cfg["streaming"]
        encoder = build_encoder(cfg, "cpu")
    elif nemo_path is not None:
        encoder = load_nemo_encoder(nemo_path, streaming_args, "cpu")
    else:
        raise GeneratorError("give an encoder config (--config) or a .nemo file (--nemo)")
    t0 = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = None
    layout = contract.cache_layout if contract is not None else cache_layout
    if export:
        onnx_path = out_dir / "encoder.onnx"
        export_onnx(encoder, streaming_args, onnx_path, cache_layout=layout)
        log(f"exported {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB, {layout} caches)")
    if contract is None:
        assert onnx_path is not None
        from streamparity.tools.offline_companion import why_no_offline

        why = why_no_offline(encoder) if offline else None
        if why:
            log(f"no offline companion: {why}")
            offline = False
        contract = _draft_and_load(encoder, onnx_path, out_dir, config_path=config_path, name=name,
                                   cache_layout=cache_layout, offline=offline, reference_name=reference_name,
                                   streaming_args=streaming_args, log=log)
    encoder = encoder.to(device)
    sched = check_streaming_matches_contract(encoder, contract)
    shift, pre, drop = sched["shift"], sched["pre_encode"], sched["drop_extra_pre_encoded"]
    c = contract
    if offline and num_chunks <= c.gates.offline_warmup_chunks + 1:
        raise GeneratorError(f"--num-chunks {num_chunks} leaves no chunk to compare with the offline reference "
                             f"after the contract's {c.gates.offline_warmup_chunks} warm-up chunks",
                             file=str(c.path), field="gates.offline_warmup_chunks")
    names = {r: c.input_by_role(r).name for r in (ROLE_AUDIO, ROLE_LENGTH, ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME,
                                                   ROLE_CACHE_LEN)}
    onames = {r: c.output_by_role(r).name for r in (ROLE_ENCODED, ROLE_ENCODED_LEN, ROLE_CACHE_CHANNEL,
                                                    ROLE_CACHE_TIME, ROLE_CACHE_LEN)}
    feat_in = int(c.input_by_role(ROLE_AUDIO).shape[1])  # type: ignore[arg-type]
    total = (num_chunks - 1) * shift + pre
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, feat_in, total, generator=gen)
    n_func = num_chunks if functional_chunks is None else min(functional_chunks, num_chunks)
    header: dict[str, Any] = {
        "contract": c.name,
        "generator": "streamparity.tools.generator",
        "seed": seed,
        "device": device,
        "tf32": False if device.startswith("cuda") else None,
        "torch": torch.__version__,
        "nemo": _nemo_version(),
        "config_sha256": config_sha,
        "nemo_file": str(nemo_path) if nemo_path else None,
        "streaming": {"shift": shift, "pre_encode": pre, "drop_extra_pre_encoded": drop, **streaming_args},
        "functional_chunks": n_func,
        "cache_layout": c.cache_layout,
        "fault": fault,
    }
    cache_c, cache_t, cache_l = encoder.get_initial_cache_state(batch_size=1, device=device)
    ref_path = out_dir / reference_name
    stream_out: list[np.ndarray] = []
    with torch.no_grad(), ReferenceWriter(ref_path, header, num_chunks) as w:
        for k in range(num_chunks):
            t_step = time.perf_counter()
            hi = k * shift + pre
            lo = hi - shift - pre
            x = feats[:, :, max(lo, 0):hi]
            if lo < 0:
                x = torch.nn.functional.pad(x, (-lo, 0))
            x = x.to(device)
            length = torch.tensor([x.shape[-1]], dtype=torch.int64, device=device)
            if fault == "reset-cache" and k > 0:
                cache_c, cache_t, cache_l = encoder.get_initial_cache_state(batch_size=1, device=device)
            inputs = {
                names[ROLE_AUDIO]: x.cpu().numpy(),
                names[ROLE_LENGTH]: length.cpu().numpy(),
                names[ROLE_CACHE_LEN]: cache_l.cpu().numpy().astype(np.int64),
            }
            if k < n_func:
                inputs[names[ROLE_CACHE_CHANNEL]] = _to_layout(cache_c, c)
                inputs[names[ROLE_CACHE_TIME]] = _to_layout(cache_t, c)
            enc, enc_len, cache_c, cache_t, cache_l = encoder.cache_aware_stream_step(
                processed_signal=x, processed_signal_length=length, cache_last_channel=cache_c,
                cache_last_time=cache_t, cache_last_channel_len=cache_l, keep_all_outputs=False,
                drop_extra_pre_encoded=drop)
            if fault == "stale-cache-len":
                cache_l = torch.zeros_like(cache_l)
            outputs = {
                onames[ROLE_ENCODED]: enc.float().cpu().numpy(),
                onames[ROLE_ENCODED_LEN]: enc_len.cpu().numpy().astype(np.int64),
                onames[ROLE_CACHE_LEN]: cache_l.cpu().numpy().astype(np.int64),
            }
            if k < n_func:
                outputs[onames[ROLE_CACHE_CHANNEL]] = _to_layout(cache_c, c)
                outputs[onames[ROLE_CACHE_TIME]] = _to_layout(cache_t, c)
            meta = {"frames": [lo, hi], "seed": seed, "has_caches": k < n_func}
            w.write(k, meta, inputs, outputs)
            stream_out.append(outputs[onames[ROLE_ENCODED]])
            if on_step is not None:  # (chunk, ms): e.g. drivers.progress.Progress
                on_step(k, (time.perf_counter() - t_step) * 1e3)
            elif k % 50 == 0:
                log(f"chunk {k}/{num_chunks}")
    offline_path = None
    if offline:
        offline_path = _write_checked_offline(c, encoder, feats, stream_out, sched, out_dir / "offline.npz",
                                              device=device, log=log, check=fault == "none")
    if onnx_path is not None:
        verify_onnx(c, onnx_path, ref_path)
    return GenerateResult(ref_path, onnx_path, offline_path, num_chunks, time.perf_counter() - t0, c.path)


def _write_checked_offline(c: Contract, encoder: Any, feats: Any, stream_out: list[np.ndarray],
                           sched: dict[str, Any], path: Path, *, device: str, log: Any, check: bool = True) -> Path:
    """The offline companion, aligned with the stream, written only when it matches the stream after warm-up
    (`check` False: a deliberately faulty reference, whose clean offline companion must reveal the fault)."""
    from streamparity.reference.checks import compare_offline
    from streamparity.tools.offline_companion import offline_left_pad, run_offline, write_offline

    pad = offline_left_pad(sched["shift"], sched["drop_extra_pre_encoded"], int(encoder.subsampling_factor))
    full = run_offline(encoder, feats, pad=pad, frames=len(stream_out) * c.streaming.valid_out_len, device=device)
    chk = compare_offline(c, stream_out, full)
    if not check:
        write_offline(path, full, warmup_chunks=c.gates.offline_warmup_chunks, left_pad=pad)
        log(f"offline companion written unchecked (injected fault): the stream differs by {chk.max_abs:.3g}")
        return path
    if not chk.passed:
        raise GeneratorError(
            f"generator error: the offline companion (features left-padded by {pad} frames) differs from the "
            f"streaming reference by {chk.max_abs:.3g} at chunk {chk.worst_chunk} > offline_atol {chk.atol:g} "
            f"({chk.coverage()}); offline.npz not written",
            file=str(path), chunk=chk.worst_chunk if chk.worst_chunk >= 0 else None, field="gates.offline_atol")
    write_offline(path, full, warmup_chunks=c.gates.offline_warmup_chunks, left_pad=pad)
    log(f"offline companion matches the stream to {chk.max_abs:.3g}: {chk.coverage()} (features left-padded by "
        f"{pad} frames)")
    return path


def _nemo_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("nemo-toolkit")
    except Exception:
        return None


def verify_onnx(contract: Contract, onnx_path: Path, ref_path: Path, chunks: int = 4) -> None:
    """The exported ONNX must reproduce the reference on its first chunks (catches reset streaming params)."""
    from streamparity.backends.ort import OrtBackend
    from streamparity.drivers.closed_loop import run_closed_loop
    from streamparity.reference.reader import ReferenceFile

    ref = ReferenceFile(ref_path, use_sidecar=False)
    run = run_closed_loop(OrtBackend(contract, onnx_path), contract, ref, upto=min(chunks, len(ref)) - 1,
                          keep_bundles=False)
    bad = [r for r in run.chunks if r.verdict == "fail"]
    if bad:
        r = bad[0]
        why = r.error or "; ".join(str(v) for v in r.violations[:3]) or ", ".join(
            f"{k} max_abs {m.max_abs:.3g}" for k, m in r.metrics.items() if r.verdicts.get(k) == "fail")
        raise GeneratorError(f"exported ONNX does not reproduce NeMo's streaming step at chunk {r.chunk}: {why}",
                             file=str(onnx_path), chunk=r.chunk)
