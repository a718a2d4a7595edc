"""The byte-offset index kept beside a reference (``<name>.idx.json``): a cache, so a stale or corrupt one is
rebuilt, never trusted field by field.  It names the file it indexes (size, mtime, a hash of its ends) and
carries a digest of its own content, so an edited entry, header or meta is caught, not read as the file's."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamparity import strictjson
from streamparity.atomic import atomic_write_text
from streamparity.errors import ReferenceFormatError
from streamparity.reference.fields import check_header, check_meta, chunk_id

INDEX_VERSION = 3


@dataclass(frozen=True)
class IndexEntry:
    chunk: int
    offset: int
    length: int
    line: int
    meta: Mapping[str, Any]


def file_key(path: Path) -> dict[str, Any]:
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


def _digest(header: Any, rows: Any) -> str:
    body = json.dumps({"header": header, "entries": rows}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def write_sidecar(path: Path, key: dict[str, Any], header: dict[str, Any], entries: list[IndexEntry]) -> None:
    rows = [[e.chunk, e.offset, e.length, e.line, dict(e.meta)] for e in entries]
    doc = {"version": INDEX_VERSION, "key": key, "header": header, "entries": rows, "digest": _digest(header, rows)}
    try:
        atomic_write_text(path, json.dumps(doc, separators=(",", ":")))
    except OSError:
        pass  # read-only location: keep the index in memory


def read_sidecar(path: Path, key: dict[str, Any]) -> tuple[dict[str, Any], list[IndexEntry]] | str:
    """The sidecar's header and entries when every field is sound and it indexes this very file, else why not."""
    file = str(path)
    try:
        doc = strictjson.loads(path.read_bytes(), file=file, what="index", error=ReferenceFormatError)
    except OSError as e:
        return f"unreadable: {e.strerror}"
    except ReferenceFormatError as e:
        return e.message
    if not isinstance(doc, dict) or set(doc) != {"version", "key", "header", "entries", "digest"}:
        return "not an index document of this streamparity"
    if type(doc["version"]) is not int or doc["version"] != INDEX_VERSION:
        return f"index version {json.dumps(doc['version'])[:20]} is not {INDEX_VERSION}"
    got = doc["key"]
    if not isinstance(got, dict) or got.keys() != key.keys() or \
            any(type(got[k]) is not type(v) or got[k] != v for k, v in key.items()):
        return "stale: it was built for another version of the file"
    header, rows = doc["header"], doc["entries"]
    if not isinstance(header, dict) or not isinstance(rows, list) or not rows:
        return "header or entries malformed"
    if doc["digest"] != _digest(header, rows):
        return "its digest does not match its content (edited or corrupt)"
    size = int(key["size"])
    entries: list[IndexEntry] = []
    end = 0
    for i, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 5 and all(type(x) is int for x in row[:4])):
            return f"entry {i} malformed"
        chunk, offset, length, line, meta = row
        if not (chunk_id(chunk) and end <= offset and 0 < length and offset + length <= size and line >= 1):
            return f"entry {i} out of range"
        if entries and (chunk != entries[-1].chunk + 1 or line <= entries[-1].line):
            return f"entry {i} out of order"
        try:
            check_meta(meta, file, None, chunk)
        except ReferenceFormatError as e:
            return e.message
        end = offset + length
        entries.append(IndexEntry(chunk, offset, length, line, meta))
    try:
        if header:
            check_header(header, file, None)
    except ReferenceFormatError as e:
        return e.message
    if "num_chunks" in header and header["num_chunks"] != len(entries):
        return "num_chunks disagrees with the entries"
    return header, entries
