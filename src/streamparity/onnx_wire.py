"""What the suite reads from an ONNX file before any runtime loads it, straight from the protobuf wire format:
the graph's inputs and outputs (name, element type, dims) and the external data files its tensors name.

Why not ``onnx.load``: importing ``onnx`` costs ~0.7 s (most of it ``ml_dtypes``), a sixth of a parity run on
the embedded model, to read a few hundred bytes of graph signature.  This reader walks only the fields it
needs (field numbers from ``onnx.proto``) and skips every other field, weights included, by its length.
A file that is not a well-formed protobuf raises :class:`WireError`.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# onnx.proto field numbers
MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_SPARSE_INITIALIZER = 1, 5, 11, 12, 15
NODE_ATTRIBUTE = 5
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS = 5, 6, 10, 11, 22, 23
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 1, 2, 8, 13, 14
ENTRY_KEY, ENTRY_VALUE = 1, 2
VALUE_NAME, VALUE_TYPE = 1, 2
TYPE_TENSOR = 1
TENSOR_TYPE_ELEM, TENSOR_TYPE_SHAPE = 1, 2
SHAPE_DIM = 1
DIM_VALUE, DIM_PARAM = 1, 2
DATA_LOCATION_EXTERNAL = 1
MAX_DEPTH = 64
"""Subgraphs nest (If/Loop bodies); deeper than this is not a model anyone exported."""

ELEM_TYPES = {1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
              9: "bool", 10: "float16", 11: "double", 12: "uint32", 13: "uint64", 16: "bfloat16"}

NUMPY_NAMES = {"float": "float32", "double": "float64", "float16": "float16", "bool": "bool", "int8": "int8",
               "uint8": "uint8", "int16": "int16", "uint16": "uint16", "int32": "int32", "uint32": "uint32",
               "int64": "int64", "uint64": "uint64"}


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message (truncated, or not ONNX at all)."""


@dataclass(frozen=True)
class ValueInfo:
    """One graph input or output: ``type`` as ONNX Runtime spells it (``tensor(float)``), dims int or symbol."""

    name: str
    type: str
    shape: list[int | str | None]

    @property
    def dtype(self) -> str:
        """numpy's name of the element type (``float32``); ONNX's spelling for types numpy lacks."""
        elem = self.type[len("tensor("):-1]
        return NUMPY_NAMES.get(elem, self.type)


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise WireError(f"truncated varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError(f"varint longer than 10 bytes at byte {pos}")


def fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of one message: an int for varint and fixed types, a view for bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise WireError(f"field number 0 at byte {pos}")
        if wt == 0:
            val, pos = _varint(buf, pos)
            yield num, wt, val
        elif wt == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise WireError(f"field {num}: {n} bytes at byte {pos} run past the end ({end})")
            yield num, wt, buf[pos:pos + n]
            pos += n
        elif wt in (1, 5):
            size = 8 if wt == 1 else 4
            if pos + size > end:
                raise WireError(f"field {num}: truncated fixed-size value at byte {pos}")
            yield num, wt, int.from_bytes(buf[pos:pos + size], "little")
            pos += size
        else:
            raise WireError(f"field {num}: wire type {wt} is not used by ONNX")


def _sub(buf: memoryview, want: int) -> Iterator[memoryview]:
    for num, wt, val in fields(buf):
        if num == want and wt == 2:
            assert isinstance(val, memoryview)
            yield val


def _text(v: memoryview) -> str:
    try:
        return bytes(v).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("a name is not UTF-8") from None


def _value_info(buf: memoryview) -> ValueInfo:
    name, elem, shape = "", 0, []
    for num, wt, val in fields(buf):
        if num == VALUE_NAME and wt == 2:
            assert isinstance(val, memoryview)
            name = _text(val)
        elif num == VALUE_TYPE and wt == 2:
            assert isinstance(val, memoryview)
            for tensor in _sub(val, TYPE_TENSOR):
                for n2, w2, v2 in fields(tensor):
                    if n2 == TENSOR_TYPE_ELEM and w2 == 0:
                        assert isinstance(v2, int)
                        elem = v2
                    elif n2 == TENSOR_TYPE_SHAPE and w2 == 2:
                        assert isinstance(v2, memoryview)
                        shape = [_dim(d) for d in _sub(v2, SHAPE_DIM)]
    return ValueInfo(name, f"tensor({ELEM_TYPES.get(elem, str(elem))})", shape)


def _dim(buf: memoryview) -> int | str | None:
    for num, wt, val in fields(buf):
        if num == DIM_VALUE and wt == 0:
            assert isinstance(val, int)
            return val - (1 << 64) if val >= 1 << 63 else val
        if num == DIM_PARAM and wt == 2:
            assert isinstance(val, memoryview)
            return _text(val) or None
    return None


def _graph(data: memoryview) -> memoryview:
    graphs = list(_sub(data, MODEL_GRAPH))
    if not graphs:
        raise WireError("no graph (field 7 of ModelProto)")
    return graphs[-1]  # protobuf: the last occurrence of a message field wins (merged; ONNX writes one)


def read_io(path: str | Path) -> tuple[list[ValueInfo], list[ValueInfo]]:
    """The graph's inputs (initializers excluded, as ONNX Runtime lists them) and outputs."""
    with _mapped(Path(path)) as data:
        graph = _graph(data)
        inits = {_tensor_name(t) for t in _sub(graph, GRAPH_INITIALIZER)}
        inputs = [_value_info(v) for v in _sub(graph, GRAPH_INPUT)]
        outputs = [_value_info(v) for v in _sub(graph, GRAPH_OUTPUT)]
    return [v for v in inputs if v.name not in inits], outputs


def _tensor_name(buf: memoryview) -> str:
    for num, wt, val in fields(buf):
        if num == TENSOR_NAME and wt == 2:
            assert isinstance(val, memoryview)
            return _text(val)
    return ""


def _tensors(graph: memoryview, depth: int = 0) -> Iterator[memoryview]:
    """Every TensorProto of a graph: initializers (sparse ones too) and tensor attributes, subgraphs included."""
    if depth > MAX_DEPTH:
        raise WireError(f"subgraphs nested deeper than {MAX_DEPTH}")
    for num, wt, val in fields(graph):
        if wt != 2:
            continue
        assert isinstance(val, memoryview)
        if num == GRAPH_INITIALIZER:
            yield val
        elif num == GRAPH_SPARSE_INITIALIZER:
            yield from _sparse(val)
        elif num == GRAPH_NODE:
            for attr in _sub(val, NODE_ATTRIBUTE):
                for n2, w2, v2 in fields(attr):
                    if w2 != 2:
                        continue
                    assert isinstance(v2, memoryview)
                    if n2 in (ATTR_T, ATTR_TENSORS):
                        yield v2
                    elif n2 in (ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS):
                        yield from _sparse(v2)
                    elif n2 in (ATTR_G, ATTR_GRAPHS):
                        yield from _tensors(v2, depth + 1)


def _sparse(buf: memoryview) -> Iterator[memoryview]:
    for num, wt, val in fields(buf):
        if num in (SPARSE_VALUES, SPARSE_INDICES) and wt == 2:
            assert isinstance(val, memoryview)
            yield val


def external_locations(path: str | Path) -> set[str]:
    """The ``location`` of every tensor whose data lives outside the file (relative to the model's folder)."""
    return set(external_extents(path))


ITEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def external_extents(path: str | Path) -> dict[str, int]:
    """location -> the bytes its tensors need (the furthest ``offset + length`` into that file; the length from
    dims x element size where the entry names none), so that a truncated weight file is found before a runtime
    trips over it."""
    out: dict[str, int] = {}
    mapped = _mapped(Path(path))
    with mapped as data:
        graph = _graph(data)
        if not mapped.contains(b"location"):
            return out  # every external tensor names its file under the key "location": none here (memchr speed)
        for t in _tensors(graph):
            external, entry, dims, elem = False, {}, [], 0
            for num, wt, val in fields(t):
                if num == TENSOR_DATA_LOCATION and wt == 0:
                    external = val == DATA_LOCATION_EXTERNAL
                elif num == TENSOR_EXTERNAL_DATA and wt == 2:
                    assert isinstance(val, memoryview)
                    kv = {k: _text(v) for k, w, v in fields(val) if w == 2 and isinstance(v, memoryview)}
                    if ENTRY_KEY in kv:
                        entry[kv[ENTRY_KEY]] = kv.get(ENTRY_VALUE, "")
                elif num == TENSOR_DIMS:
                    dims += _packed_ints(val) if isinstance(val, memoryview) else [int(val)]
                elif num == TENSOR_DATA_TYPE and wt == 0:
                    assert isinstance(val, int)
                    elem = val
            location = entry.get("location")
            if not external or not location:
                continue
            try:
                offset = int(entry.get("offset") or 0)
                numel = 1
                for d in dims:
                    numel *= max(d, 0)
                length = int(entry["length"]) if entry.get("length") else numel * ITEM_BYTES.get(elem, 0)
            except ValueError:
                raise WireError(f"tensor {_tensor_name(t)!r}: external data offset/length is not a number") from None
            out[location] = max(out.get(location, 0), offset + length)
    return out


def _packed_ints(buf: memoryview) -> list[int]:
    vals, pos = [], 0
    while pos < len(buf):
        v, pos = _varint(buf, pos)
        vals.append(v)
    return vals


class _mapped:
    """The file's bytes as a read-only memoryview over a memory map (an empty file gives an empty view)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "rb")  # closed in __exit__
        size = self.path.stat().st_size
        self._m = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self._view = memoryview(self._m) if self._m is not None else memoryview(b"")

    def __enter__(self) -> memoryview:
        return self._view

    def contains(self, needle: bytes) -> bool:
        return self._m is not None and self._m.find(needle) >= 0

    def __exit__(self, *exc: object) -> None:
        self._view.release()
        if self._m is not None:
            try:
                self._m.close()
            except BufferError:  # a caller still holds a slice: the map closes when it is collected
                pass
        self._f.close()


__all__ = ["ELEM_TYPES", "ValueInfo", "WireError", "external_extents", "external_locations", "fields", "read_io"]
