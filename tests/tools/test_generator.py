"""Regenerating the embedded fixtures with NeMo reproduces the committed files within float tolerance."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from streamparity.reference.reader import ReferenceFile
from tests.conftest import ROOT, TINY_CONTRACT, TINY_ONNX, TINY_REFERENCE, run_cli_inprocess

pytestmark = [pytest.mark.slow,  # NeMo runs on the CPU: deselect with -m "not slow" while developing
              pytest.mark.skipif(importlib.util.find_spec("nemo") is None,
                                 reason="NeMo is not installed (pip install 'streamparity[nemo]')")]
ATOL = 1e-5


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("regen")
    # in this process: NeMo is imported once for the session (~18 s), as the other generator tests use it
    r = run_cli_inprocess("make-reference", "--contract", str(TINY_CONTRACT), "--config",
                          str(ROOT / "fixtures" / "tiny" / "encoder_config.json"), "--out-dir", str(out),
                          "--functional-chunks", "48")
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_reference_reproduces(regenerated):
    new, old = ReferenceFile(regenerated / "reference.jsonl"), ReferenceFile(TINY_REFERENCE)
    assert len(new) == len(old) >= 300
    assert new.header["functional_chunks"] == old.header["functional_chunks"]
    worst = 0.0
    for a, b in zip(new, old):
        assert a.meta == b.meta
        for sec in ("inputs", "outputs"):
            ta, tb = getattr(a, sec), getattr(b, sec)
            assert ta.keys() == tb.keys(), (a.chunk, sec)
            for k in ta:
                assert ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape, (a.chunk, k)
                if ta[k].dtype.kind in "iu":
                    assert np.array_equal(ta[k], tb[k]), (a.chunk, k)
                else:
                    worst = max(worst, float(np.abs(ta[k].astype(np.float64) - tb[k]).max()))
    assert worst <= ATOL


def test_onnx_and_offline_reproduce(regenerated):
    import onnxruntime as ort

    rec = ReferenceFile(TINY_REFERENCE).read(20)
    feeds = {k: v for k, v in rec.inputs.items()}
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)
            for p in (regenerated / "encoder.onnx", TINY_ONNX)]
    for a, b in zip(*outs):
        assert np.allclose(a, b, atol=ATOL, rtol=0)
    a = np.load(regenerated / "offline.npz")["encoded"]
    b = np.load(TINY_CONTRACT.parent.parent / "fixtures" / "tiny" / "offline.npz")["encoded"]
    assert a.shape == b.shape and np.abs(a - b).max() <= ATOL
