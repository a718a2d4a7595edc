"""Issue 13: a reference with large lines is read ahead in threads; records, order and errors are unchanged."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from streamparity.errors import ReferenceFormatError
from streamparity.reference.prefetch import prefetched
from streamparity.reference.reader import ReferenceFile
from streamparity.reference.writer import ReferenceWriter
from tests.conftest import TINY_REFERENCE

BIG = (1, 4, 256, 256)  # 1 MiB of float32: a line the reader reads ahead


def _write(path: Path, n: int, big: int | None = None) -> list[np.ndarray]:
    """n chunks, the first `big` (default: all) with a 1 MiB tensor, the rest with a small one."""
    rng = np.random.default_rng(1)
    caches = [rng.standard_normal(BIG if k < (n if big is None else big) else (1, 4)).astype(np.float32)
              for k in range(n)]
    with ReferenceWriter(path, {"contract": "test"}, n) as w:
        for k, c in enumerate(caches):
            w.write(k, {"frames": [k, k + 1], "seed": 1, "has_caches": True},
                    {"x": np.full((1, 2), k, np.float32)}, {"cache": c})
    return caches


def _threads_reading(ref: ReferenceFile) -> dict[int, str]:
    """Chunk -> the name of the thread that last read it, filled in as `ref` is read."""
    where: dict[int, str] = {}
    real = ref.read

    def spy(k: int, **how):  # type: ignore[no-untyped-def]
        where[k] = threading.current_thread().name
        return real(k, **how)

    ref.read = spy  # type: ignore[method-assign]
    return where


def test_large_lines_are_read_ahead_in_order(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    caches = _write(path, 9)
    ref = ReferenceFile(path)
    assert ref.read_ahead and not ReferenceFile(TINY_REFERENCE).read_ahead
    seen = []
    names = set()
    real = ref.read

    def spy(k: int):  # type: ignore[no-untyped-def]
        names.add(threading.current_thread().name)
        return real(k)

    ref.read = spy  # type: ignore[method-assign]
    for rec, want in zip(ref, caches, strict=True):
        seen.append(rec.chunk)
        np.testing.assert_array_equal(rec.outputs["cache"], want)
        assert not rec.outputs["cache"].flags.writeable
    assert seen == list(range(9))
    assert all(n.startswith("streamparity-read") for n in names)


def test_only_large_lines_are_read_in_threads(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    caches = _write(path, 10, big=4)
    ref = ReferenceFile(path)
    where = _threads_reading(ref)
    for rec, want in zip(ref, caches, strict=True):
        np.testing.assert_array_equal(rec.outputs["cache"], want)
    me = threading.current_thread().name
    assert [where[k] != me for k in range(10)] == [True] * 4 + [False] * 6


def test_every_line_reads_small_lines_in_threads_too(tmp_path: Path) -> None:
    """The closed loop beside a device backend: its own thread waits on the device, so small lines are parsed
    ahead too; and a second pass reuses the first one's read buffers."""
    path = tmp_path / "mixed.jsonl"
    caches = _write(path, 10, big=4)
    ref = ReferenceFile(path, cache_bytes=0)  # every pass reads the file
    where = _threads_reading(ref)
    for rec, want in zip(ref.iter_chunks(ref.chunk_ids, every_line=True), caches, strict=True):
        np.testing.assert_array_equal(rec.outputs["cache"], want)
    assert all(where[k].startswith("streamparity-read") for k in range(10))
    kept = {id(b) for b in ref._buffers._free}
    assert kept  # the large lines' buffers outlive the threads
    where.clear()
    for rec, want in zip(ref.iter_chunks([0, 1, 2, 3]), caches, strict=False):
        np.testing.assert_array_equal(rec.outputs["cache"], want)
    assert sorted(where) == [0, 1, 2, 3]  # read again, into the same buffers
    assert {id(b) for b in ref._buffers._free} <= kept


def test_an_error_is_raised_at_its_chunk_and_not_before(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    _write(path, 6)
    raw = bytearray(path.read_bytes())
    lines = raw.split(b"\n")
    bad = lines[4]  # chunk 3 (after the header): a payload byte that is not base64, same length
    at = bad.index(b'"data_b64": "') + 20 if b'"data_b64": "' in bad else bad.index(b'"data_b64":"') + 20
    bad[at:at + 1] = b"!"
    lines[4] = bad
    path.write_bytes(b"\n".join(lines))
    got = []
    with pytest.raises(ReferenceFormatError, match="chunk 3"):
        for rec in ReferenceFile(path):
            got.append(rec.chunk)
    assert got == [0, 1, 2]


def test_leaving_early_stops_the_reads() -> None:
    """Reads queued behind a running one never start once the caller leaves; the running one is waited for."""
    started: list[int] = []
    gate, running = threading.Event(), threading.Event()

    def read(k: int) -> int:
        started.append(k)
        if k:
            running.set()
            gate.wait(10)  # read 1 runs while the caller leaves; reads 2 and 3 wait in the queue
        return k

    it = prefetched(read, list(range(100)), depth=4, workers=1)
    assert next(it) == 0
    assert running.wait(10)  # read 1 has started (the worker may not have picked it up when chunk 0 came back)
    threading.Timer(0.3, gate.set).start()
    it.close()  # cancels the queued reads, then waits for read 1 (released by the timer)
    assert started == [0, 1]


def test_reads_from_several_threads_at_once_agree(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    caches = _write(path, 6)
    ref = ReferenceFile(path, cache_bytes=0)
    errors: list[BaseException] = []

    def worker(order: list[int]) -> None:
        try:
            for k in order * 3:
                np.testing.assert_array_equal(ref.read(k).outputs["cache"], caches[k])
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(o,)) for o in ([0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_reading_ahead_stops_at_the_last_chunk_asked_for(tmp_path: Path) -> None:
    """A closed loop up to chunk 2 (repro, --chunks) reads no full-size line past it."""
    path = tmp_path / "big.jsonl"
    _write(path, 9)
    ref = ReferenceFile(path)
    asked: list[int] = []
    real = ref.read

    def spy(k: int):  # type: ignore[no-untyped-def]
        asked.append(k)
        return real(k)

    ref.read = spy  # type: ignore[method-assign]
    assert [r.chunk for r in ref.iter_chunks([0, 1, 2])] == [0, 1, 2]
    assert sorted(asked) == [0, 1, 2]


def test_reads_ahead_start_when_it_is_made() -> None:
    """The closed loop opens its stream while the first reads run: they do not wait for the first next()."""
    started = threading.Event()

    def read(k: int) -> int:
        started.set()
        return k

    it = prefetched(read, [0, 1, 2], workers=1)
    assert started.wait(10)  # before any next()
    assert list(it) == [0, 1, 2]
    it.close()  # closing twice, or after the end, is harmless
