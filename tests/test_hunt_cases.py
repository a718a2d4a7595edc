"""Cases from a hunt of bad inputs and faults (issue 12): each is one clear line with the right exit code, or
a verdict that says why; never a traceback, a silent pass or a report that lies.

Runs are in this process (``main(argv)``, pytester) except where an environment variable is the input: those
start ``python -m pytest`` with it set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, TINY_ONNX, TINY_REFERENCE, Ran, run_cli_inprocess
from tests.test_bad_inputs import _garbage_b64, _set, assert_clean_error, make_reference

onnx = pytest.importorskip("onnx")


def _extra_input_onnx(tmp_path: Path) -> Path:
    from onnx import TensorProto, helper

    m = onnx.load(str(TINY_ONNX))
    m.graph.input.append(helper.make_tensor_value_info("extra_in", TensorProto.FLOAT, [1]))
    p = tmp_path / "extra_input.onnx"
    onnx.save(m, str(p))
    return p


def _extra_output_onnx(tmp_path: Path) -> Path:
    from onnx import TensorProto, helper

    m = onnx.load(str(TINY_ONNX))
    m.graph.output.append(helper.make_tensor_value_info("encoded_lengths_copy", TensorProto.INT64, [None]))
    m.graph.node.append(helper.make_node("Identity", ["encoded_lengths"], ["encoded_lengths_copy"]))
    p = tmp_path / "extra_output.onnx"
    onnx.save(m, str(p))
    return p


def _fixed_frames_onnx(tmp_path: Path) -> Path:
    m = onnx.load(str(TINY_ONNX))
    audio = next(i for i in m.graph.input if i.name == "audio_signal")
    audio.type.tensor_type.shape.dim[2].dim_value = 30  # the schedule feeds 25 frames
    p = tmp_path / "fixed30.onnx"
    onnx.save(m, str(p))
    return p


@pytest.mark.parametrize("case", ["extra-input", "extra-output", "fixed-frames", "empty-report-dir", "chunks-outside",
                                  "drift-rate"])
def test_bad_run_inputs_are_one_usage_error(tmp_path: Path, case: str,
                                            run_pytest_inprocess: Callable[..., Ran]) -> None:
    env_rate = None
    if case == "extra-input":
        args, needle = [f"--onnx={_extra_input_onnx(tmp_path)}"], "model has input(s) 'extra_in' that the contract"
    elif case == "extra-output":  # computed, never judged; a device loop would have no buffer for it
        args, needle = [f"--onnx={_extra_output_onnx(tmp_path)}"], \
            "model has output(s) 'encoded_lengths_copy' that the contract does not name"
    elif case == "fixed-frames":
        args, needle = [f"--onnx={_fixed_frames_onnx(tmp_path)}"], "30 frames fixed in the model"
    elif case == "empty-report-dir":
        args, needle = ["--report-dir="], "argument --report-dir: an empty path"
    elif case == "chunks-outside":
        args, needle = ["--chunks=0,500"], "500 reaches outside the reference, which holds chunks 0..299"
    else:
        args, needle, env_rate = ["-p", "streamparity.tools.drift_fault", "--backend=drift-cpu-fp32"], \
            "$STREAMPARITY_DRIFT_RATE: 'abc' is not a finite number", "abc"
    cmd = ["-m", "parity", "-q", "--chunks=0-3", *args]
    if not any(a.startswith("--report-dir") for a in args):
        cmd.append(f"--report-dir={tmp_path / 'rep'}")
    if case == "chunks-outside":
        cmd.remove("--chunks=0-3")
    if env_rate is None:
        r: Ran | subprocess.CompletedProcess[str] = run_pytest_inprocess(*cmd)
    else:  # the input is the environment: a process started with it
        env = {**os.environ, "STREAMPARITY_DRIFT_RATE": env_rate}
        env.pop("PYTEST_XDIST_WORKER", None)
        r = subprocess.run([sys.executable, "-m", "pytest", *cmd], cwd=ROOT, capture_output=True, text=True, env=env,
                           timeout=120, check=False)
    assert_clean_error(r, needle, code=4)


def test_a_repeated_backend_runs_once(tmp_path: Path, run_pytest_inprocess: Callable[..., Ran]) -> None:
    r = run_pytest_inprocess("-m", "parity and functional", "--backend=ort-cpu-fp32", "--backend=ort-cpu-fp32",
                             "--chunks=0-1", f"--report-dir={tmp_path}", "-q")
    assert r.returncode == 0, r.stdout[-2000:]
    runs = json.loads((tmp_path / "summary.json").read_text())["runs"]
    assert [(x["backend"], x["chunks"]) for x in runs] == [("ort-cpu-fp32", 2)]


def test_a_rejected_reference_still_writes_a_failing_report(tmp_path: Path,
                                                            run_pytest_inprocess: Callable[..., Ran]) -> None:
    bad = make_reference(tmp_path / "bad.jsonl", _set("outputs", "cache_last_time_next", _garbage_b64))
    r = run_pytest_inprocess("-m", "parity", "--backend=ort-cpu-fp32", f"--reference={bad}",
                             f"--report-dir={tmp_path / 'r'}", "-q")
    assert r.returncode == 1
    doc = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert doc["verdict"] == "FAIL" and doc["reference_check"]["ok"] is False
    report = (tmp_path / "r" / "report.md").read_text()
    assert "**Overall: FAIL**" in report and "The reference was rejected before any runtime was judged" in report


@pytest.mark.parametrize("case", ["init-contract-out-dir", "check-reference-json-dir", "record-negative-upto",
                                  "record-missing-runtime", "repro-unknown-backend"])
def test_cli_errors_are_one_line(tmp_path: Path, case: str, run_pytest_inprocess: Callable[..., Ran]) -> None:
    if case == "init-contract-out-dir":
        r, needle = run_cli_inprocess("init-contract", f"--onnx={TINY_ONNX}", f"--out={tmp_path}"), "is a directory"
    elif case == "check-reference-json-dir":
        r, needle = run_cli_inprocess("check-reference", str(TINY_REFERENCE), "--no-bench",
                                      f"--json={tmp_path}"), "Is a directory"
    elif case == "record-negative-upto":
        r, needle = run_cli_inprocess("record", "--backend=ort-cpu-fp32", f"--out={tmp_path / 'rec'}",
                                      "--upto=-1"), "argument --upto"
    elif case == "record-missing-runtime":
        r, needle = run_cli_inprocess("record", "--backend=ext-cpp-fp32", "--runtime=cpp:fp32=/nonexistent/serve",
                                      f"--out={tmp_path / 'rec'}", "--upto=1"), "cannot be started"
    else:
        meta, arrays = _stuck_bundle(tmp_path, run_pytest_inprocess)
        meta["backend"] = "foo-cpu-fp32"
        r, needle = run_cli_inprocess("repro", str(_save_bundle(tmp_path / "edited.npz", meta, arrays))), \
            "invalid backend 'foo-cpu-fp32'"
    assert_clean_error(r, needle, code=2)


def _stuck_bundle(tmp_path: Path, run_pytest: Callable[..., Ran]) -> tuple[dict, dict]:
    """(meta, arrays) of a real failure bundle: a stuck cache length, functional chunk 1."""
    from streamparity.tools import onnx_faults as F

    stuck = F.save(F.passthrough(F.load(TINY_ONNX), "cache_last_channel_next_len", "cache_last_channel_len"),
                   tmp_path / "stuck.onnx")
    run_pytest("-m", "parity and functional", f"--onnx={stuck}", "--backend=ort-cpu-fp32", "--chunks=1",
               f"--report-dir={tmp_path / 'rep'}", "-q")
    bundle = next((tmp_path / "rep" / "bundles").glob("*.npz"))
    with np.load(bundle) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(arrays.pop("meta").tobytes()), arrays


def _save_bundle(path: Path, meta: dict, arrays: dict) -> Path:
    np.savez(path, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    return path


def test_repro_refuses_a_bundle_whose_inputs_were_altered(tmp_path: Path,
                                                         run_pytest_inprocess: Callable[..., Ran]) -> None:
    meta, arrays = _stuck_bundle(tmp_path, run_pytest_inprocess)
    same = run_cli_inprocess("repro", str(_save_bundle(tmp_path / "same.npz", meta, arrays)))
    assert same.returncode == 1  # reproduced
    arrays["input/audio_signal"] = arrays["input/audio_signal"][..., :20]
    r = run_cli_inprocess("repro", str(_save_bundle(tmp_path / "cut.npz", meta, arrays)))
    assert_clean_error(r, "bundle input audio_signal: 20 frames, contract schedule says 25", code=2)


def test_cli_contract_options_take_shipped_names_and_odd_files_are_named(
        tmp_path: Path, run_pytest_inprocess: Callable[..., Ran]) -> None:
    assert run_cli_inprocess("check-contract", "tiny-parakeet").returncode == 0
    r = run_cli_inprocess("check-reference", str(TINY_REFERENCE), "--contract=tiny-parakeet", "--no-bench")
    assert r.returncode == 0 and "contract invariants" in r.stdout, r.stderr
    assert_clean_error(run_cli_inprocess("repro", str(tmp_path)), "is a directory, not a file", code=2)
    r = run_pytest_inprocess("-m", "parity", "--reference=/dev/zero", "--collect-only", "-q")
    assert_clean_error(r, "reference is not a regular file", code=4)


@pytest.mark.parametrize("reason", ["TODO", "todo: measure it", "TODO:x", "  Todo later"])
def test_every_spelling_of_todo_is_undecided(reason: str) -> None:
    from streamparity.contract.markers import is_todo

    assert is_todo(reason) and not is_todo("a reason that mentions todo later")


def test_truncated_external_weights_are_refused_up_front(tmp_path: Path,
                                                        run_pytest_inprocess: Callable[..., Ran]) -> None:
    m = onnx.load(str(TINY_ONNX))
    model = tmp_path / "ext.onnx"
    onnx.save_model(m, str(model), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
                    size_threshold=1024)
    data = tmp_path / "ext.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    r = run_pytest_inprocess("-m", "parity", f"--onnx={model}", "--collect-only", "-q")
    assert_clean_error(r, "external data file ext.data holds", "(truncated?)", code=4)


def test_a_reference_with_foreign_tensors_or_layout_and_a_wrong_offline_batch_are_rejected(tmp_path: Path) -> None:
    def extra(obj: dict) -> None:
        obj["inputs"]["bogus"] = obj["inputs"]["length"]

    r = run_cli_inprocess("check-reference", str(make_reference(tmp_path / "x.jsonl", extra)),
                          "--contract=tiny-parakeet", "--no-bench")
    assert_clean_error(r, "not a tensor of the contract", code=2)
    from streamparity.contract.loading import load_contract
    from streamparity.reference.checks import check_reference
    from streamparity.reference.reader import ReferenceFile

    tiny = load_contract(ROOT / "contracts" / "tiny-parakeet.contract.json")
    with np.load(ROOT / "fixtures" / "tiny" / "offline.npz") as z:
        np.savez(tmp_path / "b2.npz", encoded=np.concatenate([z["encoded"]] * 2), warmup_chunks=z["warmup_chunks"])
    rep = check_reference(tiny, ReferenceFile(TINY_REFERENCE), offline_path=tmp_path / "b2.npz")
    assert not rep.ok and "not the same batch" in str(rep.format_error) and "b2.npz" in str(rep.format_error)


def test_a_contract_path_in_the_environment_that_is_missing_names_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "STREAMPARITY_CONTRACT": str(tmp_path / "nope.json")}
    env.pop("PYTEST_XDIST_WORKER", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", "parity", "--collect-only", "-q"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert_clean_error(r, "$STREAMPARITY_CONTRACT:", "nope.json", code=4)


def test_an_index_whose_meta_was_forged_is_rebuilt_from_the_file(tmp_path: Path) -> None:
    """A sidecar edited with its digest recomputed (so it reads as valid) cannot decide which chunks are judged:
    every entry's chunk id and meta are checked against the line itself when the index is loaded."""
    import shutil

    from streamparity.reference import sidecar
    from streamparity.reference.reader import ReferenceFile

    ref = tmp_path / "r.jsonl"
    shutil.copy(TINY_REFERENCE, ref)
    ReferenceFile(ref)  # writes its sidecar
    idx = ref.with_name(ref.name + ".idx.json")
    doc = json.loads(idx.read_text())
    doc["entries"][3][4]["has_caches"] = False
    doc["digest"] = sidecar._digest(doc["header"], doc["entries"])
    idx.write_text(json.dumps(doc))
    assert ReferenceFile(ref).meta(3)["has_caches"] is True


def test_a_chunk_without_caches_among_chunks_with_them_is_named(tmp_path: Path,
                                                                 run_pytest_inprocess: Callable[..., Ran]) -> None:
    """Functional mode needs stored caches; a chunk in the middle that stores none is left out, and the header
    says so instead of the chunk silently vanishing from functional mode."""
    from tests.test_bad_inputs import BAD_CHUNK

    def no_caches(obj: dict) -> None:  # type: ignore[type-arg]
        obj["meta"]["has_caches"] = False

    ref = make_reference(tmp_path / "gap.jsonl", no_caches)
    r = run_pytest_inprocess("-m", "parity", "--co", "-p", "no:xdist", f"--reference={ref}",
                             "--backend=ort-cpu-fp32", "--closed-loop-items=chunk", f"--report-dir={tmp_path / 'rep'}")
    out = r.stdout + r.stderr
    assert f"chunk(s) {BAD_CHUNK} store no caches (has_caches: false) between chunks that do" in out, out
    assert f"test_functional[ort-cpu-fp32-chunk{BAD_CHUNK:03d}]" not in out, out
    assert f"test_closed_loop[ort-cpu-fp32-chunk{BAD_CHUNK:03d}]" in out, out
    r = run_pytest_inprocess("-m", "parity", "--co", "-p", "no:xdist", f"--reference={ref}",
                             f"--chunks={BAD_CHUNK + 1}", "--backend=ort-cpu-fp32", f"--report-dir={tmp_path / 'rep2'}")
    assert "store no caches" not in r.stdout + r.stderr  # a gap --chunks leaves out is not announced


def test_the_printed_cli_repro_line_of_a_plugin_backend_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            run_pytest_inprocess: Callable[..., Ran]) -> None:
    """A backend a plugin registers (-p MODULE) is rerun by `streamparity --plugin=MODULE repro ...`: the line
    the failure prints, run as printed, reproduces the chunk (it used to stop at 'invalid backend')."""
    import shlex

    rate = {"STREAMPARITY_DRIFT_RATE": "2e-5"}
    r = run_pytest_inprocess("-m", "parity and not stability", "-p", "streamparity.tools.drift_fault",
                             "--backend=drift-cpu-fp32", "--chunks=5", "-q", f"--report-dir={tmp_path / 'rep'}",
                             env=rate)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("repro: streamparity ")]
    assert lines, r.stdout
    argv = shlex.split(lines[0][len("repro: "):])
    assert argv[:2] == ["streamparity", "--plugin=streamparity.tools.drift_fault"], argv
    monkeypatch.setenv("STREAMPARITY_DRIFT_RATE", rate["STREAMPARITY_DRIFT_RATE"])
    c = run_cli_inprocess(*argv[1:])
    assert c.returncode == 1 and "reproduced" in c.stdout.splitlines(), c.stdout + c.stderr  # the failure, again


def test_a_plugin_the_cli_cannot_load_is_one_line() -> None:
    r = run_cli_inprocess("--plugin=no_such_module_here", "repro", "x.npz")
    assert r.returncode == 2 and "--plugin no_such_module_here: cannot import it" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
