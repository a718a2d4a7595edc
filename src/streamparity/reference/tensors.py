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


def decode_tensor(obj: Any, *, file: str, line: int | None, chunk: int | None, field: str) -> np.ndarray:
    """Decode one tensor, raising ReferenceFormatError naming file, line, chunk and field."""

    def fail(msg: str) -> ReferenceFormatError:
        return ReferenceFormatError(msg, file=file, line=line, chunk=chunk, field=field)

    if isinstance(obj, list):
        try:
            arr = np.asarray(obj)
        except ValueError:
            raise fail("ragged nested list is not a tensor") from None
        if arr.dtype.kind not in "fiub":
            raise fail(f"nested list holds non-numeric values ({arr.dtype})")
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
    missing = [k for k in ("dtype", "shape") if k not in obj]
    if missing:
        raise fail(f"tensor lacks {', '.join(missing)}")
    dname = obj["dtype"]
    if dname not in DTYPES:
        raise fail(f"unknown dtype {dname!r} (known: {', '.join(DTYPES)})")
    shape = obj["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise fail(f"shape must be a list of non-negative integers, got {shape!r}")
    dt = DTYPES[dname]
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if "data_b64" in obj:
        data = obj["data_b64"]
        if not isinstance(data, (str, bytes)):
            raise fail("data_b64 must be a string")
        try:
            raw = binascii.a2b_base64(data, strict_mode=True)
        except (binascii.Error, ValueError) as e:
            raise fail(f"data_b64 is not valid base64 ({e})") from None
        if len(raw) != count * dt.itemsize:
            raise fail(
                f"data_b64 holds {len(raw)} bytes, but dtype {dname} and shape {shape} need {count * dt.itemsize}"
            )
        return np.frombuffer(raw, dtype=dt).reshape(tuple(shape))  # tuple: reshape([]) would give (1,)
    if "data" in obj:
        try:
            arr = np.asarray(obj["data"], dtype=dt)
        except (ValueError, TypeError):
            raise fail("data is not a numeric list") from None
        if arr.size != count:
            raise fail(f"data holds {arr.size} values, shape {shape} needs {count}")
        return arr.reshape(tuple(shape))
    raise fail("tensor has neither data_b64 nor data")
