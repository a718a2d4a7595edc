"""Reference JSONL: streaming reader with a byte-offset index, and writer.

One JSON object per line.  An optional first line is a header::

    {"streamparity_reference": 1, "contract": "...", "num_chunks": 300, "generator": {...}}

Every other line is one chunk::

    {"chunk": 17, "meta": {"frames": [lo, hi], "seed": 42, "has_caches": true},
     "inputs": {"audio_signal": TENSOR, ...}, "outputs": {"outputs": TENSOR, ...}}

TENSOR is ``{"dtype", "shape", "data_b64"}`` (raw little-endian bytes) or a nested list.
The reader never loads the whole file: an index of byte offsets (kept beside the file as
``<name>.idx.json`` when the folder is writable) gives random access to chunk k.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from streamparity.atomic import atomic_write_text
from streamparity.errors import ReferenceFormatError

FORMAT_VERSION = 1
INDEX_VERSION = 2
_META_KEY = b'"meta":'
log = logging.getLogger("streamparity.reference.reader")
_PREFIX = 65536  # bytes of a line read to find its chunk id and meta






@dataclass(frozen=True)
class IndexEntry:
    chunk: int
    offset: int
    length: int
    line: int
    meta: Mapping[str, Any]


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


def _file_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    with path.open("rb") as f:
        head = f.read(65536)
        f.seek(max(0, st.st_size - 65536))
        tail = f.read()
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "head_tail_sha256": hashlib.sha256(head + tail).hexdigest(),
    }


def _meta_from_prefix(head: bytes, file: str, lineno: int) -> tuple[int, dict[str, Any]] | None:
    """Chunk id and meta from the first bytes of one of our own lines, or None to parse the whole line."""
    pos = head.find(_META_KEY, 0, 4096)
    if not (head.startswith(b'{"chunk":') and pos > 0):
        return None
    raw = head[9:pos].strip().rstrip(b",").strip()
    try:
        chunk = int(raw)
    except ValueError:
        shown = raw[:40].decode("utf-8", "replace")
        raise ReferenceFormatError(f"chunk id must be an integer, got {shown}", file=file, line=lineno,
                                   field="chunk") from None
    try:
        # the prefix may end inside a multi-byte character; meta itself lies well before that
        meta, _ = json.JSONDecoder().raw_decode(head[pos + len(_META_KEY):].decode("utf-8", "ignore").lstrip())
    except ValueError:
        return None  # meta longer than the prefix, or malformed: the full parse decides
    if not isinstance(meta, dict):
        raise ReferenceFormatError("meta must be an object", file=file, line=lineno, chunk=chunk, field="meta")
    return chunk, meta


def _check_header(header: Mapping[str, Any], file: str, lineno: int) -> None:
    version = header.get("streamparity_reference")
    if version != FORMAT_VERSION:
        raise ReferenceFormatError(f"reference format version {version!r} is not one this streamparity reads "
                                   f"({FORMAT_VERSION})", file=file, line=lineno, field="streamparity_reference")
    n = header.get("num_chunks")
    if n is not None and (type(n) is not int or n < 0):
        raise ReferenceFormatError(f"num_chunks must be a non-negative integer, got {n!r}", file=file,
                                   line=lineno, field="num_chunks")


def _meta_only(line: bytes, file: str, lineno: int) -> tuple[int | None, dict[str, Any], bool]:
    """Parse chunk id and meta of a whole line. Returns (chunk, meta, is_header)."""
    if line.startswith(b'{"streamparity_reference"'):
        try:
            return None, json.loads(line), True
        except json.JSONDecodeError as e:
            raise ReferenceFormatError(f"header is not valid JSON ({e.msg})", file=file, line=lineno) from None
    fast = _meta_from_prefix(line[:_PREFIX], file, lineno)
    if fast is not None:
        return fast[0], fast[1], False
    # foreign writer, other key order (or a meta longer than the prefix): every key but the payloads
    from streamparity.reference.fastparse import parse_skeleton

    try:
        try:
            obj = parse_skeleton(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            obj = json.loads(line)  # the plain parser's message names the column in the file itself
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise ReferenceFormatError(f"line is not valid JSON ({msg}); the file may be truncated",
                                   file=file, line=lineno) from None
    if not isinstance(obj, dict):
        raise ReferenceFormatError("line is not a JSON object", file=file, line=lineno)
    if "streamparity_reference" in obj:
        return None, obj, True
    chunk_v = obj.get("chunk", obj.get("chunk_index", obj.get("chunk_idx")))
    if not isinstance(chunk_v, int):
        raise ReferenceFormatError("line has no integer 'chunk'", file=file, line=lineno, field="chunk")
    meta_v = obj.get("meta", obj.get("metadata", {}))  # "metadata": the checklist project's writer
    return chunk_v, dict(meta_v) if isinstance(meta_v, dict) else {}, False


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


class ReferenceFile:
    """Random-access, streaming view of a reference JSONL file."""

    def __init__(self, path: str | Path, *, use_sidecar: bool = True) -> None:
        self.path = Path(path)
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
        key = _file_key(self.path)
        if use_sidecar and self.sidecar.is_file():
            try:
                doc = json.loads(self.sidecar.read_text("utf-8"))
                if doc.get("version") == INDEX_VERSION and doc.get("key") == key:
                    self.header = doc["header"]
                    self.entries = [IndexEntry(e[0], e[1], e[2], e[3], e[4]) for e in doc["entries"]]
                    self._by_chunk = {e.chunk: e for e in self.entries}
                    return
            except (OSError, ValueError, KeyError, IndexError, TypeError):
                pass  # stale or corrupt index: rebuild
        self._build_index()
        if use_sidecar:
            self._write_sidecar(key)

    def _write_sidecar(self, key: dict[str, Any]) -> None:
        if not self._use_sidecar:
            return
        doc = {
            "version": INDEX_VERSION,
            "key": key,
            "header": self.header,
            "entries": [[e.chunk, e.offset, e.length, e.line, dict(e.meta)] for e in self.entries],
        }
        try:
            atomic_write_text(self.sidecar, json.dumps(doc, separators=(",", ":")))
        except OSError:
            pass  # read-only location: keep the index in memory

    def _build_index(self) -> None:
        """One pass over the file in 8 MiB blocks: newline positions, and per line only its first bytes
        (chunk id and meta), so multi-MB tensor payloads are never kept, copied whole or decoded here."""
        self.header, self.entries, self._by_chunk = {}, [], {}
        file = str(self.path)
        prev: int | None = None
        with self.path.open("rb") as whole:
            for lineno, offset, length, head, complete in _scan_lines(self.path):
                if not complete:
                    # last line without newline: accept only if it parses completely
                    try:
                        json.loads(_read_at(whole, offset, length))
                    except (json.JSONDecodeError, UnicodeDecodeError):
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
                    if self.entries or self.header:
                        raise ReferenceFormatError("header must be the first line", file=file, line=lineno)
                    _check_header(meta, file, lineno)
                    self.header = meta
                elif chunk is not None:
                    if chunk in self._by_chunk:
                        raise ReferenceFormatError(f"duplicate chunk {chunk}", file=file, line=lineno,
                                                   chunk=chunk, field="chunk")
                    if prev is not None and chunk != prev + 1:
                        raise ReferenceFormatError(
                            f"chunks are not consecutive: {prev} is followed by {chunk}",
                            file=file, line=lineno, chunk=chunk, field="chunk")
                    e = IndexEntry(chunk, offset, length, lineno, meta)
                    self.entries.append(e)
                    self._by_chunk[chunk] = e
                    prev = chunk
        if not self.entries:
            raise ReferenceFormatError("reference holds no chunks", file=file)
        expected = self.header.get("num_chunks")
        if isinstance(expected, int) and expected != len(self.entries):
            raise ReferenceFormatError(
                f"header promises {expected} chunks but the file holds {len(self.entries)}: truncated or padded",
                file=file, field="num_chunks")

    # -- access -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def chunk_ids(self) -> list[int]:
        return [e.chunk for e in self.entries]

    def meta(self, chunk: int) -> Mapping[str, Any]:
        return self._entry(chunk).meta

    def _entry(self, chunk: int) -> IndexEntry:
        try:
            return self._by_chunk[chunk]
        except KeyError:
            raise ReferenceFormatError(
                f"chunk {chunk} is not in the reference (it holds {self.entries[0].chunk}..{self.entries[-1].chunk})",
                file=str(self.path), chunk=chunk) from None

    def read(self, chunk: int) -> ChunkRecord:
        e = self._entry(chunk)
        before, line = self._line(e)
        if not self._holds(before, line, e):
            # the file changed in a way the index key did not see (same size, mtime and ends): rebuild, retry
            log.warning("%s: byte-offset index %s is stale (line %d does not hold chunk %d); rebuilding it",
                        self.path, self.sidecar, e.line, e.chunk)
            self._build_index()
            self._write_sidecar(_file_key(self.path))
            e = self._entry(chunk)
            before, line = self._line(e)
            if not self._holds(before, line, e):
                raise ReferenceFormatError("line does not hold the chunk its index entry names",
                                           file=str(self.path), line=e.line, chunk=chunk, field="chunk")
        return self._parse(line, e)

    def __iter__(self) -> Iterator[ChunkRecord]:
        for k in self.chunk_ids:
            yield self.read(k)

    def _line(self, e: IndexEntry) -> tuple[bytes, bytes]:
        """(the byte before the entry, the entry's bytes): a line starts after a newline."""
        with self.path.open("rb") as f:
            f.seek(max(e.offset - 1, 0))
            before = f.read(1) if e.offset else b"\n"
            return before, f.read(e.length)

    def _holds(self, before: bytes, body: bytes, e: IndexEntry) -> bool:
        """Whether `body` is a whole line that holds chunk e.chunk."""
        if before != b"\n" or len(body) != e.length:
            return False
        if body.startswith(b'{"chunk":'):
            try:
                found = _meta_from_prefix(body[:_PREFIX], str(self.path), e.line)
            except ReferenceFormatError:
                return False
            return found is None or found[0] == e.chunk
        return True  # a foreign writer's line: its chunk id is checked when it is parsed

    def _parse(self, line: bytes, e: IndexEntry) -> ChunkRecord:
        """Decode one chunk line with the fast reader (falls back to json; errors name file/line/chunk/field)."""
        from streamparity.reference.fastparse import parse_chunk_line

        inputs, outputs = parse_chunk_line(line, file=str(self.path), line_no=e.line, chunk=e.chunk)
        return ChunkRecord(chunk=e.chunk, line=e.line, meta=e.meta, inputs=inputs, outputs=outputs)






