#!/usr/bin/env python3
"""Closed-loop streaming with ONNX Runtime's CUDA provider: host round trip vs device-resident caches.

The same measurement as ``tools/gpu_closed_loop_benchmark.py`` (PyTorch/NeMo on CUDA), for the ORT backend
that the parity suite runs (``ort-cuda-fp32`` / ``ort-cuda-fp16``):

* ``host``: :class:`~streamparity.backends.base.HostStream` over ``OrtBackend.run`` -- every input, caches
  included, goes host->device and every output comes back each chunk;
* ``device``: ``OrtBackend.open_stream`` -- IOBinding on preallocated device buffers, the caches ping-pong
  on the GPU (:class:`~streamparity.backends.device_loop.DeviceLoopStream`); only audio + length go up and
  only the encoder output and lengths come down;
* ``device+fetch``: the same, with the caches copied back too (what a parity run compares), checked
  against the reference under the contract's tolerances.

Bytes per chunk: inputs and outputs for ``host``; ``Stream.bytes_moved`` for the device loops.  Latency:
wall clock around ``stream.step`` (each step ends with a blocking device->host copy).  Writes
ort_cuda_closed_loop.json / .md to --out.

    python tools/ort_cuda_closed_loop.py --out $OUT                          # tiny model, needs onnxruntime-gpu
    python tools/ort_cuda_closed_loop.py --device cpu --chunks 20 --out /tmp/x   # smoke test of the tool
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tools"))

from gpu_closed_loop_benchmark import ParityCheck, Run, markdown
from model_run_args import add_model_run_arguments

from streamparity.backends.base import HostStream, Stream
from streamparity.backends.ort import OrtBackend
from streamparity.contract.loading import load_contract
from streamparity.contract.model import ROLE_AUDIO, ROLE_LENGTH
from streamparity.drivers.closed_loop import initial_state
from streamparity.reference.reader import ReferenceFile


def loop(name: str, mode: str, backend: OrtBackend, initial: dict[str, np.ndarray],
         chunks: list[tuple[np.ndarray, np.ndarray]], warmup: int, check: ParityCheck | None) -> Run:
    run = Run(name, mode, backend.precision, len(chunks), min(warmup, max(len(chunks) - 1, 0)))
    stream: Stream = (HostStream(backend, initial, fetch_caches=True) if mode == "host"
                      else backend.open_stream(initial, fetch_caches=mode == "device+fetch"))
    try:
        for i, (audio, length) in enumerate(chunks):
            before = {k: v.nbytes for k, v in stream.state_snapshot().items()} if mode == "host" else {}
            t0 = time.perf_counter()
            out = stream.step(audio, length)
            run.wall_ms.append((time.perf_counter() - t0) * 1e3)
            if mode == "host":
                run.h2d_bytes.append(audio.nbytes + length.nbytes + sum(before.values()))
                run.d2h_bytes.append(sum(int(np.asarray(v).nbytes) for v in out.values()))
            else:
                up, down = stream.bytes_moved
                run.h2d_bytes.append(up)
                run.d2h_bytes.append(down)
            if check is not None:
                check(i, out)
    except Exception as e:  # report and go on with the next run
        run.error = f"{type(e).__name__}: {e}"
    finally:
        stream.close()
    if check is not None:
        run.parity = check.result()
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_run_arguments(ap)
    ap.add_argument("--chunks", type=int, default=300, metavar="N", help="chunks per run (default: 300)")
    ap.add_argument("--warmup", type=int, default=10, metavar="N", help="untimed first chunks (default: 10)")
    ap.add_argument("--precision", nargs="+", default=["fp32", "fp16"], metavar="P",
                    help="precisions (default: fp32 fp16)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="ORT device (default: cuda)")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    contract = load_contract(args.contract)
    onnx = args.onnx or contract.resolve("onnx")
    ref = ReferenceFile(args.reference or contract.resolve("reference"))
    n = min(args.chunks, len(ref))
    recs = [ref.read(i) for i in range(n)]
    audio, length = contract.input_by_role(ROLE_AUDIO).name, contract.input_by_role(ROLE_LENGTH).name
    chunks = [(r.inputs[audio], r.inputs[length]) for r in recs]
    initial = initial_state(contract, recs[0])
    name = args.name or contract.name
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"gpu": "?", "torch": "-", "cuda": "-", "nemo": "-", "warmup": args.warmup,
                            "onnxruntime": ort.__version__, "python": platform.python_version(),
                            "command": " ".join(sys.argv)}
    args.out.mkdir(parents=True, exist_ok=True)
    for precision in args.precision:
        backend = OrtBackend(contract, onnx, precision=precision, device=args.device,
                             cache_dir=Path(tempfile.gettempdir()))
        meta["providers"] = backend.session.get_providers()
        if args.device == "cuda":
            from streamparity.environment import gpu_names

            meta["gpu"] = ", ".join(gpu_names()) or "?"
        for mode in ("host", "device", "device+fetch"):
            check = ParityCheck(contract, ref, precision) if mode != "device" else None
            r = loop(name, mode, backend, initial, chunks, args.warmup, check)
            rows.append({**r.summary(), "timed_chunks": len(r.wall_ms) - r.warmup})
            print(json.dumps(rows[-1]), flush=True)
        backend.close()
    text = markdown(meta, rows).replace(f"torch {meta['torch']} (CUDA {meta['cuda']}) | NeMo {meta['nemo']} | "
                                        "TF32 off for FP32", f"ONNX Runtime {meta['onnxruntime']} "
                                        f"{meta.get('providers')}").replace(
        "GPU ms = CUDA events around stream.step() + synchronize; wall = perf_counter around the same.",
        "No CUDA-event column here (ORT runs on its own stream); wall = perf_counter around stream.step(), which "
        "ends in a blocking device-to-host copy.")
    (args.out / "ort_cuda_closed_loop.json").write_text(json.dumps({"meta": meta, "runs": rows}, indent=1) + "\n")
    (args.out / "ort_cuda_closed_loop.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
