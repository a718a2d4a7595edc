"""Fuzzing the contract loader: every field of a valid contract retyped, or the file's bytes broken, either loads
the same contract or fails with ONE ContractError line naming the file."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install -e '.[dev]')")

from hypothesis import given
from hypothesis import strategies as st

from streamparity.contract.loading import load_contract
from streamparity.errors import ContractError
from tests.conftest import TINY_CONTRACT
from tests.fuzzing import FUZZ, assert_one_error_line, corrupted_bytes, retyped

DOC = json.loads(TINY_CONTRACT.read_text())


def _load(d: str, data: bytes) -> tuple[str, Any]:
    path = Path(d) / "c.json"
    path.write_bytes(data)
    try:
        return "ok", repr(load_contract(path))
    except Exception as e:
        return "error", assert_one_error_line(e, str(path))


@FUZZ
@given(data=st.data(), how=st.sampled_from(["retype", "bytes"]))
def test_corrupted_contracts_load_the_same_or_fail_with_one_line(data: st.DataObject, how: str) -> None:
    raw = json.dumps(DOC, indent=1).encode()
    bad = data.draw(retyped(DOC, unions=("shape",)))[1] if how == "retype" else None
    broken = json.dumps(bad, indent=1).encode() if how == "retype" else data.draw(corrupted_bytes(raw))
    with tempfile.TemporaryDirectory() as d:
        want = _load(d, raw)
        assert want[0] == "ok", want
        got = _load(d, broken)
    assert got[0] == "error" or got == want, got


def _edit(doc: dict[str, Any], where: str, value: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc))
    node: Any = doc
    keys = where.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize(("where", "value", "needle"), [
    ("streaming.chunk_frames", 16.0, "is not of type 'integer'"),
    ("streaming.chunk_frames", 2**40, "integer out of range"),
    ("inputs.0.shape.1", 2**31, "integer out of range"),
    ("inputs.1.name", "audio_signal", "two inputs have the name 'audio_signal'"),
    ("outputs.1.role", "encoded", "two outputs have the role 'encoded'"),
    ("dims.B", {"min": 4, "max": 1}, "min 4 is above max 1"),
    ("streaming.cache_len.initial", 100, "cache_len.initial 100 is above"),
    ("profiles.1.name", "chunk", "two profiles are named 'chunk'"),
])
def test_semantic_and_type_checks_name_the_field(tmp_path: Path, where: str, value: Any, needle: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(_edit(DOC, where, value)))
    with pytest.raises(ContractError) as info:
        load_contract(path)
    assert needle in assert_one_error_line(info.value, str(path))


@pytest.mark.parametrize(("data", "needle"), [
    (b"\xef\xbb\xbf" + TINY_CONTRACT.read_bytes(), "byte-order mark"),
    (TINY_CONTRACT.read_bytes().replace(b'"description"', b'"\xff"', 1), "not valid UTF-8"),
    (b'{"name": "a", "name": "b"}', "duplicate key 'name'"),
    (b"[" * 3000 + b"]" * 3000, "nests deeper"),
])
def test_contract_encoding_and_structure(tmp_path: Path, data: bytes, needle: str) -> None:
    path = tmp_path / "c.json"
    path.write_bytes(data)
    with pytest.raises(ContractError) as info:
        load_contract(path)
    assert needle in assert_one_error_line(info.value, str(path))
