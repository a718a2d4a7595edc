"""References need their own sanity checks: a reference whose cache is reset on every chunk, or
whose cache length is stuck, is rejected before any runtime is judged."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from streamparity.errors import ReferenceInvalid
from streamparity.reference.checks import check_reference, require_valid
from streamparity.reference.reader import ReferenceFile
from streamparity.reference.writer import ReferenceWriter
from tests.conftest import TINY_CONTRACT, TINY_REFERENCE, run_cli_inprocess

HAS_NEMO = importlib.util.find_spec("nemo") is not None


def _rewrite(src, dst, n, edit):
    ref = ReferenceFile(src)
    with ReferenceWriter(dst, {k: v for k, v in ref.header.items() if k not in ("streamparity_reference",
                                                                               "num_chunks")}, n) as w:
        for rec in ref:
            if rec.chunk >= n:
                break
            edit(rec)
            w.write(rec.chunk, rec.meta, rec.inputs, rec.outputs)
    return dst


def _reset_caches(rec):
    if rec.chunk > 0:
        for name in ("cache_last_channel", "cache_last_time"):
            if name in rec.inputs:
                rec.inputs[name] = np.zeros_like(rec.inputs[name])
        rec.inputs["cache_last_channel_len"] = np.zeros_like(rec.inputs["cache_last_channel_len"])
        rec.outputs["cache_last_channel_next_len"] = np.full_like(rec.outputs["cache_last_channel_next_len"], 2)


def test_committed_reference_is_valid(tiny_contract):
    rep = require_valid(tiny_contract, ReferenceFile(TINY_REFERENCE),
                        offline_path=tiny_contract.resolve("offline_reference"))
    assert rep.ok and rep.chunks >= 300 and rep.offline is not None and rep.offline.compared_chunks >= 250


def test_reset_cache_reference_is_rejected(tmp_path, tiny_contract):
    bad = _rewrite(TINY_REFERENCE, tmp_path / "reset.jsonl", 60, _reset_caches)
    rep = check_reference(tiny_contract, ReferenceFile(bad))
    assert not rep.ok
    text = rep.summary()
    assert "chunk 1" in text and "not carried over" in text


def test_stuck_cache_len_reference_is_rejected(tmp_path, tiny_contract):
    def stuck(rec):
        rec.inputs["cache_last_channel_len"] = np.zeros_like(rec.inputs["cache_last_channel_len"])
        rec.outputs["cache_last_channel_next_len"] = np.zeros_like(rec.outputs["cache_last_channel_next_len"])

    bad = _rewrite(TINY_REFERENCE, tmp_path / "stuck.jsonl", 20, stuck)
    with pytest.raises(ReferenceInvalid, match=r"chunk 0.*cache length 0 -> 0"):
        require_valid(tiny_contract, ReferenceFile(bad))


def test_nan_in_reference_is_rejected(tmp_path, tiny_contract):
    def nan(rec):
        if rec.chunk == 7:
            rec.outputs["outputs"] = rec.outputs["outputs"].copy()
            rec.outputs["outputs"][0, 3, 1] = np.nan

    bad = _rewrite(TINY_REFERENCE, tmp_path / "nan.jsonl", 20, nan)
    with pytest.raises(ReferenceInvalid, match=r"chunk 7.*outputs.*non-finite"):
        require_valid(tiny_contract, ReferenceFile(bad))


def test_parity_run_refuses_to_judge_against_a_bad_reference(tmp_path, run_pytest_inprocess):
    bad = _rewrite(TINY_REFERENCE, tmp_path / "reset.jsonl", 30, _reset_caches)
    r = run_pytest_inprocess("-m", "parity", "--reference", str(bad), "--backend", "ort-cpu-fp32", "--chunks", "0-3",
                             "--report-dir", str(tmp_path / "rep"), "-q")
    assert r.returncode == 1, r.stdout[-2000:]
    assert "rejected before judging any runtime" in r.stdout
    assert "_ test_reference_is_sane _" in r.stdout
    assert "During handling" not in r.stdout


@pytest.mark.skipif(not HAS_NEMO, reason="NeMo is not installed (pip install 'streamparity[nemo]')")
@pytest.mark.slow
def test_generator_with_cache_reset_is_rejected(tmp_path):
    r = run_cli_inprocess("make-reference", "--contract", str(TINY_CONTRACT), "--config",
                          str(TINY_CONTRACT.parent.parent / "fixtures" / "tiny" / "encoder_config.json"),
                          "--out-dir", str(tmp_path), "--num-chunks", "60", "--functional-chunks", "48",
                          "--inject-fault", "reset-cache", "--no-export")
    assert r.returncode == 0, r.stderr[-2000:]
    from streamparity.contract.loading import load_contract

    rep = check_reference(load_contract(TINY_CONTRACT), ReferenceFile(tmp_path / "reference.jsonl"),
                          offline_path=tmp_path / "offline.npz")
    assert not rep.ok
    assert rep.offline is not None and not rep.offline.passed
    assert any("not carried over" in str(v) for v in rep.violations)
    json.dumps(rep.to_dict())


def test_offline_coverage_is_stated_and_a_short_offline_file_rejected(tmp_path, tiny_contract):
    """The offline comparison says how many chunks it covered and why not the others; an offline output
    that ends chunks before the stream (another audio, a truncated file) is rejected, not compared on the
    chunks it happens to cover (issue 12: 110 of 260)."""
    offline = tiny_contract.resolve("offline_reference")
    rep = check_reference(tiny_contract, ReferenceFile(TINY_REFERENCE), offline_path=offline)
    assert rep.offline is not None and rep.offline.passed
    assert rep.offline.compared_chunks + rep.offline.skipped_chunks == rep.chunks == rep.offline.total_chunks
    assert rep.offline.describe().startswith(f"offline comparison covered {rep.offline.compared_chunks} of 300 chunks")
    with np.load(offline) as z:
        enc = z["encoded"]
        short = tmp_path / "short.npz"
        np.savez(short, encoded=enc[..., :150 * 2], warmup_chunks=z["warmup_chunks"])
    rep = check_reference(tiny_contract, ReferenceFile(TINY_REFERENCE), offline_path=short)
    assert not rep.ok and rep.offline is not None and rep.offline.beyond_end == 150
    text = rep.summary()
    assert "shorter than the stream" in text and "covered 110 of 300 chunks" in text and "300 frames" in text
    r = run_cli_inprocess("check-reference", str(TINY_REFERENCE), "--no-bench")
    assert r.returncode == 0 and "offline comparison covered 260 of 300 chunks" in r.stdout, r.stdout + r.stderr
