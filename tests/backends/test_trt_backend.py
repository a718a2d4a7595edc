"""TensorRT backend.  Without TensorRT / a GPU only the availability and pure-Python parts run; on a CUDA host
with TensorRT, FP32 and FP16 engines of a tiny ONNX are built and checked against ONNX Runtime."""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamparity.backends.base import Backend, BackendSpec, HostStream
from streamparity.backends.ort import OrtBackend
from streamparity.backends.tensorrt.loader import build_options, profile_table
from streamparity.backends.tensorrt.runner import choose_profile, create_trt_backend
from streamparity.contract.model import Contract
from streamparity.errors import BackendUnavailable


def _tiny() -> Any:
    """tests/backends/test_device_loop.py's toy encoder builder, loaded by path (works in any import mode)."""
    spec = importlib.util.spec_from_file_location("_sp_tiny_encoder", Path(__file__).with_name("test_device_loop.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def trt_unavailable_reason() -> str | None:
    """Why TensorRT cannot run here, or None."""
    from streamparity.backends.memory import gpu_count, load_cudart
    from streamparity.backends.tensorrt.loader import load_tensorrt

    try:
        load_tensorrt()
        rt = load_cudart()
    except BackendUnavailable as e:
        return str(e)
    count, why = gpu_count(rt)
    return None if count else f"no CUDA GPU is available ({why or 'none found'})"


# -- always run -----------------------------------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Contract, Path]:
    contract, onnx = _tiny().make_tiny_encoder(tmp_path)
    return contract, onnx


def test_missing_tensorrt_raises_backend_unavailable(tiny: tuple[Contract, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    contract, onnx = tiny
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(BackendUnavailable, match=r"tensorrt is not installed \(pip install tensorrt on a CUDA host\)"):
        create_trt_backend(BackendSpec("trt", "cuda", "fp32"), contract, onnx, {"engine_dir": tmp_path})
    assert not any(tmp_path.glob("**/*.plan"))


def test_type_stubs_alone_are_not_tensorrt(tiny: tuple[Contract, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    contract, onnx = tiny
    stub = types.ModuleType("tensorrt")
    stub.__path__ = ["/site-packages/tensorrt"]  # what tensorrt-stubs installs: .pyi files, no Builder
    monkeypatch.setitem(sys.modules, "tensorrt", stub)
    with pytest.raises(BackendUnavailable, match="only type stubs"):
        create_trt_backend(BackendSpec("trt", "cuda", "fp16"), contract, onnx, {"engine_dir": tmp_path})


def test_unsupported_device_and_precision(tiny: tuple[Contract, Path], tmp_path: Path) -> None:
    contract, onnx = tiny
    with pytest.raises(BackendUnavailable, match="CUDA devices only"):
        create_trt_backend(BackendSpec("trt", "cpu", "fp32"), contract, onnx, {"engine_dir": tmp_path})
    with pytest.raises(BackendUnavailable, match="int8"):
        create_trt_backend(BackendSpec("trt", "cuda", "int8"), contract, onnx, {"engine_dir": tmp_path})


def test_profiles_cover_every_input(tiny: tuple[Contract, Path]) -> None:
    contract, _ = tiny
    table = profile_table(contract)
    assert [p["name"] for p in table] == ["chunk", "long"]
    for p in table:
        assert set(p["shapes"]) == set(contract.input_names)
        assert p["shapes"]["cache_last_channel"] == [[2, 1, 6, 4]] * 3  # concrete contract shape, B=1
    assert table[1]["shapes"]["audio_signal"] == [[1, 4, 9], [1, 4, 16], [1, 4, 16]]


def test_build_options_are_part_of_the_key(tiny: tuple[Contract, Path]) -> None:
    contract, _ = tiny
    fp32, fp16 = build_options(contract, "fp32", "weak"), build_options(contract, "fp16", "weak")
    assert fp32["tf32"] is False and fp32["fp32_layers"] == []
    assert fp16["fp32_layers"] == ["(?i)softmax"] and "SOFTMAX" in fp16["fp32_layer_types"]
    assert fp16["workspace_mib"] == 256 and fp16["precision"] == "fp16"


def test_choose_profile() -> None:
    a = {"x": ((1, 4, 1), (1, 4, 2), (1, 4, 8))}
    b = {"x": ((1, 4, 2), (1, 4, 8), (1, 4, 16))}
    assert choose_profile([a, b], {"x": (1, 4, 2)}, "x") == 0
    assert choose_profile([a, b], {"x": (1, 4, 8)}, "x") == 1  # exact opt match preferred
    assert choose_profile([a, b], {"x": (1, 4, 5)}, "x") == 0  # first that fits
    assert choose_profile([a, b], {"x": (1, 4, 12)}, "x") == 1
    with pytest.raises(ValueError, match=r"no optimization profile accepts shape \{'x': \[1, 4, 20\]\}"):
        choose_profile([a, b], {"x": (1, 4, 20)}, "x")


# -- TensorRT on a GPU ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trt_ready() -> None:
    reason = trt_unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def trt_backends(trt_ready: None, tiny: tuple[Contract, Path], tmp_path: Path) -> Iterator[dict[str, Backend]]:
    contract, onnx = tiny
    opts = {"engine_dir": tmp_path / "engines"}
    made = {p: create_trt_backend(BackendSpec("trt", "cuda", p), contract, onnx, opts) for p in ("fp32", "fp16")}
    yield made
    for b in made.values():
        b.close()


def _feeds(t: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"audio_signal": rng.standard_normal((1, 4, t)).astype(np.float32), "length": np.array([t], np.int64),
            "cache_last_channel": rng.standard_normal((2, 1, 6, 4)).astype(np.float32),
            "cache_last_time": rng.standard_normal((2, 1, 4, 3)).astype(np.float32),
            "cache_last_channel_len": np.array([4], np.int64)}


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_matches_onnxruntime(trt_backends: dict[str, Backend], tiny: tuple[Contract, Path],
                                    precision: str) -> None:
    contract, onnx = tiny
    ort = OrtBackend(contract, onnx)
    b = trt_backends[precision]
    tol = contract.tolerance("outputs", precision)
    for t, seed in ((2, 0), (1, 1), (8, 2), (12, 3), (16, 4)):  # both profiles, opt and off-opt shapes
        feeds = _feeds(t, seed)
        got, want = b.run(feeds), ort.run(feeds)
        assert set(got) == set(want)
        for name, w in want.items():
            assert got[name].shape == w.shape and got[name].dtype == w.dtype, name
            if w.dtype.kind == "f":
                np.testing.assert_allclose(got[name], w, atol=tol.atol, rtol=tol.rtol, err_msg=f"T={t} {name}")
            else:
                np.testing.assert_array_equal(got[name], w, err_msg=f"T={t} {name}")
    with pytest.raises(ValueError, match="no optimization profile accepts shape"):
        b.run(_feeds(20, 5))


@pytest.mark.trt
@pytest.mark.gpu
def test_device_resident_stream_matches_onnxruntime(trt_backends: dict[str, Backend],
                                                    tiny: tuple[Contract, Path]) -> None:
    contract, onnx = tiny
    init = _tiny().initial_caches(contract)
    host = HostStream(OrtBackend(contract, onnx), init, fetch_caches=True)
    dev = trt_backends["fp32"].open_stream(init, fetch_caches=False)
    rng = np.random.default_rng(7)
    length = np.array([2], np.int64)
    for _ in range(10):
        audio = rng.standard_normal((1, 4, 2)).astype(np.float32)
        want, got = host.step(audio, length), dev.step(audio, length)
        assert set(got) == {"outputs", "encoded_lengths", "cache_last_channel_next_len"}
        np.testing.assert_allclose(got["outputs"], want["outputs"], atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(got["cache_last_channel_next_len"], want["cache_last_channel_next_len"])
        assert dev.bytes_moved == (audio.nbytes + length.nbytes, sum(v.nbytes for v in got.values()))
    snap = dev.state_snapshot()
    np.testing.assert_allclose(snap["cache_last_channel"], host.state["cache_last_channel"], atol=1e-5)
    dev.close()


@pytest.mark.trt
@pytest.mark.gpu
def test_second_backend_uses_the_cached_engine(trt_backends: dict[str, Backend], tiny: tuple[Contract, Path],
                                               tmp_path: Path) -> None:
    contract, onnx = tiny
    again = create_trt_backend(BackendSpec("trt", "cuda", "fp32"), contract, onnx,
                               {"engine_dir": tmp_path / "engines"})
    try:
        assert again.describe()["engine_built"] is False
        assert again.describe()["engine"] == trt_backends["fp32"].describe()["engine"]
    finally:
        again.close()


@pytest.mark.trt
@pytest.mark.gpu
def test_session_engine_fixtures_skip_with_reason_or_run(parity, trt_fp32, ort_fp32):
    """Engines are session fixtures: built (or loaded from the engine cache) once, shared by every test."""
    from streamparity.judging.metrics import compare_output, verdict

    rec = parity.reference.read(0)
    out, base = trt_fp32.run(rec.inputs), ort_fp32.run(rec.inputs)
    assert out.keys() == base.keys()
    for name in parity.contract.compared_outputs():
        m = compare_output(parity.contract, name, out[name], base[name], chunk=0, precision="fp32")
        assert verdict(m, parity.contract.tolerance(name, "fp32")) != "fail", m


@pytest.mark.trt
@pytest.mark.gpu
def test_bisect_on_tensorrt_names_the_broken_tensor(trt_ready: None, tmp_path: Path) -> None:
    """`streamparity bisect --backend trt-...`: an engine of the instrumented model returns every marked tensor."""
    from streamparity.tools import onnx_faults
    from tests.conftest import TINY_ONNX, run_cli

    node = "/layers.1/feed_forward1/linear2/MatMul"
    broken = onnx_faults.save(onnx_faults.break_node(onnx_faults.load(TINY_ONNX), node, 1.5), tmp_path / "b.onnx")
    r = run_cli("bisect", "--chunk", "3", "--onnx", str(broken), "--backend", "trt-cuda-fp32")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"first divergent tensor: {node}_output_0\n" in r.stdout
    assert "not floating point (left unmarked)" in r.stdout and "WARNING: marking intermediate" in r.stdout
