"""Your own model, first-class: from a NeMo config alone to a green parity run, for differently shaped encoders.

Each encoder is built once per test session: ``make-reference`` without ``--contract`` (ONNX, drafted
contract, reference, offline companion), then ``calibrate`` on ORT CPU FP32 + FP16, then ``pytest -m parity``
on both must pass, and real faults in the ONNX (1% on one weight, cache length stuck at 0) must fail FP32.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamparity.backends.registry import parse_backend_spec
from streamparity.cli.main import main as cli
from streamparity.contract.calibration_state import uncalibrated
from streamparity.contract.loading import load_contract
from streamparity.results.records import CLOSED_LOOP, FUNCTIONAL
from streamparity.session import ParitySession, SessionConfig
from streamparity.tools import onnx_faults as F
from streamparity.tools.offline_companion import offline_left_pad
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow,  # NeMo runs on the CPU: deselect with -m "not slow" while developing
              pytest.mark.skipif(importlib.util.find_spec("nemo") is None,
                                 reason="NeMo is not installed (pip install 'streamparity[nemo]')")]

_COMMON = {"n_layers": 2, "causal_downsampling": True, "ff_expansion_factor": 2, "self_attention_model": "rel_pos",
           "att_context_style": "chunked_limited", "conv_context_size": "causal", "pos_emb_max_len": 512,
           "dropout": 0.0, "dropout_pre_encoder": 0.0, "dropout_emb": 0.0, "dropout_att": 0.0}
SHAPES: dict[str, dict[str, Any]] = {
    # striding x4, 80 mels, kernel 15, 4-frame chunks with 3 lookahead: the false-alarm shape, smaller
    "x4-striding": {"layout": "batch_first", "chunks": 40, "encoder": {
        **_COMMON, "feat_in": 80, "d_model": 48, "n_heads": 4, "subsampling": "striding", "subsampling_factor": 4,
        "subsampling_conv_channels": 16, "att_context_size": [[16, 3]], "conv_kernel_size": 15}},
    # dw_striding x8, 64 mels, kernel 5, 2-frame chunks, layers-first caches
    "x8-dw-layers-first": {"layout": "layers_first", "chunks": 40, "encoder": {
        **_COMMON, "feat_in": 64, "d_model": 32, "n_heads": 2, "subsampling": "dw_striding", "subsampling_factor": 8,
        "subsampling_conv_channels": 16, "att_context_size": [[12, 1]], "conv_kernel_size": 5}},
    # the embedded tiny model's own config
    "tiny": {"layout": "batch_first", "chunks": 60, "config": ROOT / "fixtures" / "tiny" / "encoder_config.json"},
}
FP32, FP16 = parse_backend_spec("ort-cpu-fp32"), parse_backend_spec("ort-cpu-fp16")


def _build(root: Path, name: str) -> Path:
    spec = SHAPES[name]
    out = root / name
    out.mkdir(parents=True)
    cfg = spec.get("config")
    if cfg is None:
        cfg = out / "encoder_config.json"
        cfg.write_text(json.dumps({"seed": 5, "encoder": spec["encoder"], "streaming": {}}), "utf-8")
    assert cli(["make-reference", f"--config={cfg}", f"--out-dir={out}", f"--num-chunks={spec['chunks']}",
                f"--cache-layout={spec['layout']}", f"--name={name}"]) == 0
    contract = out / f"{name}.contract.json"
    assert uncalibrated(load_contract(contract)), "a drafted contract marks its tolerances as needing calibration"
    assert cli(["calibrate", str(contract), "--backend=ort-cpu-fp32", "--backend=ort-cpu-fp16", "--margin=4"]) == 0
    return contract


@pytest.fixture(scope="session")
def own_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("own")
    return {name: _build(root, name) for name in SHAPES}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_config_to_green_parity_run(own_models, name, tmp_path, run_pytest_inprocess):
    contract = own_models[name]
    c = load_contract(contract)
    assert not uncalibrated(c)
    for out, per in c.tolerances.items():
        for prec, t in per.items():
            assert "calibrated" in t.reason and "worst" in t.reason, (out, prec)
            assert t.atol >= (64 * 2.0**-23 if prec == "fp32" else 2 * 2.0**-10), (out, prec, t.atol)
    r = run_pytest_inprocess("-q", "-p", "no:randomly", "-m", "parity", "--contract", str(contract),
                             "--backend=ort-cpu-fp32", "--backend=ort-cpu-fp16",
                             "--report-dir", str(tmp_path / "reports"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert " failed" not in r.stdout.splitlines()[-1]


def _one_weight(onnx: Path) -> str:
    names = [i.name for i in F.load(onnx).graph.initializer]
    return next(n for n in names if re.search(r"layers\.1\.conv\.pointwise_conv1\.weight$", n))


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_faults_fail_the_fp32_run(own_models, name, tmp_path):
    contract = own_models[name]
    onnx = contract.parent / "encoder.onnx"
    model = F.load(onnx)
    faults = {"weight-1pct": F.scale_initializer(model, f"^{re.escape(_one_weight(onnx))}$", 1.01),
              "cache-len-stuck-at-0": F.freeze_output(model, "cache_last_channel_next_len", 0)}
    for fault, m in faults.items():
        s = ParitySession(SessionConfig(contract=contract, onnx=F.save(m, tmp_path / f"{fault}.onnx")))
        for mode in (FUNCTIONAL, CLOSED_LOOP):
            fails = [ch.chunk for ch in s.run(FP32, mode).chunks if ch.verdict == "fail"]
            assert fails, f"{name}: {fault} passed FP32 {mode}"
        if fault == "weight-1pct":  # the calibrated FP16 lane sees it too
            assert any(ch.verdict == "fail" for ch in s.run(FP16, CLOSED_LOOP).chunks), f"{name}: FP16 blind"
        s.close()


def test_layers_first_export_has_layers_first_caches(own_models):
    c = load_contract(own_models["x8-dw-layers-first"])
    g = F.load(c.resolve("onnx")).graph  # type: ignore[arg-type]
    dims = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in [*g.input, *g.output]}
    assert dims["cache_last_channel"][0] == 2 and dims["cache_last_time_next"][0] == 2
    assert c.cache_layout == "layers_first" and c.input("cache_last_channel").shape[:2] == (2, "B")


def test_offline_pad_follows_the_subsampling_factor():
    assert offline_left_pad(16, 2, 4) == 8  # the x4 model: 16/4 - 2 = 2 output frames
    assert offline_left_pad(16, 2, 8) == 0  # parakeet's x8 schedule


def test_unaligned_offline_companion_is_rejected(own_models, tmp_path):
    """The issue's false alarm, turned around: an offline companion shifted by 2 output frames (no left pad on
    a x4 model) is rejected by check-reference and by calibrate, naming the offline comparison."""
    src = own_models["x4-striding"].parent
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    npz = dst / "offline.npz"
    with np.load(npz) as z:
        enc = np.asarray(z["encoded"])
    shifted = np.concatenate([np.zeros_like(enc[..., :2]), enc[..., :-2]], axis=-1)
    np.savez(npz, encoded=shifted)
    contract = dst / "x4-striding.contract.json"
    assert cli(["check-reference", str(dst / "reference.jsonl"), f"--contract={contract}", "--no-bench"]) == 2
    assert cli(["calibrate", str(contract)]) == 2
    assert cli(["check-reference", str(src / "reference.jsonl"), f"--contract={own_models['x4-striding']}",
                "--no-bench"]) == 0


def test_drafted_schedule_of_the_tiny_config_is_the_shipped_one(own_models):
    """The generator's draft, from the config alone, reproduces the hand-written tiny contract's schedule."""
    from tests.conftest import TINY_CONTRACT

    drafted, shipped = (json.loads(Path(p).read_text("utf-8"))["streaming"]
                        for p in (own_models["tiny"], TINY_CONTRACT))
    for s in (drafted, shipped):
        s["cache_len"].pop("reason")
    # the draft's nemo section may record more of NeMo's streaming_cfg than the hand-written one
    drafted["nemo"] = {k: v for k, v in drafted["nemo"].items() if k in shipped["nemo"]}
    assert drafted == shipped
    x4 = json.loads(own_models["x4-striding"].read_text("utf-8"))["streaming"]["nemo"]
    assert (x4["chunk_size"], x4["shift_size"], x4["left_chunks"]) == (4, 4, 4)
