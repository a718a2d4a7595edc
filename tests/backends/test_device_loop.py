"""The device-resident closed loop (ping-pong caches, on-device padding) equals HostStream, on CPU.

`NumpyOps` stands in for device memory and `HostBackendRunner` runs the real ONNX Runtime CPU backend,
so the loop logic shared by the TensorRT / ORT-CUDA / PyTorch-CUDA streams is checked without a GPU.
`make_tiny_encoder` builds a small cache-aware ONNX + contract that test_trt_backend.py reuses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamparity.backends.base import HostStream, pad_cache_to
from streamparity.backends.device_loop import (
    BufferPool,
    DeviceLoopStream,
    HostBackendRunner,
    pad_left_on_device,
    run_once,
)
from streamparity.backends.memory import NumpyOps
from streamparity.backends.ort import OrtBackend
from streamparity.contract.loading import load_contract
from streamparity.contract.model import Contract

L, F, TC, K, STEP = 2, 4, 6, 3, 2


def _tiny_onnx(path: Path, *, cache_out_frames: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((F, F)) * 0.5).astype(np.float32), "W")
    consts = [
        w,
        numpy_helper.from_array(np.array([L, 1, 1, 1], np.int64), "expand_shape"),
        numpy_helper.from_array(np.array([-cache_out_frames], np.int64), "ch_start"),
        numpy_helper.from_array(np.array([-K], np.int64), "t_start"),
        numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), "big"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([3], np.int64), "axis3"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(STEP, np.int64), "step"),
        numpy_helper.from_array(np.array(TC, np.int64), "len_max"),
        numpy_helper.from_array(np.array(0.1, np.float32), "tscale"),
    ]
    n = helper.make_node
    nodes = [
        n("Transpose", ["audio_signal"], ["x"], perm=[0, 2, 1]),
        n("Unsqueeze", ["x", "axis0"], ["xe"]),
        n("Expand", ["xe", "expand_shape"], ["xl"]),
        n("Concat", ["cache_last_channel", "xl"], ["cat"], axis=2),
        n("Slice", ["cat", "ch_start", "big", "axis2"], ["ch_slice"]),
        n("Tanh", ["ch_slice"], ["cache_last_channel_next"], name="cache_tanh"),
        n("ReduceMean", ["cache_last_channel_next"], ["ctx"], axes=[0, 2], keepdims=0),
        n("MatMul", ["x", "W"], ["xw"]),
        n("Unsqueeze", ["ctx", "axis1"], ["ctx1"]),
        n("Add", ["xw", "ctx1"], ["h"]),
        n("Unsqueeze", ["audio_signal", "axis0"], ["ae"]),
        n("Expand", ["ae", "expand_shape"], ["al"]),
        n("Concat", ["cache_last_time", "al"], ["tcat"], axis=3),
        n("Slice", ["tcat", "t_start", "big", "axis3"], ["cache_last_time_next"]),
        n("ReduceSum", ["cache_last_time_next", "axis0"], ["ts0"], keepdims=0),
        n("ReduceSum", ["ts0", "axis2"], ["ts"], keepdims=0),
        n("Mul", ["ts", "tscale"], ["tss"]),
        n("Unsqueeze", ["tss", "axis1"], ["tss1"]),
        n("Add", ["h", "tss1"], ["h2"]),
        n("Softmax", ["h2"], ["sm"], axis=-1, name="attn/softmax"),
        n("Add", ["h2", "sm"], ["h3"]),
        n("Transpose", ["h3"], ["outputs"], perm=[0, 2, 1]),
        n("Identity", ["length"], ["encoded_lengths"]),
        n("Add", ["cache_last_channel_len", "step"], ["len_sum"]),
        n("Min", ["len_sum", "len_max"], ["cache_last_channel_next_len"]),
    ]
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "tiny_cache_encoder",
        [vi("audio_signal", f32, ["B", F, "T"]), vi("length", i64, ["B"]),
         vi("cache_last_channel", f32, [L, "B", TC, F]), vi("cache_last_time", f32, [L, "B", F, K]),
         vi("cache_last_channel_len", i64, ["B"])],
        [vi("outputs", f32, ["B", F, "T"]), vi("encoded_lengths", i64, ["B"]),
         vi("cache_last_channel_next", f32, [L, "B", cache_out_frames, F]),
         vi("cache_last_time_next", f32, [L, "B", F, K]), vi("cache_last_channel_next_len", i64, ["B"])],
        consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="streamparity-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_tiny_encoder(tmp: Path, *, pad: bool = False) -> tuple[Contract, Path]:
    """A 2-layer toy cache-aware encoder (ONNX) and its contract; `pad` makes caches come out short."""
    out_frames = TC - 2 if pad else TC
    onnx_path = tmp / ("tiny-pad.onnx" if pad else "tiny.onnx")
    _tiny_onnx(onnx_path, cache_out_frames=out_frames)
    tol = {"atol": 1e-5, "rtol": 1e-5, "reason": "toy model"}
    tol16 = {"atol": 2e-2, "rtol": 1e-2, "reason": "toy model, FP16"}
    doc: dict[str, Any] = {
        "schema_version": 1,
        "name": "tiny-test-encoder",
        "model": {"onnx": onnx_path.name},
        "dims": {"B": {"min": 1, "max": 1}, "T": {"min": 1, "max": 16}},
        "inputs": [
            {"name": "audio_signal", "dtype": "float32", "shape": ["B", F, "T"], "role": "audio"},
            {"name": "length", "dtype": "int64", "shape": ["B"], "role": "length"},
            {"name": "cache_last_channel", "dtype": "float32", "shape": [L, "B", TC, F],
             "role": "cache_channel"},
            {"name": "cache_last_time", "dtype": "float32", "shape": [L, "B", F, K], "role": "cache_time"},
            {"name": "cache_last_channel_len", "dtype": "int64", "shape": ["B"], "role": "cache_len"},
        ],
        "outputs": [
            {"name": "outputs", "dtype": "float32", "shape": ["B", F, "T"], "role": "encoded"},
            {"name": "encoded_lengths", "dtype": "int64", "shape": ["B"], "role": "encoded_len"},
            {"name": "cache_last_channel_next", "dtype": "float32", "shape": [L, "B", out_frames, F],
             "role": "cache_channel", "feeds": "cache_last_channel"},
            {"name": "cache_last_time_next", "dtype": "float32", "shape": [L, "B", F, K],
             "role": "cache_time", "feeds": "cache_last_time"},
            {"name": "cache_last_channel_next_len", "dtype": "int64", "shape": ["B"], "role": "cache_len",
             "feeds": "cache_last_channel_len"},
        ],
        "cache_layout": "layers_first",
        "streaming": {
            "first_chunk_frames": STEP, "chunk_frames": STEP, "valid_out_len": STEP,
            "cache_channel_size": TC, "cache_time_size": K,
            "cache_len": {"rule": "saturating_add", "initial": 0, "step": STEP, "max": TC},
            "cache_output_time_dim": "dynamic_pad_to_input" if pad else "fixed",
        },
        "profiles": [
            {"name": "chunk",
             "shapes": {"audio_signal": {"min": [1, F, 1], "opt": [1, F, STEP], "max": [1, F, 8]}}},
            {"name": "long",
             "shapes": {"audio_signal": {"min": [1, F, 9], "opt": [1, F, 16], "max": [1, F, 16]}}},
        ],
        "build": {"fp32_disable_tf32": True, "fp16_fp32_layers": ["(?i)softmax"], "workspace_mib": 256},
        "tolerances": {"outputs": {"fp32": tol, "fp16": tol16},
                       "cache_last_channel_next": {"fp32": tol, "fp16": tol16},
                       "cache_last_time_next": {"fp32": tol, "fp16": tol16}},
    }
    cpath = tmp / ("tiny-pad.contract.json" if pad else "tiny.contract.json")
    cpath.write_text(json.dumps(doc), "utf-8")
    return load_contract(cpath), onnx_path


def initial_caches(contract: Contract) -> dict[str, np.ndarray]:
    return {
        "cache_last_channel": np.zeros((L, 1, TC, F), np.float32),
        "cache_last_time": np.zeros((L, 1, F, K), np.float32),
        "cache_last_channel_len": np.zeros((1,), np.int64),
    }


def _chunks(n: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, F, STEP)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("pad", [False, True], ids=["fixed", "dynamic_pad"])
@pytest.mark.parametrize("fetch_caches", [True, False])
def test_device_loop_equals_host_stream(tmp_path: Path, pad: bool, fetch_caches: bool) -> None:
    contract, onnx_path = make_tiny_encoder(tmp_path, pad=pad)
    backend = OrtBackend(contract, onnx_path)
    ops = NumpyOps()
    pool: BufferPool[np.ndarray] = BufferPool(ops)
    host = HostStream(backend, initial_caches(contract), fetch_caches=True)
    dev = DeviceLoopStream(contract, ops, HostBackendRunner(backend, ops), pool, initial_caches(contract),
                           fetch_caches=fetch_caches)
    length = np.array([STEP], np.int64)
    sizes: set[int] = set()
    for k, audio in enumerate(_chunks(12)):
        snap = dev.state_snapshot()
        for name, value in host.state.items():
            np.testing.assert_array_equal(snap[name], value, err_msg=f"chunk {k} state {name}")
        want = host.step(audio, length)
        got = dev.step(audio, length)
        np.testing.assert_array_equal(dev.last_cache_len_in, host.last_cache_len_in)
        small = {"outputs", "encoded_lengths", "cache_last_channel_next_len"}
        expected_names = set(want) if fetch_caches else small
        assert set(got) == expected_names
        for name in got:
            assert got[name].dtype == want[name].dtype
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"chunk {k} output {name}")
        up, down = dev.bytes_moved
        assert up == audio.nbytes + length.nbytes
        # the snapshot taken before the step is counted with it
        assert down == sum(v.nbytes for v in got.values()) + sum(v.nbytes for v in snap.values())
        sizes.add(pool.total_bytes)
        if pad:
            assert want["cache_last_channel_next"].shape[2] == TC - 2
    assert len(sizes) == 1, "device buffers must be allocated once, not per chunk"
    assert int(host.state["cache_last_channel_len"][0]) == TC  # saturated
    dev.close()


def test_second_stream_invalidates_first(tmp_path: Path) -> None:
    contract, onnx_path = make_tiny_encoder(tmp_path)
    backend = OrtBackend(contract, onnx_path)
    ops = NumpyOps()
    pool: BufferPool[np.ndarray] = BufferPool(ops)
    runner = HostBackendRunner(backend, ops)
    first = DeviceLoopStream(contract, ops, runner, pool, initial_caches(contract), fetch_caches=False)
    DeviceLoopStream(contract, ops, runner, pool, initial_caches(contract), fetch_caches=False)
    with pytest.raises(RuntimeError, match="one stream at a time"):
        first.step(_chunks(1)[0], np.array([STEP], np.int64))


def test_run_once_equals_backend_run(tmp_path: Path) -> None:
    contract, onnx_path = make_tiny_encoder(tmp_path)
    backend = OrtBackend(contract, onnx_path)
    ops = NumpyOps()
    pool: BufferPool[np.ndarray] = BufferPool(ops)
    feeds: dict[str, np.ndarray] = {**initial_caches(contract), "audio_signal": _chunks(1)[0],
                                    "length": np.array([STEP], np.int64)}
    feeds["cache_last_channel"] = np.random.default_rng(3).standard_normal((L, 1, TC, F)).astype(np.float32)
    got = run_once(contract, ops, HostBackendRunner(backend, ops), pool, feeds)
    want = backend.run(feeds)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.parametrize(("src", "dst"), [((2, 1, 4, 3), (2, 1, 6, 3)), ((2, 1, 3, 5), (2, 1, 3, 7)),
                                          ((4, 2), (4, 2)), ((3,), (8,)), ((0, 2), (0, 2))])
def test_pad_left_on_device_matches_host_padding(src: tuple[int, ...], dst: tuple[int, ...]) -> None:
    ops = NumpyOps()
    a = np.arange(1, int(np.prod(src)) + 1, dtype=np.float32).reshape(src)
    s = ops.alloc(a.nbytes)
    ops.h2d(s, a)
    d = ops.alloc(int(np.prod(dst)) * 4)
    d[:] = 255  # garbage from a previous chunk must be overwritten with zeros
    pad_left_on_device(ops, d, dst, s, src, 4, name="cache")
    np.testing.assert_array_equal(ops.d2h(d, dst, np.dtype(np.float32)), pad_cache_to(a, dst, name="cache"))


def test_pad_left_on_device_rejects_bad_shapes() -> None:
    ops = NumpyOps()
    buf = ops.alloc(1024)
    with pytest.raises(ValueError, match="exceeds"):
        pad_left_on_device(ops, buf, (2, 3), buf, (2, 4), 4, name="c")
    with pytest.raises(ValueError, match="one \\(time\\) axis"):
        pad_left_on_device(ops, buf, (3, 3), buf, (2, 2), 4, name="c")
    with pytest.raises(ValueError, match="rank"):
        pad_left_on_device(ops, buf, (3, 3), buf, (9,), 4, name="c")


class _OrtOnTorch:
    """Runner over TorchOps buffers that lets ONNX Runtime CPU do the math."""

    def __init__(self, backend: OrtBackend, ops: Any) -> None:
        self.backend, self.ops = backend, ops

    def execute(self, inputs: Any, bind_output: Any) -> dict[str, tuple[int, ...]]:
        feeds = {n: self.ops.d2h(t.buf, t.shape, t.dtype) for n, t in inputs.items()}
        shapes: dict[str, tuple[int, ...]] = {}
        for n, v in self.backend.run(feeds).items():
            self.ops.h2d(bind_output(n, tuple(v.shape)), np.ascontiguousarray(v))
            shapes[n] = tuple(v.shape)
        return shapes


@pytest.mark.parametrize("pad", [False, True], ids=["fixed", "dynamic_pad"])
def test_torch_ops_loop_equals_host_stream(tmp_path: Path, pad: bool) -> None:
    """The PyTorch device ops (here on the CPU device; CUDA on a GPU host) carry caches like HostStream."""
    pytest.importorskip("torch", reason="PyTorch is not installed")
    from streamparity.backends.memory import TorchOps

    contract, onnx_path = make_tiny_encoder(tmp_path, pad=pad)
    backend = OrtBackend(contract, onnx_path)
    ops = TorchOps("cpu")
    host = HostStream(backend, initial_caches(contract), fetch_caches=True)
    dev = DeviceLoopStream(contract, ops, _OrtOnTorch(backend, ops), BufferPool(ops), initial_caches(contract),
                           fetch_caches=True)
    length = np.array([STEP], np.int64)
    for k, audio in enumerate(_chunks(8, seed=5)):
        want, got = host.step(audio, length), dev.step(audio, length)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"chunk {k} output {name}")
    for name, value in dev.state_snapshot().items():
        np.testing.assert_array_equal(value, host.state[name])
