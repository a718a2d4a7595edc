"""Fuzzing the reference reader: every corruption of a valid reference line, header or sidecar index either
reads as the original (what streamparity reads of it) or fails with ONE ReferenceFormatError line naming the
file; never another exception, never a corrupted value read silently."""

from __future__ import annotations

import base64
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
from streamparity.reference.fields import HEADER_FIELDS, META_FIELDS
from streamparity.reference.reader import ReferenceFile
from tests.fuzzing import FUZZ, assert_one_error_line, corrupted_bytes, retyped

_A = np.arange(6, dtype=np.float32).reshape(2, 3) / 4


def _tensor(a: np.ndarray) -> dict[str, Any]:
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data_b64": base64.b64encode(a.tobytes()).decode()}


HEADER = {"streamparity_reference": 1, "contract": "c", "num_chunks": 2, "generator": "fuzz", "device": "cpu"}
CHUNKS = [
    {"chunk": k, "meta": {"frames": [-4, 12], "seed": 42, "has_caches": k == 0, "note": "free"},
     "inputs": {"audio": _tensor(_A + k), "length": {"dtype": "int64", "shape": [1], "data": [3]}},
     "outputs": {"out": _tensor(_A * 2), "mask": {"dtype": "bool", "shape": [2], "data": [True, False]},
                 "lst": [[0.5, 1.5], [2.5, 3.5]]}}
    for k in range(2)
]


def _lines(header: Any, chunks: list[Any]) -> bytes:
    return "".join(json.dumps(x) + "\n" for x in [header, *chunks]).encode()


def _read(path: Path, *, use_sidecar: bool) -> tuple[str, Any]:
    """What streamparity reads of a reference: the typed header and meta fields, chunk ids and tensors."""
    try:
        ref = ReferenceFile(path, use_sidecar=use_sidecar)
        got = []
        for k in ref.chunk_ids:
            rec = ref.read(k)
            tensors = {f"{s}.{n}": (a.dtype.str, a.shape, a.tobytes())
                       for s, d in (("in", rec.inputs), ("out", rec.outputs)) for n, a in d.items()}
            got.append((k, {f: rec.meta[f] for f in META_FIELDS if f in rec.meta}, tensors))
        # generator is free-form (a name or an object): the typed fields are the ones streamparity reads
        header = {f: ref.header[f] for f in (*HEADER_FIELDS, "streamparity_reference") if f in ref.header
                  and f != "generator"}
        return "ok", (header, got)
    except Exception as e:
        return "error", assert_one_error_line(e, str(path))


def _same_or_one_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        good, bad = Path(d) / "good.jsonl", Path(d) / "bad.jsonl"
        good.write_bytes(_lines(HEADER, CHUNKS))
        bad.write_bytes(data)
        want = _read(good, use_sidecar=False)
        assert want[0] == "ok", want
        got = _read(bad, use_sidecar=False)
        assert got[0] == "error" or got == want, got


@FUZZ
@given(data=st.data(), which=st.sampled_from(["header", "chunk0", "chunk1"]))
def test_retyped_fields_read_the_same_or_fail_with_one_line(data: st.DataObject, which: str) -> None:
    docs: list[Any] = [HEADER, *CHUNKS]
    i = ["header", "chunk0", "chunk1"].index(which)
    _, docs[i] = data.draw(retyped(docs[i]))
    _same_or_one_error(_lines(docs[0], docs[1:]))


@FUZZ
@given(data=st.data())
def test_corrupted_bytes_read_the_same_or_fail_with_one_line(data: st.DataObject) -> None:
    _same_or_one_error(data.draw(corrupted_bytes(_lines(HEADER, CHUNKS))))


@FUZZ
@given(data=st.data(), how=st.sampled_from(["retype", "bytes", "value"]))
def test_a_corrupt_sidecar_index_is_rebuilt_never_trusted(data: st.DataObject, how: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.jsonl"
        path.write_bytes(_lines(HEADER, CHUNKS))
        want = _read(path, use_sidecar=True)  # writes the sidecar
        side = path.with_name(path.name + ".idx.json")
        raw = side.read_bytes()
        doc = json.loads(raw)
        if how == "bytes":
            side.write_bytes(data.draw(corrupted_bytes(raw)))
        elif how == "retype":
            side.write_text(json.dumps(data.draw(retyped(doc))[1]))
        else:  # a plausible value of the right type: an offset, a line, a meta field moved by one
            k = data.draw(st.integers(0, len(doc["entries"]) - 1))
            f = data.draw(st.integers(0, 3))
            doc["entries"][k][f] += data.draw(st.sampled_from([-1, 1]))
            side.write_text(json.dumps(doc))
        assert _read(path, use_sidecar=True) == want


@pytest.mark.parametrize(("mutate", "needle"), [
    (lambda c: c["inputs"]["length"].update(shape=[True]), "shape must be a list"),
    (lambda c: c["inputs"]["length"].update(dtype=["int64"]), "unknown dtype"),
    (lambda c: c["inputs"]["length"].update(shape=[2**32, 2**32], data=[]), "shape must be a list"),
    (lambda c: c["inputs"]["length"].update(shape=[2**20, 2**20, 2**20]), "bytes"),
    (lambda c: c["inputs"]["length"].update(data=[3.5]), "non-integer"),
    (lambda c: c["inputs"]["length"].update(data=[True]), "data must be a list of numbers"),
    (lambda c: c["inputs"]["length"].update(data_b64="AAAAAAAAAAA="), "both data_b64 and data"),
    (lambda c: c["outputs"].update(lst=[[1, True], [2, 3]]), "mixes booleans"),
    (lambda c: c["outputs"].update(lst=[2**63]), "int64's range"),
    (lambda c: c["meta"].update(has_caches="false"), "meta.has_caches must be true or false"),
    (lambda c: c.update(chunk=True), "chunk id must be an integer"),
])
def test_each_strict_field_names_its_defect(tmp_path: Path, mutate: Any, needle: str) -> None:
    """Cases the fuzzing found: each read a corrupted value silently or raised another exception type before."""
    chunks = json.loads(json.dumps(CHUNKS))
    mutate(chunks[1])
    path = tmp_path / "r.jsonl"
    path.write_bytes(_lines(HEADER, chunks))
    with pytest.raises(StreamparityError) as info:
        ref = ReferenceFile(path, use_sidecar=False)
        ref.read(1)
    msg = assert_one_error_line(info.value, str(path))
    assert needle in msg, msg


@pytest.mark.parametrize(("data", "needle"), [
    (b"\xef\xbb\xbf", "byte-order mark"),
    (b'{"streamparity_reference": true, "num_chunks": 2}\n', "format version true"),
    (b'{"streamparity_reference": 1, "num_chunks": 2, "num_chunks": 2}\n', "duplicate key"),
])
def test_header_encoding_and_type(tmp_path: Path, data: bytes, needle: str) -> None:
    path = tmp_path / "r.jsonl"
    body = _lines(HEADER, CHUNKS)
    path.write_bytes(data + body if data.startswith(b"\xef") else data + body.split(b"\n", 1)[1])
    with pytest.raises(StreamparityError) as info:
        ReferenceFile(path, use_sidecar=False)
    assert needle in assert_one_error_line(info.value, str(path))
