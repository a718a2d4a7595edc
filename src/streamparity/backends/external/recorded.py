"""Recorded outputs judged like a runtime: the ``rec`` backend (``--recorded=NAME:PRECISION=PATH``).

A recording is a folder with ``functional.jsonl`` and ``closed_loop.jsonl`` in the reference JSONL format
(written with :class:`~streamparity.reference.writer.ReferenceWriter` by :func:`record`): per chunk the
inputs the runtime was given (in closed loop: audio, length and the runtime's own caches and cache length
fed to that step) and the outputs it produced.  Judging a recording never runs anything: functional chunks
are found by the digest of their inputs, and the closed loop replays the recorded steps, checking that the
audio is the reference's.  Its ids are ``rec-NAME-PRECISION`` and describe() says ``recording: true``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from streamparity.backends.base import Backend, Stream
from streamparity.contract.model import (
    ROLE_AUDIO,
    ROLE_CACHE_CHANNEL,
    ROLE_CACHE_LEN,
    ROLE_CACHE_TIME,
    ROLE_LENGTH,
    Contract,
)
from streamparity.drivers.closed_loop import broke_at, broken_later, initial_state
from streamparity.errors import StreamparityError
from streamparity.reference.reader import ChunkRecord, ReferenceFile
from streamparity.reference.writer import ReferenceWriter

FUNCTIONAL_FILE = "functional.jsonl"
CLOSED_LOOP_FILE = "closed_loop.jsonl"


def digest(contract: Contract, feeds: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in contract.input_names:
        a = np.ascontiguousarray(feeds[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def record(backend: Backend, contract: Contract, ref: ReferenceFile, out_dir: Path,
           functional_chunks: list[int], closed_loop_upto: int) -> tuple[int, int]:
    """Run `backend` in both modes over `ref` and write the recording; returns (functional, closed-loop) counts.
    A chunk that raised is recorded with meta ``error`` and no outputs (a closed loop records none after it)."""
    head = {"recording": {"backend": backend.id, "describe": _jsonable(backend.describe()),
                          "reference": str(ref.path), "contract": contract.name}}
    with ReferenceWriter(out_dir / FUNCTIONAL_FILE, {**head, "mode": "functional"}, len(functional_chunks)) as w:
        for k in functional_chunks:
            rec = ref.read(k)
            feeds = {n: rec.inputs[n] for n in contract.input_names}
            try:
                w.write(k, {"has_caches": True}, feeds, backend.run(feeds))
            except Exception as e:  # a runtime fault is recorded, as it would be judged
                w.write(k, {"has_caches": True, "error": f"{type(e).__name__}: {e}"}, feeds, {})
    ids = [k for k in ref.chunk_ids if k <= closed_loop_upto]
    audio = contract.input_by_role(ROLE_AUDIO).name
    length = contract.input_by_role(ROLE_LENGTH).name
    len_name = contract.input_by_role(ROLE_CACHE_LEN).name
    with ReferenceWriter(out_dir / CLOSED_LOOP_FILE, {**head, "mode": "closed_loop"}, len(ids)) as w:
        stream = backend.open_stream(initial_state(contract, ref.read(ids[0])), fetch_caches=True)
        not_run: str | None = None  # once the stream broke: what each later chunk says
        try:
            for rec in _upto(ref, ids[-1]):
                feeds = {audio: rec.inputs[audio], length: rec.inputs[length]}
                error = not_run
                if not_run is None:
                    snap = stream.state_snapshot()
                    try:
                        out = stream.step(feeds[audio], feeds[length])
                        feeds.update(snap)
                        feeds[len_name] = stream.last_cache_len_in
                        w.write(rec.chunk, {"has_caches": True}, feeds, out)
                        continue
                    except Exception as e:
                        error = broke_at(rec.chunk, e)
                        not_run = broken_later(rec.chunk)
                w.write(rec.chunk, {"has_caches": False, "error": error}, feeds, {})
        finally:
            stream.close()
    return len(functional_chunks), len(ids)


def _upto(ref: ReferenceFile, last: int) -> Iterator[ChunkRecord]:
    for rec in ref:
        if rec.chunk > last:
            break
        yield rec


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    import json

    return dict(json.loads(json.dumps(dict(d), default=str)))


class RecordedBackend(Backend):
    kind = "rec"

    def __init__(self, contract: Contract, name: str, precision: str, path: Path) -> None:
        super().__init__(contract, precision, name)
        self.path = path
        files = [path / FUNCTIONAL_FILE, path / CLOSED_LOOP_FILE]
        for f in files:
            if not f.is_file():
                raise StreamparityError("not a recording: file missing (record one with `streamparity record`)",
                                        file=str(f), field="--recorded")
        self.functional = ReferenceFile(files[0])
        self.closed_loop = ReferenceFile(files[1])
        self._by_digest: dict[str, int] | None = None

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._by_digest is None:
            self._by_digest = {digest(self.contract, r.inputs): r.chunk for r in self.functional}
        k = self._by_digest.get(digest(self.contract, feeds))
        if k is None:
            raise StreamparityError("the recording holds no functional chunk with these inputs (recorded on another "
                                    "reference?)", file=str(self.functional.path))
        rec = self.functional.read(k)
        if rec.meta.get("error"):
            raise RuntimeError(f"recorded runtime error: {rec.meta['error']}")
        return dict(rec.outputs)

    def open_stream(self, initial: Mapping[str, np.ndarray], *, fetch_caches: bool = True) -> Stream:
        return RecordedStream(self, initial)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(recording=True, label=f"RECORDING (not a live runtime) from {self.path}", path=str(self.path),
                 recorded=dict(self.closed_loop.header.get("recording", {})))
        return d


class RecordedStream(Stream):
    def __init__(self, backend: RecordedBackend, initial: Mapping[str, np.ndarray]) -> None:
        c = backend.contract
        self.backend = backend
        self.audio = c.input_by_role(ROLE_AUDIO).name
        self.len_name = c.input_by_role(ROLE_CACHE_LEN).name
        self.cache_names = [c.input_by_role(r).name for r in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME, ROLE_CACHE_LEN)]
        self.records = iter(backend.closed_loop)
        self.last_cache_len_in = np.asarray(initial[self.len_name]).copy()
        self.next: ChunkRecord | None = next(self.records, None)
        if self.next is not None and all(n in self.next.inputs for n in self.cache_names):
            for n in self.cache_names:
                if not np.array_equal(self.next.inputs[n], initial[n]):
                    raise StreamparityError(f"the recorded stream started from other initial {n!r}",
                                            file=str(backend.closed_loop.path), chunk=self.next.chunk, field=n)

    def state_snapshot(self) -> dict[str, np.ndarray]:
        if self.next is None:
            return {}
        return {n: self.next.inputs[n] for n in self.cache_names if n in self.next.inputs}

    def step(self, audio: np.ndarray, length: np.ndarray, *,
             fetch_caches: bool | None = None) -> dict[str, np.ndarray]:
        rec = self.next  # a recording returns what it recorded, whatever was asked
        if rec is None:
            raise RuntimeError("the recording's closed loop ends before this chunk")
        self.next = next(self.records, None)
        if rec.meta.get("error"):
            raise RuntimeError(f"recorded runtime error: {rec.meta['error']}")
        if not np.array_equal(rec.inputs[self.audio], audio):
            raise StreamparityError("recorded audio differs from the reference's (recorded on another reference?)",
                                    file=str(self.backend.closed_loop.path), chunk=rec.chunk, field=self.audio)
        self.last_cache_len_in = np.asarray(rec.inputs[self.len_name]).copy()
        return dict(rec.outputs)
