#!/usr/bin/env python3
"""A synthetic streaming encoder with a contract's exact I/O, and its closed-loop reference (issue 13, GPU).

For timing the suite's loops on a GPU where NeMo is not installed.  The ONNX is built with ``onnx.helper``
from the contract alone (names, dtypes, batch-first cache shapes [B, L, T_cache, D] and [B, L, D, K]),
with seeded random weights and, per layer, the work a cache-aware conformer layer does on one chunk:

* attention over the layer's channel cache plus the chunk's frames: q = x Wq, k = [cache; x] Wk,
  softmax(q k^T / sqrt(D)) [cache; x] Wo (the K projection runs over all T_cache + V rows, as NeMo's does);
* a depthwise "conv" over the time cache [.., D, K] after the chunk's frames are appended;
* ``--ffn`` feed-forward blocks D -> 4D -> D (the FastConformer layer has two), each followed by LayerNorm;
* cache updates as the contract's rules want them: new channel cache = concat(cache[:, V:], x_in),
  new time cache = concat(cache[..., V:], x_in^T), cache_len' = min(cache_len + V, max).

It is not the real encoder: far fewer nodes (about 30 per layer against NeMo's export), so the GPU step is
dominated by a few large MatMuls; the tool's result states its step time beside the real one's.

The reference is the model's own closed loop (ONNX Runtime, FP32), written with the package's
ReferenceWriter: ``--chunks`` chunks, caches stored for the first ``--functional-chunks`` only, as the
suite's references do.

    python tools/make_synthetic_encoder.py --contract contracts/fullsize-parakeet.contract.json --out-dir DIR
    python tools/make_synthetic_encoder.py --contract contracts/tiny-parakeet.contract.json --out-dir /tmp/s \\
        --chunks 60                                     # smoke test on the CPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from streamparity.contract.loading import load_contract
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
from streamparity.reference.writer import ReferenceWriter


def build_model(c: Contract, path: Path, *, seed: int, ffn: int, elementwise: int = 0) -> dict[str, Any]:
    """Write the ONNX (external data beside it); return its size figures."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if c.cache_layout != "batch_first":
        raise SystemExit(f"only batch_first caches are built here, the contract says {c.cache_layout}")
    s = c.streaming
    cc, ct = c.input_by_role(ROLE_CACHE_CHANNEL), c.input_by_role(ROLE_CACHE_TIME)
    _, n_layers, t_cache, d = (int(v) if not isinstance(v, str) else 1 for v in cc.shape)
    k_time = int(ct.shape[3])
    feat = int(c.input_by_role(ROLE_AUDIO).shape[1])
    v_out = s.valid_out_len
    sub = 8  # subsampling: 8 feature frames per output frame
    if t_cache <= v_out or k_time <= v_out:
        raise SystemExit("cache sizes must exceed valid_out_len")
    rng = np.random.default_rng(seed)
    inits: list[Any] = []
    nodes: list[Any] = []
    n_params = 0

    def weight(name: str, shape: tuple[int, ...], scale: float) -> str:
        nonlocal n_params
        w = (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, name))
        n_params += w.size
        return name

    def const(name: str, a: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(a), name))
        return name

    def node(op: str, ins: list[str], out: str, **kw: Any) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    names = {r: c.input_by_role(r).name for r in (ROLE_AUDIO, ROLE_LENGTH, ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME,
                                                  ROLE_CACHE_LEN)}
    onames = {r: c.output_by_role(r).name for r in (ROLE_ENCODED, ROLE_ENCODED_LEN, ROLE_CACHE_CHANNEL,
                                                    ROLE_CACHE_TIME, ROLE_CACHE_LEN)}
    i64 = np.int64
    const("ax0", np.array([0], i64))
    const("ax1", np.array([1], i64))
    const("ax2", np.array([2], i64))
    const("ax3", np.array([3], i64))
    const("v_lo", np.array([v_out], i64))
    const("big", np.array([2**62], i64))
    const("last_frames", np.array([-sub * v_out], i64))
    const("in_shape", np.array([0, v_out, sub * feat], i64))
    const("ln_scale", np.ones(d, np.float32))
    const("ln_bias", np.zeros(d, np.float32))
    # pre-encode: the chunk's last 8*V feature frames -> V frames of width D
    a = node("Transpose", [names[ROLE_AUDIO]], "a_t", perm=[0, 2, 1])  # [B, T, F]
    a = node("Slice", [a, "last_frames", "big", "ax1"], "a_last")  # [B, 8V, F]
    a = node("Reshape", [a, "in_shape"], "a_frames")  # [B, V, 8F]
    x = node("MatMul", [a, weight("w_in", (sub * feat, d), 1.0 / np.sqrt(sub * feat))], "x0")
    new_c: list[str] = []
    new_t: list[str] = []
    for i in range(n_layers):
        p = f"l{i}."
        const(p + "idx", np.array([i], i64))
        const(p + "idx1", np.array([i + 1], i64))
        x_in = x
        cache = node("Slice", [names[ROLE_CACHE_CHANNEL], p + "idx", p + "idx1", "ax1"], p + "cache")
        cache = node("Squeeze", [cache, "ax1"], p + "cache_sq")  # [B, T_cache, D]
        kv = node("Concat", [cache, x_in], p + "kv", axis=1)  # [B, T_cache + V, D]
        q = node("MatMul", [x_in, weight(p + "wq", (d, d), 1.0 / np.sqrt(d))], p + "q")
        k = node("MatMul", [kv, weight(p + "wk", (d, d), 1.0 / np.sqrt(d))], p + "k")
        kt = node("Transpose", [k], p + "kt", perm=[0, 2, 1])
        sc = node("MatMul", [q, kt], p + "scores")
        sc = node("Mul", [sc, const(p + "scale", np.array(1.0 / np.sqrt(d), np.float32))], p + "scores_s")
        at = node("Softmax", [sc], p + "attn", axis=-1)
        o = node("MatMul", [at, kv], p + "ctx")
        o = node("MatMul", [o, weight(p + "wo", (d, d), 1.0 / np.sqrt(d))], p + "att_out")
        x = node("Add", [x_in, o], p + "res_att")
        x = node("LayerNormalization", [x, "ln_scale", "ln_bias"], p + "ln_att", axis=-1)
        # time cache: append the chunk's frames (channels-first) and run a depthwise filter over it
        tc = node("Slice", [names[ROLE_CACHE_TIME], p + "idx", p + "idx1", "ax1"], p + "tcache")
        tc = node("Squeeze", [tc, "ax1"], p + "tcache_sq")  # [B, D, K]
        tc_keep = node("Slice", [tc, "v_lo", "big", "ax2"], p + "tcache_keep")  # [B, D, K - V]
        xt = node("Transpose", [x_in], p + "x_t", perm=[0, 2, 1])  # [B, D, V]
        tc_new = node("Concat", [tc_keep, xt], p + "tcache_new", axis=2)  # [B, D, K]
        conv = node("Mul", [tc_new, weight(p + "dw", (d, k_time), 1.0 / np.sqrt(k_time))], p + "dw_mul")
        conv = node("ReduceSum", [conv, const(p + "ax_k", np.array([2], i64))], p + "dw_sum", keepdims=0)
        conv = node("Unsqueeze", [conv, "ax1"], p + "dw_out")  # [B, 1, D], broadcast over the V frames
        x = node("Add", [x, conv], p + "res_conv")
        for f in range(ffn):
            q_ = f"{p}ff{f}."
            h = node("MatMul", [x, weight(q_ + "w1", (d, 4 * d), 1.0 / np.sqrt(d))], q_ + "h")
            h = node("Relu", [h], q_ + "relu")
            h = node("MatMul", [h, weight(q_ + "w2", (4 * d, d), 0.5 / np.sqrt(4 * d))], q_ + "out")
            x = node("Add", [x, h], q_ + "res")
            x = node("LayerNormalization", [x, "ln_scale", "ln_bias"], q_ + "ln", axis=-1)
        for j in range(elementwise):  # small kernels, as NeMo's export has hundreds per layer (not no-ops:
            # ORT removes a Mul by 1 or an Add of 0)
            op, val = ("Mul", 1.0 + 1e-3 * (j % 7 + 1)) if j % 2 == 0 else ("Add", -1e-3 * (j % 5 + 1))
            x = node(op, [x, const(f"{p}ew{j}.c", np.array(val, np.float32))], f"{p}ew{j}")
        keep = node("Slice", [cache, "v_lo", "big", "ax1"], p + "cache_keep")  # [B, T_cache - V, D]
        nc = node("Concat", [keep, x_in], p + "cache_new", axis=1)
        new_c.append(node("Unsqueeze", [nc, "ax1"], p + "cache_new_u"))
        new_t.append(node("Unsqueeze", [tc_new, "ax1"], p + "tcache_new_u"))
    node("Transpose", [x], onames[ROLE_ENCODED], perm=[0, 2, 1])  # [B, D, V]
    node("Concat", new_c, onames[ROLE_CACHE_CHANNEL], axis=1)
    node("Concat", new_t, onames[ROLE_CACHE_TIME], axis=1)
    rule = s.cache_len
    zero = node("Mul", [names[ROLE_LENGTH], const("zero_i", np.array(0, i64))], "len_zero")
    node("Add", [zero, const("v_i", np.array(v_out, i64))], onames[ROLE_ENCODED_LEN])
    step = node("Add", [names[ROLE_CACHE_LEN], const("len_step", np.array(rule.step, i64))], "len_step_sum")
    node("Min", [step, const("len_max", np.array(rule.max, i64))], onames[ROLE_CACHE_LEN])

    def vi(spec: Any) -> Any:
        dt = TensorProto.FLOAT if spec.dtype == "float32" else TensorProto.INT64
        return helper.make_tensor_value_info(spec.name, dt, list(spec.shape))

    graph = helper.make_graph(nodes, "synthetic_streaming_encoder", [vi(i) for i in c.inputs],
                              [vi(o) for o in c.outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="streamparity")
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    return {"layers": n_layers, "d_model": d, "ffn_blocks": ffn, "elementwise_per_layer": elementwise,
            "nodes": len(nodes), "params": int(n_params),
            "weights_bytes": int(n_params) * 4}


def write_reference(c: Contract, onnx_path: Path, ref_path: Path, *, chunks: int, functional: int, seed: int,
                    device: str, threads: int, noise: float = 0.0) -> float:
    """The model's own closed loop from zero caches, written chunk by chunk; returns ms per chunk.  `noise`:
    every float output written is scaled by (1 + noise * N(0, 1)) per element, as a reference from another
    runtime differs in its last bits (the loop itself runs on the exact outputs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    providers: list[Any] = ["CPUExecutionProvider"]
    if device == "cuda":
        ort.preload_dlls()
        providers = [("CUDAExecutionProvider", {"use_tf32": 0}), "CPUExecutionProvider"]
    sess = ort.InferenceSession(str(onnx_path), sess_options=so, providers=providers)
    out_names = [o.name for o in sess.get_outputs()]
    s = c.streaming
    rng = np.random.default_rng(seed + 1)
    jitter = np.random.default_rng(seed + 2)  # its own stream: the audio is the same with or without noise
    audio_spec = c.input_by_role(ROLE_AUDIO)
    state: dict[str, np.ndarray] = {}
    for role in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME, ROLE_CACHE_LEN):
        spec = c.input_by_role(role)
        shape = c.concrete_shape(spec, {"B": 1, "T_cache": s.cache_channel_size})
        fill = s.cache_len.initial if role == ROLE_CACHE_LEN else 0
        state[spec.name] = np.full(shape, fill, dtype=spec.dtype)
    feeds_map = c.cache_feeds()
    big_in = {c.input_by_role(r).name for r in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME)}
    big_out = {c.output_by_role(r).name for r in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME)}
    header = {"contract": c.name, "generator": "tools/make_synthetic_encoder.py", "seed": seed,
              "functional_chunks": functional, "cache_layout": c.cache_layout, "device": device,
              "synthetic": True}
    t0 = time.perf_counter()
    with ReferenceWriter(ref_path, header, chunks) as w:
        for k in range(chunks):
            frames = s.first_chunk_frames if k == 0 else s.chunk_frames
            audio = rng.standard_normal((1, int(audio_spec.shape[1]), frames), dtype=np.float32)
            inputs = {audio_spec.name: audio,
                      c.input_by_role(ROLE_LENGTH).name: np.array([frames], dtype=np.int64), **state}
            res = dict(zip(out_names, sess.run(out_names, inputs)))
            stored = k < functional
            written = {n: v for n, v in res.items() if stored or n not in big_out}
            if noise:
                written = {n: (v * (1 + noise * jitter.standard_normal(v.shape))).astype(v.dtype)
                           if v.dtype.kind == "f" else v for n, v in written.items()}
            w.write(k, {"frames": [k * 16 - 16, k * 16 - 16 + frames], "seed": seed, "has_caches": stored},
                    {n: v for n, v in inputs.items() if stored or n not in big_in}, written)
            state = {feeds_map[o]: res[o] for o in feeds_map}
    return (time.perf_counter() - t0) * 1e3 / chunks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contract", type=Path, required=True, metavar="PATH")
    ap.add_argument("--out-dir", type=Path, required=True, metavar="DIR",
                    help="writes encoder.onnx (+ .data) and reference.jsonl here")
    ap.add_argument("--chunks", type=int, default=300, metavar="N", help="reference chunks (default: 300)")
    ap.add_argument("--functional-chunks", type=int, default=48, metavar="N",
                    help="chunks that store caches (default: 48)")
    ap.add_argument("--ffn", type=int, default=2, metavar="N", help="feed-forward blocks per layer (default: 2)")
    ap.add_argument("--elementwise", type=int, default=0, metavar="N",
                    help="small elementwise nodes per layer, for a step time nearer the real export's (default: 0)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="ORT device for the reference")
    ap.add_argument("--threads", type=int, default=0, metavar="N", help="ORT CPU threads (default: ORT's)")
    ap.add_argument("--reference-noise", type=float, default=0.0, metavar="REL",
                    help="relative noise on the float outputs written, for a reference that differs from the "
                         "model in its last bits, as another runtime's does (default: 0, the model's own bits)")
    args = ap.parse_args(argv)
    c = load_contract(args.contract)
    onnx_path = args.out_dir / "encoder.onnx"
    t0 = time.perf_counter()
    info = build_model(c, onnx_path, seed=args.seed, ffn=args.ffn, elementwise=args.elementwise)
    print(f"model: {info} in {time.perf_counter() - t0:.1f} s -> {onnx_path}", flush=True)
    ms = write_reference(c, onnx_path, args.out_dir / "reference.jsonl", chunks=args.chunks,
                         functional=min(args.functional_chunks, args.chunks), seed=args.seed, device=args.device,
                         threads=args.threads, noise=args.reference_noise)
    print(f"reference: {args.chunks} chunks ({args.functional_chunks} with caches), {ms:.1f} ms/chunk "
          f"-> {args.out_dir / 'reference.jsonl'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
