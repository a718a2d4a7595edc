"""import-contract on stand-ins of the checklist's two contract files; check-contract; load-time checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamparity.backends.base import pad_cache_to
from streamparity.cli.main import main
from streamparity.contract.loading import load_contract
from streamparity.contract.model_io import check_model_io
from streamparity.errors import ContractError, ModelMismatch

ROOT = Path(__file__).resolve().parents[2]
CHECKLIST = Path(__file__).resolve().parent / "data" / "checklist"
TINY = ROOT / "contracts" / "tiny-parakeet.contract.json"
TOL = {"atol": 1e-4, "rtol": 1e-4, "reason": "measured"}


def _import(tmp_path: Path, name: str) -> dict[str, Any]:
    out = tmp_path / f"imp-{name}"
    assert main(["import-contract", str(CHECKLIST / name), f"--out={out}"]) == 0
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def _resolve(doc: dict[str, Any]) -> dict[str, Any]:
    s = doc["streaming"]
    s["cache_len"]["step"] = 3
    s["cache_pad_side"] = "right"
    s["nemo"]["cache_drop_size"] = 3
    for per in doc["tolerances"].values():
        for p in per:
            per[p] = dict(TOL)
    for k in doc["known_issues"]:
        k["status"] = "rejected"
    return doc


@pytest.mark.parametrize("name", ["encoder_streaming.contract.json", "parakeet-tdt-0.6b-v3.contract.json"])
def test_import_maps_and_loads_once_decided(tmp_path: Path, name: str) -> None:
    doc = _import(tmp_path, name)
    assert doc["cache_layout"] == "batch_first"
    s = doc["streaming"]
    assert (s["first_chunk_frames"], s["chunk_frames"], s["valid_out_len"]) == (41, 57, 3)
    assert (s["cache_channel_size"], s["cache_time_size"]) == (256, 4)
    assert doc["inputs"][2]["shape"] == ["B", 24, 256, 1024]
    assert doc["outputs"][0]["shape"] == ["B", 1024, 3]
    assert {p["name"] for p in doc["profiles"]} == {"streaming_profile_41", "streaming_profile_57", "unified_profile"}
    p = tmp_path / "undecided.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ContractError) as e:
        load_contract(p)
    for field in ("$.streaming.cache_len.step", "$.streaming.cache_pad_side", "$.streaming.nemo.cache_drop_size"):
        assert field in str(e.value)
    p.write_text(json.dumps(_resolve(doc)))
    c = load_contract(p)
    assert c.streaming.cache_pad_side == "right" and c.cache_layout == "batch_first"


def test_waiver_becomes_a_known_issue_to_decide(tmp_path: Path) -> None:
    doc = _import(tmp_path, "parakeet-tdt-0.6b-v3.contract.json")
    assert doc["known_issues"][0]["outputs"] == ["cache_last_time_out"]
    assert doc["known_issues"][0]["status"].startswith("TODO: ")
    assert doc["tolerances"]["cache_last_time_out"]["fp32"].startswith("TODO: ")
    assert doc["tolerances"]["encoder_output"]["fp32"]["atol"] == 1e-4


def test_import_rejects_other_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "x.json"
    src.write_text('{"a": 1}')
    assert main(["import-contract", str(src), f"--out={tmp_path / 'o.json'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a checklist contract" in err and len(err.splitlines()) == 1


def test_check_contract_lists_every_violation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-contract", str(TINY)]) == 0
    assert capsys.readouterr().out.strip() == "ok"
    doc = json.loads(TINY.read_text())
    doc["streaming"]["valid_out_len"] = 0
    doc["cache_layout"] = "sideways"
    doc["tolerances"]["outputs"]["fp32"].pop("reason")
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    assert main(["check-contract", str(p)]) == 2
    err = capsys.readouterr().err
    for path in ("$.cache_layout", "$.streaming.valid_out_len", "$.tolerances.outputs.fp32"):
        assert f": {path}: " in err
    assert "3 violation(s)" in err


def _tiny(tmp_path: Path, mutate: Any) -> Path:
    doc = json.loads(TINY.read_text())
    for k in ("onnx", "reference", "offline_reference", "nemo_config"):
        doc["model"].pop(k, None)
    mutate(doc)
    p = tmp_path / "c.json"
    p.write_text(json.dumps(doc))
    return p


def test_missing_precision_is_a_load_error_not_a_fallback(tmp_path: Path) -> None:
    p = _tiny(tmp_path, lambda d: d["tolerances"]["cache_last_time_next"].pop("fp16"))
    with pytest.raises(ContractError, match=r"'cache_last_time_next' has no fp16 tolerance.*no fallback"):
        load_contract(p)
    c = load_contract(TINY)
    with pytest.raises(ContractError, match="no int8 tolerance"):
        c.tolerance("outputs", "int8")


def test_cache_time_size_checked_against_shapes(tmp_path: Path) -> None:
    p = _tiny(tmp_path, lambda d: d["streaming"].update(cache_time_size=4))
    with pytest.raises(ContractError, match=r"cache_last_time .* 8 cache frames at axis 3, streaming.cache_time_size "
                                            r"says 4"):
        load_contract(p)


class _IO:
    def __init__(self, name: str, type_: str, shape: list[Any]) -> None:
        self.name, self.type, self.shape = name, type_, shape


def _model_io(layers_first: bool = False, batch: Any = "b") -> tuple[list[_IO], list[_IO]]:
    def cache(n: str, rest: list[Any]) -> _IO:
        return _IO(n, "tensor(float)", [3, batch, *rest] if layers_first else [batch, 3, *rest])

    ins = [_IO("audio_signal", "tensor(float)", [batch, 128, "t"]), _IO("length", "tensor(int64)", [batch]),
           cache("cache_last_channel", ["c", 64]), cache("cache_last_time", [64, "k"]),
           _IO("cache_last_channel_len", "tensor(int64)", [batch])]
    outs = [_IO("outputs", "tensor(float)", [batch, 64, "o"]), _IO("encoded_lengths", "tensor(int64)", [batch]),
            cache("cache_last_channel_next", ["c", 64]), cache("cache_last_time_next", [64, "k"]),
            _IO("cache_last_channel_next_len", "tensor(int64)", [batch])]
    return ins, outs


def test_model_io_names_a_layout_mismatch() -> None:
    c = load_contract(TINY)
    check_model_io(c, Path("m.onnx"), *_model_io())
    with pytest.raises(ModelMismatch) as e:
        check_model_io(c, Path("m.onnx"), *_model_io(layers_first=True))
    assert "cache layout mismatch: the model's cache_last_channel is [layers, B, ...] (layers_first)" in str(e.value)
    assert "the contract says batch_first" in str(e.value)


def test_model_io_checks_symbolic_dims_against_ranges() -> None:
    c = load_contract(TINY)  # B ranges 1..4
    with pytest.raises(ModelMismatch, match=r"fixed to 1 in the model .* B ranges 1\.\.4"):
        check_model_io(c, Path("m.onnx"), *_model_io(batch=1))


@pytest.mark.parametrize("side", ["left", "right"])
def test_pad_side(side: str) -> None:
    a = np.ones((1, 2, 2, 3), np.float32)
    got = pad_cache_to(a, (1, 2, 4, 3), name="c", side=side)
    valid = got[:, :, 2:] if side == "left" else got[:, :, :2]
    zeros = got[:, :, :2] if side == "left" else got[:, :, 2:]
    assert (valid == 1).all() and (zeros == 0).all()
