"""Tensor codec for the reference JSONL: ``{dtype, shape, data_b64}`` (raw little-endian) or nested lists.

A plain nested list carries no dtype: floating-point values are read as float32 and integers as int64, the
types NeMo's ONNX export uses.  Anything else needs the ``{dtype, shape, data_b64}`` (or ``data``) form."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import numpy as np

from streamparity.errors import ReferenceFormatError

DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
    "bool": np.dtype("?"),
}


def encode_tensor(array: np.ndarray) -> dict[str, Any]:
    a = np.asarray(array)
    name = dtype_name(a.dtype)
    le = np.ascontiguousarray(a, dtype=DTYPES[name]).reshape(a.shape)  # ascontiguousarray makes scalars 1-d
    return {"dtype": name, "shape": list(le.shape), "data_b64": base64.b64encode(le.tobytes()).decode("ascii")}


def dtype_name(dt: np.dtype[Any]) -> str:
    for name, d in DTYPES.items():
        if np.dtype(dt).newbyteorder("<") == d or np.dtype(dt) == d:
            return name
    raise ValueError(f"unsupported dtype {dt}")


MAX_DIM = 2**31 - 1
"""Largest extent of one axis."""
MAX_RANK = 32
MAX_BYTES = 2**40
"""Largest tensor a reference line may describe (1 TiB): shape products are exact Python integers below it."""
TENSOR_KEYS = frozenset(("dtype", "shape", "data_b64", "data"))


def tensor_layout(obj: Mapping[str, Any]) -> tuple[str, tuple[int, ...], int] | str:
    """(dtype name, shape, element count) of a ``{dtype, shape, data_b64 | data}`` object, or why it is not one.

    Strict: the dtype is a known name, the shape a list of at most MAX_RANK integers (not booleans) in
    0..MAX_DIM whose byte size stays under MAX_BYTES, exactly one of data_b64 and data, and no other keys."""
    extra = sorted(str(k)[:20] for k in obj if k not in TENSOR_KEYS)
    if extra:
        return f"tensor has unknown key(s) {', '.join(extra)} (a tensor is dtype, shape and data_b64 or data)"
    missing = [k for k in ("dtype", "shape") if k not in obj]
    if missing:
        return f"tensor lacks {', '.join(missing)}"
    dname = obj["dtype"]
    if not isinstance(dname, str) or dname not in DTYPES:
        return f"unknown dtype {str(dname)[:40]!r} (known: {', '.join(DTYPES)})"
    shape = obj["shape"]
    if not isinstance(shape, list) or len(shape) > MAX_RANK or \
            not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape):
        return f"shape must be a list of at most {MAX_RANK} integers 0..{MAX_DIM}, got {str(shape)[:60]}"
    count = 1
    for d in shape:
        count *= d
    if count * DTYPES[dname].itemsize > MAX_BYTES:
        return f"shape {shape} of {dname} is over {MAX_BYTES} bytes"
    if ("data_b64" in obj) == ("data" in obj):
        return "tensor has both data_b64 and data" if "data" in obj else "tensor has neither data_b64 nor data"
    return dname, tuple(shape), count


def _holds_bool(obj: Any) -> bool:
    """Whether a nested list holds a JSON boolean anywhere (numpy would read true as 1)."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, bool):
            return True
    return False


def _exact(arr: np.ndarray, dt: np.dtype[Any]) -> np.ndarray | str:
    """`arr` (numpy's reading of JSON numbers) as dtype `dt` when every value survives the cast, else why not."""
    if arr.size == 0:
        return arr.astype(dt)
    if dt.kind == "b":
        return arr if arr.dtype.kind == "b" else f"a {dt.name} tensor holds non-boolean values"
    if arr.dtype.kind == "b":
        return f"a {dt.name} tensor holds booleans (true/false are not numbers)"
    if arr.dtype.kind not in "iuf":
        return f"values are not numbers ({arr.dtype})"
    if dt.kind == "i":
        if arr.dtype.kind == "f":
            return f"a {dt.name} tensor holds non-integer values"
        info = np.iinfo(dt)
        if arr.min() < info.min or arr.max() > info.max:
            return f"values outside {dt.name}'s range"
        return arr.astype(dt)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = arr.astype(dt)
    if not np.array_equal(np.isfinite(cast), np.isfinite(arr)):
        return f"values outside {dt.name}'s range"
    return cast


def decode_tensor(obj: Any, *, file: str, line: int | None, chunk: int | None, field: str) -> np.ndarray:
    """Decode one tensor, raising ReferenceFormatError naming file, line, chunk and field."""

    def fail(msg: str) -> ReferenceFormatError:
        return ReferenceFormatError(msg, file=file, line=line, chunk=chunk, field=field)

    if isinstance(obj, list):
        try:
            arr = np.asarray(obj)
        except (ValueError, TypeError, OverflowError):
            raise fail("ragged nested list is not a tensor") from None
        if arr.dtype.kind not in "fiub":
            raise fail(f"nested list holds non-numeric values ({arr.dtype})")
        if arr.dtype.kind == "u" or (arr.dtype.kind == "i" and arr.dtype != np.int64):
            raise fail("nested list holds integers outside int64's range")
        if arr.dtype.kind != "b" and _holds_bool(obj):
            raise fail("nested list mixes booleans with numbers")
        if arr.dtype.kind == "f":
            # a plain list carries no dtype: floats are float32 (as NeMo exports them), integers int64
            with np.errstate(over="ignore"):
                f32 = arr.astype(np.float32)
            if not np.array_equal(np.isfinite(f32), np.isfinite(arr)):
                raise fail("nested list holds values outside float32's range; give the tensor as "
                           "{dtype, shape, data_b64} to keep another dtype")
            return f32
        return arr
    if not isinstance(obj, Mapping):
        raise fail(f"expected a tensor object or a list, got {type(obj).__name__}")
    layout = tensor_layout(obj)
    if isinstance(layout, str):
        raise fail(layout)
    dname, shape, count = layout
    dt = DTYPES[dname]
    if "data_b64" in obj:
        data = obj["data_b64"]
        if not isinstance(data, str):
            raise fail("data_b64 must be a string")
        try:
            raw = binascii.a2b_base64(data, strict_mode=True)
        except (binascii.Error, ValueError) as e:
            raise fail(f"data_b64 is not valid base64 ({e})") from None
        if len(raw) != count * dt.itemsize:
            raise fail(
                f"data_b64 holds {len(raw)} bytes, but dtype {dname} and shape {str(list(shape))[:60]} need "
                f"{count * dt.itemsize}"
            )
        return np.frombuffer(raw, dtype=dt).reshape(shape)  # a tuple: reshape([]) would give (1,)
    data = obj["data"]
    if isinstance(data, (str, dict)) or (dt.kind != "b" and _holds_bool(data)) or \
            (dt.kind == "b" and not isinstance(data, (list, bool))):
        raise fail(f"data must be a list of {'booleans' if dt.kind == 'b' else 'numbers'}")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise fail("data is not a numeric list") from None
    got = _exact(arr, dt)
    if isinstance(got, str):
        raise fail(f"data: {got}")
    if got.size != count:
        raise fail(f"data holds {got.size} values, shape {str(list(shape))[:60]} needs {count}")
    return got.reshape(shape)
