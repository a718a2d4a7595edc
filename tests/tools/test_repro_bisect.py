"""A model broken at a known layer: the parity run prints `repro:` lines, the printed `streamparity repro`
command reproduces the failure on that chunk alone, and `streamparity bisect` names the broken tensor.

The printed `streamparity repro` command runs as printed, as a process; the other runs are in this process."""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, TINY_CONTRACT, TINY_ONNX, TINY_REFERENCE, Ran, run_cli_inprocess, run_pytest

BROKEN_NODE = "/layers.1/feed_forward1/linear2/MatMul"
BROKEN_TENSOR = "/layers.1/feed_forward1/linear2/MatMul_output_0"


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from streamparity.tools import onnx_faults

    d = tmp_path_factory.mktemp("broken")
    onnx = onnx_faults.save(onnx_faults.break_node(onnx_faults.load(TINY_ONNX), BROKEN_NODE, 1.5),
                            d / "broken.onnx")
    r = run_pytest("-m", "parity", "suite/parity/test_parity.py", "--onnx", str(onnx), "--backend", "ort-cpu-fp32",
                   "--chunks", "0-3", "--report-dir", str(d / "reports"), "-p", "no:xdist", "-q")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    return onnx, r.stdout


def _repro_commands(out: str) -> dict[tuple[str, int], list[str]]:
    cmds: dict[tuple[str, int], list[str]] = {}
    for line in out.splitlines():
        if line.startswith("repro: streamparity repro "):
            argv = shlex.split(line[len("repro: "):])
            m = re.search(r"-(functional|closed_loop)-chunk(\d+)\.npz$", argv[2])
            assert m, line
            cmds[(m.group(1), int(m.group(2)))] = argv
    return cmds


def _block(out: str, head: str) -> list[str]:
    """Lines of the comparison that start with `head`, with their indented detail lines, from the failure
    sections only: pytest's short summary repeats whole messages when `CI` is set, and is not the report."""
    lines, keep = [], False
    for line in out.split("short test summary info", 1)[0].splitlines():
        if line.startswith("["):
            keep = line.startswith(head)
        elif not line.startswith("  "):
            keep = False
        if keep:
            lines.append(line)
    return lines


def test_failing_chunks_print_repro_lines(broken_run: tuple[Path, str]) -> None:
    _, out = broken_run
    cmds = _repro_commands(out)
    assert {k for k, _ in cmds} == {"functional", "closed_loop"}
    assert sorted(c for m, c in cmds if m == "functional") == [0, 1, 2, 3]
    assert "repro: pytest " in out and "--chunks=2" in out
    assert "Traceback" not in out


def test_pytest_repro_line_works_from_the_directory_pytest_ran_in(broken_run: tuple[Path, str], tmp_path: Path,
                                                                   run_pytest_inprocess: Callable[..., Ran]) -> None:
    """Started from suite/ with --report-dir and --fail-on-warn: the printed line reruns that one case there."""
    onnx, _ = broken_run
    here = ROOT / "suite"
    r = run_pytest_inprocess("-m", "parity", "parity/test_parity.py", "--onnx", str(onnx), "--backend",
                             "ort-cpu-fp32", "--chunks", "1-2", "--report-dir", str(tmp_path / "r1"), "--fail-on-warn",
                             "-p", "no:xdist", "-q", cwd=here)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("repro: pytest ") and "chunk002" in x)
    argv = shlex.split(line[len("repro: "):])
    assert argv[1].startswith("parity/test_parity.py::test_")
    # its reports go beside the failing run's, not over them
    assert f"--report-dir={tmp_path / 'r1' / 'repro'}" in argv and "--fail-on-warn" in argv and "--chunks=2" in argv
    again = run_pytest_inprocess(*argv[1:], "-q", cwd=here)
    assert again.returncode == 1, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("FAILED ") == 1 and "1 failed" in again.stdout, again.stdout[-2000:]
    first = json.loads((tmp_path / "r1" / "summary.json").read_text())
    assert {r["chunks"] for r in first["runs"] if r["backend"] == "ort-cpu-fp32"} == {2}  # not overwritten
    assert (tmp_path / "r1" / "repro" / "summary.json").is_file()


@pytest.mark.parametrize("mode", ["functional", "closed_loop"])
def test_printed_repro_command_reproduces_that_chunk_alone(broken_run: tuple[Path, str], mode: str) -> None:
    _, out = broken_run
    argv = _repro_commands(out)[(mode, 2)]
    assert argv[:2] == ["streamparity", "repro"]
    exe = Path(sys.executable).with_name("streamparity")
    import subprocess

    r = subprocess.run([str(exe) if exe.is_file() else sys.executable, *(() if exe.is_file() else
                        ("-m", "streamparity.cli")), *argv[1:]], capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    head = f"[ort-cpu-fp32 {mode} chunk 2]"
    # only that chunk ran, and its comparison is the one the parity run printed, line for line
    assert not re.search(r"chunk (?!2\b)\d+\]", r.stdout)
    got = _block(r.stdout, head)
    assert got and got == _block(out, head)
    assert "reproduced" in r.stdout and "verdict: fail" in r.stdout
    assert "rerun vs recorded actual outputs, max abs: outputs 0," in r.stdout


def test_bisect_names_the_broken_tensor(broken_run: tuple[Path, str]) -> None:
    _, out = broken_run
    bundle = _repro_commands(out)[("functional", 1)][2]
    r = run_cli_inprocess("bisect", bundle)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"first divergent tensor: {BROKEN_TENSOR}\n" in r.stdout
    assert "error profile along the graph" in r.stdout and "layers.0 " in r.stdout
    assert "changes what a runtime may fuse" in r.stdout
    # layers before the broken one agree exactly
    row = next(line for line in r.stdout.splitlines() if line.strip().startswith("layers.0 "))
    assert row.split()[2] == "0"


def test_bisect_from_a_reference_chunk(broken_run: tuple[Path, str], tmp_path: Path) -> None:
    import json

    onnx, _ = broken_run
    r = run_cli_inprocess("bisect", "--chunk", "5", "--onnx", str(onnx), "--json", str(tmp_path / "b.json"))
    assert r.returncode == 1 and f"first divergent tensor: {BROKEN_TENSOR}" in r.stdout
    doc = json.loads((tmp_path / "b.json").read_text())
    assert doc["first"]["name"] == BROKEN_TENSOR and doc["chunk"] == 5


def test_bisect_marking_only_float_tensors_still_names_the_broken_tensor(broken_run: tuple[Path, str]) -> None:
    """The TensorRT path of bisect marks floating-point tensors only (integer shape tensors live on the host
    in TensorRT); here it runs through ONNX Runtime, which returns every output it is given."""
    from streamparity.backends.ort import OrtBackend
    from streamparity.contract.loading import load_contract
    from streamparity.reference.reader import ReferenceFile
    from streamparity.tools import layer_bisect as bs

    onnx, _ = broken_run
    contract = load_contract(TINY_CONTRACT)
    path, order, unmarked = bs.instrument(onnx, float_only=True)
    try:
        import onnx as onnx_lib

        marked = {o.name for o in onnx_lib.load(str(path)).graph.output} - set(contract.output_names)
        assert marked and unmarked and not marked & unmarked
        assert marked | unmarked == {t for t, _, _ in order} - set(contract.output_names)
        assert any("Shape" in t for t in unmarked) and BROKEN_TENSOR in marked
    finally:
        path.unlink()

    def run(model: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return OrtBackend(contract, model).run_all_outputs(feeds)

    feeds = bs.check_feeds(ReferenceFile(TINY_REFERENCE).read(3).inputs, contract.input_names, "ref")
    res = bs.bisect(onnx, TINY_ONNX, feeds, run_candidate=run, run_baseline=run, atol=1e-4, rtol=1e-4,
                    candidate="ort-cpu-fp32", chunk=3, graph_outputs=contract.output_names, float_only=True)
    assert res.first is not None and res.first.name == BROKEN_TENSOR
    assert res.skipped.get(bs.NOT_FLOAT) == len(unmarked)


def test_bisect_on_tensorrt_without_tensorrt_says_what_is_missing(broken_run: tuple[Path, str]) -> None:
    onnx, _ = broken_run
    r = run_cli_inprocess("bisect", "--chunk", "3", "--onnx", str(onnx), "--backend", "trt-cuda-fp16")
    try:
        import tensorrt

        if hasattr(tensorrt, "Builder"):
            pytest.skip("TensorRT is installed: tests/backends/test_trt_backend.py bisects on it")
    except ImportError:
        pass
    assert r.returncode == 2, r.stdout + r.stderr
    assert "streamparity bisect: error: tensorrt is not installed" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_bisect_clean_model_finds_nothing() -> None:
    r = run_cli_inprocess("bisect", "--chunk", "0", "--backend", "ort-cpu-fp16")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no tensor diverges" in r.stdout


def test_repro_rejects_a_non_bundle(tmp_path: Path) -> None:
    bad = tmp_path / "bundle.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    r = run_cli_inprocess("repro", str(bad))
    assert r.returncode == 2 and str(bad) in r.stderr and "not a streamparity bundle" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr
