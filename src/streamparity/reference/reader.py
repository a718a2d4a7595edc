"""Reference JSONL: a streaming, thread-safe reader with a byte-offset index (the writer is in ``writer``).

One JSON object per line.  An optional first line is a header::

    {"streamparity_reference": 1, "contract": "...", "num_chunks": 300, "generator": {...}}

Every other line is one chunk::

    {"chunk": 17, "meta": {"frames": [lo, hi], "seed": 42, "has_caches": true},
     "inputs": {"audio_signal": TENSOR, ...}, "outputs": {"outputs": TENSOR, ...}}

TENSOR is ``{"dtype", "shape", "data_b64"}`` (raw little-endian bytes) or a nested list.
The reader never loads the whole file: an index of byte offsets (kept beside the file as
``<name>.idx.json`` when the folder is writable) gives random access to chunk k.  Reads are safe from
several threads; iterating a reference with large lines reads ahead in threads (:mod:`.prefetch`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np

from streamparity import strictjson
from streamparity.errors import ReferenceFormatError, StreamparityError
from streamparity.reference.fields import FORMAT_VERSION, MAX_CHUNK, check_header, check_meta, chunk_id
from streamparity.reference.line_buffers import LineBuffers
from streamparity.reference.prefetch import Prefetched
from streamparity.reference.sidecar import IndexEntry, file_key, read_sidecar, write_sidecar

_META_KEY = b'"meta":'
log = logging.getLogger("streamparity.reference.reader")
_PREFIX = 65536  # bytes of a line read to find its chunk id and meta
_CHUNK_ID = re.compile(rb"(0|[1-9][0-9]{0,9})")
__all__ = ["FORMAT_VERSION", "ChunkRecord", "IndexEntry", "ReferenceFile"]


def _utf8_prefix(head: bytes, file: str, lineno: int) -> str:
    """The text of a line's first bytes, which may end inside a multi-byte character; other bad bytes are an error."""
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.reason == "unexpected end of data" and len(head) >= _PREFIX:
            return head[:e.start].decode("utf-8")
        raise ReferenceFormatError(f"line is not valid UTF-8 (byte 0x{head[e.start]:02x} at column {e.start + 1})",
                                   file=file, line=lineno) from None


_REUSE_BYTES = 1 << 20
"""Lines this long are read into the reader's reusable buffers (see :meth:`ReferenceFile._line`)."""

_KEPT_BUFFERS = 6
"""Free read buffers a file keeps (the read-ahead's threads and the caller's): ~69 MB each at full size."""

DECODED_CACHE_BYTES = 64 * 2**20
"""Decoded tensors a :class:`ReferenceFile` keeps for re-reads (the embedded reference is ~8 MB decoded)."""


@dataclass
class ChunkRecord:
    chunk: int
    line: int
    meta: Mapping[str, Any]
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def has_caches(self) -> bool:
        return bool(self.meta.get("has_caches", True))


def _meta_from_prefix(head: bytes, file: str, lineno: int) -> tuple[int, dict[str, Any]] | None:
    """Chunk id and meta from the first bytes of one of our own lines, or None to parse the whole line."""
    pos = head.find(_META_KEY, 0, 4096)
    if not (head.startswith(b'{"chunk":') and pos > 0):
        return None
    raw = head[9:pos].strip()
    if not raw.endswith(b","):
        return None  # not our writer's layout: the full parse decides
    raw = raw[:-1].strip()
    if not _CHUNK_ID.fullmatch(raw) or int(raw) > MAX_CHUNK:
        return None  # anything but a plain chunk id: the full parse names the defect
    chunk = int(raw)
    text = _utf8_prefix(head, file, lineno)[pos + len(_META_KEY):].lstrip()
    try:
        _, end = json.JSONDecoder().raw_decode(text)  # where meta ends
    except (ValueError, RecursionError):
        return None  # meta longer than the prefix, or malformed: the full parse decides
    meta = strictjson.loads(text[:end], file=file, what="meta", error=ReferenceFormatError, line=lineno,
                            chunk=chunk)
    return chunk, check_meta(meta, file, lineno, chunk)


def _meta_only(line: bytes, file: str, lineno: int) -> tuple[int | None, dict[str, Any], bool]:
    """Parse chunk id and meta of a whole line. Returns (chunk, meta, is_header)."""
    if line.startswith(b'{"streamparity_reference"'):
        header = strictjson.loads(line, file=file, what="header", error=ReferenceFormatError, line=lineno,
                                  invalid="header is not valid JSON")
        if not isinstance(header, dict):
            raise ReferenceFormatError("header is not a JSON object", file=file, line=lineno)
        return None, header, True
    fast = _meta_from_prefix(line[:_PREFIX], file, lineno) if line.startswith(b'{"chunk":') else None
    if fast is not None:
        return fast[0], fast[1], False
    # foreign writer, other key order (or a meta longer than the prefix): every key but the payloads, strictly
    from streamparity.reference.fastparse import skeleton_of

    obj = strictjson.loads(skeleton_of(line), file=file, what="line", error=ReferenceFormatError, line=lineno,
                           check_numbers=False, invalid="line is not valid JSON; the file may be truncated")
    if not isinstance(obj, dict):
        raise ReferenceFormatError("line is not a JSON object", file=file, line=lineno)
    if "streamparity_reference" in obj:
        return None, obj, True
    key = next((k for k in ("chunk", "chunk_index", "chunk_idx") if k in obj), "chunk")
    chunk_v = obj.get(key)
    if not chunk_id(chunk_v):
        raise ReferenceFormatError(f"chunk id must be an integer, got {json.dumps(chunk_v)[:40]} (ids are "
                                   f"0..{MAX_CHUNK})", file=file, line=lineno, field=key)
    meta_key = "meta" if "meta" in obj or "metadata" not in obj else "metadata"  # the checklist project's writer
    return chunk_v, check_meta(obj.get(meta_key, {}), file, lineno, chunk_v), False


def _nbytes(inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> int:
    """Bytes of one decoded chunk's tensors (what the decoded-chunk cache counts)."""
    return sum(a.nbytes for a in (*inputs.values(), *outputs.values()))


def _read_at(f: IO[bytes], offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


def _scan_lines(path: Path, block_size: int = 1 << 23) -> Iterator[tuple[int, int, int, bytes, bool]]:
    """Yield (line number, offset, length, first _PREFIX bytes, ends with newline) for every line,
    reading fixed-size blocks: memory stays at one block whatever the line length."""
    with path.open("rb") as f:
        pos = 0
        start = 0
        head = bytearray()
        lineno = 0
        while True:
            block = f.read(block_size)
            if not block:
                break
            i = 0
            while True:
                nl = block.find(b"\n", i)
                seg_end = len(block) if nl < 0 else nl + 1
                if len(head) < _PREFIX:
                    head += block[i:min(seg_end, i + _PREFIX - len(head))]
                if nl < 0:
                    break
                lineno += 1
                end = pos + nl + 1
                yield lineno, start, end - start, bytes(head), True
                head = bytearray()
                start = end
                i = nl + 1
            pos += len(block)
        if start < pos:
            yield lineno + 1, start, pos - start, bytes(head), False


def _never(_: int) -> bool:
    return False


class ReferenceFile:
    """Random-access, streaming view of a reference JSONL file."""

    def __init__(self, path: str | Path, *, use_sidecar: bool = True, cache_bytes: int = DECODED_CACHE_BYTES) -> None:
        self.path = Path(path)
        self.cache_bytes = cache_bytes
        # chunk -> (inputs, outputs, whether every input was decoded)
        self._decoded: OrderedDict[int, tuple[dict[str, np.ndarray], dict[str, np.ndarray], bool]] = OrderedDict()
        self._decoded_bytes = 0
        self._buffers = LineBuffers(_KEPT_BUFFERS)  # the large lines' reusable read buffers, for any thread
        self._lock = threading.Lock()  # the decoded-chunk cache
        self._rebuild = threading.Lock()  # a stale index rebuilt once, whichever thread finds it
        if not self.path.is_file():
            raise ReferenceFormatError("reference file not found", file=str(self.path))
        self.header: dict[str, Any] = {}
        self.entries: list[IndexEntry] = []
        self._by_chunk: dict[int, IndexEntry] = {}
        self._use_sidecar = use_sidecar
        self._load_index(use_sidecar)

    # -- index ------------------------------------------------------------------------
    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name + ".idx.json")

    def _load_index(self, use_sidecar: bool) -> None:
        key = file_key(self.path)
        if use_sidecar and self.sidecar.is_file():
            loaded = read_sidecar(self.sidecar, key)
            if isinstance(loaded, str):
                log.warning("%s: ignoring its byte-offset index %s (%s); rebuilding it", self.path, self.sidecar,
                            loaded)
            else:
                self.header, self.entries = loaded
                self._by_chunk = {e.chunk: e for e in self.entries}
                wrong = self._first_entry_the_file_contradicts()
                if wrong is None:
                    return
                log.warning("%s: its byte-offset index %s disagrees with line %d (chunk %d or its meta); "
                            "rebuilding it", self.path, self.sidecar, wrong.line, wrong.chunk)
        self._build_index()
        if use_sidecar:
            self._write_sidecar(key)

    def _first_entry_the_file_contradicts(self) -> IndexEntry | None:
        """The first index entry whose line does not start with its chunk id and meta (our writer's lines put
        both first); one small read per chunk, so that an edited index cannot decide which chunks are judged."""
        with self.path.open("rb", buffering=0) as f:
            for e in self.entries:
                f.seek(max(e.offset - 1, 0))
                before = f.read(1) if e.offset else b"\n"
                if not self._starts_as_indexed(before, f.read(min(e.length, _PREFIX)), e):
                    return e
        return None

    def _write_sidecar(self, key: dict[str, Any]) -> None:
        if self._use_sidecar:
            write_sidecar(self.sidecar, key, self.header, self.entries)

    def _build_index(self) -> None:
        """One pass over the file in 8 MiB blocks: newline positions, and per line only its first bytes
        (chunk id and meta), so multi-MB tensor payloads are never kept, copied whole or decoded here."""
        header: dict[str, Any] = {}
        entries: list[IndexEntry] = []
        by_chunk: dict[int, IndexEntry] = {}
        file = str(self.path)
        prev: int | None = None
        with self.path.open("rb") as whole:
            for lineno, offset, length, head, complete in _scan_lines(self.path):
                if not complete:
                    # last line without newline: accept only if it parses completely
                    try:
                        strictjson.loads(_read_at(whole, offset, length), file=file, check_numbers=False)
                    except StreamparityError:
                        raise ReferenceFormatError(
                            "last line is incomplete (no newline, invalid JSON): the file is truncated",
                            file=file, line=lineno) from None
                if not head.strip() and length <= _PREFIX:
                    continue
                fast = _meta_from_prefix(head, file, lineno) if head.startswith(b'{"chunk":') else None
                chunk: int | None
                if fast is not None:
                    chunk, meta, is_header = fast[0], fast[1], False
                else:
                    chunk, meta, is_header = _meta_only(_read_at(whole, offset, length).strip(), file, lineno)
                if is_header:
                    if entries or header:
                        raise ReferenceFormatError("header must be the first line", file=file, line=lineno)
                    check_header(meta, file, lineno)
                    header = meta
                elif chunk is not None:
                    if chunk in by_chunk:
                        raise ReferenceFormatError(f"duplicate chunk {chunk}", file=file, line=lineno,
                                                   chunk=chunk, field="chunk")
                    if prev is not None and chunk != prev + 1:
                        raise ReferenceFormatError(
                            f"chunks are not consecutive: {prev} is followed by {chunk}",
                            file=file, line=lineno, chunk=chunk, field="chunk")
                    e = IndexEntry(chunk, offset, length, lineno, meta)
                    entries.append(e)
                    by_chunk[chunk] = e
                    prev = chunk
        if not entries:
            raise ReferenceFormatError("reference holds no chunks", file=file)
        expected = header.get("num_chunks")
        if isinstance(expected, int) and expected != len(entries):
            raise ReferenceFormatError(
                f"header promises {expected} chunks but the file holds {len(entries)}: truncated or padded",
                file=file, field="num_chunks")
        # swapped in whole: a reader in another thread sees the old index or the new one, never half of one
        self.header, self.entries, self._by_chunk = header, entries, by_chunk

    # -- access -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def chunk_ids(self) -> list[int]:
        return [e.chunk for e in self.entries]

    def meta(self, chunk: int) -> Mapping[str, Any]:
        return self._entry(chunk).meta

    def chunks_with_caches(self) -> list[int]:
        """The chunks whose meta says they store caches (``has_caches``, true where it is absent): what
        functional mode can run."""
        return [e.chunk for e in self.entries if e.meta.get("has_caches", True)]

    def _entry(self, chunk: int) -> IndexEntry:
        try:
            return self._by_chunk[chunk]
        except KeyError:
            raise ReferenceFormatError(
                f"chunk {chunk} is not in the reference (it holds {self.entries[0].chunk}..{self.entries[-1].chunk})",
                file=str(self.path), chunk=chunk) from None

    def read(self, chunk: int, *, inputs: Collection[str] | None = None) -> ChunkRecord:
        """One chunk, decoded; of its inputs only those named in `inputs` (default: all), the others neither
        decoded nor checked (the closed loop feeds audio and length: a full-size line's input caches are half
        its bytes).  Its arrays are read-only: a reference is what runtimes are judged against."""
        e = self._entry(chunk)
        with self._lock:
            hit = self._decoded.get(chunk)
            if hit is not None and not (hit[2] or (inputs is not None and all(n in hit[0] for n in inputs))):
                hit = None  # decoded in part, and without what is asked for now
            if hit is not None:
                self._decoded.move_to_end(chunk)
        if hit is not None:
            ins = dict(hit[0]) if inputs is None else {n: a for n, a in hit[0].items() if n in inputs}
            return ChunkRecord(chunk=e.chunk, line=e.line, meta=e.meta, inputs=ins, outputs=dict(hit[1]))
        before, line = self._line(e)
        try:
            if not self._holds(before, line, e):
                # the file changed in a way the index key did not see (same size, mtime and ends): rebuild, retry
                with self._rebuild:
                    if self._entry(chunk) is e:  # not rebuilt meanwhile by another thread
                        log.warning("%s: byte-offset index %s is stale (line %d does not hold chunk %d); "
                                    "rebuilding it", self.path, self.sidecar, e.line, e.chunk)
                        self._build_index()
                        self._write_sidecar(file_key(self.path))
                        with self._lock:
                            self._decoded.clear()
                            self._decoded_bytes = 0
                e = self._entry(chunk)
                self._buffers.give_back(line)
                line = b""  # given back: not twice, should the second read fail
                before, line = self._line(e)
                if not self._holds(before, line, e):
                    raise ReferenceFormatError("line does not hold the chunk its index entry names",
                                               file=str(self.path), line=e.line, chunk=chunk, field="chunk")
            return self._parse(line, e, inputs)
        finally:
            self._buffers.give_back(line)

    @property
    def read_ahead(self) -> bool:
        """Whether iterating reads ahead in threads, which it does for lines of a MiB or more (caches)."""
        return max(e.length for e in self.entries) >= _REUSE_BYTES

    def __iter__(self) -> Iterator[ChunkRecord]:
        return self.iter_chunks(self.chunk_ids)

    def iter_chunks(self, ids: list[int], *, inputs: Collection[str] | None = None,
                    every_line: bool = False) -> Prefetched[ChunkRecord]:
        """The chunks `ids`, in that order, large lines read ahead in threads from now on (none past the last
        id); of their inputs only those named in `inputs` (default: all), as :meth:`read`.  `every_line`: small
        lines too, for a caller whose own thread waits on a device meanwhile (parsing them then costs it
        nothing).  ``close()`` it when leaving early (it closes itself at the end and when it goes)."""
        read = self.read if inputs is None else partial(self.read, inputs=frozenset(inputs))
        if not self.read_ahead:
            return Prefetched(read, ids, worth=_never)  # every line read by the caller, no thread started
        return Prefetched(read, ids, worth=None if every_line else (lambda k: self._entry(k).length >= _REUSE_BYTES))

    def _line(self, e: IndexEntry) -> tuple[bytes, bytes | bytearray]:
        """(the byte before the entry, the entry's bytes): a line starts after a newline.  Lines of at least
        :data:`_REUSE_BYTES` come in one of the file's reusable buffers (:mod:`.line_buffers`): give it back
        with ``self._buffers.give_back`` once parsed."""
        with self.path.open("rb", buffering=0) as f:
            f.seek(max(e.offset - 1, 0))
            before = f.read(1) if e.offset else b"\n"
            if e.length < _REUSE_BYTES:
                return before, f.read(e.length)
            buf = self._buffers.take(e.length)
            view, got = memoryview(buf), 0
            while got < e.length:
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
            view.release()
            if got == e.length:
                return before, buf
            short = bytes(buf[:got])  # copied before another thread may take the buffer
            self._buffers.give_back(buf)
            return before, short

    def _holds(self, before: bytes, body: bytes | bytearray, e: IndexEntry) -> bool:
        """Whether `body` is a whole line that holds chunk e.chunk."""
        return len(body) == e.length and self._starts_as_indexed(before, bytes(body[:_PREFIX]), e)

    def _starts_as_indexed(self, before: bytes, head: bytes, e: IndexEntry) -> bool:
        """Whether a line starts after a newline with the chunk id and meta its index entry names.  The line's
        own id and meta, not only the index's: an index whose meta was edited (and its key recomputed) would
        otherwise decide which chunks are functional."""
        if before != b"\n":
            return False
        if head.startswith(b'{"chunk":'):
            try:
                found = _meta_from_prefix(head, str(self.path), e.line)
            except ReferenceFormatError:
                return False
            return found is None or (found[0] == e.chunk and found[1] == dict(e.meta))
        return True  # a foreign writer's line: its chunk id is checked when it is parsed

    def _parse(self, line: bytes | bytearray, e: IndexEntry, wanted: Collection[str] | None) -> ChunkRecord:
        """Decode one chunk line with the fast reader (falls back to json; errors name file/line/chunk/field)."""
        from streamparity.reference.fastparse import parse_chunk_line

        inputs, outputs = parse_chunk_line(line, file=str(self.path), line_no=e.line, chunk=e.chunk, inputs=wanted)
        for a in (*inputs.values(), *outputs.values()):
            a.setflags(write=False)
        self._remember(e.chunk, inputs, outputs, complete=wanted is None)
        return ChunkRecord(chunk=e.chunk, line=e.line, meta=e.meta, inputs=dict(inputs), outputs=dict(outputs))

    def _remember(self, chunk: int, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], *,
                  complete: bool) -> None:
        """Keep decoded chunks up to ``cache_bytes`` (least recently read out first): the reference checks, the
        functional run and the closed loop read a small reference three times; a full-size one (69 MB per
        chunk with caches) mostly passes through."""
        size = _nbytes(inputs, outputs)
        if size > self.cache_bytes:
            return
        with self._lock:
            old = self._decoded.pop(chunk, None)  # read twice at once by two threads: counted once
            if old is not None:
                self._decoded_bytes -= _nbytes(old[0], old[1])
                if old[2] and not complete:  # a whole record is not displaced by a part of it
                    inputs, outputs, complete, size = old[0], old[1], True, _nbytes(old[0], old[1])
            self._decoded[chunk] = (inputs, outputs, complete)
            self._decoded_bytes += size
            while self._decoded_bytes > self.cache_bytes:
                _, evicted = self._decoded.popitem(last=False)
                self._decoded_bytes -= _nbytes(evicted[0], evicted[1])
