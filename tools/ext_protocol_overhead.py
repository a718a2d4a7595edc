"""Measure the runtime protocol's cost per chunk (see the README): round trips on the tiny model (served ONNX Runtime
vs in-process, and the C toy runtime) and a synthetic full-size echo (caches [1,24,256,1024] and [1,24,1024,8]
float32 each way).

    PYTHONPATH=src python tools/ext_protocol_overhead.py [--reps=50]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from streamparity.backends.external.backend import ExternalBackend, RuntimeConfig
from streamparity.backends.external.client import RuntimeProcess
from streamparity.backends.registry import create_backend, parse_backend_spec
from streamparity.contract.loading import load_contract
from streamparity.drivers.closed_loop import initial_state
from streamparity.reference.reader import ReferenceFile

ECHO = """
import sys
sys.path.insert(0, %r)
from streamparity.backends.external import server
class Echo(server.RuntimeHandler):
    def describe(self): return {"name": "echo", "version": "1", "precision": "fp32", "device": "cpu"}
    def run(self, inputs): return dict(inputs)
    def open(self, state, fetch_caches): return 1
    def step(self, stream, inputs): return dict(inputs)
    def state(self, stream): return {}
    def close(self, stream): pass
server.serve(Echo())
"""


def p50(f: Callable[[], object], reps: int, warm: int = 5) -> tuple[float, float]:
    for _ in range(warm):
        f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t) * 1e3)
    ts.sort()
    return statistics.median(ts), ts[int(0.95 * (len(ts) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=50)
    a = ap.parse_args()
    contract = load_contract(ROOT / "contracts" / "tiny-parakeet.contract.json")
    onnx = ROOT / "fixtures" / "tiny" / "encoder.onnx"
    ref = ReferenceFile(ROOT / "fixtures" / "tiny" / "reference.jsonl")
    rec = ref.read(20)
    cmd = shlex.join([sys.executable, "-m", "streamparity.cli", "serve-ort", f"--onnx={onnx}"])
    served = ExternalBackend(contract, RuntimeConfig("ort", "fp32", cmd))
    local = create_backend(parse_backend_spec("ort-cpu-fp32"), contract, onnx, {})
    feeds = {n: rec.inputs[n] for n in contract.input_names}
    rows = []
    for label, b in (("in-process ort-cpu-fp32", local), ("served ext-ort-fp32", served)):
        rows.append((f"tiny functional run, {label}", *p50(lambda b=b: b.run(feeds), a.reps)))
        s = b.open_stream(initial_state(contract, ref.read(0)))
        audio, length = rec.inputs["audio_signal"], rec.inputs["length"]
        rows.append((f"tiny closed-loop step, {label}", *p50(lambda s=s, au=audio, ln=length: s.step(au, ln), a.reps)))
        rows.append((f"tiny closed-loop step + state fetch, {label}",
                     *p50(lambda s=s, au=audio, ln=length: (s.state_snapshot(), s.step(au, ln)), a.reps)))
        s.close()
    served.close()
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "toy_runtime"
        subprocess.run(["gcc", "-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-o", str(exe),
                        str(ROOT / "tests" / "fixtures" / "ext" / "toy_runtime.c")], check=True)
        toy = load_contract(ROOT / "tests" / "fixtures" / "ext" / "toy.contract.json")
        tb = ExternalBackend(toy, RuntimeConfig("toy", "fp32", str(exe)))
        tfeeds = {"audio_signal": np.ones((1, 4, 2), np.float32), "length": np.array([2]),
                  "cache_last_channel": np.zeros((1, 1, 6, 4), np.float32),
                  "cache_last_time": np.zeros((1, 1, 4, 2), np.float32), "cache_last_channel_len": np.array([0])}
        rows.append(("C toy runtime functional run (protocol round trip, ~200 B)", *p50(lambda: tb.run(tfeeds),
                                                                                      a.reps * 4)))
        tb.close()
        script = Path(tmp) / "echo.py"
        script.write_text(ECHO % str(ROOT / "src"))
        p = RuntimeProcess(f"{sys.executable} {script}", label="echo", timeout=60)
        p.request("describe", {"protocol": 1})
        rng = np.random.default_rng(0)
        big = {"cache_last_channel": rng.standard_normal((1, 24, 256, 1024), dtype=np.float32),
               "cache_last_time": rng.standard_normal((1, 24, 1024, 8), dtype=np.float32)}
        mb = sum(v.nbytes for v in big.values()) / 2**20
        out = p.request("run", tensors=big).tensors
        assert all(np.array_equal(out[k], v) for k, v in big.items())
        rows.append((f"full-size caches echo, {mb:.2f} MiB each way (Python echo runtime)",
                     *p50(lambda: p.request("run", tensors=big), max(10, a.reps // 2), warm=2)))
        p.close()
    print(f"{'measurement':<80} {'P50 ms':>8} {'P95 ms':>8}")
    for name, m, q in rows:
        print(f"{name:<80} {m:8.3f} {q:8.3f}")


if __name__ == "__main__":
    main()
