"""TensorRT-RTX for real on a host without a usable GPU: the real builder makes FP32 and FP16 plans of the embedded
model through the engine cache (once per test session), and every cache property is checked on those plans.
Deserializing needs a GPU: where it cannot run, the backend says what the runtime said, after the plan is cached."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from streamparity.contract.loading import load_contract
from streamparity.contract.model import Contract
from streamparity.errors import BackendUnavailable, ContractError, EngineCacheError, ModelMismatch
from tests.conftest import ROOT, TINY_CONTRACT, TINY_ONNX, run_cli, run_pytest

trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx is not installed (pip install -e '.[rtx]')")

from streamparity.backends.tensorrt import loader  # noqa: E402
from streamparity.backends.tensorrt.engine_cache import CacheEntry  # noqa: E402
from streamparity.backends.tensorrt.flavor import TENSORRT_RTX  # noqa: E402
from streamparity.backends.tensorrt.plans import build_or_load, plan_options, precheck_supplied  # noqa: E402


def _bind() -> Any:
    return loader.load_tensorrt(TENSORRT_RTX)


def _entry(contract: Contract, onnx: Path, precision: str, engine_dir: Path, **kw: Any) -> CacheEntry:
    mod = _bind()
    options = plan_options(TENSORRT_RTX, mod, contract, precision, kw.pop("targets", ()))
    return build_or_load(TENSORRT_RTX, mod, contract, onnx, options, engine_dir, gpu=None, verify_fn=None,
                         unverified_reason="test: no GPU", **kw)


@pytest.fixture(scope="session")
def rtx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rtx-engines")


@pytest.fixture(scope="session")
def rtx_plans(rtx_dir: Path) -> dict[str, CacheEntry]:
    """The embedded model's FP32 and FP16 TensorRT-RTX plans, built once per test session."""
    contract = load_contract(TINY_CONTRACT)
    return {p: _entry(contract, TINY_ONNX, p, rtx_dir) for p in ("fp32", "fp16")}


def _copy_entry(entry: CacheEntry, d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for src in (entry.plan_path, entry.manifest_path):
        (d / src.name).write_bytes(src.read_bytes())
    return d / entry.plan_path.name


def test_real_plans_and_manifest(rtx_plans: dict[str, CacheEntry], tiny_contract: Contract) -> None:
    import hashlib

    for precision, e in rtx_plans.items():
        m = e.manifest
        data = e.plan_path.read_bytes()
        assert len(data) > 1_000_000 and m["plan_size"] == len(data)
        assert m["plan_sha256"] == hashlib.sha256(data).hexdigest()
        km = m["key_material"]
        assert km["builder"] == {"name": "tensorrt_rtx", "version": trt.__version__}
        assert km["gpu"] == {"name": "ahead-of-time", "compute_capability": "portable"}
        assert km["options"]["typing"] == "strong" and km["options"]["precision"] == precision
        assert km["options"]["timing_cache"] is False  # a no-op in TensorRT-RTX
        assert m["verified"] is False and "GPU" in m["not_verified_reason"]
        assert set(m["io"]["inputs"]) == {s.name for s in tiny_contract.inputs}
        assert set(m["io"]["outputs"]) == {s.name for s in tiny_contract.outputs}
        assert e.key in e.plan_path.name or e.key[:16] in e.plan_path.name
    assert rtx_plans["fp32"].key != rtx_plans["fp16"].key
    assert rtx_plans["fp16"].manifest["plan_size"] < rtx_plans["fp32"].manifest["plan_size"]


def test_warm_cache_builds_nothing(rtx_plans: dict[str, CacheEntry], rtx_dir: Path, tiny_contract: Contract) -> None:
    before = sorted(p.name for p in rtx_dir.iterdir())
    for precision, e in rtx_plans.items():
        again = _entry(tiny_contract, TINY_ONNX, precision, rtx_dir)
        assert not again.built and again.plan_path == e.plan_path and again.manifest == e.manifest
    assert sorted(p.name for p in rtx_dir.iterdir()) == before


def test_changed_option_and_onnx_build_new_plans(rtx_plans: dict[str, CacheEntry], tmp_path: Path,
                                                 tiny_contract: Contract) -> None:
    from streamparity.tools import onnx_faults

    d = tmp_path / "e"
    _copy_entry(rtx_plans["fp32"], d)
    targeted = _entry(tiny_contract, TINY_ONNX, "fp32", d, targets=("SM86",))
    assert targeted.built and targeted.key != rtx_plans["fp32"].key
    assert targeted.manifest["key_material"]["gpu"]["compute_capability"] == "SM86"
    changed = onnx_faults.save(onnx_faults.scale_initializer(onnx_faults.load(TINY_ONNX), ".", 1.001),
                               tmp_path / "encoder.onnx")
    other = _entry(tiny_contract, changed, "fp32", d)
    assert other.built and other.key not in (targeted.key, rtx_plans["fp32"].key)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_or_truncated_plan_is_rebuilt(rtx_plans: dict[str, CacheEntry], tmp_path: Path, damage: str,
                                              tiny_contract: Contract, caplog: pytest.LogCaptureFixture) -> None:
    plan = _copy_entry(rtx_plans["fp32"], tmp_path)
    data = bytearray(plan.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 3:]
    plan.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        e = _entry(tiny_contract, TINY_ONNX, "fp32", tmp_path)
    assert e.built and e.plan_path == plan
    assert ("corrupt bytes" if damage == "flip" else "truncated") in caplog.text
    assert e.manifest["plan_size"] == plan.stat().st_size == rtx_plans["fp32"].manifest["plan_size"]


def _build_worker(engine_dir: str, go: Any, results: Any) -> None:
    go.wait(60)
    e = _entry(load_contract(TINY_CONTRACT), TINY_ONNX, "fp32", Path(engine_dir))
    results.put((e.built, str(e.plan_path)))


def test_two_worker_processes_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_build_worker, args=(str(tmp_path), go, results)) for _ in range(2)]
    for p in procs:
        p.start()
    go.set()
    got = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sorted(b for b, _ in got) == [False, True], "the plan was built by both workers"
    assert len({path for _, path in got}) == 1


def test_interrupted_build_leaves_no_partial_file(tmp_path: Path, tiny_contract: Contract) -> None:
    code = ("import sys; sys.path[:0] = [sys.argv[2], sys.argv[3]]\n"
            "from tests.backends.test_trtrtx_engines import _entry, load_contract, TINY_CONTRACT, TINY_ONNX\n"
            "from pathlib import Path\n"
            "_entry(load_contract(TINY_CONTRACT), TINY_ONNX, 'fp32', Path(sys.argv[1]))\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(ROOT / "src"), str(ROOT)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(tmp_path.glob("*.lock")) and time.time() < deadline:  # the build has started
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(30)
    assert not list(tmp_path.glob("*.plan")) and not list(tmp_path.glob("*.json"))
    stale = tmp_path / f".{next(tmp_path.glob('*.lock')).stem}.plan.abc123.tmp"
    stale.write_bytes(b"half a plan")  # what a kill during the final write would leave
    e = _entry(tiny_contract, TINY_ONNX, "fp32", tmp_path)
    assert e.built and not stale.exists() and not list(tmp_path.glob(".*.tmp"))


def test_every_contract_profile_is_accepted_by_the_real_builder() -> None:
    _bind()
    for path in sorted((ROOT / "contracts").glob("*.contract.json")):
        c = load_contract(path)
        assert loader.check_contract_profiles(c) == len(c.profiles) > 0


def test_broken_profile_is_a_clear_error(tmp_path: Path, tiny_contract: Contract) -> None:
    doc = json.loads(TINY_CONTRACT.read_text())
    doc["profiles"][0]["shapes"]["audio_signal"]["min"] = [1, 128, 40]
    bad = tmp_path / "bad.contract.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ContractError, match="min <= opt <= max"):
        load_contract(bad)
    # past the contract's own validation, the real builder's words reach the user
    mod = _bind()
    options = plan_options(TENSORRT_RTX, mod, tiny_contract, "fp32")
    options["profiles"][0]["shapes"]["audio_signal"][0] = [1, 128, 40]
    with pytest.raises(ModelMismatch, match=r"TensorRT-RTX rejected optimization profile 'chunk'.*MIN<=OPT<=MAX") as ei:
        loader.build_plan(TINY_ONNX, tiny_contract, options, tmp_path / "timing.cache")
    assert "catchCudaError" not in str(ei.value)


def test_parser_error_is_a_clear_error(tmp_path: Path, tiny_contract: Contract) -> None:
    mod = _bind()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(TINY_ONNX.read_bytes()[:5000])
    options = plan_options(TENSORRT_RTX, mod, tiny_contract, "fp32")
    with pytest.raises(ModelMismatch, match=r"TensorRT-RTX's ONNX parser rejected the model: .*MODEL_DESERIALIZE"):
        loader.build_plan(cut, tiny_contract, options, tmp_path / "timing.cache")


def test_backend_builds_then_skips_with_the_runtimes_reason(rtx_plans: dict[str, CacheEntry], rtx_dir: Path,
                                                            tiny_contract: Contract) -> None:
    from streamparity.backends.registry import create_backend, parse_backend_spec

    for precision, e in rtx_plans.items():
        try:
            create_backend(parse_backend_spec(f"trtrtx-cuda-{precision}"), tiny_contract, TINY_ONNX,
                           {"engine_dir": rtx_dir})
        except BackendUnavailable as why:
            text = str(why)
        else:  # pragma: no cover - a GPU host that runs TensorRT-RTX plans
            pytest.skip("this host runs TensorRT-RTX plans: the skip path does not apply")
        assert str(e.plan_path) in text and "loaded from the engine cache" in text
        assert "cannot run here" in text and ("cudaError" in text or "get_engine_validity" in text), text


def _contract_with_renamed_output(tmp_path: Path) -> tuple[Path, Path]:
    from streamparity.tools import onnx_faults

    m = onnx_faults.load(TINY_ONNX)
    for n in m.graph.node:
        n.output[:] = ["enc_out" if o == "outputs" else o for o in n.output]
        n.input[:] = ["enc_out" if i == "outputs" else i for i in n.input]
    for o in m.graph.output:
        if o.name == "outputs":
            o.name = "enc_out"
    onnx_path = onnx_faults.save(m, tmp_path / "renamed.onnx")
    doc = json.loads(TINY_CONTRACT.read_text())
    doc["outputs"][0]["name"] = "enc_out"
    doc["tolerances"]["enc_out"] = doc["tolerances"].pop("outputs")
    for key in ("onnx", "reference", "offline_reference"):
        if isinstance(doc["model"].get(key), str):
            doc["model"][key] = str((TINY_CONTRACT.parent / doc["model"][key]).resolve())
    contract = tmp_path / "renamed.contract.json"
    contract.write_text(json.dumps(doc))
    return contract, onnx_path


def test_supplied_plan_checks_without_deserializing(rtx_plans: dict[str, CacheEntry], tmp_path: Path,
                                                    tiny_contract: Contract) -> None:
    e = rtx_plans["fp16"]
    got = precheck_supplied("trtrtx-cuda-fp16", e.plan_path, tiny_contract)
    assert got.manifest["supplied"] and not got.built and got.manifest["plan_sha256"] == e.manifest["plan_sha256"]
    assert "manifest" in got.manifest["checked_without_deserializing"]
    bare = tmp_path / "bare.plan"
    bare.write_bytes(e.plan_path.read_bytes())
    assert "nothing" in precheck_supplied("trtrtx-cuda-fp16", bare, tiny_contract) \
        .manifest["checked_without_deserializing"]
    old = _copy_entry(e, tmp_path / "old")
    m = json.loads(old.with_suffix(".json").read_text())
    m["key_material"]["builder"]["version"] = "1.6.0.0"
    old.with_suffix(".json").write_text(json.dumps(m))
    with pytest.raises(EngineCacheError, match=r"built by TensorRT-RTX 1\.6\.0\.0; this runtime is TensorRT-RTX "):
        precheck_supplied("trtrtx-cuda-fp16", old, tiny_contract)
    with pytest.raises(EngineCacheError, match="built for fp16, not fp32"):
        precheck_supplied("trtrtx-cuda-fp32", e.plan_path, tiny_contract)


def test_build_engine_then_judge_it_as_it_is(tmp_path: Path) -> None:
    """build-engine on this CPU-only host; pytest --engine loads that plan (never rebuilds), every chunk skips
    with the runtime's reason; a plan whose I/O disagrees is refused before collection, in one line."""
    d = tmp_path / "built"
    r = run_cli("build-engine", "--backend=trtrtx-cuda-fp16", f"--engine-dir={d}")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
    plan = Path(lines["plan"])
    assert plan.is_file() and int(lines["size"].split()[0]) == plan.stat().st_size
    assert lines["built or loaded"] == "built" and float(lines["build seconds"]) > 0
    assert json.loads(lines["key material"])["builder"]["name"] == "tensorrt_rtx"
    r2 = run_cli("build-engine", "--backend=trtrtx-cuda-fp16", f"--engine-dir={d}")
    assert "loaded from the engine cache" in r2.stdout
    unused = tmp_path / "unused-engine-dir"
    res = run_pytest("-m", "parity", "--backend=trtrtx-cuda-fp16", f"--engine=trtrtx-cuda-fp16={plan}",
                     f"--engine-dir={unused}", "--chunks=0", f"--report-dir={tmp_path / 'r'}", "-rs", "-q",
                     "-p", "no:randomly", "-p", "no:cacheprovider")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "passed" in res.stdout and " failed" not in res.stdout
    skips = [s for s in res.stdout.splitlines() if s.startswith("SKIPPED")]
    assert skips and all(f"{plan} (supplied), but it cannot run here" in s for s in skips if "trtrtx" in s)
    assert not unused.exists(), "a supplied plan was rebuilt"

    contract, onnx = _contract_with_renamed_output(tmp_path)
    other = _entry(load_contract(contract), onnx, "fp16", tmp_path / "other")
    res = run_pytest("-m", "parity", "--backend=trtrtx-cuda-fp16", f"--engine=trtrtx-cuda-fp16={other.plan_path}",
                     "-q", "-p", "no:randomly", "-p", "no:cacheprovider")
    assert res.returncode == 4, res.stdout[-2000:] + res.stderr[-2000:]
    err = [line for line in res.stderr.splitlines() if "--engine=" in line]
    assert len(err) == 1 and str(other.plan_path) in err[0] and "'outputs'" in err[0], res.stderr[-2000:]
