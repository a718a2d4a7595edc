"""The runtime protocol with the C reference runtime: conformance (every operation, the version check, an error
reply) and runtime faults as verdicts (crash, exit, hang, garbage, wrong shape), with no process left behind."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from streamparity.backends.external.backend import ExternalBackend, RuntimeConfig
from streamparity.backends.external.client import RuntimeFault, RuntimeProcess
from streamparity.backends.external.protocol import PROTOCOL_VERSION, encode_frame, read_frame
from streamparity.contract.loading import load_contract
from streamparity.drivers.closed_loop import run_closed_loop
from streamparity.drivers.functional import run_functional
from streamparity.errors import StreamparityError
from streamparity.judging.wording import describe_chunk
from streamparity.reference.reader import ReferenceFile
from tests.backends.external.toy import TOY_CONTRACT, build_toy, live_processes, toy_step, write_toy_reference


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    return build_toy(d), ReferenceFile(write_toy_reference(d / "toy.jsonl")), load_contract(TOY_CONTRACT)


def _backend(contract, command, timeout=5.0):
    return ExternalBackend(contract, RuntimeConfig("toy", "fp32", command, timeout))


def test_frames_round_trip():
    t = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array([7], np.int64),
         "s": np.float16(1.5) * np.ones((), np.float16)}
    data = b"".join(bytes(p) for p in encode_frame({"op": "run"}, t))
    pos = 0

    def read(n):
        nonlocal pos
        pos += n
        return data[pos - n:pos]
    f = read_frame(read)
    assert f.header["op"] == "run" and f.header["payload_bytes"] == 24 + 8 + 2
    for k, v in t.items():
        assert f.tensors[k].dtype == v.dtype and f.tensors[k].shape == v.shape and np.array_equal(f.tensors[k], v)


def test_every_operation(toy):
    exe, ref, _ = toy
    p = RuntimeProcess(str(exe), label="toy", timeout=5)
    try:
        d = p.request("describe", {"protocol": PROTOCOL_VERSION}).header
        assert (d["protocol"], d["name"], d["precision"], d["device"]) == (1, "toy_runtime.c", "fp32", "cpu")
        assert d["version"] and d["info"]["model"]
        rec = ref.read(3)
        out = p.request("run", tensors=rec.inputs).tensors
        for k, v in rec.outputs.items():
            np.testing.assert_array_equal(out[k], v)
        first = ref.read(0).inputs
        state = {k: first[k] for k in ("cache_last_channel", "cache_last_time", "cache_last_channel_len")}
        sid = p.request("open", tensors=state).header["stream"]
        for k in range(4):
            rec = ref.read(k)
            got = p.request("state", {"stream": sid}).tensors
            for name, v in got.items():
                np.testing.assert_array_equal(v, rec.inputs[name])
            out = p.request("step", {"stream": sid}, tensors={"audio_signal": rec.inputs["audio_signal"],
                                                             "length": rec.inputs["length"]}).tensors
            np.testing.assert_array_equal(out["cache_last_channel_len"], rec.inputs["cache_last_channel_len"])
            np.testing.assert_array_equal(out["outputs"], rec.outputs["outputs"])
        p.request("close", {"stream": sid})
        with pytest.raises(RuntimeFault, match="replied with an error: no open stream"):  # an error reply
            p.request("state", {"stream": sid}, what="(after close)")
        assert p.dead is None  # an error reply leaves the runtime usable
        with pytest.raises(RuntimeFault, match="protocol version mismatch"):
            p.request("describe", {"protocol": PROTOCOL_VERSION + 1})
    finally:
        p.close()
    assert p.proc.returncode == 0  # 'shutdown' ends it cleanly


def test_numpy_twin_matches_c_on_random_state(toy):
    exe, _, contract = toy
    rng = np.random.default_rng(5)
    b = _backend(contract, str(exe))
    try:
        for _ in range(5):
            feeds = {"audio_signal": rng.standard_normal((1, 4, 2)).astype(np.float32), "length": np.array([2]),
                     "cache_last_channel": rng.standard_normal((1, 1, 6, 4)).astype(np.float32),
                     "cache_last_time": rng.standard_normal((1, 1, 4, 2)).astype(np.float32),
                     "cache_last_channel_len": np.array([rng.integers(0, 7)])}
            out = b.run(feeds)
            want = toy_step(feeds["audio_signal"], feeds["cache_last_channel"], feeds["cache_last_time"],
                            feeds["cache_last_channel_len"])
            for name, w in zip(("outputs", "cache_last_channel_next", "cache_last_time_next",
                                "cache_last_channel_next_len"), want):
                np.testing.assert_array_equal(out[name], w)
    finally:
        b.close()


def test_c_runtime_passes_both_modes(toy):
    exe, ref, contract = toy
    b = _backend(contract, str(exe))
    try:
        assert b.describe()["runtime"]["name"] == "toy_runtime.c"
        for run in (run_functional(b, contract, ref, ref.chunk_ids), run_closed_loop(b, contract, ref)):
            assert [c.verdict for c in run.chunks] == ["pass"] * 12, [describe_chunk(c, contract) for c in run.chunks]
            assert all(m.max_abs == 0 for c in run.chunks for m in c.metrics.values())
    finally:
        b.close()
    assert not live_processes(str(exe))


def test_version_mismatch_is_refused_at_start(tmp_path, toy):
    _, _, contract = toy
    script = tmp_path / "v2.py"
    script.write_text(
        f"import sys\nsys.path[:0] = {sys.path!r}\n"
        "from streamparity.backends.external import server\n"
        "class H(server.RuntimeHandler):\n"
        "    def describe(self): return {'protocol': 2, 'name': 'v2'}\n"
        "    run = open = step = state = close = lambda *a: None\n"
        "server.serve(H())\n")
    with pytest.raises(StreamparityError, match="speaks protocol version 2, this streamparity speaks 1"):
        _backend(contract, f"{sys.executable} {script}")
    assert not live_processes(str(script))


FAULTS = [
    ("crash", "killed by SIGSEGV", "crashing on request 7"),
    ("exit", "exited with status 7", "exiting on request 7"),
    ("hang", "no answer within the timeout of 1 s", "hanging on request 7"),
    ("garbage", "protocol violation: expected a frame starting with b'SPRT', got b'hello, I'", None),
    ("shape", "tensor 'outputs' has shape [1, 4, 3], the contract says [B, 4, 2]", None),
]


@pytest.mark.parametrize("fault,why,stderr", FAULTS, ids=[f[0] for f in FAULTS])
@pytest.mark.parametrize("mode", ["functional", "closed_loop"])
def test_runtime_fault_is_one_verdict_naming_the_chunk(toy, fault, why, stderr, mode):
    exe, ref, contract = toy
    command = f"env TOY_FAULT={fault}@7 {exe}"
    b = _backend(contract, command, timeout=1.0)
    t0 = time.monotonic()
    try:
        run = (run_functional(b, contract, ref, ref.chunk_ids) if mode == "functional"
               else run_closed_loop(b, contract, ref))
    finally:
        b.close()
    assert time.monotonic() - t0 < 10
    bad = [c for c in run.chunks if c.verdict != "pass"]
    first = bad[0]
    assert first.chunk == 7 and first.error is not None
    line = describe_chunk(first, contract)[0]
    broke = "" if mode == "functional" else "stream broke at chunk 7: "
    assert line.startswith(f"[ext-toy-fp32 {mode} chunk 7] runtime error: {broke}RuntimeFault: runtime "
                           f"'ext-toy-fp32' failed in operation '{'run' if mode == 'functional' else 'step'}'"), line
    assert why in line and f"[command: {command}]" in line
    if stderr:
        assert f"last stderr lines: toy_runtime: {stderr}" in line
    if mode == "functional":  # a fresh process for the next chunk: only chunk 7 fails
        assert [c.chunk for c in bad] == [7] and b.restarts == 1
    else:  # the stream stops: later chunks say where it broke
        assert [c.chunk for c in bad] == list(range(7, 12))
        assert all(c.error and c.error.startswith("stream broke at chunk 7") for c in bad)
        # later chunks were not run: one short line each, the runtime's error (command, stderr) only on chunk 7
        assert all(c.error == "stream broke at chunk 7 (not run; the error is on chunk 7)" for c in bad[1:])
    assert not live_processes(str(exe)), "a runtime process outlived its backend"
