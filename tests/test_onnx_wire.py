"""The ONNX wire reader against ``onnx`` itself: the same graph inputs and outputs and external data files on
real models, and on bytes that are not a model (truncated, flipped, random) one ModelMismatch line or an
empty answer, never another exception."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamparity.contract.model_io import read_onnx_io
from streamparity.errors import ModelMismatch
from streamparity.onnx_wire import external_locations, read_io
from tests.conftest import TINY_ONNX

onnx = pytest.importorskip("onnx")


def _with_onnx(path: Path) -> tuple[list[tuple[str, str, list[object]]], list[tuple[str, str, list[object]]]]:
    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}

    def row(v: object) -> tuple[str, str, list[object]]:
        t = v.type.tensor_type  # type: ignore[attr-defined]
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        return v.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, dims  # type: ignore[attr-defined]

    return [row(v) for v in m.graph.input if v.name not in inits], [row(v) for v in m.graph.output]


def test_same_io_as_onnx_on_the_embedded_model() -> None:
    ins, outs = read_io(TINY_ONNX)
    assert ([(v.name, v.dtype, v.shape) for v in ins], [(v.name, v.dtype, v.shape) for v in outs]) == \
        _with_onnx(TINY_ONNX)


def test_external_data_locations_match_onnx(tmp_path: Path) -> None:
    m = onnx.load(str(TINY_ONNX))
    out = tmp_path / "ext.onnx"
    onnx.save_model(m, str(out), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=1024)
    want = {kv.value for t in onnx.load(str(out), load_external_data=False).graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL for kv in t.external_data if kv.key == "location"}
    assert want and external_locations(out) == want
    assert external_locations(TINY_ONNX) == set()
    assert [v.name for v in read_io(out)[0]] == [v.name for v in read_io(TINY_ONNX)[0]]


def test_every_element_type_and_symbolic_dim_reads_as_onnx_reads_it(tmp_path: Path) -> None:
    """Element types and symbolic dims of a graph built with onnx's helper: the reader names them as onnx does."""
    from onnx import TensorProto, helper

    types = [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.INT32,
             TensorProto.BOOL, TensorProto.UINT8, TensorProto.INT8]
    ins = [helper.make_tensor_value_info(f"x{i}", t, ["B", 3, None]) for i, t in enumerate(types)]
    outs = [helper.make_tensor_value_info(f"y{i}", t, ["B", 3, None]) for i, t in enumerate(types)]
    nodes = [helper.make_node("Identity", [f"x{i}"], [f"y{i}"]) for i in range(len(types))]
    path = tmp_path / "types.onnx"
    onnx.save_model(helper.make_model(helper.make_graph(nodes, "g", ins, outs)), str(path))
    got = read_io(path)
    assert ([(v.name, v.dtype, v.shape) for v in got[0]], [(v.name, v.dtype, v.shape) for v in got[1]]) == \
        _with_onnx(path)


def test_bytes_that_are_not_a_model_give_one_line(tmp_path: Path) -> None:
    data = TINY_ONNX.read_bytes()
    rng = np.random.default_rng(0)
    cases = [data[:n] for n in (0, 1, 2, 7, 100, 1000, len(data) // 2, len(data) - 1)]
    for _ in range(40):
        b = bytearray(data[:4096])
        for i in rng.integers(0, len(b), size=3):
            b[int(i)] = int(rng.integers(0, 256))
        cases.append(bytes(b))
    cases += [rng.integers(0, 256, size=n, dtype=np.uint8).tobytes() for n in (1, 10, 300)]
    cases += [b'{"not": "onnx"}', b"\xff" * 20]
    bad = tmp_path / "bad.onnx"
    for case in cases:
        bad.write_bytes(case)
        try:
            read_onnx_io(bad)
        except ModelMismatch as e:
            text = str(e)
            assert "\n" not in text and len(text) < 400 and str(bad) in text, text
        try:
            external_locations(bad)
        except ValueError:
            pass
