"""init-contract: a draft from the tiny ONNX + NeMo config reproduces the tiny contract's I/O, layout, schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamparity.cli.main import main
from streamparity.contract.loading import load_contract
from streamparity.errors import ContractError

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "fixtures" / "tiny"


@pytest.fixture(scope="module")
def drafted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    pytest.importorskip("nemo.collections.asr")
    out = tmp_path_factory.mktemp("draft") / "my.contract.json"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["init-contract", f"--onnx={TINY / 'encoder.onnx'}", f"--nemo-config={TINY / 'encoder_config.json'}",
                   f"--out={out}"])
    assert rc == 0
    return out, buf.getvalue()


def test_draft_reproduces_tiny_io_layout_schedule(drafted: tuple[Path, str]) -> None:
    out, _ = drafted
    got = json.loads(out.read_text())
    want = json.loads((ROOT / "contracts" / "tiny-parakeet.contract.json").read_text())
    assert got["inputs"] == want["inputs"]
    assert got["outputs"] == want["outputs"]
    assert got["cache_layout"] == want["cache_layout"] == "batch_first"
    for key, value in want["streaming"].items():
        if key == "cache_len":
            assert {k: v for k, v in got["streaming"][key].items() if k != "reason"} == \
                {k: v for k, v in value.items() if k != "reason"}
        elif key == "nemo":
            assert {k: got["streaming"]["nemo"][k] for k in value} == value
        else:
            assert got["streaming"][key] == value, key
    chunk = next(p for p in want["profiles"] if p["name"] == "chunk")
    assert got["profiles"][0]["shapes"] == chunk["shapes"]
    assert not Path(got["model"]["onnx"]).is_absolute()


def test_every_drafted_value_has_provenance(drafted: tuple[Path, str]) -> None:
    got = json.loads(drafted[0].read_text())
    prov = got["provenance"]
    for section in ("inputs", "outputs"):
        for t in got[section]:
            assert f"{section}.{t['name']}" in prov
    for key in ("first_chunk_frames", "chunk_frames", "valid_out_len", "cache_channel_size", "cache_time_size",
                "cache_len"):
        assert prov.get(f"streaming.{key}")
    assert "cache_layout" in prov


def test_draft_is_refused_until_tolerances_are_filled(drafted: tuple[Path, str]) -> None:
    out, printed = drafted
    assert "$.tolerances.outputs.fp32" in printed
    with pytest.raises(ContractError) as e:
        load_contract(out)
    msg = str(e.value)
    assert "marked TODO" in msg and "$.tolerances.outputs.fp32" in msg
    assert "$.tolerances.cache_last_time_next.fp16" in msg
    assert "\n" not in msg
    doc = json.loads(out.read_text())
    tiny = json.loads((ROOT / "contracts" / "tiny-parakeet.contract.json").read_text())
    doc["tolerances"] = tiny["tolerances"]
    doc["model"]["onnx"] = str(TINY / "encoder.onnx")
    filled = out.with_name("filled.contract.json")
    filled.write_text(json.dumps(doc))
    c = load_contract(filled)
    assert c.streaming.cache_len.step == 2 and c.cache_layout == "batch_first"


def test_draft_without_nemo_marks_the_schedule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.json"
    assert main(["init-contract", f"--onnx={TINY / 'encoder.onnx'}", f"--out={out}"]) == 0
    doc = json.loads(out.read_text())
    assert doc["cache_layout"] == "batch_first"  # from where the fixed layer count sits
    assert doc["streaming"]["chunk_frames"].startswith("TODO: ")
    assert doc["inputs"][2]["shape"] == ["B", 3, "C", 64]
    assert "$.streaming.chunk_frames" in capsys.readouterr().out


def test_layers_first_onnx_is_detected() -> None:
    from streamparity.contract.draft import detect_layout

    assert detect_layout(["n", 3, "c", 64]) == "batch_first"
    assert detect_layout([3, "n", "c", 64]) == "layers_first"
    assert detect_layout([24, 1, 256, 1024], layers=24) == "layers_first"
    assert detect_layout([1, 24, 256, 1024], layers=24) == "batch_first"
