"""Fast reader for one reference JSONL chunk line.

A full-size reference line is ~64 MB, nearly all of it ``data_b64`` payloads.  The standard
library's ``json.loads`` builds a Python ``str`` for every payload, then base64 decoding copies it
again.  Here each payload is located with ``bytes.find`` (memchr speed), replaced by a tiny
placeholder, the remaining small skeleton is parsed with ``json``, and each payload is decoded
straight from a ``memoryview`` of the line into bytes that numpy wraps without a copy.

Decoding uses ``pybase64`` (SIMD) when it is installed and ``binascii.a2b_base64`` otherwise.

Validation is exactly that of :func:`streamparity.tensors.decode_tensor`: the fast path only
*accepts* what it can prove well-formed; on any doubt (bad base64, a backslash in a payload, a
skeleton that does not parse, wrong byte count, unknown dtype, ...) the line is re-read by the
plain ``json`` path, which raises the canonical error naming file, line, chunk and field.
Foreign lines (nested lists, other key order, extra whitespace) go through the same code: they
simply have no payloads to extract, or fall back.

A caller that needs only some inputs (the closed loop feeds audio and length; a full-size line's input caches
are half its bytes) names them in ``inputs``: the others are neither decoded nor checked, on either path, and
are absent from the result.  The line's structure is still parsed whole.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from streamparity import strictjson
from streamparity.errors import ReferenceFormatError, StreamparityError
from streamparity.reference.tensors import DTYPES, decode_tensor, tensor_layout

SECTIONS = ("inputs", "outputs")
_KEY = b'"data_b64"'
_WS = frozenset(b" \t\r\n")
_PLACEHOLDER = "\x00sp"


def _binascii_decode(data: memoryview) -> bytes:
    return binascii.a2b_base64(data, strict_mode=True)


def _pick_decoder() -> tuple[str, Callable[[memoryview], bytes]]:
    try:
        import pybase64
    except ImportError:
        return "binascii", _binascii_decode

    def decode(data: memoryview) -> bytes:
        out: bytes = pybase64.b64decode(data, validate=True)
        return out

    return "pybase64", decode


DECODER_NAME, _decode = _pick_decoder()


class _Fallback(Exception):
    """The fast path cannot vouch for this line; use the json path."""


Tensors = dict[str, np.ndarray]


def _wanted(section: str, name: str, inputs: Collection[str] | None) -> bool:
    return inputs is None or section != "inputs" or name in inputs


def parse_chunk_json(line: bytes, *, file: str, line_no: int, chunk: int,
                     inputs: Collection[str] | None = None) -> tuple[Tensors, Tensors]:
    """The plain path: ``json.loads`` then :func:`decode_tensor` on every tensor wanted (canonical errors)."""
    obj = strictjson.loads(line, file=file, what="line", error=ReferenceFormatError, line=line_no, chunk=chunk,
                           check_numbers=False, invalid="line is not valid JSON")
    if not isinstance(obj, dict):
        raise ReferenceFormatError("line is not a JSON object", file=file, line=line_no, chunk=chunk)
    out: list[Tensors] = []
    for section in SECTIONS:
        tensors = obj.get(section)
        if not isinstance(tensors, dict):
            raise ReferenceFormatError(f"'{section}' must be an object of tensors", file=file, line=line_no,
                                       chunk=chunk, field=section)
        out.append({name: decode_tensor(t, file=file, line=line_no, chunk=chunk, field=f"{section}.{name}")
                    for name, t in tensors.items() if _wanted(section, name, inputs)})
    return out[0], out[1]


_NEAR = 1 << 16
"""Bytes searched for a payload's closing quote with ``bytes.find`` before the search leaves Python's lock free."""

_WINDOW = 1 << 20
"""Bytes per step of the numpy search for a payload's closing quote (where the C library's memchr is not at hand)."""


def _libc_memchr() -> Callable[[int, int, int], int | None] | None:
    """The C library's ``memchr`` through ctypes, which lets go of Python's lock during the call; None where it
    cannot be loaded (then numpy searches)."""
    try:
        import ctypes

        f = ctypes.CDLL(None).memchr
        f.restype = ctypes.c_void_p
        f.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
    except Exception:  # no C library to load by name (Windows), or no memchr in it
        return None
    return f  # type: ignore[no-any-return]


_memchr = _libc_memchr()


def _closing_quote(line: bytes | bytearray, start: int) -> int:
    """The first ``"`` at or after `start`, or -1.  ``bytes.find`` runs at memchr speed but holds Python's lock
    for the whole scan (~8 ms over a full-size cache's payload, during which a runtime's step in another thread
    cannot even return); past the first 64 KiB the search goes on in the C library's memchr called through ctypes,
    or in 1 MiB numpy steps, both of which release it."""
    near = line.find(b'"', start, start + _NEAR)
    if near >= 0 or start + _NEAR >= len(line):
        return near
    data = np.frombuffer(line, dtype=np.uint8)  # a view, gone on return (the reader's buffer is resized later)
    lo = start + _NEAR
    if _memchr is not None:
        base = data.ctypes.data
        hit = _memchr(base + lo, 0x22, len(line) - lo)
        return -1 if hit is None else hit - base
    found = np.empty(_WINDOW, dtype=bool)
    for at in range(lo, len(line), _WINDOW):
        window = data[at:at + _WINDOW]
        seen = found[:window.size]
        np.equal(window, 0x22, out=seen)
        i = int(np.argmax(seen))
        if seen[i]:
            return at + i
    return -1


_SLICE = 1 << 18
"""Base64 characters decoded per step of a large payload (256 KiB in, 192 KiB out: the step's output stays in cache)."""


def _decode_payload(data: memoryview, nbytes: int) -> np.ndarray | None:
    """A payload's bytes as a fresh uint8 array, or None when it does not decode to exactly `nbytes` bytes.

    A large payload is decoded in small slices, each copied into one array: a decoder's own fresh 25 MB result
    costs a page fault per 4 KiB on first write (about twice the decoding on the machine this was measured on),
    while a slice's result stays in cache and its memory is reused.  Padding may only end the payload, so a slice
    that is not the last must not end with ``=``."""
    n = len(data)
    if n <= _SLICE:
        raw = _decode(data)
        return np.frombuffer(raw, dtype=np.uint8) if len(raw) == nbytes else None
    out = np.empty(nbytes, dtype=np.uint8)
    pos = 0
    for lo in range(0, n, _SLICE):
        hi = min(n, lo + _SLICE)
        if hi < n and data[hi - 1] == 0x3D:
            return None
        raw = _decode(data[lo:hi])
        k = len(raw)
        if pos + k > nbytes:
            return None
        out[pos:pos + k] = np.frombuffer(raw, dtype=np.uint8)
        pos += k
    return out if pos == nbytes else None


def _skip_ws(line: bytes | bytearray, i: int) -> int:
    n = len(line)
    while i < n and line[i] in _WS:
        i += 1
    return i


_LAYOUT_BEFORE = re.compile(rb'"dtype"\s*:\s*"([a-z0-9]{1,16})"\s*,\s*"shape"\s*:\s*\[([0-9,\s]{0,200})\]\s*,\s*$')
"""A tensor's dtype and shape written just before its ``"data_b64"`` key (our writer's and the checklist's order)."""


def _predicted_end(line: bytes | bytearray, key: int, start: int) -> int | None:
    """Where the payload starting at `start` ends if it is as long as the dtype and shape written just before its
    key say, and a quote stands there; None otherwise.  Unverified: a quote inside the predicted span is found by
    decoding it (a quote is no base64) or by :func:`_closing_quote` for a payload not decoded."""
    m = _LAYOUT_BEFORE.search(line, max(0, key - 256), key)
    if m is None:
        return None
    dt = DTYPES.get(m.group(1).decode("ascii"))
    dims = m.group(2).replace(b" ", b"").split(b",") if m.group(2).strip() else []
    if dt is None or not all(d.isdigit() for d in dims):
        return None
    count = 1
    for d in dims:
        count *= int(d)
    end = start + 4 * -(-count * dt.itemsize // 3)
    return end if line[end:end + 1] == b'"' else None


def _skeleton(line: bytes | bytearray, *, predict: bool = False) -> tuple[bytes, list[tuple[int, int]], set[int]]:
    """The line with every ``"data_b64": "<payload>"`` payload replaced by a numbered placeholder, the payloads'
    spans, and (with `predict`) the numbers of those whose end was taken from their dtype and shape instead of
    searched for (:func:`_predicted_end`): the caller verifies each of them."""
    pieces: list[bytes | bytearray] = []
    spans: list[tuple[int, int]] = []
    predicted: set[int] = set()
    pos = 0
    search = 0
    while True:
        k = line.find(_KEY, search)
        if k < 0:
            break
        j = _skip_ws(line, k + len(_KEY))
        if line[j:j + 1] != b":":
            search = j
            continue
        j = _skip_ws(line, j + 1)
        if line[j:j + 1] != b'"':
            search = j
            continue
        end = _predicted_end(line, k, j + 1) if predict and len(line) - j > _NEAR else None
        if end is not None:
            predicted.add(len(spans))
        else:
            end = _closing_quote(line, j + 1)
        if end < 0:
            raise _Fallback
        pieces.append(line[pos:j])
        pieces.append(b'"\\u0000sp%d"' % len(spans))
        spans.append((j + 1, end))
        pos = search = end + 1
    if not spans:
        return bytes(line), spans, predicted  # a reader's reusable buffer (bytearray) becomes bytes for json
    pieces.append(line[pos:])
    return b"".join(pieces), spans, predicted


def skeleton_of(line: bytes) -> bytes:
    """The line with its ``data_b64`` payloads replaced by short placeholders: every key but the tensor bytes,
    found at memchr speed whatever the writer's key order or separators (the line itself where that fails)."""
    try:
        skel, _, _ = _skeleton(line)
    except _Fallback:
        skel = line
    return skel


def _claim(t: Any, spans: list[tuple[int, int]], used: set[int]) -> int | None:
    """The number of the extracted payload tensor `t` holds (marked used: each is held once); None when it
    holds no placeholder."""
    if not isinstance(t, Mapping):
        return None
    ph = t.get("data_b64")
    if not (isinstance(ph, str) and ph.startswith(_PLACEHOLDER)):
        return None
    try:
        idx = int(ph[len(_PLACEHOLDER):])
    except ValueError:
        raise _Fallback from None
    if idx in used or not 0 <= idx < len(spans):
        raise _Fallback
    used.add(idx)
    return idx


def _fast_tensor(t: Any, view: memoryview, spans: list[tuple[int, int]], used: set[int]) -> np.ndarray | None:
    """Decode a tensor whose payload was extracted; None when it holds no placeholder."""
    idx = _claim(t, spans, used)
    if idx is None:
        return None
    layout = tensor_layout(t)
    if isinstance(layout, str):
        raise _Fallback  # the json path names the defect
    dname, shape, count = layout
    dt = DTYPES[dname]
    lo, hi = spans[idx]
    if (hi - lo) % 4:
        raise _Fallback
    try:
        raw = _decode_payload(view[lo:hi], count * dt.itemsize)
    except (binascii.Error, ValueError, TypeError):
        raise _Fallback from None
    if raw is None:
        raise _Fallback
    return raw.view(dt).reshape(shape)


def _parse_fast(line: bytes | bytearray, file: str, line_no: int, chunk: int,
                inputs: Collection[str] | None) -> tuple[Tensors, Tensors]:
    skel, spans, predicted = _skeleton(line, predict=True)
    try:
        obj = strictjson.loads(skel, file=file, what="line", check_numbers=False)
    except StreamparityError:
        raise _Fallback from None
    if not isinstance(obj, dict):
        raise _Fallback
    used: set[int] = set()
    out: list[Tensors] = []
    with memoryview(line) as view:  # released on errors too: a kept traceback must not pin a reused buffer
        for section in SECTIONS:
            tensors = obj.get(section)
            if not isinstance(tensors, dict):
                raise _Fallback
            got: Tensors = {}
            for name, t in tensors.items():
                if not _wanted(section, name, inputs):
                    idx = _claim(t, spans, used)  # not decoded; its payload is still accounted for
                    if idx in predicted and _closing_quote(line, spans[idx][0]) != spans[idx][1]:
                        raise _Fallback  # a quote inside the span its layout predicted
                    continue
                arr = _fast_tensor(t, view, spans, used)
                if arr is None:
                    if isinstance(t, Mapping) and isinstance(t.get("data_b64"), str) and \
                            str(t["data_b64"]).startswith("\x00"):
                        raise _Fallback
                    arr = decode_tensor(t, file=file, line=line_no, chunk=chunk, field=f"{section}.{name}")
                got[name] = arr
            out.append(got)
        if len(used) != len(spans):  # a payload outside the tensors (e.g. in meta): let json judge the line
            raise _Fallback
    return out[0], out[1]


def parse_chunk_line(line: bytes | bytearray, *, file: str, line_no: int, chunk: int,
                     inputs: Collection[str] | None = None) -> tuple[Tensors, Tensors]:
    """(inputs, outputs) of one chunk line, of the inputs only those named in `inputs` (default: all);
    errors name file, line, chunk and field."""
    try:
        return _parse_fast(line, file, line_no, chunk, inputs)
    except _Fallback:
        return parse_chunk_json(bytes(line), file=file, line_no=line_no, chunk=chunk, inputs=inputs)
