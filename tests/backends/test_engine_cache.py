"""Engine cache on CPU, with a real builder standing in for TensorRT: ONNX -> FP16 ONNX (onnxruntime's
float16 converter), verified by loading it into an onnxruntime session."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamparity.backends.onnx_models import file_sha256
from streamparity.backends.tensorrt import engine_cache as ec
from streamparity.errors import EngineCacheError


def _model(path: Path, scale: float = 1.0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((4, 4), scale, np.float32), "W")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=-1)],
        "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def fp16_build(onnx_path: Path, block: tuple[str, ...] = (), marker: Path | None = None,
               interrupt: bool = False, delay: float = 0.0) -> bytes:
    """Build: FP16 conversion; the 'timing cache' records every model converted with this builder."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(onnx_path))
    m16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(block) or None)
    if interrupt:
        raise KeyboardInterrupt
    if delay:
        time.sleep(delay)
    if marker is not None:
        with open(marker, "a", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
    return bytes(m16.SerializeToString())


class Builder:
    """Counts calls and keeps the timing cache each build saw."""

    def __init__(self, onnx_path: Path, block: tuple[str, ...] = (), interrupt: bool = False) -> None:
        self.onnx_path, self.block, self.interrupt = onnx_path, block, interrupt
        self.calls = 0
        self.seen_timing: list[bytes | None] = []

    def __call__(self, timing: Path) -> bytes:
        self.calls += 1
        prev = ec.load_timing_cache(timing)
        self.seen_timing.append(prev)
        data = fp16_build(self.onnx_path, self.block, interrupt=self.interrupt)
        ec.save_timing_cache(timing, (prev or b"") + f"{self.onnx_path.name}:{self.block}\n".encode())
        return data


def verify_ort(data: bytes) -> None:
    import onnxruntime as ort

    ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def material(onnx_path: Path, **options: Any) -> dict[str, Any]:
    opts = {"precision": "fp16", "profiles": [[[1, 4], [1, 4], [1, 4]]], "tf32": False, "fp32_layers": [],
            "workspace_mib": 64, **options}
    return ec.key_material(onnx=onnx_path, builder="ort-fp16", builder_version="1.0", gpu_name="cpu",
                           compute_capability="0.0", options=opts)


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    return _model(tmp_path / "m.onnx")


def _get(engine_dir: Path, onnx_file: Path, b: Callable[[Path], bytes], **kw: Any) -> ec.CacheEntry:
    opts = kw.pop("options", {})
    return ec.get_or_build(engine_dir, "enc", material(onnx_file, **opts), b, verify_fn=verify_ort, **kw)


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.suffix in (".plan", ".json") or p.name.endswith(".tmp"))


def test_cold_then_warm_builds_once(tmp_path: Path, onnx_file: Path) -> None:
    d = tmp_path / "engines"
    b = Builder(onnx_file)
    first = _get(d, onnx_file, b)
    assert first.built and b.calls == 1
    assert first.plan_path.name.startswith("enc-fp16-") and first.plan_path.suffix == ".plan"
    m = first.manifest
    assert m["key"] == ec.cache_key(material(onnx_file))
    assert first.plan_path.name == f"enc-fp16-{m['key'][:16]}.plan"
    assert m["plan_size"] == first.plan_path.stat().st_size
    assert m["plan_sha256"] == file_sha256(first.plan_path)
    assert m["builder_version"] == "1.0" and m["build_seconds"] >= 0 and m["created"] > 0
    assert m["key_material"]["onnx_sha256"] == ec.onnx_sha256(onnx_file)
    verify_ort(first.read_plan())
    for _ in range(3):
        warm = _get(d, onnx_file, b)
        assert not warm.built and warm.plan_path == first.plan_path
    assert b.calls == 1


def test_changed_key_builds_a_new_entry(tmp_path: Path, onnx_file: Path) -> None:
    d = tmp_path / "engines"
    b = Builder(onnx_file)
    a = _get(d, onnx_file, b)
    c = _get(d, onnx_file, b, options={"fp32_layers": ["Softmax"]})
    assert c.built and c.plan_path != a.plan_path and b.calls == 2
    _model(onnx_file, scale=2.0)  # new ONNX bytes -> new key
    e = _get(d, onnx_file, b)
    assert e.built and e.plan_path not in (a.plan_path, c.plan_path) and b.calls == 3
    assert a.plan_path.is_file() and c.plan_path.is_file()  # old entries stay for other keys


def test_key_is_canonical() -> None:
    a = {"b": [1, 2], "a": {"y": 1, "x": (3, 4)}}
    b = {"a": {"x": [3, 4], "y": 1}, "b": (1, 2)}
    assert ec.cache_key(a) == ec.cache_key(b)
    assert ec.cache_key(a) != ec.cache_key({**a, "c": 0})
    with pytest.raises(EngineCacheError):
        ec.cache_key({"x": float("nan")})
    with pytest.raises(EngineCacheError):
        ec.cache_key({"x": object()})


def test_onnx_sha256_follows_file_changes(tmp_path: Path) -> None:
    p = tmp_path / "f.onnx"
    p.write_bytes(b"one")
    h1 = ec.onnx_sha256(p)
    assert h1 == ec.onnx_sha256(p)
    p.write_bytes(b"other")
    assert ec.onnx_sha256(p) != h1


def _corrupt_truncate(e: ec.CacheEntry) -> None:
    data = e.plan_path.read_bytes()
    e.plan_path.write_bytes(data[: len(data) // 2])


def _corrupt_flip(e: ec.CacheEntry) -> None:
    data = bytearray(e.plan_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    e.plan_path.write_bytes(bytes(data))


def _corrupt_no_manifest(e: ec.CacheEntry) -> None:
    e.manifest_path.unlink()


def _corrupt_garbage_manifest(e: ec.CacheEntry) -> None:
    e.manifest_path.write_text("{not json", "utf-8")


def _corrupt_no_plan(e: ec.CacheEntry) -> None:
    e.plan_path.unlink()


def _corrupt_undeserializable(e: ec.CacheEntry) -> None:
    """Consistent manifest, but the plan is not a model: only verify_fn can tell."""
    junk = b"\x00garbage plan\x00" * 64
    e.plan_path.write_bytes(junk)
    import hashlib
    import json

    m = json.loads(e.manifest_path.read_text("utf-8"))
    m.update(plan_size=len(junk), plan_sha256=hashlib.sha256(junk).hexdigest())
    e.manifest_path.write_text(json.dumps(m), "utf-8")


def _corrupt_manifest_not_object(e: ec.CacheEntry) -> None:
    e.manifest_path.write_text("[1, 2, 3]", "utf-8")


def _corrupt_manifest_key(e: ec.CacheEntry) -> None:
    """A manifest copied from another entry (or edited): its key is not the one the file name stands for."""
    import json

    m = json.loads(e.manifest_path.read_text("utf-8"))
    m["key"] = "0" * 64
    e.manifest_path.write_text(json.dumps(m), "utf-8")


@pytest.mark.parametrize(("corrupt", "reason"), [
    (_corrupt_manifest_not_object, "manifest is not a JSON object"),
    (_corrupt_manifest_key, "manifest key 0000000000000000... differs"),
    (_corrupt_truncate, "truncated"),
    (_corrupt_flip, "sha256"),
    (_corrupt_no_manifest, "manifest is missing"),
    (_corrupt_garbage_manifest, "manifest is unreadable"),
    (_corrupt_no_plan, "plan file is missing"),
    (_corrupt_undeserializable, "does not load"),
], ids=["manifest-not-object", "manifest-wrong-key", "truncated", "flipped-byte", "no-manifest", "garbage-manifest",
        "no-plan", "undeserializable"])
def test_corrupt_entry_is_detected_and_rebuilt(tmp_path: Path, onnx_file: Path,
                                               caplog: pytest.LogCaptureFixture,
                                               corrupt: Callable[[ec.CacheEntry], None], reason: str) -> None:
    d = tmp_path / "engines"
    b = Builder(onnx_file)
    first = _get(d, onnx_file, b)
    corrupt(first)
    with caplog.at_level(logging.WARNING, logger="streamparity.backends.tensorrt.engine_cache"):
        again = _get(d, onnx_file, b)
    assert again.built and b.calls == 2
    assert again.plan_path == first.plan_path
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and reason in warnings[0] and first.plan_path.name in warnings[0]
    verify_ort(again.read_plan())
    assert not _get(d, onnx_file, b).built and b.calls == 2


def test_interrupted_build_leaves_nothing(tmp_path: Path, onnx_file: Path) -> None:
    d = tmp_path / "engines"
    with pytest.raises(KeyboardInterrupt):
        _get(d, onnx_file, Builder(onnx_file, interrupt=True))
    assert _leftovers(d) == []
    b = Builder(onnx_file)
    assert _get(d, onnx_file, b).built and b.calls == 1


def test_interrupt_while_writing_plan_leaves_no_temp_file(tmp_path: Path, onnx_file: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "engines"
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(KeyboardInterrupt):
        ec.get_or_build(d, "enc", material(onnx_file), lambda _t: fp16_build(onnx_file))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert _leftovers(d) == []


def test_empty_plan_is_an_error_naming_the_file(tmp_path: Path, onnx_file: Path) -> None:
    d = tmp_path / "engines"
    with pytest.raises(EngineCacheError, match=r"enc-fp16-[0-9a-f]{16}\.plan: .*empty plan"):
        ec.get_or_build(d, "enc", material(onnx_file), lambda _t: b"")
    assert _leftovers(d) == []


def test_rebuild_forces_a_build(tmp_path: Path, onnx_file: Path) -> None:
    d = tmp_path / "engines"
    b = Builder(onnx_file)
    first = _get(d, onnx_file, b)
    forced = _get(d, onnx_file, b, rebuild=True)
    assert forced.built and b.calls == 2 and forced.manifest["created"] >= first.manifest["created"]
    # workers of one run share `fresh_after`: an entry rebuilt during this run is not rebuilt again
    again = _get(d, onnx_file, b, rebuild=True, fresh_after=forced.manifest["created"])
    assert not again.built and b.calls == 2


def test_timing_cache_is_shared_per_builder_and_gpu(tmp_path: Path, onnx_file: Path) -> None:
    d = tmp_path / "engines"
    b1 = Builder(onnx_file)
    _get(d, onnx_file, b1)
    assert b1.seen_timing == [None]
    b2 = Builder(onnx_file, block=("Softmax",))
    e2 = _get(d, onnx_file, b2, options={"fp32_layers": ["Softmax"]})
    assert b2.seen_timing[0] is not None and b"m.onnx" in b2.seen_timing[0]
    timing = ec.timing_cache_path(d, e2.manifest["key_material"])
    assert timing.is_file() and e2.manifest["timing_cache"] == timing.name
    other_gpu = {**material(onnx_file), "gpu": {"name": "other", "compute_capability": "9.0"}}
    assert ec.timing_cache_path(d, other_gpu) != timing


def _race_worker(engine_dir: str, onnx_path: str, marker: str, go: Any, results: Any) -> None:
    go.wait(60)
    entry = ec.get_or_build(Path(engine_dir), "enc", material(Path(onnx_path)),
                            lambda _t: fp16_build(Path(onnx_path), marker=Path(marker), delay=0.3),
                            verify_fn=verify_ort)
    results.put((entry.built, str(entry.plan_path)))


def test_two_processes_build_once(tmp_path: Path, onnx_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    marker = tmp_path / "builds.txt"
    d = tmp_path / "engines"
    procs = [ctx.Process(target=_race_worker, args=(str(d), str(onnx_file), str(marker), go, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    go.set()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(marker.read_text().splitlines()) == 1, "the engine was built more than once"
    assert sorted(b for b, _ in got) == [False, True]
    assert len({path for _, path in got}) == 1
