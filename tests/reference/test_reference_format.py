"""Reference JSONL: writer/reader round trip, random access by byte offset, truncation and stale indexes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from streamparity.errors import ReferenceFormatError
from streamparity.reference.reader import ReferenceFile
from streamparity.reference.writer import ReferenceWriter


def _write(path, n=5, **kw):
    rng = np.random.default_rng(0)
    with ReferenceWriter(path, {"contract": "t"}, n) as w:
        for k in range(n):
            w.write(k, {"has_caches": True, "seed": 1}, {"x": rng.standard_normal((2, 3)).astype(np.float32),
                                                         "n": np.array([k], np.int64)},
                    {"y": rng.standard_normal((4,)).astype(np.float16)})
    return path


def test_round_trip_and_random_access(tmp_path):
    p = _write(tmp_path / "r.jsonl")
    ref = ReferenceFile(p)
    assert len(ref) == 5 and ref.header["num_chunks"] == 5
    rec = ref.read(3)
    assert rec.inputs["x"].dtype == np.float32 and rec.inputs["x"].shape == (2, 3)
    assert rec.outputs["y"].dtype == np.float16
    assert int(rec.inputs["n"][0]) == 3
    assert [r.chunk for r in ref] == [0, 1, 2, 3, 4]


def test_chunk_k_does_not_parse_earlier_chunks(tmp_path):
    p = _write(tmp_path / "r.jsonl")
    ref = ReferenceFile(p)
    lines = p.read_bytes().split(b"\n")
    # corrupt chunk 1's payload in place (same length): chunk 4 must still read
    lines[2] = lines[2].replace(b'"data_b64": "', b'"data_b64": "!', 1)[:-1] + lines[2][-1:]
    p.write_bytes(b"\n".join(lines))
    ref = ReferenceFile(p, use_sidecar=False)
    assert int(ref.read(4).inputs["n"][0]) == 4
    with pytest.raises(ReferenceFormatError, match=r"r.jsonl:3, chunk 1, field 'inputs.x'.*base64"):
        ref.read(1)


def test_plain_list_tensors(tmp_path):
    p = tmp_path / "lists.jsonl"
    p.write_text(json.dumps({"chunk": 0, "meta": {}, "inputs": {"a": [[1.0, 2.0]]}, "outputs": {"b": [3]}}) + "\n")
    rec = ReferenceFile(p).read(0)
    assert rec.inputs["a"].shape == (1, 2) and int(rec.outputs["b"][0]) == 3


def test_truncated_last_line_names_the_line(tmp_path):
    p = _write(tmp_path / "r.jsonl")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 40])
    with pytest.raises(ReferenceFormatError, match=r"r.jsonl:6: last line is incomplete"):
        ReferenceFile(p)


def test_missing_chunks_against_header(tmp_path):
    p = _write(tmp_path / "r.jsonl")
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(b"".join(lines[:-1]))
    with pytest.raises(ReferenceFormatError, match="promises 5 chunks but the file holds 4"):
        ReferenceFile(p)


def test_non_consecutive_chunks(tmp_path):
    p = _write(tmp_path / "r.jsonl")
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(b"".join(lines[:2] + lines[3:]))
    with pytest.raises(ReferenceFormatError, match="0 is followed by 2"):
        ReferenceFile(p)


def test_stale_sidecar_index_is_rebuilt(tmp_path):
    p = _write(tmp_path / "r.jsonl")
    ReferenceFile(p)
    assert (tmp_path / "r.jsonl.idx.json").is_file()
    _write(p, n=3)
    assert len(ReferenceFile(p)) == 3
    (tmp_path / "r.jsonl.idx.json").write_text("{garbage")
    assert len(ReferenceFile(p)) == 3


def test_index_that_no_longer_matches_the_lines_is_rebuilt_not_trusted(tmp_path):
    """A change the index key cannot see (same size, same mtime, same first and last 64 KiB) must not serve
    another chunk's data: each read checks that its line holds the chunk it was asked for."""
    import os

    p = tmp_path / "r.jsonl"
    rng = np.random.default_rng(0)
    with ReferenceWriter(p, {}, 6) as w:  # ~100 KB lines: chunks 2 and 3 lie outside the key's head and tail
        for k in range(6):
            w.write(k, {}, {"x": rng.standard_normal((200, 100)).astype(np.float32)}, {})
    assert ReferenceFile(p).read(3).chunk == 3
    st = p.stat()
    lines = p.read_bytes().splitlines(keepends=True)  # header, then chunks 0..5
    assert len(lines[3]) == len(lines[4])  # chunks 2 and 3: equal length, so the byte offsets still fit
    lines[3], lines[4] = lines[4], lines[3]
    p.write_bytes(b"".join(lines))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    # the sidecar still matches the key (size, mtime, first and last 64 KiB), but not the lines' own chunk ids:
    # opening the file rebuilds the index from the lines, which finds them out of order
    with pytest.raises(ReferenceFormatError, match="chunks are not consecutive"):
        ReferenceFile(p)


def test_interrupted_writer_leaves_nothing(tmp_path):
    p = tmp_path / "r.jsonl"
    with pytest.raises(RuntimeError), ReferenceWriter(p, {}, 3) as w:
        w.write(0, {}, {"x": np.zeros(2, np.float32)}, {})
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_short_files(tmp_path):
    p = tmp_path / "r.jsonl"
    with pytest.raises(ValueError, match="wrote 1 chunks, header promised 3"), ReferenceWriter(p, {}, 3) as w:
        w.write(0, {}, {"x": np.zeros(2, np.float32)}, {})
        w.close()
    assert not p.exists()


@pytest.mark.parametrize("block_size", [1, 7, 64, 1 << 20])
def test_line_scanner_offsets_any_block_size(tmp_path, block_size):
    from streamparity.reference.reader import _PREFIX, _scan_lines

    lines = [b'{"a": 1}\n', b"\n", b"x" * (_PREFIX + 10) + b"\n", b"tail-without-newline"]
    p = tmp_path / "lines.jsonl"
    p.write_bytes(b"".join(lines))
    got = list(_scan_lines(p, block_size=block_size))
    offset = 0
    for (_lineno, off, length, head, complete), line in zip(got, lines, strict=True):
        assert (off, length) == (offset, len(line))
        assert head == line[:_PREFIX]
        assert complete == line.endswith(b"\n")
        offset += len(line)
    assert [g[0] for g in got] == [1, 2, 3, 4]


def test_plain_float_lists_read_as_float32(tmp_path):
    """A foreign writer's plain lists: floats become float32 (what the contract and NeMo's export use), not
    float64, so a reference of plain lists passes the contract's dtype checks; values float32 cannot hold
    are refused instead of becoming inf."""
    from streamparity.reference.fastparse import parse_chunk_line

    line = json.dumps({"chunk": 0, "meta": {}, "inputs": {"x": [[0.5, -1.25], [3.0, 1e-3]], "n": [2]},
                       "outputs": {}}).encode()
    ins, _ = parse_chunk_line(line, file="f.jsonl", line_no=2, chunk=0)
    assert ins["x"].dtype == np.float32 and ins["x"].shape == (2, 2) and ins["n"].dtype == np.int64
    big = json.dumps({"chunk": 0, "meta": {}, "inputs": {"x": [1e300]}, "outputs": {}}).encode()
    with pytest.raises(ReferenceFormatError, match=r"f.jsonl:2, chunk 0, field 'inputs.x': .*float32's range"):
        parse_chunk_line(big, file="f.jsonl", line_no=2, chunk=0)


@pytest.mark.parametrize(("old", "new", "needle"), [
    (b'"streamparity_reference": 1', b'"streamparity_reference": 99', "format version 99 is not one"),
    (b'"num_chunks": 5', b'"num_chunks": "five"',
     "num_chunks must be a non-negative integer (at most 2147483647), got \"five\""),
    (b'{"chunk": 2,', b'{"chunk": "2",', "field 'chunk': chunk id must be an integer, got \"2\""),
], ids=["header-version", "header-num-chunks", "chunk-id-string"])
def test_header_and_chunk_id_are_validated(tmp_path, old, new, needle):
    p = _write(tmp_path / "r.jsonl")
    data = p.read_bytes()
    assert old in data, data[:300]
    p.write_bytes(data.replace(old, new, 1))
    with pytest.raises(ReferenceFormatError, match=re.escape(needle)):
        ReferenceFile(p, use_sidecar=False)


def test_a_kept_error_does_not_pin_the_reused_read_buffer(tmp_path):
    """Lines of 1 MiB and more are read into one reused buffer; an error raised while parsing one (and kept,
    as pytest keeps the last one) must not make the next read fail with BufferError."""
    p = tmp_path / "big.jsonl"
    rng = np.random.default_rng(1)
    with ReferenceWriter(p, {}, 2) as w:
        w.write(0, {}, {"x": rng.standard_normal(400_000).astype(np.float32)}, {})
        w.write(1, {}, {"x": rng.standard_normal(410_000).astype(np.float32)}, {})
    data = bytearray(p.read_bytes())
    first = data.index(b'"data_b64": "') + len(b'"data_b64": "') + 100
    data[first] = ord("*")  # not base64: chunk 0 cannot be decoded
    p.write_bytes(bytes(data))
    ref = ReferenceFile(p, use_sidecar=False)
    try:
        ref.read(0)
    except ReferenceFormatError as e:
        kept = e  # noqa: F841 - held on purpose, with its traceback
    assert ref.read(1).inputs["x"].shape == (410_000,)
