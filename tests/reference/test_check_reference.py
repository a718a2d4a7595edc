"""`streamparity check-reference`: validation, index, throughput against json.loads, memory, random access.

The full-size figures need a generated full-size reference (not committed, ~4 GB):
``STREAMPARITY_FULLSIZE_REFERENCE=/work/big/fullsize/reference.jsonl \
pytest -m slow tests/reference/test_check_reference.py``
(and ``STREAMPARITY_FULLSIZE_ONNX`` for the closed loop's memory bound).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, TINY_REFERENCE, run_cli

FULLSIZE_CONTRACT = ROOT / "contracts" / "fullsize-parakeet.contract.json"


def test_tiny_reference_report(tmp_path: Path) -> None:
    r = run_cli("check-reference", str(TINY_REFERENCE), "--bench-chunks", "all", "--json", str(tmp_path / "f.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    for needle in ("chunks: 300 (0..299)", "contract invariants and cache chaining", "random access: chunk 299",
                   "MB/s", "json.loads + decode_tensor", "ratio:", "peak RSS:"):
        assert needle in r.stdout, needle
    doc = json.loads((tmp_path / "f.json").read_text())
    assert doc["chunks"] == 300 and doc["bench"]["chunks"] == 300 and doc["bench"]["ratio"] > 0


def _big_reference(path: Path, chunks: int, floats: int) -> Path:
    from streamparity.reference.writer import ReferenceWriter

    rng = np.random.default_rng(0)
    with ReferenceWriter(path, {"contract": "synthetic"}, chunks) as w:
        for k in range(chunks):
            w.write(k, {"has_caches": True}, {"cache": rng.standard_normal(floats, dtype=np.float32)},
                    {"cache_next": rng.standard_normal(floats, dtype=np.float32)})
    return path


def test_reader_beats_json_on_large_lines(tmp_path: Path) -> None:
    """Lines of 2 x 8 MB of float32: our reader is several times faster than json.loads + decode, memory stays
    within a few lines, and chunk k is read without parsing the ones before it."""
    path = _big_reference(tmp_path / "big.jsonl", 6, 2_000_000)
    r = run_cli("check-reference", str(path), "--bench-chunks", "all", "--json", str(tmp_path / "f.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no contract named 'synthetic'" in r.stdout
    doc = json.loads((tmp_path / "f.json").read_text())
    b = doc["bench"]
    assert b["ratio"] > 2.5, r.stdout  # 5-13x measured; a loose bound against noisy CI machines
    line_mib = doc["largest_line"] / 2**20
    assert b["ours_peak_rss_mb"] - doc["start_rss_mb"] < 8 * line_mib, r.stdout
    assert doc["random_access_s"] < 1.0


def test_index_is_reused(tmp_path: Path) -> None:
    path = _big_reference(tmp_path / "r.jsonl", 3, 1000)
    first = run_cli("check-reference", str(path), "--no-bench")
    second = run_cli("check-reference", str(path), "--no-bench")
    assert "index: built, written to r.jsonl.idx.json" in first.stdout, first.stdout + first.stderr
    assert "index: loaded from r.jsonl.idx.json" in second.stdout, second.stdout


FULL_REF = os.environ.get("STREAMPARITY_FULLSIZE_REFERENCE")
FULL_ONNX = os.environ.get("STREAMPARITY_FULLSIZE_ONNX")


@pytest.mark.slow
@pytest.mark.skipif(not FULL_REF, reason="set STREAMPARITY_FULLSIZE_REFERENCE to a full-size reference JSONL")
def test_fullsize_reference(tmp_path: Path) -> None:
    assert FULL_REF is not None
    r = run_cli("check-reference", FULL_REF, "--contract", str(FULLSIZE_CONTRACT), "--bench-chunks", "8",
                "--json", str(tmp_path / "f.json"), timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    print(r.stdout)
    doc = json.loads((tmp_path / "f.json").read_text())
    assert doc["chunks"] >= 50
    assert doc["bench"]["ratio"] >= 5.0, r.stdout
    line_mib = doc["largest_line"] / 2**20
    assert doc["bench"]["ours_peak_rss_mb"] - doc["start_rss_mb"] < 6 * line_mib, r.stdout
    assert doc["random_access_s"] < 2.0


@pytest.mark.slow
@pytest.mark.skipif(not (FULL_REF and FULL_ONNX), reason="set STREAMPARITY_FULLSIZE_REFERENCE and "
                    "STREAMPARITY_FULLSIZE_ONNX (the full-size encoder.onnx)")
def test_fullsize_closed_loop_memory_is_bounded(tmp_path: Path) -> None:
    """The closed loop over the whole full-size reference holds the model plus a few chunks, never the file."""
    assert FULL_REF is not None and FULL_ONNX is not None
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", "parity", "suite/parity/test_parity.py",
                        "-k", "closed_loop", f"--contract={FULLSIZE_CONTRACT}", f"--reference={FULL_REF}",
                        f"--onnx={FULL_ONNX}", "--backend=ort-cpu-fp32", "-p", "no:xdist", "-q",
                        f"--report-dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=3600,
                       check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert before <= peak_mib * 1024
    weights_mib = sum(p.stat().st_size for p in Path(FULL_ONNX).parent.iterdir()
                      if p.is_file() and not p.name.startswith(("reference", "."))) / 2**20
    ref_mib = Path(FULL_REF).stat().st_size / 2**20
    print(f"closed loop peak RSS {peak_mib:.0f} MiB; model files {weights_mib:.0f} MiB; reference {ref_mib:.0f} MiB")
    assert peak_mib < weights_mib + 1024, "the closed loop holds more than the model plus 1 GiB"
