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
