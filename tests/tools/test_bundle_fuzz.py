"""Fuzzing failure bundles: a retyped metadata field or a broken byte of the .npz either reads as the original
or fails with ONE StreamparityError line naming the file."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install -e '.[dev]')")

from hypothesis import given
from hypothesis import strategies as st

from streamparity.errors import StreamparityError
from streamparity.tools.bundles import _FIELDS, read_bundle
from tests.fuzzing import FUZZ, assert_one_error_line, retyped

META = {"version": 1, "contract": "c.json", "contract_name": "c", "onnx": "m.onnx", "reference": "r.jsonl",
        "backend": "ort-cpu-fp32", "precision": "fp32", "mode": "closed_loop", "chunk": 3,
        "tolerances": {"outputs": {"atol": 1e-4, "rtol": 1e-4, "reason": "r"}}, "verdict": "fail",
        "verdicts": {"outputs": "fail"}, "violations": ["chunk 3, x: y"], "error": None, "stream_position": 3,
        "checked_inputs": False}
ARRAYS: dict[str, np.ndarray] = {"input/audio": np.ones((1, 4, 5), np.float32), "input/len": np.array([2], np.int64),
          "expected/outputs": np.zeros((1, 2), np.float32), "actual/outputs": np.ones((1, 2), np.float32)}


def _npz(meta: Any, arrays: dict[str, np.ndarray] = ARRAYS) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                        **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _read(path: Path) -> tuple[str, Any]:
    try:
        meta, *groups = read_bundle(path)
    except Exception as e:
        return "error", assert_one_error_line(e, str(path))
    # what repro reads: the typed fields (the tolerances are the contract's, recorded for people to read)
    typed = {k: meta[k] for k in ("version", *_FIELDS) if k in meta and k != "tolerances"}
    return "ok", (typed, [{k: (a.dtype.str, a.shape, a.tobytes()) for k, a in g.items()} for g in groups])


def _same_or_one_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        good, bad = Path(d) / "good.npz", Path(d) / "bad.npz"
        good.write_bytes(_npz(META))
        bad.write_bytes(data)
        want = _read(good)
        assert want[0] == "ok", want
        got = _read(bad)
        assert got[0] == "error" or got == want, got


@FUZZ
@given(data=st.data())
def test_retyped_metadata_reads_the_same_or_fails_with_one_line(data: st.DataObject) -> None:
    _same_or_one_error(_npz(data.draw(retyped(META, optional=("error",)))[1]))


@FUZZ
@given(data=st.data(), how=st.sampled_from(["flip", "truncate"]))
def test_broken_bundle_bytes_read_the_same_or_fail_with_one_line(data: st.DataObject, how: str) -> None:
    raw = bytearray(_npz(META))
    if how == "truncate":
        del raw[data.draw(st.integers(0, len(raw) - 1)):]
    else:
        for _ in range(data.draw(st.integers(1, 3))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _same_or_one_error(bytes(raw))


@pytest.mark.parametrize(("make", "needle"), [
    (lambda: _npz({**META, "chunk": True}), "field 'meta.chunk'"),
    (lambda: _npz({**META, "version": True}), "bundle version True is not 1"),
    (lambda: _npz({**META, "checked_inputs": 1}), "field 'meta.checked_inputs'"),
    (lambda: _npz({k: v for k, v in META.items() if k != "verdicts"}), "lacks 'verdicts'"),
    (lambda: _npz([1, 2]), "not a JSON object"),
    (lambda: _npz({**META, "stream_position": None}), "does not fit mode closed_loop"),
    (lambda: _npz(META, {**ARRAYS, "stray": np.zeros(1)}), "unknown array 'stray'"),
    (lambda: b"\x93NUMPY" + _npz(META)[6:], "not a streamparity bundle"),
])
def test_bundle_defects_are_one_line(tmp_path: Path, make: Any, needle: str) -> None:
    path = tmp_path / "b.npz"
    path.write_bytes(make())
    with pytest.raises(StreamparityError) as info:
        read_bundle(path)
    assert needle in assert_one_error_line(info.value, str(path))


def test_a_plain_npy_array_is_not_a_bundle(tmp_path: Path) -> None:
    path = tmp_path / "b.npz"
    np.save(path.with_suffix(".npy"), np.zeros(3))
    path.with_suffix(".npy").rename(path)
    with pytest.raises(StreamparityError) as info:
        read_bundle(path)
    assert "one .npy array" in assert_one_error_line(info.value, str(path))
