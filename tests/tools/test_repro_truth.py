"""`streamparity repro` tells the truth: it repeats every check the parity run judged the chunk with (the input
cache-length check of the closed loop included), and a bundle lacking what the verdict needs is an error."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_ONNX, run_cli_inprocess, run_pytest

STUCK = ("cache_last_channel_next_len", "cache_last_channel_len")


@pytest.fixture(scope="module")
def stuck_bundles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bundles of a real parity run on a model whose cache length never moves (passthrough from its input)."""
    from streamparity.tools import onnx_faults as F

    d = tmp_path_factory.mktemp("stuck")
    onnx = F.save(F.passthrough(F.load(TINY_ONNX), *STUCK), d / "stuck.onnx")
    r = run_pytest("-m", "parity", "suite/parity/test_parity.py", "--onnx", str(onnx), "--backend", "ort-cpu-fp32",
                   "--chunks", "0-2", "--report-dir", str(d / "reports"), "-p", "no:xdist", "-q")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    return d / "reports" / "bundles"


def _rewrite(src: Path, dst: Path, *, drop: str = "", meta_edit: dict[str, object] | None = None,
             meta_drop: str = "") -> Path:
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if not (drop and k.startswith(drop))}
    meta = json.loads(bytes(arrays["meta"]).decode())
    meta.update(meta_edit or {})
    meta.pop(meta_drop, None)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    dst.write_bytes(buf.getvalue())
    return dst


def _one_error_line(r: object, *needles: str) -> str:
    out: str = r.stdout + r.stderr  # type: ignore[attr-defined]
    assert r.returncode == 2, out  # type: ignore[attr-defined]
    assert "Traceback" not in out and "reproduced" not in out and "DIFFERENT" not in out and "verdict:" not in out
    lines = [x for x in r.stderr.splitlines() if x.strip()]  # type: ignore[attr-defined]
    assert len(lines) == 1 and len(lines[0]) <= 300, r.stderr  # type: ignore[attr-defined]
    for n in needles:
        assert n in lines[0], lines[0]
    return str(lines[0])


def test_stuck_cache_bundle_reproduces_both_violations(stuck_bundles: Path) -> None:
    """Chunk 1 of the closed loop broke two rules: the output cache length did not move, and its input cache
    length is not that of an unbroken stream.  The rerun repeats both checks."""
    bundle = stuck_bundles / "ort-cpu-fp32-closed_loop-chunk001.npz"
    meta = json.loads(bytes(np.load(bundle)["meta"]).decode())
    assert len(meta["violations"]) == 2 and meta.get("stream_position", 1) == 1
    r = run_cli_inprocess("repro", str(bundle))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "recorded contract violations: 2; now: 2" in r.stdout, r.stdout
    assert "reproduced" in r.stdout and "DIFFERENT" not in r.stdout
    assert "at stream position 1" in r.stdout


def test_functional_stuck_bundle_reproduces(stuck_bundles: Path) -> None:
    r = run_cli_inprocess("repro", str(stuck_bundles / "ort-cpu-fp32-functional-chunk001.npz"))
    assert r.returncode == 1 and "reproduced" in r.stdout and "DIFFERENT" not in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("mode", ["functional", "closed_loop"])
def test_bundle_without_expected_outputs_is_an_error(stuck_bundles: Path, tmp_path: Path, mode: str) -> None:
    bundle = _rewrite(stuck_bundles / f"ort-cpu-fp32-{mode}-chunk001.npz", tmp_path / "b.npz", drop="expected/")
    _one_error_line(run_cli_inprocess("repro", str(bundle)), str(bundle), "expected outputs", "field 'expected'")


def test_old_closed_loop_bundle_without_stream_position_is_an_error(stuck_bundles: Path, tmp_path: Path) -> None:
    bundle = _rewrite(stuck_bundles / "ort-cpu-fp32-closed_loop-chunk001.npz", tmp_path / "b.npz",
                      meta_drop="stream_position")
    _one_error_line(run_cli_inprocess("repro", str(bundle)), str(bundle), "field 'meta.stream_position'")


@pytest.mark.parametrize(("key", "value"), [("verdicts", None), ("violations", "x"), ("chunk", True),
                                            ("chunk", -1), ("mode", "offline"), ("stream_position", "1")])
def test_bundle_metadata_of_the_wrong_type_is_an_error(stuck_bundles: Path, tmp_path: Path, key: str,
                                                       value: object) -> None:
    bundle = _rewrite(stuck_bundles / "ort-cpu-fp32-closed_loop-chunk001.npz", tmp_path / "b.npz",
                      meta_edit={key: value})
    _one_error_line(run_cli_inprocess("repro", str(bundle)), str(bundle), f"field 'meta.{key}'")


def test_another_contract_is_named_as_the_cause(stuck_bundles: Path) -> None:
    """--contract of another model: the error says which contract the bundle was judged under."""
    bundle = stuck_bundles / "ort-cpu-fp32-functional-chunk001.npz"
    other = Path(__file__).resolve().parents[2] / "contracts" / "parakeet-tdt-0.6b-v3.contract.json"
    _one_error_line(run_cli_inprocess("repro", str(bundle), f"--contract={other}"), str(bundle),
                    "judged under contract 'tiny-parakeet-streaming-encoder'", "leave --contract out",
                    "field '--contract'")
