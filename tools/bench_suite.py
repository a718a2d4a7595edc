"""How much the parity suite costs over the bare work it does (issue 13).

    python tools/bench_suite.py [--rounds=3] [--out=bench_suite.json]
        [--reference=PATH --onnx=PATH --contract=PATH|NAME]   # a full-size reference instead of the embedded one
        [--reader-only] [--no-reader]

Three figures, measured in one run:

* suite: ``python -m pytest -m parity --backend=ort-cpu-fp32 -q -p no:randomly`` as a whole process, against a
  process doing the same work bare (ONNX Runtime CPU FP32, one thread; functional over the chunks whose reference
  stores caches, closed loop over every chunk; outputs compared with numpy; reference read with json + base64).
  After one untimed run of each, the two alternate, ``--rounds`` times each, bytecode cached as Python does by
  default (``PYTHONDONTWRITEBYTECODE`` is dropped); the figure is the median of the per-round ratios.
* reader: one synthetic full-size chunk line (caches [1,24,256,1024] float32, in and out) in the checklist
  project's layout (json.dumps default separators, keys chunk_idx/metadata, metadata last) and in ours;
  stdlib ``json.loads`` + base64 against :func:`parse_chunk_line`, and a 2-line file opened (index) and read.
* bytes: bytes a closed loop moves per chunk (host->device, device->host), counted on the CPU through the
  device loop's memory operations, for the parity loop before and after issue 13 and the benchmark loop.

Writes the figures as JSON (``--out``) and prints a summary.  Run it from the repository root.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = {"contract": ROOT / "contracts" / "tiny-parakeet.contract.json",
        "onnx": ROOT / "fixtures" / "tiny" / "encoder.onnx",
        "reference": ROOT / "fixtures" / "tiny" / "reference.jsonl"}


# -- the bare loop: ORT + numpy, nothing of streamparity -----------------------------------------------------
def bare_loop(contract_path: str, onnx_path: str, reference_path: str) -> dict[str, Any]:
    """Functional over the chunks with caches + closed loop over all chunks; returns timings and a checksum."""
    t0 = time.perf_counter()
    import onnxruntime as ort

    c = json.loads(Path(contract_path).read_text())
    ins = {s["role"]: s["name"] for s in c["inputs"]}
    feeds_map = {o["name"]: o["feeds"] for o in c["outputs"] if o.get("feeds")}
    compared = [o["name"] for o in c["outputs"] if o["role"] in ("encoded", "cache_channel", "cache_time")]
    tols = c.get("tolerances", {})

    def atol(name: str) -> float:  # the contract's FP32 atol of this output (1e-4 where it names none)
        return float(((tols.get(name) or {}).get("fp32") or {}).get("atol", 1e-4))

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, sess_options=so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]

    def tensor(t: dict[str, Any]) -> np.ndarray:
        return np.frombuffer(base64.b64decode(t["data_b64"]), dtype=t["dtype"]).reshape(t["shape"])

    recs = []
    with open(reference_path, "rb") as f:
        for line in f:
            o = json.loads(line)
            k = o.get("chunk", o.get("chunk_idx"))
            if k is None:
                continue
            recs.append({s: {n: tensor(v) for n, v in o[s].items()} for s in ("inputs", "outputs")})
    t_read = time.perf_counter()
    fails = 0
    for r in recs:  # functional: reference caches in
        if not all(n in r["inputs"] for n in ins.values()):
            continue
        out = dict(zip(names, sess.run(names, r["inputs"])))
        fails += sum(int(np.abs(out[n] - r["outputs"][n]).max() > atol(n)) for n in compared if n in r["outputs"])
    t_func = time.perf_counter()
    state = {n: recs[0]["inputs"][n] for n in feeds_map.values()}
    for r in recs:  # closed loop: own caches fed back
        feeds = dict(state)
        feeds[ins["audio"]] = r["inputs"][ins["audio"]]
        feeds[ins["length"]] = r["inputs"][ins["length"]]
        out = dict(zip(names, sess.run(names, feeds)))
        fails += sum(int(np.abs(out[n] - r["outputs"][n]).max() > atol(n)) for n in compared if n in r["outputs"])
        state = {feeds_map[o]: out[o] for o in feeds_map}
    t_end = time.perf_counter()
    return {"chunks": len(recs), "fails": fails, "read_s": t_read - t0, "functional_s": t_func - t_read,
            "closed_loop_s": t_end - t_func, "work_s": t_end - t0}


# -- suite vs bare -------------------------------------------------------------------------------------------
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("PYTEST_ADDOPTS", None)
    # Both processes run as Python does by default, bytecode cached: with PYTHONDONTWRITEBYTECODE=1 (set on some
    # development machines) every run compiles each streamparity module and rewrites each test module's asserts
    # again (~0.3 s), while the bare loop imports only installed packages, compiled at install.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _timed(cmd: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """(wall s, CPU s of the child: user + system, robust to a loaded machine, the result)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), p


def suite_vs_bare(paths: dict[str, Path], *, embedded: bool, rounds: int, report_dir: Path) -> dict[str, Any]:
    suite = [sys.executable, "-m", "pytest", "-m", "parity", "--backend=ort-cpu-fp32", "-q", "-p", "no:randomly",
             f"--report-dir={report_dir}"]
    if not embedded:
        suite += [f"--contract={paths['contract']}", f"--onnx={paths['onnx']}", f"--reference={paths['reference']}"]
    bare = [sys.executable, str(Path(__file__).resolve()), "--bare",
            str(paths["contract"]), str(paths["onnx"]), str(paths["reference"])]
    for cmd in (suite, bare):  # untimed: bytecode written, files in the page cache
        _timed(cmd, ROOT)
    rows = []
    for i in range(rounds):
        order = (("suite", suite), ("bare", bare)) if i % 2 == 0 else (("bare", bare), ("suite", suite))
        got: dict[str, Any] = {}
        for name, cmd in order:
            wall, cpu, p = _timed(cmd, ROOT)
            got[name], got[name + "_cpu"] = wall, cpu
            if name == "suite":
                got["suite_rc"] = p.returncode
                got["suite_tail"] = p.stdout.strip().splitlines()[-1:] if p.stdout.strip() else p.stderr[-300:]
            else:
                if p.returncode != 0:
                    raise SystemExit(f"bare loop failed: {p.stderr[-500:]}")
                got["bare_work"] = json.loads(p.stdout.strip().splitlines()[-1])
        got["ratio"] = got["suite"] / got["bare"]
        got["cpu_ratio"] = got["suite_cpu"] / got["bare_cpu"]
        rows.append(got)
        print(f"  round {i + 1}: suite {got['suite']:.2f}s wall / {got['suite_cpu']:.2f}s CPU, bare "
              f"{got['bare']:.2f}s wall / {got['bare_cpu']:.2f}s CPU: ratio {got['ratio']:.2f} wall, "
              f"{got['cpu_ratio']:.2f} CPU  ({got['suite_tail']})", flush=True)
    return {"rounds": rows, "median_ratio": statistics.median(r["ratio"] for r in rows),
            "median_cpu_ratio": statistics.median(r["cpu_ratio"] for r in rows),
            "median_suite_cpu_s": statistics.median(r["suite_cpu"] for r in rows),
            "median_bare_cpu_s": statistics.median(r["bare_cpu"] for r in rows),
            "median_suite_s": statistics.median(r["suite"] for r in rows),
            "median_bare_s": statistics.median(r["bare"] for r in rows),
            "median_bare_work_s": statistics.median(r["bare_work"]["work_s"] for r in rows)}


# -- reader ----------------------------------------------------------------------------------------------------
def _t(a: np.ndarray) -> dict[str, Any]:
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data_b64": base64.b64encode(a.tobytes()).decode()}


def synthetic_lines() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    ch = rng.standard_normal((1, 24, 256, 1024)).astype(np.float32)
    tm = rng.standard_normal((1, 24, 1024, 4)).astype(np.float32)
    inputs = {"audio_signal": _t(rng.standard_normal((1, 128, 57)).astype(np.float32)),
              "length": _t(np.array([57])), "cache_last_channel": _t(ch), "cache_last_time": _t(tm),
              "cache_last_channel_len": _t(np.array([0]))}
    outputs = {"encoder_output": _t(rng.standard_normal((1, 1024, 3)).astype(np.float32)),
               "encoded_lengths": _t(np.array([3])), "cache_last_channel_out": _t(ch),
               "cache_last_time_out": _t(tm), "cache_last_channel_len_out": _t(np.array([3]))}
    meta = {"chunk_len": 57, "encoder_output_shape": [1, 1024, 3], "timing_ms": {"step": 1.5, "total": 1.5}}
    return {
        "checklist": json.dumps({"chunk_idx": 0, "inputs": inputs, "outputs": outputs, "metadata": meta}).encode(),
        "ours": json.dumps({"chunk": 0, "meta": {"has_caches": True}, "inputs": inputs, "outputs": outputs},
                           separators=(",", ":")).encode(),
        "ours_default_separators_meta_last": json.dumps(
            {"chunk": 0, "outputs": outputs, "inputs": inputs, "meta": {"has_caches": True}}).encode(),
    }


def _stdlib_parse(line: bytes) -> dict[str, dict[str, np.ndarray]]:
    o = json.loads(line)
    return {s: {n: np.frombuffer(base64.b64decode(v["data_b64"]), dtype=v["dtype"]).reshape(v["shape"])
                for n, v in o[s].items()} for s in ("inputs", "outputs")}


def reader_bench(rounds: int) -> dict[str, Any]:
    from streamparity.reference.fastparse import DECODER_NAME, parse_chunk_line
    from streamparity.reference.reader import ReferenceFile

    res: dict[str, Any] = {"decoder": DECODER_NAME}
    with tempfile.TemporaryDirectory() as d:
        for name, line in synthetic_lines().items():
            second = line.replace(b'"chunk_idx": 0', b'"chunk_idx": 1').replace(b'"chunk":0', b'"chunk":1') \
                .replace(b'"chunk": 0', b'"chunk": 1')
            path = Path(d) / f"{name}.jsonl"
            path.write_bytes(line + b"\n" + second + b"\n")
            std, fast, whole = [], [], []
            for _ in range(max(rounds, 3)):  # alternated
                t = time.perf_counter()
                _stdlib_parse(line)
                std.append(time.perf_counter() - t)
                t = time.perf_counter()
                parse_chunk_line(line, file=str(path), line_no=1, chunk=0)
                fast.append(time.perf_counter() - t)
                t = time.perf_counter()
                rf = ReferenceFile(path, use_sidecar=False)
                for _rec in rf:
                    pass
                whole.append((time.perf_counter() - t) / 2)
            ratios = [s / f for s, f in zip(std, fast)]
            res[name] = {"line_mb": len(line) / 1e6, "stdlib_s": statistics.median(std),
                         "fast_parse_s": statistics.median(fast), "parse_ratio": statistics.median(ratios),
                         "open_index_read_per_line_s": statistics.median(whole),
                         "open_index_read_ratio": statistics.median(std) / statistics.median(whole)}
            r = res[name]
            print(f"  {name}: {r['line_mb']:.0f} MB line; stdlib {r['stdlib_s']:.3f}s, fast parse "
                  f"{r['fast_parse_s']:.3f}s = {r['parse_ratio']:.1f}x; open+index+read "
                  f"{r['open_index_read_per_line_s']:.3f}s/line = {r['open_index_read_ratio']:.1f}x", flush=True)
    return res


# -- bytes per chunk -------------------------------------------------------------------------------------------
def bytes_bench(paths: dict[str, Path]) -> dict[str, Any]:
    from streamparity.backends.ort import OrtBackend
    from streamparity.contract.loading import load_contract
    from streamparity.reference.reader import ReferenceFile
    from streamparity.tools.transfers import benchmark_loop_bytes, parity_loop_bytes

    contract = load_contract(paths["contract"])
    ref = ReferenceFile(paths["reference"])
    backend = OrtBackend(contract, paths["onnx"])
    upto = ref.chunk_ids[-1]
    cached = sum(1 for k in ref.chunk_ids if ref.meta(k).get("has_caches", True))
    figs: dict[str, Any] = {"chunks": len(ref), "chunks_with_caches": cached}
    loops = {"parity_before": parity_loop_bytes(backend, contract, ref, upto=upto, snapshot_each=True),
             "parity_after": parity_loop_bytes(backend, contract, ref, upto=upto),
             "benchmark": benchmark_loop_bytes(backend, contract, ref, upto=upto)}
    for name, got in loops.items():
        f = figs[name] = got.per_chunk()
        print(f"  {name}: h2d {f['h2d']:.0f} B/chunk, d2h {f['d2h']:.0f} B/chunk, "
              f"on device {f['device_to_device']:.0f} B/chunk", flush=True)
    return figs


def computed_bytes(contract_path: Path, chunks: int, with_caches: int, frames: int = 57) -> dict[str, Any]:
    """The same three loops at B=1 from a contract's shapes (e.g. the full-size parakeet one): d2h per chunk."""
    from math import prod

    from streamparity.contract.loading import load_contract

    c = load_contract(contract_path)

    def size(spec: Any) -> int:
        dims = [1 if d == "B" else frames if d == "T" else d for d in spec.shape]
        return prod(int(d) for d in dims) * np.dtype(spec.dtype).itemsize

    big = {"cache_channel", "cache_time"}
    small_out = sum(size(o) for o in c.outputs if o.role not in big)
    big_out = sum(size(o) for o in c.outputs if o.role in big)
    state = sum(size(i) for i in c.inputs if i.role in big | {"cache_len"})
    up = sum(size(i) for i in c.inputs if i.role in ("audio", "length"))
    return {"contract": str(contract_path), "chunks": chunks, "chunks_with_caches": with_caches,
            "h2d": up, "d2h_parity_before": state + small_out + big_out,
            "d2h_parity_after": small_out + big_out * with_caches / chunks,
            "d2h_parity_after_chunk_without_caches": small_out, "d2h_benchmark": small_out}


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--bare"]:
        print(json.dumps(bare_loop(*argv[1:4])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "bench_suite.json")
    ap.add_argument("--reference", type=Path)
    ap.add_argument("--onnx", type=Path)
    ap.add_argument("--contract", type=Path)
    ap.add_argument("--reader-only", action="store_true")
    ap.add_argument("--no-reader", action="store_true")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    embedded = a.reference is None
    paths = dict(TINY) if embedded else {"contract": a.contract, "onnx": a.onnx, "reference": a.reference}
    if not embedded and None in paths.values():
        ap.error("--reference needs --onnx and --contract (a path: the bare loop reads it)")
    doc: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count(),
                           "workload": "embedded default" if embedded else {k: str(v) for k, v in paths.items()}}
    if not a.reader_only:
        print("suite vs bare (alternated):", flush=True)
        with tempfile.TemporaryDirectory() as rep:
            doc["suite"] = suite_vs_bare(paths, embedded=embedded, rounds=a.rounds, report_dir=Path(rep))
        print(f"  median CPU ratio {doc['suite']['median_cpu_ratio']:.2f} (suite "
              f"{doc['suite']['median_suite_cpu_s']:.2f}s CPU, bare {doc['suite']['median_bare_cpu_s']:.2f}s CPU)")
        print(f"  median wall ratio {doc['suite']['median_ratio']:.2f} (suite {doc['suite']['median_suite_s']:.2f}s, "
              f"bare process {doc['suite']['median_bare_s']:.2f}s, bare work "
              f"{doc['suite']['median_bare_work_s']:.2f}s)", flush=True)
        print("closed-loop bytes per chunk (counted on the CPU):", flush=True)
        doc["bytes_per_chunk"] = bytes_bench(paths)
        full = computed_bytes(ROOT / "contracts" / "fullsize-parakeet.contract.json", 300, 48)
        doc["bytes_per_chunk_fullsize_computed"] = full
        print(f"  full size (from the contract's shapes, 48 of 300 chunks with caches): d2h before "
              f"{full['d2h_parity_before'] / 1e6:.1f} MB/chunk, after {full['d2h_parity_after'] / 1e6:.2f} MB/chunk "
              f"({full['d2h_parity_after_chunk_without_caches']} B on chunks without caches), benchmark "
              f"{full['d2h_benchmark']} B/chunk", flush=True)
    if not a.no_reader:
        print("reader, synthetic full-size line:", flush=True)
        doc["reader"] = reader_bench(a.rounds)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
