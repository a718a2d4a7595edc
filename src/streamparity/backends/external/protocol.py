"""The runtime protocol, version 1: length-prefixed frames over a pipe (stdin/stdout of the runtime).

A frame is ``b"SPRT"`` + ``u32`` little-endian header length + a UTF-8 JSON header + the payload: the raw
little-endian bytes of every tensor the header lists, in the order listed.  Every tensor entry is
``{"name", "dtype", "shape", "nbytes"}`` (dtype one of ``DTYPES``); ``payload_bytes`` is their sum, so a
runtime may read the payload without parsing the list.  Requests carry ``"op"``; replies carry
``"ok": true`` (or ``"ok": false, "error": "..."``).  See the README's runtime-protocol section for the operations.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamparity.reference.tensors import DTYPES, dtype_name

PROTOCOL_VERSION = 1
MAGIC = b"SPRT"
HEADER_MAX = 1 << 20
PAYLOAD_MAX = 4 << 30
OPS = ("describe", "run", "open", "step", "state", "close", "shutdown")


class ProtocolError(Exception):
    """A frame that does not follow the protocol (garbage on the pipe, bad header, short payload)."""


@dataclass
class Frame:
    header: dict[str, Any]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)


def encode_frame(header: Mapping[str, Any], tensors: Mapping[str, np.ndarray] | None = None) -> list[bytes]:
    """The frame as a list of byte strings to write in order (tensor bytes are not joined: no extra copy)."""
    metas: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, a in (tensors or {}).items():
        arr = np.asarray(a)
        dt = DTYPES[dtype_name(arr.dtype)]
        le = np.ascontiguousarray(arr, dtype=dt)
        metas.append({"name": name, "dtype": dtype_name(dt), "shape": list(arr.shape), "nbytes": int(le.nbytes)})
        blobs.append(le.reshape(-1).view(np.uint8).data.cast("B"))  # type: ignore[arg-type]
    full = dict(header)
    full["tensors"] = metas
    full["payload_bytes"] = sum(m["nbytes"] for m in metas)
    head = json.dumps(full, separators=(",", ":")).encode("utf-8")
    return [MAGIC + struct.pack("<I", len(head)) + head, *blobs]


def read_frame(read_exact: Callable[[int], bytes | bytearray]) -> Frame:
    """Read one frame with ``read_exact(n)`` (which returns exactly n bytes or raises)."""
    prefix = read_exact(8)
    if prefix[:4] != MAGIC:
        raise ProtocolError(f"expected a frame starting with {MAGIC!r}, got {bytes(prefix)!r} (garbage on stdout?)")
    (n,) = struct.unpack("<I", prefix[4:])
    if n > HEADER_MAX:
        raise ProtocolError(f"header of {n} bytes exceeds the {HEADER_MAX}-byte limit")
    try:
        header = json.loads(read_exact(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"frame header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    metas = header.get("tensors", [])
    if not isinstance(metas, list):
        raise ProtocolError("'tensors' in the frame header is not a list")
    sizes = [_check_meta(m) for m in metas]
    total = header.get("payload_bytes", sum(sizes))
    if total != sum(sizes) or sum(sizes) > PAYLOAD_MAX:
        raise ProtocolError(f"payload_bytes {total!r} disagrees with the tensors' nbytes (sum {sum(sizes)})")
    payload: bytes | bytearray = read_exact(total) if total else b""
    tensors: dict[str, np.ndarray] = {}
    off = 0
    for m, size in zip(metas, sizes):
        arr = np.frombuffer(payload, dtype=DTYPES[m["dtype"]], count=size // DTYPES[m["dtype"]].itemsize,
                            offset=off).reshape(m["shape"])
        if m["name"] in tensors:
            raise ProtocolError(f"tensor {m['name']!r} appears twice in one frame")
        tensors[m["name"]] = arr
        off += size
    return Frame(header, tensors)


def _check_meta(m: Any) -> int:
    if not isinstance(m, dict) or not isinstance(m.get("name"), str):
        raise ProtocolError(f"tensor entry {m!r} has no string 'name'")
    name = m["name"]
    if m.get("dtype") not in DTYPES:
        raise ProtocolError(f"tensor {name!r}: dtype {m.get('dtype')!r} is not one of {sorted(DTYPES)}")
    shape = m.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ProtocolError(f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    want = int(np.prod(shape, dtype=np.int64)) * DTYPES[m["dtype"]].itemsize
    if m.get("nbytes") != want:
        raise ProtocolError(f"tensor {name!r}: nbytes {m.get('nbytes')!r} but shape {shape} of {m['dtype']} "
                            f"needs {want}")
    return want
