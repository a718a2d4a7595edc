"""The four failures in the history of the checklist's project, replayed: the suite must catch each.

1. ``cache_last_channel_len`` stayed 0 on every chunk (the cache never carried over) while the
   "monotonic >=" assertion passed.
2. ``cache_last_time`` errors of 0.01-0.1 were explained away as harmless.
3. Latency figures included host<->device copies and per-call allocation.
4. The PyTorch reference generator itself was wrong, and the parity checks agreed with it.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from streamparity.backends.device_loop import BufferPool, DeviceLoopStream
from streamparity.backends.memory import NumpyOps
from streamparity.backends.ort import OrtBackend, OrtIOBindingRunner
from streamparity.backends.registry import parse_backend_spec
from streamparity.contract.loading import load_contract
from streamparity.drivers.closed_loop import initial_state
from streamparity.judging.invariants import check_outputs
from streamparity.reference.reader import ReferenceFile
from streamparity.results.records import CLOSED_LOOP, FUNCTIONAL
from streamparity.session import ParitySession, SessionConfig
from streamparity.tools import onnx_faults as F
from tests.conftest import ROOT, TINY_CONTRACT, TINY_ONNX, TINY_REFERENCE

FP32 = parse_backend_spec("ort-cpu-fp32")


def _fails(onnx, mode):
    run = ParitySession(SessionConfig(contract=TINY_CONTRACT, onnx=onnx)).run(FP32, mode)
    return [c for c in run.chunks if c.verdict == "fail"]


def test_1_cache_length_stuck_at_zero_fails_although_it_is_monotonic(tmp_path, tiny_contract):
    # the old assertion: out >= in. 0 >= 0 holds on every chunk ...
    assert all(0 >= 0 for _ in range(300))
    # ... the contract's exact progression does not
    vio = check_outputs(tiny_contract, 5, {"cache_last_channel_next_len": np.zeros(1, np.int64)},
                        cache_len_in=np.zeros(1, np.int64), stream_position=5)
    text = " ".join(str(v) for v in vio)
    assert "0 -> 0" in text and "stuck" in text and "unbroken stream has 10" in text
    onnx = F.save(F.freeze_output(F.load(TINY_ONNX), "cache_last_channel_next_len", 0), tmp_path / "stuck.onnx")
    for mode in (FUNCTIONAL, CLOSED_LOOP):
        bad = _fails(onnx, mode)
        assert bad and bad[0].chunk == 0 and bad[0].violations


@pytest.mark.parametrize("delta", [0.01, 0.1])
def test_2_cache_last_time_errors_of_1e_2_to_1e_1_fail(tmp_path, delta):
    onnx = F.save(F.offset_output(F.load(TINY_ONNX), "cache_last_time_next", delta), tmp_path / "t.onnx")
    bad = _fails(onnx, FUNCTIONAL)
    assert len(bad) == 48 and all(c.verdicts["cache_last_time_next"] == "fail" for c in bad)
    # and the parakeet contract records the old 0.1 waiver as a known issue without applying it
    parakeet = load_contract(ROOT / "contracts" / "parakeet-tdt-0.6b-v3.contract.json")
    tol = parakeet.tolerance("cache_last_time_out", "fp32")
    assert tol.atol < delta and tol.known_issue == "KI-cache-last-time"
    assert parakeet.known_issue("KI-cache-last-time").status == "rejected"


def test_3_the_deployed_loop_moves_no_caches(tiny_contract):
    """What the latency benchmark times: caches stay with the runtime, only audio + length go in and only
    the compared outputs come back (the checklist timed ~50 MB of cache copies per chunk)."""
    ref = ReferenceFile(TINY_REFERENCE)
    backend = OrtBackend(tiny_contract, TINY_ONNX)
    ops = NumpyOps()
    runner = OrtIOBindingRunner(backend, lambda b: int(b.ctypes.data), device_type="cpu", device_id=0)
    pool = BufferPool(ops)
    stream = DeviceLoopStream(tiny_contract, ops, runner, pool, initial_state(tiny_contract, ref.read(0)),
                              fetch_caches=False)
    allocated = pool.total_bytes
    cache_bytes = sum(np.asarray(ref.read(0).inputs[n]).nbytes for n in ("cache_last_channel", "cache_last_time"))
    for k in range(5):
        rec = ref.read(k)
        stream.step(rec.inputs["audio_signal"], rec.inputs["length"])
        up, down = stream.bytes_moved
        assert up == rec.inputs["audio_signal"].nbytes + rec.inputs["length"].nbytes
        assert down < cache_bytes / 10
    # buffers were allocated on the first step, then reused (no per-call allocation)
    first = pool.total_bytes
    rec = ref.read(5)
    stream.step(rec.inputs["audio_signal"], rec.inputs["length"])
    assert pool.total_bytes == first >= allocated


def test_4a_a_reference_that_resets_its_cache_is_rejected_before_any_runtime_is_judged(tmp_path, tiny_contract):
    from streamparity.reference.checks import check_reference
    from tests.reference.test_reference_rejection import _reset_caches, _rewrite

    bad = _rewrite(TINY_REFERENCE, tmp_path / "reset.jsonl", 30, _reset_caches)
    report = check_reference(tiny_contract, ReferenceFile(bad))
    assert not report.ok and report.violations[0].chunk == 1
    # a runtime with the same bug would have "matched" it: the session refuses to judge at all
    session = ParitySession(SessionConfig(contract=TINY_CONTRACT, reference=bad))
    with pytest.raises(Exception, match="rejected before judging any runtime"):
        session.require_reference()


@pytest.mark.skipif(importlib.util.find_spec("nemo") is None,
                    reason="NeMo is not installed (pip install 'streamparity[nemo]')")
def test_4b_an_onnx_exported_with_reset_streaming_params_is_refused(tmp_path):
    """NeMo's set_export_config resets the streaming params; an ONNX exported that way keeps the default
    schedule. The generator checks its ONNX against its own reference and refuses it."""
    from streamparity.errors import StreamparityError
    from streamparity.tools.generator import build_encoder, generate, verify_onnx

    cfg = json.loads((ROOT / "fixtures" / "tiny" / "encoder_config.json").read_text())
    cfg["encoder"]["att_context_style"] = "regular"  # its default streaming config differs from ours
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(cfg))
    contract = load_contract(TINY_CONTRACT)
    res = generate(contract, out_dir=tmp_path, config_path=cfg_path, num_chunks=6, offline=False,
                   log=lambda *_: None)
    assert res.onnx is not None  # the right export passes its own check
    enc = build_encoder(cfg)
    enc.setup_streaming_params()  # what set_export_config does: back to the model's defaults
    enc.export_cache_support = True
    bad = tmp_path / "reset.onnx"
    enc.export(str(bad))
    with pytest.raises(StreamparityError, match="does not reproduce NeMo's streaming step at chunk 0"):
        verify_onnx(contract, bad, res.reference)
