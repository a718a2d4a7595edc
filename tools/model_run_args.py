"""The arguments the ORT-on-CUDA loop tools share: where results go, and the contract, model and reference.

Imported by ``ort_cuda_closed_loop.py`` and ``bench_gpu_parity_loop.py`` (both put ``tools/`` on ``sys.path``)."""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def add_model_run_arguments(ap: argparse.ArgumentParser) -> None:
    """--out, --contract, --onnx, --reference and --name, with the embedded tiny model as the default."""
    ap.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the JSON and Markdown go")
    ap.add_argument("--contract", type=Path, default=ROOT / "contracts" / "tiny-parakeet.contract.json",
                    metavar="PATH", help="contract (default: tiny-parakeet)")
    ap.add_argument("--onnx", type=Path, default=None, metavar="PATH", help="model (default: the contract's)")
    ap.add_argument("--reference", type=Path, default=None, metavar="PATH",
                    help="reference JSONL (default: the contract's)")
    ap.add_argument("--name", default=None, metavar="TEXT", help="model name in the table (default: contract name)")
