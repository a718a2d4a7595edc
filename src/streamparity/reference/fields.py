"""Typed fields of a reference file: the header's and each chunk's meta, checked strictly (a boolean is not an
integer, "false" is not false, ids are bounded); other keys are the writer's own and pass untouched."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from streamparity.errors import ReferenceFormatError

FORMAT_VERSION = 1
MAX_CHUNK = 2**31 - 1


def chunk_id(v: Any) -> bool:
    """Whether v is a chunk id (or count): an integer, not a boolean, in 0..MAX_CHUNK."""
    return type(v) is int and 0 <= v <= MAX_CHUNK


def _bounded(v: Any) -> bool:
    return type(v) is int and abs(v) <= MAX_CHUNK


# field -> (check, what it must be)
META_FIELDS: dict[str, tuple[Any, str]] = {
    "has_caches": (lambda v: type(v) is bool, "true or false"),
    "frames": (lambda v: isinstance(v, list) and len(v) == 2 and all(_bounded(x) for x in v) and v[0] <= v[1],
               f"[lo, hi] with integers lo <= hi, at most {MAX_CHUNK} in magnitude"),
    "seed": (lambda v: type(v) is int and abs(v) <= 2**63 - 1, "an integer"),
    "error": (lambda v: isinstance(v, str), "a string"),
}
HEADER_FIELDS: dict[str, tuple[Any, str]] = {
    "contract": (lambda v: isinstance(v, str), "a string"),
    "num_chunks": (chunk_id, f"a non-negative integer (at most {MAX_CHUNK})"),
    "generator": (lambda v: isinstance(v, (str, dict)), "a string or an object"),
}


def check_fields(doc: Mapping[str, Any], fields: dict[str, tuple[Any, str]], prefix: str, *, file: str,
                 line: int | None, chunk: int | None) -> None:
    for key, (ok, want) in fields.items():
        if key in doc and not ok(doc[key]):
            shown = json.dumps(doc[key])[:40]
            raise ReferenceFormatError(f"{prefix}{key} must be {want}, got {shown}", file=file, line=line,
                                       chunk=chunk, field=f"{prefix}{key}")


def check_meta(meta: Any, file: str, line: int | None, chunk: int | None) -> dict[str, Any]:
    """A chunk's meta: an object whose known fields have their types."""
    if not isinstance(meta, dict):
        raise ReferenceFormatError("meta must be an object", file=file, line=line, chunk=chunk, field="meta")
    check_fields(meta, META_FIELDS, "meta.", file=file, line=line, chunk=chunk)
    return meta


def check_header(header: Mapping[str, Any], file: str, lineno: int | None) -> None:
    version = header.get("streamparity_reference")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ReferenceFormatError(f"reference format version {json.dumps(version)[:40]} is not one this "
                                   f"streamparity reads ({FORMAT_VERSION})", file=file, line=lineno,
                                   field="streamparity_reference")
    check_fields(header, HEADER_FIELDS, "", file=file, line=lineno, chunk=None)
