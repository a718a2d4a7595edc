"""Issue 13: a reader that needs only some inputs (the closed loop: audio and length) decodes only those; the
others (a full-size line's input caches, half its bytes) are neither decoded nor checked, on the fast path and
on json's, and a record decoded in part never stands in for a whole one."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamparity.errors import ReferenceFormatError
from streamparity.reference import fastparse
from streamparity.reference.reader import ReferenceFile

WANT = ("audio_signal", "length")


def _t(a: np.ndarray) -> dict[str, Any]:
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data_b64": base64.b64encode(a.tobytes()).decode()}


def _line(k: int, *, bad_cache: bool = False, plain_lists: bool = False) -> bytes:
    rng = np.random.default_rng(k)
    cache = _t(rng.standard_normal((1, 2, 8, 4)).astype(np.float32))
    if bad_cache:
        cache["data_b64"] = "!!not base64!!"
    audio = rng.standard_normal((1, 4, 3)).astype(np.float32)
    ins = {"audio_signal": audio.tolist() if plain_lists else _t(audio), "cache_last_channel": cache,
           "length": _t(np.array([3]))}
    outs = {"outputs": _t(rng.standard_normal((1, 4, 2)).astype(np.float32)),
            "cache_last_channel_next": _t(rng.standard_normal((1, 2, 8, 4)).astype(np.float32))}
    return json.dumps({"chunk": k, "meta": {"has_caches": True}, "inputs": ins, "outputs": outs}).encode()


def _ref(tmp_path: Path, *lines: bytes) -> ReferenceFile:
    path = tmp_path / "ref.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return ReferenceFile(path, use_sidecar=False)


@pytest.mark.parametrize("plain_lists", [False, True], ids=["fast_path", "json_path"])
def test_inputs_not_asked_for_are_not_decoded_nor_checked(tmp_path: Path, plain_lists: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ref = _ref(tmp_path, _line(0, bad_cache=True, plain_lists=plain_lists))
    if plain_lists:  # a list tensor is the json path's: bad base64 elsewhere sends the line there anyway
        monkeypatch.setattr(fastparse, "_parse_fast", lambda *a: (_ for _ in ()).throw(fastparse._Fallback()))
    rec = ref.read(0, inputs=WANT)
    assert sorted(rec.inputs) == ["audio_signal", "length"]
    assert sorted(rec.outputs) == ["cache_last_channel_next", "outputs"]
    np.testing.assert_array_equal(rec.inputs["length"], [3])
    with pytest.raises(ReferenceFormatError) as err:  # asked for, the same payload is an error naming it
        ref.read(0)
    assert "inputs.cache_last_channel" in str(err.value) and "chunk 0" in str(err.value)


def test_the_line_is_still_parsed_whole(tmp_path: Path) -> None:
    """Skipping a payload skips its decoding, not the line's JSON: a broken line is an error, asked for or not."""
    line = _line(0)
    ref = _ref(tmp_path, line[:-1] + b"]")
    with pytest.raises(ReferenceFormatError, match="not valid JSON"):
        ref.read(0, inputs=WANT)


def test_a_record_read_in_part_never_stands_in_for_a_whole_one(tmp_path: Path) -> None:
    ref = _ref(tmp_path, _line(0), _line(1))
    part = ref.read(0, inputs=WANT)
    assert "cache_last_channel" not in part.inputs
    whole = ref.read(0)
    assert sorted(whole.inputs) == ["audio_signal", "cache_last_channel", "length"]
    again = ref.read(0, inputs=WANT)  # the whole record answers a part, and stays whole
    assert sorted(again.inputs) == ["audio_signal", "length"]
    assert sorted(ref.read(0).inputs) == ["audio_signal", "cache_last_channel", "length"]
    np.testing.assert_array_equal(again.inputs["audio_signal"], whole.inputs["audio_signal"])


def test_iterating_in_part_reads_ahead_the_same_records(tmp_path: Path) -> None:
    big = [_line(k) for k in range(4)]
    ref = _ref(tmp_path, *big)
    got = list(ref.iter_chunks([0, 1, 2, 3], inputs=WANT))
    assert [r.chunk for r in got] == [0, 1, 2, 3]
    assert all(sorted(r.inputs) == ["audio_signal", "length"] for r in got)
    for r in got:
        np.testing.assert_array_equal(r.outputs["outputs"], ref.read(r.chunk).outputs["outputs"])


@pytest.mark.parametrize("where", [0, 5, fastparse._NEAR - 1, fastparse._NEAR, fastparse._NEAR + 1,
                                   fastparse._NEAR + fastparse._WINDOW - 1, fastparse._NEAR + fastparse._WINDOW,
                                   3 * fastparse._WINDOW + 17, None])
@pytest.mark.parametrize("start", [0, 3])
def test_the_closing_quote_is_found_where_bytes_find_finds_it(where: int | None, start: int) -> None:
    """The search that leaves Python's lock free finds exactly the first quote, as bytes.find (or none)."""
    n = 4 * fastparse._WINDOW
    line = bytearray(b"A" * n)
    if where is not None:
        line[where] = 0x22
        line[min(n - 1, where + 1000)] = 0x22  # a later quote is not the first
    assert fastparse._closing_quote(line, start) == line.find(b'"', start)
    assert fastparse._closing_quote(bytes(line), start) == bytes(line).find(b'"', start)
    line.extend(b"xx")  # no view of it is left behind: a reused read buffer can be resized


@pytest.mark.parametrize("nbytes", [1, 2, 3, 1000, 3 * fastparse._SLICE // 4 - 1, 3 * fastparse._SLICE // 4,
                                    3 * fastparse._SLICE // 4 + 1, 5 * fastparse._SLICE + 7])
def test_a_large_payload_decodes_in_slices_to_the_same_bytes(nbytes: int) -> None:
    raw = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8).tobytes()
    text = memoryview(base64.b64encode(raw))
    got = fastparse._decode_payload(text, nbytes)
    assert got is not None and got.tobytes() == raw
    assert fastparse._decode_payload(text, nbytes + 1) is None  # not the byte count the layout says


def test_padding_inside_a_large_payload_is_refused() -> None:
    """'=' ends a payload only: one at a slice boundary (valid there on its own) is not accepted."""
    first = base64.b64encode(b"\x01" * (3 * fastparse._SLICE // 4 - 1))  # ends with '=' at the boundary
    assert len(first) == fastparse._SLICE and first.endswith(b"=")
    text = memoryview(first + base64.b64encode(b"\x02" * 30))
    assert fastparse._decode_payload(text, 3 * fastparse._SLICE // 4 - 1 + 30) is None


def _line_with_a_lying_layout(wanted: bool) -> bytes:
    """A cache whose dtype and shape promise 12 bytes, where the line has 4 and a quote stands at the 16th
    character: the predicted span holds quotes, so the line goes to the json path."""
    lying = '{"dtype": "float32", "shape": [3], "data_b64": "AAAA", "kkkkkkkk": 1}'
    start = lying.index('"AAAA') + 1
    assert lying[start + 16] == '"'
    big = _t(np.zeros(70_000, dtype=np.float32))  # a line longer than the search's first stretch
    return ('{"chunk": 0, "meta": {"has_caches": true}, "inputs": {"audio_signal": ' + json.dumps(big)
            + ', "cache_last_channel": ' + lying + ', "length": ' + json.dumps(_t(np.array([3])))
            + '}, "outputs": {"outputs": ' + json.dumps(big) + "}}").encode()


@pytest.mark.parametrize("wanted", [True, False])
def test_a_payload_end_predicted_from_its_layout_is_verified(wanted: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    line = _line_with_a_lying_layout(wanted)
    monkeypatch.setattr(fastparse, "_NEAR", 16)  # predict even for this short payload
    want = None if wanted else WANT
    fell_back: list[bool] = []
    real = fastparse.parse_chunk_json

    def json_path(*a: Any, **kw: Any) -> Any:
        fell_back.append(True)
        return real(*a, **kw)

    monkeypatch.setattr(fastparse, "parse_chunk_json", json_path)
    if wanted:  # 4 bytes where the layout says 12: the json path names the field
        with pytest.raises(ReferenceFormatError, match="cache_last_channel"):
            fastparse.parse_chunk_line(line, file="f", line_no=1, chunk=0, inputs=want)
    else:
        ins, _ = fastparse.parse_chunk_line(line, file="f", line_no=1, chunk=0, inputs=want)
        assert sorted(ins) == ["audio_signal", "length"]
    assert fell_back == [True]


@pytest.mark.parametrize("libc", [True, False])
def test_the_quote_search_is_the_same_with_and_without_the_c_library(libc: bool,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if not libc:
        monkeypatch.setattr(fastparse, "_memchr", None)
    elif fastparse._memchr is None:
        pytest.skip("the C library's memchr cannot be loaded here")
    line = bytearray(b"B" * (3 * fastparse._WINDOW))
    for where in (fastparse._NEAR + 5, fastparse._WINDOW + 3, len(line) - 1):
        line[where] = 0x22
        assert fastparse._closing_quote(line, 2) == line.find(b'"', 2) == where
        line[where] = 0x42
    assert fastparse._closing_quote(line, 2) == -1
