"""Property-based tests: reference writer/reader round trip, the fast line reader against the json path,
and the comparison metrics."""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install -e '.[dev]')")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from streamparity.contract.model import Tolerance
from streamparity.errors import ReferenceFormatError
from streamparity.judging.metrics import compare_arrays, verdict
from streamparity.reference.fastparse import parse_chunk_json, parse_chunk_line
from streamparity.reference.reader import ReferenceFile
from streamparity.reference.tensors import DTYPES
from streamparity.reference.writer import ReferenceWriter

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dtypes = st.sampled_from(sorted(DTYPES))
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def arrays(draw: st.DrawFn, dtype: str | None = None, shape: tuple[int, ...] | None = None) -> np.ndarray:
    name = dtype or draw(dtypes)
    return draw(hnp.arrays(DTYPES[name], shape if shape is not None else draw(shapes)))


tensor_dicts = st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), arrays(), min_size=1,
                               max_size=4)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=st.lists(st.tuples(tensor_dicts, tensor_dicts), min_size=1, max_size=4),
       meta=st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
                            max_size=3))  # meta integers are int64, as the reader requires
def test_writer_reader_round_trip(chunks: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
                                  meta: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.jsonl"
        with ReferenceWriter(path, {"contract": "props"}, len(chunks)) as w:
            for k, (ins, outs) in enumerate(chunks):
                w.write(k, meta, ins, outs)
        ref = ReferenceFile(path)
        assert ref.chunk_ids == list(range(len(chunks)))
        for k in reversed(range(len(chunks))):  # random access, last first
            rec = ref.read(k)
            ins, outs = chunks[k]
            assert rec.meta == meta
            assert rec.inputs.keys() == ins.keys() and rec.outputs.keys() == outs.keys()
            for got, want in ((rec.inputs, ins), (rec.outputs, outs)):
                for name in want:
                    assert _same(got[name], np.asarray(want[name]).astype(got[name].dtype.newbyteorder("<"))), name


@SETTINGS
@given(a=arrays())
def test_plain_list_tensors_read_like_b64(a: np.ndarray) -> None:
    """A foreign writer's nested lists decode to the same values as our base64 tensors."""
    if a.dtype.kind == "f":
        a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0)
    if 0 in a.shape or a.ndim == 0:
        return  # a scalar is not a list, and an empty nested list loses its shape
    line = json.dumps({"chunk": 0, "meta": {}, "inputs": {"x": a.tolist()},
                       "outputs": {"y": {"dtype": str(a.dtype), "shape": list(a.shape), "data_b64":
                                         base64.b64encode(a.astype(a.dtype.newbyteorder("<")).tobytes()).decode()}}})
    if a.dtype.kind == "f" and np.any(np.abs(a) > np.finfo(np.float32).max):
        return  # outside float32's range: refused, see test_plain_float_lists_read_as_float32
    ins, outs = parse_chunk_line(line.encode(), file="f", line_no=1, chunk=0)
    want = a.astype(np.float32) if a.dtype.kind == "f" else a  # a plain list carries no dtype
    assert ins["x"].dtype == (np.float32 if a.dtype.kind == "f" else ins["x"].dtype)
    assert np.array_equal(ins["x"].astype(np.float64), want.astype(np.float64))
    assert _same(outs["y"], a.astype(a.dtype.newbyteorder("<")))


b64_alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
payloads = st.one_of(
    arrays(dtype="float32").map(lambda a: base64.b64encode(a.tobytes()).decode()),
    st.text(alphabet=b64_alphabet + "=", max_size=24),
    st.text(alphabet=b64_alphabet + "= \\-_!\u00e9", max_size=24),
)


def _outcome(fn: Any, line: bytes) -> tuple[str, Any]:
    try:
        ins, outs = fn(line, file="f.jsonl", line_no=3, chunk=1)
    except ReferenceFormatError as e:
        return "error", e.format()
    return "ok", {k: (v.dtype.str, v.shape, v.tobytes()) for k, v in {**ins, **outs}.items()}


@SETTINGS
@given(payload=payloads, dtype=dtypes, shape=shapes, spaces=st.sampled_from(["", " ", "  "]),
       escaped=st.booleans())
def test_fast_reader_accepts_and_rejects_exactly_like_json(payload: str, dtype: str, shape: tuple[int, ...],
                                                          spaces: str, escaped: bool) -> None:
    """The fast path never accepts what decode_tensor rejects, and its errors are the json path's."""
    body = json.dumps(payload)
    if escaped:
        body = body.replace("/", "\\/")
    tensor = f'{{"dtype":{spaces}"{dtype}", "shape": {list(shape)}, "data_b64":{spaces}{body}}}'
    line = f'{{"chunk": 1, "meta": {{}}, "inputs": {{"a": {tensor}}}, "outputs": {{}}}}\n'.encode()
    assert _outcome(parse_chunk_line, line) == _outcome(parse_chunk_json, line)


# -- comparison metrics ---------------------------------------------------------------------------
pairs = shapes.filter(lambda s: 0 < int(np.prod(s)) <= 64).flatmap(
    lambda s: st.tuples(arrays(dtype="float32", shape=s), arrays(dtype="float32", shape=s)))
finite = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
                    elements=st.floats(-1e6, 1e6, width=32))
TOL = Tolerance(atol=1e-4, rtol=1e-4, reason="props")


@SETTINGS
@given(ab=pairs)
def test_max_abs_is_symmetric(ab: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = ab
    m1 = compare_arrays(a, b, output="o", chunk=0, atol=0.0, rtol=0.0)
    m2 = compare_arrays(b, a, output="o", chunk=0, atol=0.0, rtol=0.0)
    assert m1.max_abs == m2.max_abs or (np.isnan(m1.max_abs) and np.isnan(m2.max_abs))
    assert m1.nonfinite == m2.nonfinite


@SETTINGS
@given(a=finite)
def test_identical_arrays_have_zero_error(a: np.ndarray) -> None:
    m = compare_arrays(a, a.copy(), output="o", chunk=0, atol=0.0, rtol=0.0)
    assert m.max_abs == 0.0 and m.mismatches == 0 and m.nonfinite == 0
    assert verdict(m, TOL) == "pass"


@SETTINGS
@given(a=finite, data=st.data(), where=st.sampled_from(["actual", "expected"]),
       bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_non_finite_always_fails(a: np.ndarray, data: st.DataObject, where: str, bad: float) -> None:
    i = data.draw(st.integers(0, a.size - 1))
    b = a.copy()
    (b if where == "actual" else a).reshape(-1)[i] = bad
    m = compare_arrays(b, a, output="o", chunk=0, atol=1e30, rtol=1e30)
    assert m.nonfinite >= 1 and verdict(m, TOL) == "fail"
    assert verdict(m, Tolerance(atol=float("inf"), rtol=float("inf"), reason="")) == "fail"


@SETTINGS
@given(a=finite, noise=st.floats(0, 1), atol1=st.floats(0, 1), atol2=st.floats(0, 1))
def test_mismatches_never_grow_with_a_looser_tolerance(a: np.ndarray, noise: float, atol1: float,
                                                        atol2: float) -> None:
    rng = np.random.default_rng(0)
    b = (a + rng.standard_normal(a.shape).astype(np.float32) * np.float32(noise)).astype(np.float32)
    lo, hi = sorted((atol1, atol2))
    m_lo = compare_arrays(b, a, output="o", chunk=0, atol=lo, rtol=0.0)
    m_hi = compare_arrays(b, a, output="o", chunk=0, atol=hi, rtol=0.0)
    assert m_hi.mismatches <= m_lo.mismatches
    assert m_lo.max_abs >= m_lo.p99_abs >= m_lo.p95_abs >= 0.0 and m_lo.max_abs >= m_lo.mean_abs
    assert (m_lo.mismatches == 0) == (m_lo.max_abs <= lo)


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2)])
def test_scalars_and_empty_tensors_round_trip(tmp_path: Path, shape: tuple[int, ...]) -> None:
    a = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    with ReferenceWriter(tmp_path / "r.jsonl", {}, 1) as w:
        w.write(0, {}, {"a": a}, {"b": a.astype(np.int64)})
    rec = ReferenceFile(tmp_path / "r.jsonl").read(0)
    assert _same(rec.inputs["a"], a) and _same(rec.outputs["b"], a.astype(np.int64))
