"""``streamparity make-reference``: generate ONNX + reference JSONL + offline reference with NeMo."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from streamparity.contract.loading import load_contract


def register(sub: Any) -> None:
    p = sub.add_parser("make-reference", help="generate a reference with NeMo (needs the 'nemo' extra)",
                       description=__doc__)
    from streamparity.cli.validators import existing_file, positive_int

    p.add_argument("--contract", type=existing_file, default=None, metavar="PATH",
                   help="contract JSON (default: draft one from the encoder into --out-dir; its tolerances then "
                        "need `streamparity calibrate`)")
    p.add_argument("--name", default=None, metavar="NAME",
                   help="name of a drafted contract (default: the --out-dir folder name)")
    p.add_argument("--cache-layout", default="batch_first", choices=("batch_first", "layers_first"),
                   help="cache layout of a drafted contract and its ONNX (default: batch_first, as NeMo exports)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=existing_file, metavar="PATH",
                     help="NeMo ConformerEncoder config JSON (random weights, seeded)")
    src.add_argument("--nemo", type=existing_file, metavar="PATH", help=".nemo checkpoint")
    p.add_argument("--out-dir", type=Path, required=True, metavar="DIR", help="where the files go")
    p.add_argument("--num-chunks", type=positive_int, default=300, metavar="N", help="chunks (default: 300)")
    p.add_argument("--functional-chunks", type=positive_int, default=None, metavar="N",
                   help="store caches for the first N chunks only (default: all)")
    p.add_argument("--seed", type=int, default=42, metavar="N", help="feature seed (default: 42)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="torch device, cpu or cuda (default: cpu)")
    p.add_argument("--reference-name", default="reference.jsonl", metavar="NAME",
                   help="reference file name (default: reference.jsonl)")
    p.add_argument("--no-export", action="store_true", help="do not export the ONNX (default: export)")
    p.add_argument("--no-offline", action="store_true", help="skip the offline reference (default: write it)")
    p.add_argument("--inject-fault", default="none", choices=("none", "reset-cache", "stale-cache-len"),
                   help="write a deliberately wrong reference, to test the reference checks (default: none)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamparity.drivers.progress import stderr_progress
    from streamparity.tools.generator import generate

    contract = load_contract(args.contract) if args.contract is not None else None
    bar = stderr_progress("make-reference", args.num_chunks)
    res = generate(contract, name=args.name, cache_layout=args.cache_layout,
                   out_dir=args.out_dir, config_path=args.config, nemo_path=args.nemo,
                   num_chunks=args.num_chunks, functional_chunks=args.functional_chunks, seed=args.seed,
                   device=args.device, export=not args.no_export, offline=not args.no_offline,
                   fault=args.inject_fault, reference_name=args.reference_name, on_step=bar)
    bar.done()
    print(f"wrote {res.reference} ({res.chunks} chunks, {res.reference.stat().st_size / 1e6:.1f} MB) "
          f"in {res.seconds:.1f} s")
    if res.onnx:
        print(f"wrote {res.onnx}")
    if args.contract is None and res.contract is not None:
        print(f"wrote {res.contract} (drafted; next: streamparity calibrate {res.contract})")
    if res.offline:
        print(f"wrote {res.offline}")
    return 0
