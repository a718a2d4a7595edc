"""Issue 13: the fast reader on full-size lines: the closing quote searched without holding Python's lock (the C
library's memchr, or numpy steps), a payload's end predicted from its layout and always verified, and large payloads
decoded in slices to exactly the bytes a whole decode gives."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from streamparity.errors import ReferenceFormatError
from streamparity.reference import fastparse

WANT = ("audio_signal", "length")


def _t(a: np.ndarray) -> dict[str, Any]:
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data_b64": base64.b64encode(a.tobytes()).decode()}


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
