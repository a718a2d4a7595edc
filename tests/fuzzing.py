"""Mutations for the strict-parsing fuzz tests: a valid JSON document or file is corrupted at random, and the
reader under test must either give the same result or fail with ONE StreamparityError line naming the file."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from streamparity.errors import StreamparityError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_MESSAGE = 300

_KINDS = {"null": type(None), "bool": bool, "int": int, "float": float, "str": str, "list": list, "dict": dict}
_VALUES: dict[str, Any] = {
    "null": st.none(),
    "bool": st.booleans(),
    "int": st.sampled_from([0, 1, -1, 2**31, 2**63, 10**30, 7]),
    "float": st.sampled_from([0.5, -1.5, 1e300, 3.0]),
    "str": st.sampled_from(["", "x", "1", "true", "float32", "\u00e9", "a" * 400]),
    "list": st.sampled_from([[], [1], ["a"], [True], [[1, 2], [3]]]),
    "dict": st.sampled_from([{}, {"a": 1}, {"dtype": "float32"}]),
}


def kind(v: Any) -> str:
    return next(k for k, t in _KINDS.items() if type(v) is t)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:6]):
            out += paths(v, (*prefix, i))
    return out


def replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {k: replace(v, rest, value) if k == head else v for k, v in doc.items()}
    return [replace(v, rest, value) if i == head else v for i, v in enumerate(doc)]


@st.composite
def retyped(draw: st.DrawFn, doc: Any, *, unions: tuple[str, ...] = (), optional: tuple[str, ...] = ()
            ) -> tuple[tuple[Any, ...], Any]:
    """(path, document) with the value at a random path replaced by one of another JSON type
    (a float by no integer: 2 for 2.5 is a value, not a type).  The elements of lists under a key in `unions`
    may legitimately take several types (a contract shape holds integers and names) and are left alone, and so
    are the top-level fields in `optional` (a string or null: either is a value)."""
    candidates = [p for p in paths(doc) if p and not (len(p) >= 2 and p[-2] in unions) and
                  not (len(p) == 1 and p[0] in optional)]
    path = draw(st.sampled_from(candidates))
    old = doc
    for k in path:
        old = old[k]
    kinds = [k for k in _VALUES if k != kind(old) and not (kind(old) == "float" and k == "int")]
    new = draw(st.sampled_from(kinds).flatmap(lambda k: _VALUES[k]))
    return path, replace(doc, path, new)


@st.composite
def corrupted_bytes(draw: st.DrawFn, data: bytes) -> bytes:
    """The bytes of a valid file broken as files break: a BOM, a byte that is not UTF-8, a cut, deep nesting,
    a duplicated key."""
    how = draw(st.sampled_from(["bom", "bad-byte", "truncate", "nest", "dup-key"]))
    if how == "bom":
        return b"\xef\xbb\xbf" + data
    if how == "truncate":
        return data[:draw(st.integers(0, max(len(data) - 1, 0)))]
    i = draw(st.integers(0, len(data) - 1))
    if how == "bad-byte":
        return data[:i] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + data[i + 1:]
    braces = [j for j in range(len(data)) if data[j:j + 1] == b"{"]
    j = braces[i % len(braces)]
    if how == "nest":
        return data[:j + 1] + b'"deep": ' + b"[" * 5000 + b"]" * 5000 + b", " + data[j + 1:]
    # the first key of an object, written twice
    k_end = data.find(b'":', j)
    key = data[j + 1:k_end + 1]
    return data[:j + 1] + key + b': 0, ' + data[j + 1:]


def dumps(doc: Any) -> str:
    return json.dumps(doc)


def assert_one_error_line(e: BaseException, file: str) -> str:
    """The error is one streamparity error: one line, bounded, naming the file."""
    assert isinstance(e, StreamparityError), f"{type(e).__name__}: {e}"
    msg = e.format()
    assert "\n" not in msg and len(msg) <= MAX_MESSAGE, msg
    assert file in msg, msg
    return msg
