"""streamparity.memo and its first user, the contract loader: a contract proven schema-valid is not validated
again; anything its verdict depends on proves it again; failures are never remembered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamparity import memo
from streamparity.contract import loading
from streamparity.errors import ContractError
from tests.conftest import ROOT, TINY_CONTRACT

KIND = "contract-schema-valid"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv(memo.CACHE_ENV, str(d))
    monkeypatch.setattr(memo, "_known", set())
    return d


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / KIND).glob("*")) if (cache / KIND).exists() else []


def _calls(monkeypatch) -> list[object]:
    calls: list[object] = []
    real = loading.schema_violations
    monkeypatch.setattr(loading, "schema_violations", lambda doc: calls.append(doc) or real(doc))
    return calls


def test_a_valid_contract_is_validated_once_then_found(cache, monkeypatch) -> None:
    calls = _calls(monkeypatch)
    loading.load_contract(TINY_CONTRACT)
    assert len(calls) == 1 and len(_entries(cache)) == 1
    monkeypatch.setattr(memo, "_known", set())  # a new process: only the file is left
    loading.load_contract(TINY_CONTRACT)
    assert len(calls) == 1
    entry = _entries(cache)[0]
    assert entry.read_text().strip() == entry.name  # an entry holds its own name


def test_a_changed_contract_is_validated_again_and_a_failure_is_never_remembered(cache, tmp_path,
                                                                                monkeypatch) -> None:
    calls = _calls(monkeypatch)
    loading.load_contract(TINY_CONTRACT)
    doc = json.loads(TINY_CONTRACT.read_text())
    doc["streaming"]["valid_out_len"] = 2.0  # 2.0 is not an integer here, though JSON Schema says it is
    bad = tmp_path / "bad.contract.json"
    bad.write_text(json.dumps(doc))
    for _ in range(2):
        with pytest.raises(ContractError, match="valid_out_len"):
            loading.load_contract(bad)
    assert len(calls) == 3 and len(_entries(cache)) == 1


def test_what_the_verdict_depends_on_is_in_the_key(cache, monkeypatch) -> None:
    doc = json.loads(TINY_CONTRACT.read_text())
    base = loading._memo_key(doc)
    assert base is not None and base == loading._memo_key(json.loads(TINY_CONTRACT.read_text()))
    schema, code, version = loading._proof_inputs()
    for changed in ((schema + b" ", code, version), (schema, code + b"#", version), (schema, code, b"9.9")):
        monkeypatch.setattr(loading, "_proof_inputs", lambda c=changed: c)
        assert loading._memo_key(doc) != base
    monkeypatch.undo()
    doc["gates"]["vs_baseline_factor"] = 4  # 4 and 4.0 stay apart, as the validator keeps ints apart
    other = json.loads(TINY_CONTRACT.read_text())
    other["gates"]["vs_baseline_factor"] = 4.0
    assert loading._memo_key(doc) != loading._memo_key(other)
    assert memo.key(b"ab", b"c") != memo.key(b"a", b"bc")
    assert loading._memo_key({"x": float("nan")}) is None


def test_an_entry_that_does_not_hold_its_name_is_not_believed(cache, monkeypatch) -> None:
    loading.load_contract(TINY_CONTRACT)
    (entry,) = _entries(cache)
    entry.write_text("0" * 64)
    monkeypatch.setattr(memo, "_known", set())
    calls = _calls(monkeypatch)
    loading.load_contract(TINY_CONTRACT)
    assert len(calls) == 1 and entry.read_text().strip() == entry.name  # validated, and written again


def test_an_empty_cache_variable_turns_the_memo_off(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(memo.CACHE_ENV, "")
    monkeypatch.setattr(memo, "_known", set())
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert memo.cache_dir() is None
    loading.load_contract(TINY_CONTRACT)
    assert not any(tmp_path.rglob("*"))


def test_a_cache_that_cannot_be_written_only_costs_time(tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(memo.CACHE_ENV, str(blocker))
    monkeypatch.setattr(memo, "_known", set())
    assert loading.load_contract(TINY_CONTRACT).name


def test_the_default_folder_follows_xdg(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(memo.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert memo.cache_dir() == tmp_path / "streamparity"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert memo.cache_dir() == tmp_path / ".cache" / "streamparity"


def test_a_remembered_contract_loads_without_importing_jsonschema(tmp_path) -> None:
    env = {**os.environ, memo.CACHE_ENV: str(tmp_path)}
    code = ("import sys; from streamparity.contract.loading import load_contract; "
            f"load_contract({str(TINY_CONTRACT)!r}); print('jsonschema' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                           check=True, timeout=60).stdout.strip() for _ in range(2)]
    assert runs == ["True", "False"]
