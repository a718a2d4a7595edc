"""Strict JSON for every file streamparity reads: UTF-8 without a BOM, no duplicate keys, no NaN/Infinity
(unless asked), bounded integers and bounded nesting, and every failure one error naming the file.

Python's ``json`` accepts a lot that a hand-edited or corrupted file should not get through with: the last of
two duplicate keys silently wins, ``NaN`` parses, a 5000-digit integer raises a bare ``ValueError``, deep
nesting raises ``RecursionError`` and bytes that are not UTF-8 raise ``UnicodeDecodeError``."""

from __future__ import annotations

import json
from typing import Any

from streamparity.errors import StreamparityError

MAX_DEPTH = 32
"""Nesting depth (objects and lists) a document may have."""
INT_LIMIT = 2**63 - 1
"""Largest integer magnitude a document may hold (int64); fields check tighter bounds of their own."""
_BOM = b"\xef\xbb\xbf"


class _Refused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Refused(f"duplicate key {k[:40]!r}")
        out[k] = v
    return out


def _int(text: str) -> int:
    if len(text) > 20:
        raise _Refused(f"integer {text[:24]}... is out of range")
    v = int(text)
    if not -INT_LIMIT - 1 <= v <= INT_LIMIT:  # int64: -2**63 .. 2**63 - 1, as the writer allows
        raise _Refused(f"integer {text} is out of range (int64)")
    return v


def _float(text: str) -> float:
    v = float(text)
    if v in (float("inf"), float("-inf")):
        raise _Refused(f"number {text[:24]} is out of range")
    return v


def _no_constant(name: str) -> float:
    raise _Refused(f"{name} is not a valid JSON number")


def _allow_constant(name: str) -> float:
    return float(name)


def depth(doc: Any, limit: int) -> int:
    """Nesting depth of a parsed document, counting no further than limit + 1."""
    best = 0
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            d += 1
            best = max(best, d)
            if d > limit:
                return d
            stack.extend((v, d) for v in (node.values() if isinstance(node, dict) else node)
                         if isinstance(v, (dict, list)))
    return best


def decode_utf8(data: bytes, *, what: str) -> str:
    """The text of a file's bytes; raises _Refused (via loads) or ValueError with a one-line reason."""
    if data.startswith(_BOM):
        raise _Refused(f"{what} starts with a UTF-8 byte-order mark (BOM): save it as UTF-8 without a BOM")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Refused(f"{what} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def loads(data: bytes | str, *, file: str, what: str = "file", error: type[StreamparityError] = StreamparityError,
          line: int | None = None, chunk: int | None = None, allow_nonfinite: bool = False,
          max_depth: int = MAX_DEPTH, check_numbers: bool = True, invalid: str = "invalid JSON") -> Any:
    """Parse one JSON document strictly; any defect is one `error` naming file (and line/chunk when given).

    `check_numbers=False` skips the per-number hooks (for lines of big nested-list tensors, where numpy checks the
    values); integers past Python's digit limit are still refused."""
    try:
        if isinstance(data, bytes):
            text = decode_utf8(data, what=what)
        else:
            text = data
            if text.startswith("\ufeff"):
                raise _Refused(f"{what} starts with a UTF-8 byte-order mark (BOM): save it as UTF-8 without a BOM")
        constant = _allow_constant if allow_nonfinite else _no_constant
        if check_numbers:
            doc = json.loads(text, object_pairs_hook=_pairs, parse_int=_int, parse_float=_float,
                             parse_constant=constant)
        else:
            doc = json.loads(text, object_pairs_hook=_pairs, parse_constant=constant)
        # a document can nest no deeper than it has brackets (those inside strings only raise the count)
        if text.count("{") + text.count("[") > max_depth and depth(doc, max_depth) > max_depth:
            raise _Refused(f"{what} nests deeper than {max_depth} levels")
    except _Refused as e:
        raise error(e.message, file=file, line=line, chunk=chunk) from None
    except json.JSONDecodeError as e:
        raise error(f"{invalid} ({e.msg} at column {e.colno})", file=file, line=line if line is not None else
                    e.lineno, chunk=chunk) from None
    except ValueError as e:  # int() past sys.get_int_max_str_digits()
        raise error(f"{what} holds a number out of range ({str(e)[:80]})", file=file, line=line,
                    chunk=chunk) from None
    except RecursionError:
        raise error(f"{what} nests deeper than {max_depth} levels", file=file, line=line, chunk=chunk) from None
    return doc
