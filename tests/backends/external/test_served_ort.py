"""ONNX Runtime served through the runtime protocol gets the verdicts and per-chunk errors of in-process ONNX
Runtime (bit-identical FP32), on the embedded default, clean and broken; a recording of the served runtime is
judged like the live run; and the pytest plugin drives it with --runtime."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from streamparity.backends.external import options
from streamparity.backends.registry import create_backend, parse_backend_spec
from streamparity.drivers.closed_loop import run_closed_loop
from streamparity.drivers.functional import run_functional
from streamparity.reference.reader import ReferenceFile
from streamparity.tools import onnx_faults as F
from tests.backends.external.toy import live_processes
from tests.conftest import TINY_ONNX, TINY_REFERENCE, run_cli, run_pytest

FAULTY = Path(__file__).resolve().parent / "data" / "faulty_serve.py"


def serve_command(onnx: Path) -> str:
    return shlex.join([sys.executable, "-m", "streamparity.cli", "serve-ort", f"--onnx={onnx}", "--precision=fp32"])


def _served(contract, onnx: Path):
    spec = options.configure([("ort", "fp32", serve_command(onnx))], None)[0]
    assert spec.id == "ext-ort-fp32"
    return create_backend(spec, contract, onnx, {})


def _fingerprint(run):
    return [(c.chunk, c.verdict, {k: (m.max_abs, m.mean_abs, m.mismatches) for k, m in c.metrics.items()},
             [str(v) for v in c.violations], c.cache_len_in, c.cache_len_out) for c in run.chunks]


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("broken")
    m = F.load(TINY_ONNX)
    return {"clean": TINY_ONNX,
            "weight": F.save(F.scale_initializer(m, r"layers\.2\.conv\.pointwise_conv1\.weight", 1.01), d / "w.onnx"),
            "stuck-len": F.save(F.freeze_output(m, "cache_last_channel_next_len", 0), d / "len.onnx")}


@pytest.mark.parametrize("model", ["clean", "weight", "stuck-len"])
def test_served_ort_equals_in_process(tiny_contract, broken_models, model):
    onnx = broken_models[model]
    ref = ReferenceFile(TINY_REFERENCE)
    served = _served(tiny_contract, onnx)
    local = create_backend(parse_backend_spec("ort-cpu-fp32"), tiny_contract, onnx, {})
    upto = 299 if model == "clean" else 20
    chunks = [k for k in ref.chunk_ids if k <= min(upto, 47)]
    try:
        for mode in ("functional", "closed_loop"):
            a = run_functional(served, tiny_contract, ref, chunks) if mode == "functional" else \
                run_closed_loop(served, tiny_contract, ref, upto=upto)
            b = run_functional(local, tiny_contract, ref, chunks) if mode == "functional" else \
                run_closed_loop(local, tiny_contract, ref, upto=upto)
            assert _fingerprint(a) == _fingerprint(b), mode
            verdicts = {c.verdict for c in a.chunks}
            assert verdicts == ({"pass"} if model == "clean" else verdicts | {"fail"}), (model, mode, verdicts)
    finally:
        served.close()
    assert served.restarts == 0 and not live_processes(str(onnx))


def test_recording_is_judged_like_the_live_run(tmp_path, tiny_contract):
    onnx = tmp_path / "m.onnx"  # a path of its own, to find the runtime's process
    onnx.write_bytes(TINY_ONNX.read_bytes())
    r = run_cli("record", f"--runtime=ort:fp32={serve_command(onnx)}", "--backend=ext-ort-fp32",
                f"--out={tmp_path / 'rec'}", "--upto=59")
    assert r.returncode == 0, r.stderr
    assert "recorded ext-ort-fp32: 48 functional and 60 closed-loop chunks" in r.stdout
    ref = ReferenceFile(TINY_REFERENCE)
    spec = options.configure(None, [("ort", "fp32", str(tmp_path / "rec"))])[0]
    rec = create_backend(spec, tiny_contract, TINY_ONNX, {})
    d = rec.describe()
    assert d["id"] == "rec-ort-fp32" and d["recording"] is True and "RECORDING" in d["label"]
    assert d["recorded"]["backend"] == "ext-ort-fp32"
    live = _served(tiny_contract, onnx)
    try:
        chunks = list(range(48))
        assert _fingerprint(run_functional(rec, tiny_contract, ref, chunks)) == \
            _fingerprint(run_functional(live, tiny_contract, ref, chunks))
        assert _fingerprint(run_closed_loop(rec, tiny_contract, ref, upto=59)) == \
            _fingerprint(run_closed_loop(live, tiny_contract, ref, upto=59))
    finally:
        live.close()
    assert not live_processes(str(onnx))


def test_pytest_runtime_option_and_repro(tmp_path, broken_models):
    """pytest -m parity --runtime=...: ids, summary, a broken model failing with a repro line that reruns it."""
    cmd = serve_command(broken_models["weight"])
    r = run_pytest("-m", "parity and functional", f"--runtime=ort:fp32={cmd}", "--chunks=0-3",
                   f"--report-dir={tmp_path}", "-q", "-p", "no:randomly", "-p", "no:cacheprovider")
    assert r.returncode == 1, r.stdout[-3000:]
    assert "test_functional[ext-ort-fp32-chunk002]" in r.stdout
    doc = json.loads((tmp_path / "summary.json").read_text())
    runs = {(x["backend"], x["mode"]): x for x in doc["runs"]}
    assert {b for b, _ in runs} == {"ext-ort-fp32"} | ({"ort-cpu-fp32"} & {b for b, _ in runs})
    assert runs[("ext-ort-fp32", "functional")]["verdict"] == "FAIL"
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("repro: streamparity repro"))
    argv = shlex.split(line.removeprefix("repro: "))
    assert f"--runtime=ort:fp32={cmd}" in argv
    rr = run_cli(*argv[1:])
    assert rr.returncode == 1 and "reproduced" in rr.stdout, rr.stdout + rr.stderr


def test_pytest_runtime_crash_is_one_failure(tmp_path):
    cmd = shlex.join([sys.executable, str(FAULTY), "--crash-at-step=7", f"--onnx={TINY_ONNX}"])
    r = run_pytest("-m", "closed_loop and not stability", f"--runtime=bad:fp32={cmd}", "--runtime-timeout=20",
                   "--chunks=0-9", f"--report-dir={tmp_path}", "-q", "-p", "no:randomly", "-p", "no:cacheprovider")
    assert r.returncode == 1, r.stdout[-3000:]
    assert "[ext-bad-fp32 closed_loop chunk 7] runtime error: stream broke at chunk 7: RuntimeFault: runtime " \
           "'ext-bad-fp32' failed in operation 'step'" in r.stdout
    assert "killed by SIGSEGV" in r.stdout and "faulty_serve: segfault on step 7" in r.stdout
    assert "[ext-bad-fp32 closed_loop] 3 of 10 chunks fail: 7-9" in r.stdout  # chunks 0-6 passed: one test
    runs = json.loads((tmp_path / "summary.json").read_text())["runs"]
    assert [(x["passed"], x["failed"]) for x in runs] == [(7, 3)]  # each chunk counted as itself, not as its test
    assert not live_processes(str(FAULTY))
