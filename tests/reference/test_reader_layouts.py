"""Issue 13: any writer's layout (the checklist project's: default separators, chunk_idx/metadata, metadata last;
other key orders) is indexed and read on the fast path: json only ever sees the lines without their payloads."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamparity.reference import fastparse
from streamparity.reference.reader import ReferenceFile


def _t(a: np.ndarray, order: str) -> dict[str, Any]:
    d = {"dtype": str(a.dtype), "shape": list(a.shape), "data_b64": base64.b64encode(a.tobytes()).decode()}
    return {k: d[k] for k in order.split(",")}


def _line(k: int, layout: str) -> bytes:
    rng = np.random.default_rng(k)
    cache = rng.standard_normal((1, 4, 64, 256)).astype(np.float32)  # 256 KiB: big next to any skeleton
    order = "data_b64,shape,dtype" if layout == "payload_first" else "dtype,shape,data_b64"
    ins = {"audio_signal": _t(rng.standard_normal((1, 8, 5)).astype(np.float32), order),
           "cache_last_channel": _t(cache, order), "length": _t(np.array([5]), order)}
    outs = {"encoder_output": _t(rng.standard_normal((1, 8, 3)).astype(np.float32), order),
            "cache_last_channel_out": _t(cache, order)}
    if layout == "checklist":  # its writer: json.dumps defaults, metadata last
        return json.dumps({"chunk_idx": k, "inputs": ins, "outputs": outs,
                           "metadata": {"chunk_len": 5, "timing_ms": {"step": 1.5}}}).encode()
    if layout == "meta_last":
        return json.dumps({"chunk": k, "outputs": outs, "inputs": ins, "meta": {"has_caches": True}}).encode()
    return json.dumps({"chunk": k, "meta": {"has_caches": True}, "inputs": ins, "outputs": outs}).encode()


@pytest.mark.parametrize("layout", ["checklist", "meta_last", "payload_first", "default_separators"])
def test_every_layout_is_indexed_and_read_without_json_seeing_a_payload(tmp_path: Path, layout: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ref.jsonl"
    lines = [_line(k, layout) for k in range(3)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    seen: list[int] = []
    real = json.loads

    def loads(s: Any, *a: Any, **kw: Any) -> Any:
        seen.append(len(s))
        return real(s, *a, **kw)

    monkeypatch.setattr(json, "loads", loads)

    def no_fallback(*a: Any, **kw: Any) -> Any:
        raise AssertionError("the fast path fell back to json")

    monkeypatch.setattr(fastparse, "parse_chunk_json", no_fallback)
    ref = ReferenceFile(path, use_sidecar=False)
    assert ref.chunk_ids == [0, 1, 2]
    if layout == "checklist":
        assert ref.meta(1)["chunk_len"] == 5
    for k in range(3):
        rec = ref.read(k)
        want = real(lines[k])
        for section, got in (("inputs", rec.inputs), ("outputs", rec.outputs)):
            assert set(got) == set(want[section])
            for name, t in want[section].items():
                arr = np.frombuffer(base64.b64decode(t["data_b64"]), dtype=t["dtype"]).reshape(t["shape"])
                np.testing.assert_array_equal(got[name], arr)
    assert seen and max(seen) < 4096, f"json parsed {max(seen)} bytes at once (lines are {len(lines[0])})"
