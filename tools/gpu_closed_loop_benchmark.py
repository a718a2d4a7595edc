#!/usr/bin/env python3
"""Closed-loop streaming on a CUDA GPU with the PyTorch (NeMo) backend: host round trip vs device-resident caches.

For (1) the embedded tiny encoder (weights rebuilt from fixtures/tiny/encoder_config.json, chunks from
fixtures/tiny/reference.jsonl) and (2) a full-size parakeet-shaped encoder (24 layers, d_model 1024, 8 heads,
256 subsampling channels, random weights, built here), run N chunks closed loop:

* ``host``: :class:`~streamparity.backends.base.HostStream` semantics: every chunk copies all inputs, caches
  included, host->device and all outputs, caches included, device->host (pageable numpy memory);
* ``device``: :class:`~streamparity.backends.device_loop.DeviceLoopStream` (caches stay on the GPU, ping-pong
  buffers; only audio + length go up and only encoder output + lengths come down);
* ``device+fetch``: the same, but fetching the caches too (what a parity run compares);
* ``device-fp16``: device-resident with the encoder in FP16 (``.half()``).

Per chunk: host->device and device->host bytes (counted at the copy calls), latency from CUDA events around
the step (synchronized) and wall clock, P50/P95/P99 after warm-up.  For the tiny encoder the FP32 closed loops
are also compared against the reference (TF32 off): max abs per output and the verdict under the contract's
tolerances.  Writes gpu_closed_loop.json and gpu_closed_loop.md to --out.

    python tools/gpu_closed_loop_benchmark.py --out $OUT            # needs torch with CUDA and NeMo
    python tools/gpu_closed_loop_benchmark.py --device cpu --tiny-chunks 20 --full-chunks 0 --out /tmp/x  # smoke
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from streamparity.backends.base import HostStream, Stream
from streamparity.backends.device_loop import BufferPool
from streamparity.backends.memory import TorchOps
from streamparity.backends.torch_nemo import TorchNemoBackend
from streamparity.contract.loading import load_contract, parse_contract
from streamparity.contract.model import ROLE_CACHE_LEN, Contract
from streamparity.judging.metrics import compare_output, verdict
from streamparity.reference.reader import ReferenceFile
from streamparity.tools.generator import build_encoder, load_config

TINY_CONTRACT = ROOT / "contracts" / "tiny-parakeet.contract.json"
TINY_CONFIG = ROOT / "fixtures" / "tiny" / "encoder_config.json"
TINY_REFERENCE = ROOT / "fixtures" / "tiny" / "reference.jsonl"


class CountingOps(TorchOps):
    """TorchOps that counts the bytes of every host<->device copy."""

    def __init__(self, device: str) -> None:
        super().__init__(device)
        self.up = 0
        self.down = 0

    def h2d(self, dst: Any, src: np.ndarray) -> None:
        self.up += int(np.asarray(src).nbytes)
        super().h2d(dst, src)

    def d2h(self, src: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        out = super().d2h(src, shape, dtype)
        self.down += int(out.nbytes)
        return out

    def reset(self) -> None:
        self.up = self.down = 0


def attach_counting_ops(backend: TorchNemoBackend, device: str) -> CountingOps:
    """Route the backend's device buffers through CountingOps (also makes the loop usable on CPU for smoke runs)."""
    ops = CountingOps(device)
    backend.ops = ops
    backend.pool = BufferPool(ops)
    return ops


@dataclass
class Run:
    model: str
    mode: str
    precision: str
    chunks: int
    warmup: int
    h2d_bytes: list[int] = field(default_factory=list)
    d2h_bytes: list[int] = field(default_factory=list)
    gpu_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    parity: dict[str, Any] | None = None
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        w = self.warmup
        g, wl = np.asarray(self.gpu_ms[w:]), np.asarray(self.wall_ms[w:])

        def pct(a: np.ndarray, q: float) -> float | None:
            return round(float(np.percentile(a, q)), 4) if a.size else None

        up, down = self.h2d_bytes[w:], self.d2h_bytes[w:]
        return {
            "model": self.model, "mode": self.mode, "precision": self.precision, "chunks": self.chunks,
            "warmup": w, "timed_chunks": len(g),
            "h2d_bytes_per_chunk": int(np.median(up)) if up else None,
            "d2h_bytes_per_chunk": int(np.median(down)) if down else None,
            "h2d_bytes_max": max(up) if up else None, "d2h_bytes_max": max(down) if down else None,
            "gpu_ms": {"p50": pct(g, 50), "p95": pct(g, 95), "p99": pct(g, 99),
                       "mean": round(float(g.mean()), 4) if g.size else None},
            "wall_ms": {"p50": pct(wl, 50), "p95": pct(wl, 95), "p99": pct(wl, 99),
                        "mean": round(float(wl.mean()), 4) if wl.size else None},
            "parity": self.parity, "error": self.error,
        }


def initial_caches(contract: Contract) -> dict[str, np.ndarray]:
    s = contract.streaming
    out: dict[str, np.ndarray] = {}
    for spec in contract.inputs:
        if spec.role in ("cache_channel", "cache_time"):
            shape = contract.concrete_shape(spec, {"B": 1, "T_cache": s.cache_channel_size})
            out[spec.name] = np.zeros(shape, dtype=spec.dtype)
        elif spec.role == ROLE_CACHE_LEN:
            out[spec.name] = np.full((1,), int(s.cache_len.initial), dtype=spec.dtype)
    return out


def run_loop(model: str, mode: str, precision: str, backend: TorchNemoBackend, ops: CountingOps,
             initial: Mapping[str, np.ndarray], chunks: list[tuple[np.ndarray, np.ndarray]], warmup: int,
             check: Callable[[int, dict[str, np.ndarray]], None] | None = None) -> Run:
    torch = backend.torch
    cuda = backend.torch_device.type == "cuda"
    run = Run(model, mode, precision, len(chunks), min(warmup, max(len(chunks) - 1, 0)))
    stream: Stream
    if mode == "host":
        stream = HostStream(backend, initial, fetch_caches=True)
    else:
        stream = backend.open_stream(initial, fetch_caches=(mode == "device+fetch"))
    try:
        for i, (audio, length) in enumerate(chunks):
            ops.reset()
            if cuda:
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                t0 = time.perf_counter()
                start.record()
                out = stream.step(audio, length)
                end.record()
                torch.cuda.synchronize()
                t1 = time.perf_counter()
                run.gpu_ms.append(float(start.elapsed_time(end)))
            else:
                t0 = time.perf_counter()
                out = stream.step(audio, length)
                t1 = time.perf_counter()
                run.gpu_ms.append((t1 - t0) * 1e3)
            run.wall_ms.append((t1 - t0) * 1e3)
            run.h2d_bytes.append(ops.up)
            run.d2h_bytes.append(ops.down)
            if check is not None:
                check(i, out)
    finally:
        stream.close()
    return run


class ParityCheck:
    """Closed-loop outputs vs the reference: max abs per output and the verdict under the contract tolerances."""

    def __init__(self, contract: Contract, ref: ReferenceFile, precision: str) -> None:
        self.contract, self.ref, self.precision = contract, ref, precision
        self.len_out = contract.output_by_role(ROLE_CACHE_LEN).name
        self.max_abs: dict[str, float] = {}
        self.verdicts: dict[str, str] = {}
        self.compared: dict[str, int] = {}

    def __call__(self, i: int, out: dict[str, np.ndarray]) -> None:
        rec = self.ref.read(i)
        cache_len = int(np.asarray(rec.outputs[self.len_out]).reshape(-1)[0]) if self.len_out in rec.outputs else None
        for name, expected in rec.outputs.items():
            if name not in out:
                continue
            if np.issubdtype(np.asarray(expected).dtype, np.integer):
                ok = np.array_equal(np.asarray(out[name]), np.asarray(expected))
                self.max_abs[name] = max(self.max_abs.get(name, 0.0), 0.0 if ok else float("inf"))
                self.verdicts[name] = "pass" if ok and self.verdicts.get(name, "pass") == "pass" else "fail"
            else:
                m = compare_output(self.contract, name, out[name], expected, chunk=i, precision=self.precision,
                                   cache_len=cache_len)
                v = verdict(m, self.contract.tolerance(name, self.precision))
                self.max_abs[name] = max(self.max_abs.get(name, 0.0), m.max_abs)
                rank = {"pass": 0, "warn": 1, "fail": 2}
                self.verdicts[name] = max(self.verdicts.get(name, "pass"), v, key=lambda x: rank[x])
            self.compared[name] = self.compared.get(name, 0) + 1

    def result(self) -> dict[str, Any]:
        rank = {"pass": 0, "warn": 1, "fail": 2}
        overall = max(self.verdicts.values(), key=lambda x: rank[x]) if self.verdicts else "n/a"
        return {"precision": self.precision, "verdict": overall,
                "outputs": {n: {"max_abs": self.max_abs[n], "verdict": self.verdicts[n], "chunks": self.compared[n]}
                            for n in sorted(self.max_abs)}}


def fullsize_documents(tiny: dict[str, Any], left: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(encoder config, contract document) of a parakeet-shaped 24x1024 encoder with `left` frames of context."""
    layers, d_model, conv_state = 24, 1024, 8
    config: dict[str, Any] = {
        "seed": 1234,
        "encoder": {
            "feat_in": 128, "n_layers": layers, "d_model": d_model, "n_heads": 8, "subsampling": "dw_striding",
            "subsampling_factor": 8, "subsampling_conv_channels": 256, "causal_downsampling": True,
            "ff_expansion_factor": 4, "self_attention_model": "rel_pos", "att_context_size": [[left, 1]],
            "att_context_style": "chunked_limited", "conv_kernel_size": 9, "conv_context_size": "causal",
            "pos_emb_max_len": 5000, "dropout": 0.0, "dropout_pre_encoder": 0.0, "dropout_emb": 0.0,
            "dropout_att": 0.0,
        },
        "streaming": {"chunk_size": 2, "shift_size": 2, "left_chunks": left // 2},
    }
    doc = copy.deepcopy(tiny)
    doc["name"] = f"fullsize-parakeet-shaped-{left}"
    doc["model"] = {"source": "random weights, built by tools/gpu_closed_loop_benchmark.py", "seed": 1234}
    shapes = {"cache_last_channel": ["B", layers, left, d_model], "cache_last_time": ["B", layers, d_model, conv_state],
              "outputs": ["B", d_model, 2]}
    for spec in (*doc["inputs"], *doc["outputs"]):
        key = spec["name"].replace("_next", "") if spec["name"].startswith("cache_last_") else spec["name"]
        if key in shapes and not spec["name"].endswith("_len"):
            spec["shape"] = shapes[key]
    s = doc["streaming"]
    s["cache_channel_size"] = left
    s["cache_len"] = {**s["cache_len"], "max": left, "reason": f"saturating at {left}"}
    s["nemo"] = {**s["nemo"], "left_chunks": left // 2, "att_context_size": [left, 1]}
    doc["profiles"] = []
    doc["known_issues"] = []
    return config, doc


def build_on_device(config: dict[str, Any], device: str) -> Any:
    """Like generate.build_encoder, but the random weights are initialised on the device (fast for 0.6B)."""
    import torch
    from nemo.collections.asr.modules import ConformerEncoder

    from streamparity.tools.generator import apply_streaming

    torch.manual_seed(int(config["seed"]))
    with torch.device(device):
        enc = ConformerEncoder(**config["encoder"])
    g = torch.Generator().manual_seed(int(config["seed"]) + 1)
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm1d) and m.running_mean is not None and m.running_var is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    enc.eval()
    apply_streaming(enc, config["streaming"])
    return enc.to(device)


def bench_model(model: str, contract: Contract, make_encoder: Callable[[], Any], config_path: Path, device: str,
                chunks: list[tuple[np.ndarray, np.ndarray]], warmup: int, ref: ReferenceFile | None,
                fp16: bool) -> list[Run]:
    initial = initial_caches(contract)
    runs: list[Run] = []
    encoder = make_encoder()
    backend = TorchNemoBackend(contract, encoder, precision="fp32", device=device, config_path=config_path)
    ops = attach_counting_ops(backend, device)
    for mode in ("host", "device", "device+fetch"):
        check = ParityCheck(contract, ref, "fp32") if ref is not None and mode != "device" else None
        r = run_loop(model, mode, "fp32", backend, ops, initial, chunks, warmup, check)
        r.parity = check.result() if check is not None else None
        runs.append(r)
        print(json.dumps(r.summary()), flush=True)
    if fp16 and backend.torch_device.type == "cuda":
        try:
            b16 = TorchNemoBackend(contract, encoder, precision="fp16", device=device, config_path=config_path)
            ops16 = attach_counting_ops(b16, device)
            check = ParityCheck(contract, ref, "fp16") if ref is not None else None
            for mode in ("device", "host"):
                r = run_loop(model, mode, "fp16", b16, ops16, initial, chunks, warmup,
                             check if mode == "device" else None)
                r.mode = mode
                r.parity = check.result() if check is not None and mode == "device" else None
                runs.append(r)
                print(json.dumps(r.summary()), flush=True)
        except Exception as e:  # FP16 is a bonus; report rather than lose the FP32 figures
            r = Run(model, "device", "fp16", 0, 0, error=f"{type(e).__name__}: {e}")
            runs.append(r)
            print(json.dumps(r.summary()), flush=True)
    del backend
    return runs


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    def kib(n: int | None) -> str:
        return "-" if n is None else (f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB")

    def ms(d: dict[str, Any], k: str) -> str:
        v = d.get(k)
        return "-" if v is None else f"{v:.3f}"

    lines = [f"GPU: {meta['gpu']} | torch {meta['torch']} (CUDA {meta['cuda']}) | NeMo {meta['nemo']} | "
             f"TF32 off for FP32 | warm-up {meta['warmup']} chunks", "",
             "| model | mode | prec | chunks | H2D / chunk | D2H / chunk | GPU P50 ms | P95 | P99 | wall P50 ms | "
             "P95 | P99 | parity vs reference |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.get("parity")
        par = "-" if not p else p["verdict"] + " (" + ", ".join(
            f"{n} {o['max_abs']:.2e}" for n, o in p["outputs"].items() if not n.endswith("len")) + ")"
        if r.get("error"):
            par = "error: " + str(r["error"])[:120]
        g, w = r["gpu_ms"], r["wall_ms"]
        lines.append(f"| {r['model']} | {r['mode']} | {r['precision']} | {r['timed_chunks']} | "
                     f"{kib(r['h2d_bytes_per_chunk'])} | {kib(r['d2h_bytes_per_chunk'])} | {ms(g, 'p50')} | "
                     f"{ms(g, 'p95')} | {ms(g, 'p99')} | {ms(w, 'p50')} | {ms(w, 'p95')} | {ms(w, 'p99')} | {par} |")
    lines += ["", "host = HostStream semantics (all caches H2D + D2H every chunk, pageable memory); "
              "device = DeviceLoopStream, caches stay on the GPU (fetch_caches=False); device+fetch = "
              "device-resident but caches also copied back (parity runs). GPU ms = CUDA events around "
              "stream.step() + synchronize; wall = perf_counter around the same. Bytes counted at the copy calls."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="closed-loop GPU benchmark: host round trip vs device-resident caches")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--tiny-chunks", type=int, default=300)
    ap.add_argument("--full-chunks", type=int, default=100)
    ap.add_argument("--full-left-context", type=int, nargs="+", default=[256],
                    help="left attention context(s) of the full-size encoder (cache frames), e.g. 70 256")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--no-fp16", action="store_true")
    args = ap.parse_args(argv)

    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print(f"no CUDA device (torch {torch.__version__}, CUDA {torch.version.cuda})", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    import nemo

    meta = {"gpu": torch.cuda.get_device_name(torch.device(args.device)) if cuda else platform.processor() or "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda, "nemo": nemo.__version__,
            "python": platform.python_version(), "warmup": args.warmup, "tf32": False,
            "command": " ".join(sys.argv)}
    print(json.dumps(meta), flush=True)
    rows: list[dict[str, Any]] = []
    runs: list[Run] = []

    if args.tiny_chunks > 0:
        contract = load_contract(TINY_CONTRACT)
        ref = ReferenceFile(TINY_REFERENCE)
        n = min(args.tiny_chunks, len(ref))
        audio_name, length_name = contract.input_by_role("audio").name, contract.input_by_role("length").name
        chunks = [(ref.read(i).inputs[audio_name], ref.read(i).inputs[length_name]) for i in range(n)]
        runs += bench_model("tiny", contract, lambda: build_encoder(load_config(TINY_CONFIG), args.device),
                            TINY_CONFIG, args.device, chunks, args.warmup, ref, not args.no_fp16)
        rows = [r.summary() for r in runs]
        write(args.out, meta, rows)

    tiny_doc = json.loads(TINY_CONTRACT.read_text("utf-8"))
    for left in args.full_left_context if args.full_chunks > 0 else []:
        config, doc = fullsize_documents(tiny_doc, left)
        contract = parse_contract(doc, args.out / f"fullsize-{left}.contract.json")
        rng = np.random.default_rng(0)
        chunks = [(rng.standard_normal((1, 128, contract.streaming.chunk_frames)).astype(np.float32),
                   np.array([contract.streaming.chunk_frames], dtype=np.int64)) for _ in range(args.full_chunks)]
        name = f"fullsize-24x1024-ctx{left}"
        cfg_path = args.out / f"fullsize-{left}.encoder_config.json"
        def make(c: dict[str, Any] = config) -> Any:
            return build_on_device(c, args.device)

        runs += bench_model(name, contract, make, cfg_path,
                            args.device, chunks, args.warmup, None, not args.no_fp16)
        rows = [r.summary() for r in runs]
        write(args.out, meta, rows)
        if cuda:
            torch.cuda.empty_cache()
    print(markdown(meta, rows))
    return 0


def write(out: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_closed_loop.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=1) + "\n")
    (out / "gpu_closed_loop.md").write_text(markdown(meta, rows))


if __name__ == "__main__":
    sys.exit(main())
