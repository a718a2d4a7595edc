#!/usr/bin/env python3
"""The parity closed loop against the benchmark loop on ONNX Runtime's CUDA provider (issue 13, GPU criterion).

Both loops run the same backend (``OrtBackend``, device-resident: IOBinding on preallocated GPU buffers, the
caches ping-pong on the device) over the same chunks:

* parity: :func:`~streamparity.drivers.closed_loop.run_closed_loop` as the suite's session runs it
  (``keep_bundles`` on, reference read chunk by chunk, every chunk judged; the big caches come back only on
  chunks whose reference stores caches);
* benchmark: ``open_stream(fetch_caches=False)`` and ``step`` over audio + length preloaded in memory, nothing
  else (the caches stay on the device; the encoder output and the lengths come back).

Bytes per chunk are the stream's own ``bytes_moved`` counters (host->device, device->host of each step),
read right after each step, split into chunks with and without stored caches.  Wall time: the whole loop
(stream opening included), ``--reps`` alternated repetitions after ``--warmup-reps`` untimed ones; the
figures are medians.  Per chunk, the parity loop's time is from the end of one step to the end of the next
(so it holds the judging of the previous chunk and the reading of this one), which splits its wall time
over the same two segments.

``--staging=both`` (the default) runs the parity loop twice per repetition, alternated with the benchmark loop:
``parity`` with the caches it compares fetched into reused page-locked host buffers (``HostStaging``, the
backend's default), ``parity_pageable`` with them fetched into fresh pageable arrays (as before; the same as
``STREAMPARITY_PINNED_STAGING=0``); each ratio is against the benchmark loop of the same repetition.  On CUDA a
probe also times one cache fetch both ways and checks that both give the same bytes.

On the CPU (``--device cpu``) the backend runs inside the same device loop on counting host buffers
(:class:`~streamparity.tools.transfers.CountedDeviceBackend`), so the byte counts are those a GPU run moves;
the times are CPU times.  Writes gpu_parity_loop.json / .md to --out.

    python tools/bench_gpu_parity_loop.py --contract contracts/fullsize-parakeet.contract.json \\
        --onnx DIR/encoder.onnx --reference DIR/reference.jsonl --out $OUT
    python tools/bench_gpu_parity_loop.py --device cpu --reps 2 --out /tmp/x      # tiny model, smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tools"))

from model_run_args import add_model_run_arguments

from streamparity.backends.base import Backend, Stream
from streamparity.contract.loading import load_contract
from streamparity.contract.model import (
    ROLE_AUDIO,
    ROLE_CACHE_CHANNEL,
    ROLE_CACHE_LEN,
    ROLE_CACHE_TIME,
    ROLE_LENGTH,
    Contract,
)
from streamparity.drivers.closed_loop import default_judge_workers, initial_state, run_closed_loop
from streamparity.reference.reader import ReferenceFile


class _Spy:
    """Wraps ``backend.open_stream`` to hand the closed loop's stream to the per-step callback."""

    def __init__(self, backend: Backend) -> None:
        self.backend, self.stream, self.open_bytes = backend, None, (0, 0)
        self._orig = backend.open_stream

    def __enter__(self) -> _Spy:
        def spy(initial: Any, *, fetch_caches: bool = True) -> Stream:
            s = self._orig(initial, fetch_caches=fetch_caches)
            self.stream, self.open_bytes = s, s.bytes_moved
            return s

        self.backend.open_stream = spy  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.backend.open_stream


class _TimedReference:
    """The reference as run_closed_loop reads it, stamping when each record is asked for and when it is read."""

    def __init__(self, ref: ReferenceFile) -> None:
        self.ref = ref
        self.asked: dict[int, float] = {}
        self.read_at: dict[int, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ref, name)

    def __len__(self) -> int:
        return len(self.ref)

    def iter_chunks(self, ids: list[int], **how: Any) -> Any:
        return self._stamped(self.ref.iter_chunks(ids, **how))  # its reads ahead start now, as the loop's do

    def _stamped(self, it: Any) -> Any:
        try:
            while True:
                t = time.perf_counter()
                try:
                    rec = next(it)
                except StopIteration:
                    self.asked[-1] = t  # the end of the last chunk's judging
                    return
                self.asked[rec.chunk], self.read_at[rec.chunk] = t, time.perf_counter()
                yield rec
        finally:
            it.close()


def parity_loop(backend: Backend, contract: Contract, ref: ReferenceFile, upto: int,
                judge_workers: int | None = None) -> dict[str, Any]:
    """run_closed_loop as the session runs it; per chunk: read + step + its own judging (ms), step ms, bytes,
    and the three parts (read, step, judge)."""
    stamps: list[tuple[int, float, float, int, int]] = []
    timed = _TimedReference(ref)
    with _Spy(backend) as spy:

        def on_step(k: int, ms: float) -> None:
            up, down = spy.stream.bytes_moved if spy.stream is not None else (0, 0)
            stamps.append((k, time.perf_counter(), ms, up, down))

        t0 = time.perf_counter()
        run = run_closed_loop(backend, contract, timed, upto=upto, on_step=on_step,  # type: ignore[arg-type]
                              judge_workers=judge_workers)
        t1 = time.perf_counter()
    rows: list[tuple[int, float, float, int, int]] = []
    parts: dict[int, tuple[float, float, float]] = {}
    for i, (k, t_step, ms, up, down) in enumerate(stamps):
        # the loop asks for the next record once this chunk is judged (chunks are consecutive); after the last
        # chunk of the reference: the iterator's end
        t_end = timed.asked.get(k + 1, timed.asked.get(-1, t1))
        t_begin = timed.asked.get(k, t0) if i else t0  # chunk 0: from the start (stream opening included)
        rows.append((k, (t_end - t_begin) * 1e3, ms, up, down))
        read = timed.read_at.get(k, t_begin) - timed.asked.get(k, t_begin)
        parts[k] = (read * 1e3, (t_step - timed.read_at.get(k, t_begin)) * 1e3, (t_end - t_step) * 1e3)
    verdicts: dict[str, int] = {}
    worst: dict[str, float] = {}
    for r in run.chunks:
        verdicts[r.verdict] = verdicts.get(r.verdict, 0) + 1
        for name, m in r.metrics.items():
            worst[name] = max(worst.get(name, 0.0), float(m.max_abs))
    errors = [r.error for r in run.chunks if r.error][:3]
    return {"wall_s": t1 - t0, "rows": rows, "parts": parts, "open_bytes": spy.open_bytes, "verdicts": verdicts,
            "worst_max_abs": worst, "errors": errors}


def benchmark_loop(backend: Backend, initial: dict[str, np.ndarray],
                   chunks: list[tuple[int, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Steps only: audio + length up, the encoder output and lengths down, caches left on the device."""
    rows: list[tuple[int, float, float, int, int]] = []
    t0 = prev = time.perf_counter()
    stream = backend.open_stream(initial, fetch_caches=False)
    open_bytes = stream.bytes_moved
    try:
        for k, audio, length in chunks:
            ts = time.perf_counter()
            stream.step(audio, length)
            now = time.perf_counter()
            up, down = stream.bytes_moved
            rows.append((k, (now - prev) * 1e3, (now - ts) * 1e3, up, down))
            prev = now
    finally:
        stream.close()
    return {"wall_s": time.perf_counter() - t0, "rows": rows, "open_bytes": open_bytes}


def _seg(rows: list[tuple[int, float, float, int, int]], keys: set[int]) -> dict[str, Any]:
    sel = [r for r in rows if r[0] in keys]
    if not sel:
        return {"chunks": 0}
    ups, downs = [r[3] for r in sel], [r[4] for r in sel]
    return {"chunks": len(sel), "wall_ms": sum(r[1] for r in sel), "step_ms_p50": statistics.median(r[2] for r in sel),
            "chunk_ms_p50": statistics.median(r[1] for r in sel),
            "h2d_per_chunk": statistics.mean(ups), "d2h_per_chunk": statistics.mean(downs),
            "h2d_minmax": [min(ups), max(ups)], "d2h_minmax": [min(downs), max(downs)]}


def _fmt_bytes(n: float) -> str:
    for unit, k in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= k:
            return f"{n / k:.2f} {unit}"
    return f"{n:.0f} B"


def check_placement(onnx: Path) -> dict[str, Any]:
    """Whether every node runs on the CUDA provider (no CPU fallback, hence no copies inside ORT)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(onnx), sess_options=so, providers=[("CUDAExecutionProvider", {"use_tf32": 0})])
        return {"all_nodes_on_cuda": True}
    except Exception as e:  # ORT's own exception types
        return {"all_nodes_on_cuda": False, "why": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}


def profile_stored_chunk(contract: Contract, ref: ReferenceFile, chunk: int, top: int = 12) -> dict[str, Any]:
    """Where a stored-cache chunk's host time goes: the reference line read, then judge_chunk on outputs equal to
    the reference's (cProfile, cumulative time; plus plain timings of each, best of 3)."""
    import cProfile
    import io
    import pstats

    from streamparity.judging.chunks import judge_chunk
    from streamparity.results.records import CLOSED_LOOP

    rec = ref.read(chunk)
    len_in = rec.inputs[contract.input_by_role(ROLE_CACHE_LEN).name]

    def judge() -> Any:
        return judge_chunk(contract, rec, dict(rec.outputs), mode=CLOSED_LOOP, backend="profile", precision="fp32",
                           cache_len_in=len_in, stream_position=chunk, inputs=None)

    def best(f: Any) -> float:
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            f()
            ts.append((time.perf_counter() - t) * 1e3)
        return min(ts)

    got: dict[str, Any] = {"chunk": chunk, "read_ms": best(lambda: ref.read(chunk)), "judge_ms": best(judge)}
    for name, f in (("read", lambda: ref.read(chunk)), ("judge", judge)):
        pr = cProfile.Profile()
        pr.enable()
        f()
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(top)
        got[f"{name}_profile"] = buf.getvalue()
    return got


def fetch_probe(backend: Any, initial: dict[str, np.ndarray], chunks: list[tuple[int, np.ndarray, np.ndarray]],
                big: set[str], n: int = 20) -> dict[str, Any]:
    """One big cache fetched `n` times into a fresh pageable array (ops.d2h) and through the pinned staging
    (ms: min and median), the bytes compared; then the first chunks stepped with and without staging, every
    output compared to the bit."""
    stream = backend.open_stream(initial, fetch_caches=True)
    staging = getattr(backend, "_staging", None)
    got: dict[str, Any] = {"ops": type(stream.ops).__name__, "staging": type(staging).__name__}
    try:
        stream.step(chunks[0][1], chunks[0][2])
        name = max(stream.cur, key=lambda k: stream.cur[k].nbytes)
        t = stream.cur[name]
        got.update(cache=name, nbytes=t.nbytes)
        for how, fetch in (("pageable", stream.ops.d2h), ("pinned", staging.fetch if staging else None)):
            if fetch is None:
                continue
            ts, a = [], None
            for _ in range(n):
                t0 = time.perf_counter()
                a = fetch(t.buf, t.shape, t.dtype)
                ts.append((time.perf_counter() - t0) * 1e3)
            got[how] = {"min_ms": min(ts), "p50_ms": statistics.median(ts),
                        "gb_s": t.nbytes / (min(ts) * 1e-3) / 1e9, "bytes": np.asarray(a).tobytes()}
        if "pinned" in got and "pageable" in got:
            got["same_bytes"] = got["pinned"]["bytes"] == got["pageable"]["bytes"]
        for how in ("pinned", "pageable"):
            got.get(how, {}).pop("bytes", None)
    finally:
        stream.close()
    outs: dict[bool, list[dict[str, np.ndarray]]] = {}
    saved = backend.pinned_staging
    for pinned in (True, False):
        backend.pinned_staging = pinned
        s = backend.open_stream(initial, fetch_caches=True)
        outs[pinned] = [{k: np.array(v, copy=True) for k, v in s.step(a, ln).items()} for _, a, ln in chunks[:8]]
        s.close()
    backend.pinned_staging = saved
    got["steps_bit_identical"] = all(x.keys() == y.keys() and all(x[k].tobytes() == y[k].tobytes() for k in x)
                                     for x, y in zip(outs[True], outs[False], strict=True))
    got["big_caches_compared"] = sorted(big & set(outs[True][0]))
    if staging is not None:
        got["staging_buffers"] = {"slots": staging.slots, "bytes": staging.total_bytes,
                                  "fetches": staging.fetches, "fallbacks": staging.fallbacks}
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_run_arguments(ap)
    ap.add_argument("--upto", type=int, default=None, metavar="K", help="last chunk (default: the reference's)")
    ap.add_argument("--reps", type=int, default=5, metavar="N", help="timed repetitions of each loop (default: 5)")
    ap.add_argument("--warmup-reps", type=int, default=1, metavar="N", help="untimed ones first (default: 1)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="ORT device (default: cuda)")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one stored-cache chunk's reference read and judging (cProfile)")
    ap.add_argument("--note", default="", metavar="TEXT", help="a line for the Markdown (e.g. what the model is)")
    ap.add_argument("--judge-workers", type=int, default=None, metavar="N",
                    help="judging threads of the parity loop (default: the suite's, default_judge_workers)")
    ap.add_argument("--staging", default="both", choices=("on", "off", "both"),
                    help="parity loop with pinned host staging of the fetched caches, without, or both (default)")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    from streamparity.backends.ort import OrtBackend

    contract = load_contract(args.contract)
    onnx = args.onnx or contract.resolve("onnx")
    ref = ReferenceFile(args.reference or contract.resolve("reference"))
    upto = args.upto if args.upto is not None else ref.chunk_ids[-1]
    audio_n, length_n = contract.input_by_role(ROLE_AUDIO).name, contract.input_by_role(ROLE_LENGTH).name
    big = {o.name for o in contract.outputs if o.role in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME)}
    chunks: list[tuple[int, np.ndarray, np.ndarray]] = []
    stored: set[int] = set()
    first = None
    for rec in ref:
        if rec.chunk > upto:
            break
        if first is None:
            first = rec
        chunks.append((rec.chunk, rec.inputs[audio_n], rec.inputs[length_n]))
        if any(n in rec.outputs for n in big):
            stored.add(rec.chunk)
    assert first is not None, "empty reference"
    initial = initial_state(contract, first)
    everything = {k for k, _, _ in chunks}
    plain = everything - stored

    t = time.perf_counter()
    inner = OrtBackend(contract, onnx, precision=args.precision, device=args.device,
                       cache_dir=Path(tempfile.gettempdir()))
    load_s = time.perf_counter() - t
    backend: Backend = inner
    if args.device == "cpu":
        from streamparity.tools.transfers import CountedDeviceBackend

        backend = CountedDeviceBackend(inner)  # the device loop on counting host buffers
    meta: dict[str, Any] = {"contract": contract.name, "name": args.name or contract.name, "onnx": str(onnx),
                            "reference": str(ref.path), "chunks": len(chunks), "stored_cache_chunks": len(stored),
                            "precision": args.precision, "device": args.device, "reps": args.reps,
                            "warmup_reps": args.warmup_reps, "onnxruntime": ort.__version__,
                            "providers": inner.session.get_providers(), "python": platform.python_version(),
                            "session_load_s": load_s, "command": " ".join(sys.argv), "note": args.note,
                            "reads_ahead": ref.read_ahead,
                            "judge_workers": default_judge_workers(backend) if args.judge_workers is None
                            else args.judge_workers}
    if args.device == "cuda":
        from streamparity.environment import gpu_names

        meta["gpu"] = ", ".join(gpu_names()) or "?"
        meta["placement"] = check_placement(onnx)
    print(json.dumps(meta), flush=True)

    variants = {"on": ["parity"], "off": ["parity_pageable"], "both": ["parity", "parity_pageable"]}[args.staging]

    def loop(which: str) -> dict[str, Any]:
        if which == "benchmark":
            return benchmark_loop(backend, initial, chunks)
        inner.pinned_staging = which == "parity"
        return parity_loop(backend, contract, ref, upto, args.judge_workers)

    for _ in range(args.warmup_reps):
        for which in ["benchmark", *variants]:
            loop(which)
    reps: list[dict[str, Any]] = []
    names = [*variants, "benchmark"]
    for i in range(args.reps):
        order = names[i % len(names):] + names[:i % len(names)]  # each loop first, middle and last in turn
        got = {which: loop(which) for which in order}
        b = got["benchmark"]
        rep: dict[str, Any] = {"order": order, "benchmark": {"wall_s": b["wall_s"], **{
            seg: _seg(b["rows"], keys) for seg, keys in (("stored", stored), ("plain", plain))}}}
        for v in variants:
            p = got[v]
            r: dict[str, Any] = {"wall_s": p["wall_s"], "ratio": p["wall_s"] / b["wall_s"], "verdicts": p["verdicts"],
                                 "worst_max_abs": p["worst_max_abs"], "errors": p["errors"],
                                 "open_bytes": p["open_bytes"]}
            for seg, keys in (("stored", stored), ("plain", plain)):
                ps, bs = _seg(p["rows"], keys), rep["benchmark"][seg]
                r[seg], r[f"ratio_{seg}"] = ps, ps["wall_ms"] / bs["wall_ms"] if ps.get("chunks") else None
                sel = [val for k, val in p["parts"].items() if k in keys]
                r[f"{seg}_parts_ms"] = {part: {"mean": statistics.mean(x[j] for x in sel),
                                               "p50": statistics.median(x[j] for x in sel)}
                                        for j, part in enumerate(("read", "step", "judge"))} if sel else None
            r["per_chunk"] = [[k, round(ms, 3), round(step, 3), *(round(x, 3) for x in p["parts"].get(k, ()))]
                              for k, ms, step, _, _ in p["rows"]]  # chunk, ms, step ms, read, step, judge
            rep[v] = r
        rep["benchmark"]["per_chunk"] = [[k, round(ms, 3), round(step, 3)] for k, ms, step, _, _ in b["rows"]]
        rep["benchmark"]["open_bytes"] = b["open_bytes"]
        reps.append(rep)
        print(json.dumps({"order": order, "benchmark_wall_s": b["wall_s"], **{
            v: {k: rep[v][k] for k in ("wall_s", "ratio", "ratio_stored", "ratio_plain", "verdicts")}
            for v in variants}}), flush=True)
    probe = None
    if args.device == "cuda":
        try:
            probe = fetch_probe(inner, initial, chunks, big)
        except Exception as e:  # the loops' figures above still count
            probe = {"error": f"{type(e).__name__}: {e}"}
    if probe:
        print(json.dumps({"fetch_probe": probe}), flush=True)
    inner.close()
    prof = profile_stored_chunk(contract, ref, min(stored)) if args.profile and stored else None
    if prof:
        print(prof["read_profile"], prof["judge_profile"], sep="\n", flush=True)

    def per_rep(path: str) -> list[float]:
        out = []
        for r in reps:
            v: Any = r
            for key in path.split("."):
                v = v.get(key) if isinstance(v, dict) else None
            if v is not None:
                out.append(float(v))
        return out

    def med(path: str) -> float | None:
        vals = per_rep(path)
        return statistics.median(vals) if vals else None

    summary: dict[str, Any] = {"benchmark_wall_s": med("benchmark.wall_s"),
                               "benchmark_wall_s_reps": per_rep("benchmark.wall_s"),
                               "benchmark_step_ms_p50": {seg: med(f"benchmark.{seg}.step_ms_p50")
                                                         for seg in ("stored", "plain")},
                               "benchmark_wall_ms": {seg: med(f"benchmark.{seg}.wall_ms")
                                                     for seg in ("stored", "plain")},
                               "bytes": {f"benchmark_{seg}": _bytes(reps[-1]["benchmark"][seg])
                                         for seg in ("stored", "plain")},
                               "variants": variants}
    for v in variants:
        summary[v] = {
            "wall_s": med(f"{v}.wall_s"), "wall_s_reps": per_rep(f"{v}.wall_s"),
            "ratio_median_of_reps": med(f"{v}.ratio"), "ratio_reps": per_rep(f"{v}.ratio"),
            "ratio_stored_median": med(f"{v}.ratio_stored"), "ratio_stored_reps": per_rep(f"{v}.ratio_stored"),
            "ratio_plain_median": med(f"{v}.ratio_plain"), "ratio_plain_reps": per_rep(f"{v}.ratio_plain"),
            "wall_ms": {seg: med(f"{v}.{seg}.wall_ms") for seg in ("stored", "plain")},
            "step_ms_p50": {seg: med(f"{v}.{seg}.step_ms_p50") for seg in ("stored", "plain")},
            "parts_ms": {seg: {part: {stat: statistics.median(r[v][f"{seg}_parts_ms"][part][stat] for r in reps)
                                      for stat in ("mean", "p50")} for part in ("read", "step", "judge")}
                         for seg in ("stored", "plain") if reps and reps[0][v][f"{seg}_parts_ms"]},
            "open_bytes": reps[-1][v]["open_bytes"] if reps else None,
            "verdicts_last_rep": reps[-1][v]["verdicts"] if reps else None,
            "worst_max_abs": reps[-1][v]["worst_max_abs"] if reps else None}
        summary["bytes"].update({f"{v}_{seg}": _bytes(reps[-1][v][seg]) for seg in ("stored", "plain")})
    summary["benchmark_open_bytes"] = reps[-1]["benchmark"]["open_bytes"] if reps else None
    summary["fetch_probe"] = probe
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "summary": summary, "reps": reps, "profile": prof}
    (args.out / "gpu_parity_loop.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    text = markdown(meta, summary)
    if prof:
        text += (f"\nOne stored-cache chunk ({prof['chunk']}) off the loop, best of 3: reference line read "
                 f"{prof['read_ms']:.1f} ms, judge_chunk {prof['judge_ms']:.1f} ms.\n")
    (args.out / "gpu_parity_loop.md").write_text(text)
    print(text)
    return 0


def _bytes(seg: dict[str, Any]) -> dict[str, Any]:
    return {k: seg.get(k) for k in ("chunks", "h2d_per_chunk", "d2h_per_chunk", "h2d_minmax", "d2h_minmax")}


def markdown(meta: dict[str, Any], s: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    def ratio(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}x"

    def reps(v: list[float]) -> str:
        return ", ".join(f"{x:.2f}" for x in v)  # ratios and seconds

    by = s["bytes"]
    label = {"parity": "parity (pinned staging)", "parity_pageable": "parity (pageable fetch)"}
    lines = [f"{meta['name']}: ONNX Runtime {meta['onnxruntime']} {meta['providers'][0]} on "
             f"{meta.get('gpu', meta['device'])}, {meta['precision']}, {meta['chunks']} chunks "
             f"({meta['stored_cache_chunks']} with stored caches), median of {meta['reps']} alternated repetitions "
             f"after {meta['warmup_reps']} untimed."]
    if meta.get("note"):
        lines.append(meta["note"])
    if "placement" in meta:
        lines.append(f"All nodes on the CUDA provider (no CPU fallback inside ORT): {meta['placement']}")
    lines += ["", "| loop | chunks | H2D / chunk | D2H / chunk | step P50 ms | wall ms | parity / benchmark (reps) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for seg, where in (("plain", "without stored caches"), ("stored", "with stored caches")):
        for loop in ("benchmark", *s["variants"]):
            b = by[f"{loop}_{seg}"]
            if not b.get("chunks"):
                continue
            if loop == "benchmark":
                step, wall, r = s["benchmark_step_ms_p50"][seg], s["benchmark_wall_ms"][seg], ""
            else:
                v = s[loop]
                step, wall = v["step_ms_p50"][seg], v["wall_ms"][seg]
                r = f"{ratio(v[f'ratio_{seg}_median'])} ({reps(v[f'ratio_{seg}_reps'])})"
            lines.append(f"| {label.get(loop, loop)}, {where} | {b['chunks']} | {_fmt_bytes(b['h2d_per_chunk'])} | "
                         f"{_fmt_bytes(b['d2h_per_chunk'])} | {ms(step)} | {ms(wall)} | {r} |")
    for loop in s["variants"]:
        v = s[loop]
        lines.append(f"| **whole loop, {label[loop]}** | {meta['chunks']} | | | | {ms(v['wall_s'] * 1e3)} against "
                     f"{ms(s['benchmark_wall_s'] * 1e3)} | **{ratio(v['ratio_median_of_reps'])}** "
                     f"({reps(v['ratio_reps'])}) |")
    lines.append(f"\nBenchmark loop wall s per repetition: {reps(s['benchmark_wall_s_reps'])}.")
    for loop in s["variants"]:
        parts = s[loop].get("parts_ms", {})
        if parts:
            lines += ["", f"{label[loop]} per chunk, mean (P50) ms: " + "; ".join(
                f"{where}: " + ", ".join(f"{part} {v['mean']:.1f} ({v['p50']:.1f})" for part, v in parts[seg].items())
                for seg, where in (("plain", "without stored caches"), ("stored", "with stored caches"))
                if seg in parts) + "."]
        v = s[loop]
        lines += ["", f"{label[loop]}: stream opening {v['open_bytes']} bytes (H2D, D2H); verdicts (last repetition) "
                  f"{v['verdicts_last_rep']}; worst max abs {v['worst_max_abs']}."]
    lines += ["", "(read: the reference line parsed; step: stream.step, caches fetched where stored; judge: "
              "judge_chunk and the loop's bookkeeping, waiting for threaded judgements included.)"]
    pr = s.get("fetch_probe")
    if pr and "error" in pr:
        lines += ["", f"Fetch probe failed: {pr['error']}"]
    elif pr:
        f = ", ".join(f"{how} min {pr[how]['min_ms']:.2f} ms (P50 {pr[how]['p50_ms']:.2f}, {pr[how]['gb_s']:.1f} GB/s)"
                      for how in ("pageable", "pinned") if how in pr)
        lines += ["", f"Fetch probe ({pr['ops']}, {pr.get('cache')} {_fmt_bytes(pr.get('nbytes', 0))}): {f}; "
                  f"same bytes: {pr.get('same_bytes')}; 8 steps with and without staging bit-identical: "
                  f"{pr.get('steps_bit_identical')} (big caches compared: {pr.get('big_caches_compared')}); "
                  f"staging buffers {pr.get('staging_buffers')}."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
