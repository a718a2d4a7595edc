"""The bad-input corpus: each malformed input gets one clear error naming the file and the line, chunk or
field, a non-zero exit status, and no Python traceback, from the CLI and from `pytest -m parity`.

Both run in this process (``main(argv)``, pytester), where an uncaught exception still shows as a traceback on
stderr; a missing reference file runs ``python -m streamparity.cli`` as a process (its exit status as a process)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import TINY_CONTRACT, TINY_ONNX, TINY_REFERENCE, Ran, run_cli, run_cli_inprocess

N_CHUNKS = 6
BAD_CHUNK = 3
BAD_LINE = BAD_CHUNK + 2  # line 1 is the header

Mutation = Callable[[dict[str, Any]], None]


def _lines() -> list[bytes]:
    with TINY_REFERENCE.open("rb") as f:
        return [f.readline() for _ in range(N_CHUNKS + 1)]


def make_reference(path: Path, mutate: Mutation | None = None, *, raw: Callable[[bytes], bytes] | None = None,
                   truncate_at: int | None = None) -> Path:
    """The first N_CHUNKS chunks of the tiny reference; chunk BAD_CHUNK mutated (as an object, or as bytes)."""
    lines = _lines()
    header = json.loads(lines[0])
    header["num_chunks"] = N_CHUNKS
    out = [(json.dumps(header, sort_keys=True) + "\n").encode()]
    for i, line in enumerate(lines[1:]):
        if i == BAD_CHUNK and mutate is not None:
            obj = json.loads(line)
            mutate(obj)
            line = (json.dumps(obj) + "\n").encode()
        if i == BAD_CHUNK and raw is not None:
            line = raw(line)
        out.append(line)
    data = b"".join(out)
    path.write_bytes(data[:truncate_at] if truncate_at is not None else data)
    return path


def _tensor(a: np.ndarray) -> dict[str, Any]:
    from streamparity.reference.tensors import encode_tensor

    return encode_tensor(a)


def _set(section: str, name: str, fn: Callable[[np.ndarray], Any]) -> Mutation:
    def mutate(obj: dict[str, Any]) -> None:
        from streamparity.reference.tensors import decode_tensor

        a = np.array(decode_tensor(obj[section][name], file="", line=0, chunk=0, field=""))
        obj[section][name] = fn(a)

    return mutate


def _nan(a: np.ndarray) -> dict[str, Any]:
    a.reshape(-1)[7] = np.nan
    return _tensor(a)


def _inf(a: np.ndarray) -> dict[str, Any]:
    a.reshape(-1)[3] = -np.inf
    return _tensor(a)


def _garbage_b64(a: np.ndarray) -> dict[str, Any]:
    t = _tensor(a)
    t["data_b64"] = "!!!!" + t["data_b64"][4:]
    return t


def _unknown_dtype(a: np.ndarray) -> dict[str, Any]:
    t = _tensor(a)
    t["dtype"] = "float8"
    return t


def _short_data(a: np.ndarray) -> dict[str, Any]:
    t = _tensor(a)
    t["shape"] = [*t["shape"][:-1], t["shape"][-1] + 1]
    return t


def _drop(section: str, name: str) -> Mutation:
    def mutate(obj: dict[str, Any]) -> None:
        del obj[section][name]

    return mutate


def _cut_line(line: bytes) -> bytes:
    return line[: len(line) // 2] + b"\n"


def assert_clean_error(r: Any, *needles: str, code: int | None = None) -> str:
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    if code is not None:
        assert r.returncode == code, out
    assert "Traceback" not in out, out
    # nor pytest's own traceback format: "path.py:123: in func" frames and "E   SomeError: ..." lines
    assert not re.search(r"^\S+\.py:\d+: (in |\w+Error)", out, re.M), out
    assert not re.search(r"^E\s{3}", out, re.M), out
    for n in needles:
        assert n in out, f"{n!r} not in:\n{out}"
    return str(out)


# (id, how to make the file, what the message must name) -- checked by check-reference and by pytest
CORPUS: list[tuple[str, dict[str, Any], list[str]]] = [
    ("truncated-last-line", {"truncate_at": -4000},
     ["last line is incomplete", "the file is truncated"]),
    ("truncated-line-mid-file", {"raw": _cut_line},
     [f":{BAD_LINE}, chunk {BAD_CHUNK}", "line is not valid JSON"]),
    ("unknown-dtype", {"mutate": _set("inputs", "cache_last_channel", _unknown_dtype)},
     [f":{BAD_LINE}, chunk {BAD_CHUNK}, field 'inputs.cache_last_channel'", "unknown dtype 'float8'"]),
    ("wrong-dtype-for-contract", {"mutate": _set("inputs", "audio_signal", lambda a: _tensor(a.astype(np.float64)))},
     [f"chunk {BAD_CHUNK}", "audio_signal", "dtype float64, contract says float32"]),
    ("shape-disagrees-with-data", {"mutate": _set("outputs", "outputs", _short_data)},
     [f":{BAD_LINE}, chunk {BAD_CHUNK}, field 'outputs.outputs'", "data_b64 holds 512 bytes"]),
    ("wrong-shape-for-contract", {"mutate": _set("inputs", "audio_signal", lambda a: _tensor(a[..., :24]))},
     [f"chunk {BAD_CHUNK}", "audio_signal", "24 frames, contract schedule says 25"]),
    ("missing-tensor", {"mutate": _drop("outputs", "cache_last_time_next")},
     [f"chunk {BAD_CHUNK}", "cache_last_time_next", "output is missing"]),
    ("base64-garbage", {"mutate": _set("outputs", "cache_last_time_next", _garbage_b64)},
     [f":{BAD_LINE}, chunk {BAD_CHUNK}, field 'outputs.cache_last_time_next'", "not valid base64"]),
    ("nan-in-reference", {"mutate": _set("outputs", "outputs", _nan)},
     [f"chunk {BAD_CHUNK}", "outputs", "non-finite values (NaN/Inf)"]),
    ("inf-in-reference", {"mutate": _set("inputs", "cache_last_time", _inf)},
     [f"chunk {BAD_CHUNK}", "cache_last_time", "non-finite values (NaN/Inf)"]),
]


def _make(tmp_path: Path, how: dict[str, Any]) -> Path:
    how = dict(how)
    if how.get("truncate_at") is not None and how["truncate_at"] < 0:
        full = make_reference(tmp_path / "full.jsonl")
        how["truncate_at"] = full.stat().st_size + how["truncate_at"]
    return make_reference(tmp_path / "bad.jsonl", how.get("mutate"), raw=how.get("raw"),
                          truncate_at=how.get("truncate_at"))


@pytest.mark.parametrize(("case", "how", "needles"), CORPUS, ids=[c[0] for c in CORPUS])
def test_check_reference_rejects(tmp_path: Path, case: str, how: dict[str, Any], needles: list[str]) -> None:
    bad = _make(tmp_path, how)
    r = run_cli_inprocess("check-reference", str(bad), "--contract", str(TINY_CONTRACT), "--no-bench")
    out = assert_clean_error(r, str(bad), *needles, code=2)
    assert out.startswith("streamparity check-reference: error: ")


@pytest.mark.parametrize(("case", "how", "needles"), CORPUS, ids=[c[0] for c in CORPUS])
def test_parity_run_rejects(tmp_path: Path, case: str, how: dict[str, Any], needles: list[str],
                            run_pytest_inprocess: Callable[..., Ran]) -> None:
    bad = _make(tmp_path, how)
    r = run_pytest_inprocess("-m", "parity", "suite/parity/test_parity.py", "--reference", str(bad), "--backend",
                             "ort-cpu-fp32", "-p", "no:xdist", "-q", "-x", "--report-dir", str(tmp_path / "rep"))
    assert_clean_error(r, str(bad), *needles[-1:])


def test_reader_error_names_file_line_chunk_field(tmp_path: Path) -> None:
    from streamparity.errors import ReferenceFormatError
    from streamparity.reference.reader import ReferenceFile

    bad = _make(tmp_path, CORPUS[7][1])
    ref = ReferenceFile(bad, use_sidecar=False)
    ref.read(BAD_CHUNK - 1)  # the chunks around it still read: random access does not touch the bad line
    with pytest.raises(ReferenceFormatError) as ei:
        ref.read(BAD_CHUNK)
    e = ei.value
    assert (e.file, e.line, e.chunk, e.field) == (str(bad), BAD_LINE, BAD_CHUNK, "outputs.cache_last_time_next")


def _bad_contract(tmp_path: Path) -> Path:
    doc = json.loads(TINY_CONTRACT.read_text())
    doc["cache_layout"] = "sideways"
    p = tmp_path / "bad.contract.json"
    p.write_text(json.dumps(doc))
    return p


def test_contract_violating_the_schema(tmp_path: Path, run_pytest_inprocess: Callable[..., Ran]) -> None:
    bad = _bad_contract(tmp_path)
    r = run_cli_inprocess("check-reference", str(TINY_REFERENCE), "--contract", str(bad), "--no-bench")
    assert_clean_error(r, str(bad), "schema violation at $.cache_layout", "field '$.cache_layout'", code=2)
    r = run_pytest_inprocess("-m", "parity", "suite/parity/test_parity.py", "--contract", str(bad), "-p", "no:xdist",
                             "-q")
    assert_clean_error(r, str(bad), "schema violation at $.cache_layout")


def test_contract_that_is_not_json(tmp_path: Path) -> None:
    bad = tmp_path / "broken.contract.json"
    bad.write_text('{"schema_version": 1,\n "name": "x",\n')
    r = run_cli_inprocess("bisect", "--chunk", "0", "--contract", str(bad))
    assert_clean_error(r, f"{bad}:3", "invalid JSON", code=2)


def _io_mismatch_onnx(tmp_path: Path) -> Path:
    import onnx

    m = onnx.load(str(TINY_ONNX))
    for node in m.graph.node:  # the contract calls it encoded_lengths
        node.output[:] = ["encoded_len" if o == "encoded_lengths" else o for o in node.output]
    for vi in m.graph.output:
        if vi.name == "encoded_lengths":
            vi.name = "encoded_len"
    p = tmp_path / "mismatch.onnx"
    onnx.save(m, str(p))
    return p


def test_onnx_io_disagrees_with_the_contract(tmp_path: Path, run_pytest_inprocess: Callable[..., Ran]) -> None:
    bad = _io_mismatch_onnx(tmp_path)
    needles = ("model has no output 'encoded_lengths'", "field 'outputs.encoded_lengths'")
    r = run_cli_inprocess("bisect", "--chunk", "0", "--onnx", str(bad))
    assert_clean_error(r, str(bad), *needles, code=2)
    r = run_pytest_inprocess("-m", "parity", "suite/parity/test_parity.py", "--onnx", str(bad), "--backend",
                             "ort-cpu-fp32", "--chunks", "0", "-p", "no:xdist", "-q", "--report-dir",
                             str(tmp_path / "rep"))
    assert_clean_error(r, str(bad), *needles)


def test_onnx_that_is_not_a_model(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    r = run_cli_inprocess("bisect", "--chunk", "0", "--onnx", str(bad))
    assert_clean_error(r, str(bad), "cannot load ONNX", code=2)


def test_reference_file_missing(tmp_path: Path) -> None:
    r = run_cli("check-reference", str(tmp_path / "nope.jsonl"), "--no-bench")
    assert_clean_error(r, str(tmp_path / "nope.jsonl"), "reference file not found", code=2)


def test_corrupt_engine_cache_file(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Engine caches heal: a corrupt plan is reported (file and reason) and rebuilt; a build that still does not
    load is an EngineCacheError naming the plan file, which the CLI prints without a traceback."""
    from streamparity.backends.tensorrt import engine_cache as ec
    from streamparity.cli.main import main
    from streamparity.errors import EngineCacheError

    plan_bytes = b"PLAN" + bytes(range(200))

    def verify(data: bytes) -> None:
        if not data.startswith(b"PLAN"):
            raise ValueError("bad magic")

    material = {"onnx": "x", "builder": "test", "options": {"precision": "fp16"}}
    e = ec.get_or_build(tmp_path, "enc", material, lambda _t: plan_bytes, verify_fn=verify)
    e.plan_path.write_bytes(plan_bytes[:50])  # truncated on disk
    with caplog.at_level(logging.WARNING, logger="streamparity.backends.tensorrt.engine_cache"):
        again = ec.get_or_build(tmp_path, "enc", material, lambda _t: plan_bytes, verify_fn=verify)
    assert again.built and again.read_plan() == plan_bytes
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert str(e.plan_path) in msg and "truncated" in msg
    e.plan_path.write_bytes(b"XXXX" + plan_bytes[4:])  # same size, corrupt bytes; and the builder now fails
    with pytest.raises(EngineCacheError) as ei:
        ec.get_or_build(tmp_path, "enc", material, lambda _t: b"JUNK", verify_fn=verify)
    assert ei.value.file is not None and Path(ei.value.file).suffix == ".plan"
    assert "does not load" in str(ei.value)

    # the CLI prints an EngineCacheError as one line with exit status 2
    import contextlib
    import io

    def boom(_args: object) -> int:
        raise ei.value

    monkeypatch.setattr("streamparity.cli.cmd_check_reference.run", boom)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["check-reference", str(TINY_REFERENCE)])
    assert code == 2 and str(ei.value.file) in err.getvalue() and "Traceback" not in err.getvalue()


@pytest.mark.parametrize("value", ["NaN", "Infinity"])
def test_contract_with_a_non_finite_tolerance(tmp_path: Path, value: str) -> None:
    """json accepts NaN, and a NaN atol would pass every comparison: the contract is refused instead."""
    text = TINY_CONTRACT.read_text()
    doc = json.loads(text)
    doc["tolerances"]["outputs"]["fp32"]["atol"] = "__X__"
    bad = tmp_path / "nan.contract.json"
    bad.write_text(json.dumps(doc).replace('"__X__"', value))
    r = run_cli_inprocess("check-reference", str(TINY_REFERENCE), "--contract", str(bad), "--no-bench")
    assert_clean_error(r, str(bad), "$.tolerances.outputs.fp32.atol", "NaN and Infinity are not valid", code=2)


@pytest.mark.parametrize(("args", "needle"), [
    (["--only", "["], "argument --only: '[' is not a valid regular expression"),
    (["--atol", "-1"], "argument --atol: '-1' must be a finite number >= 0"),
    (["--rtol", "nan"], "argument --rtol: 'nan' must be a finite number >= 0"),
    (["--only", "zzz_matches_nothing"], "--only 'zzz_matches_nothing' matches none of the model's"),
], ids=["bad-regex", "negative-atol", "nan-rtol", "regex-matching-nothing"])
def test_bisect_bad_arguments(args: list[str], needle: str) -> None:
    r = run_cli_inprocess("bisect", "--chunk", "1", *args)
    assert_clean_error(r, needle, code=2)
