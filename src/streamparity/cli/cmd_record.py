"""``streamparity record --backend=ID --out=DIR``: record a backend's outputs over a reference, both modes.

The folder gets ``functional.jsonl`` (reference caches in, every chunk that stores them) and
``closed_loop.jsonl`` (the backend's own caches, with the caches and cache length it was fed), in the
reference JSONL format.  Judge it later, without the runtime, with ``--recorded=NAME:PRECISION=DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from streamparity.backends.external.options import add_cli_arguments, configure_from_args
from streamparity.cli.validators import non_negative_int


def register(sub: Any) -> None:
    p = sub.add_parser("record", help="record a backend's outputs over a reference (for --recorded)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from streamparity.backends.registry import parse_backend_spec
    from streamparity.cli.validators import existing_file

    p.add_argument("--backend", type=parse_backend_spec, required=True, metavar="ID",
                   help="backend to record, e.g. ext-ort-fp32 (with --runtime) or ort-cpu-fp32")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the recording")
    p.add_argument("--contract", type=existing_file, default=None, metavar="PATH",
                   help="contract JSON (default: the embedded tiny-parakeet)")
    p.add_argument("--onnx", type=existing_file, default=None, metavar="PATH",
                   help="ONNX model for in-process backends (default: the contract's)")
    p.add_argument("--reference", type=existing_file, default=None, metavar="PATH",
                   help="reference JSONL (default: the contract's)")
    p.add_argument("--upto", type=non_negative_int, default=None, metavar="K",
                   help="last chunk to record (default: every chunk of the reference)")
    add_cli_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamparity.backends.external.recorded import record
    from streamparity.backends.registry import create_backend
    from streamparity.contract.loading import load_contract
    from streamparity.contract.shipped import default_contract
    from streamparity.errors import StreamparityError
    from streamparity.reference.reader import ReferenceFile

    configure_from_args(args)
    contract = load_contract(args.contract or default_contract())
    ref_path = args.reference or contract.resolve("reference")
    if ref_path is None:
        raise StreamparityError("no reference: pass --reference", file=str(contract.path), field="model.reference")
    ref = ReferenceFile(ref_path)
    onnx = args.onnx or contract.resolve("onnx") or Path("-")
    upto = args.upto if args.upto is not None else ref.chunk_ids[-1]
    functional = [k for k in ref.chunks_with_caches() if k <= upto]
    backend = create_backend(args.backend, contract, onnx, {})
    try:
        nf, nc = record(backend, contract, ref, args.out, functional, upto)
    finally:
        backend.close()
    print(f"recorded {args.backend.id}: {nf} functional and {nc} closed-loop chunks in {args.out}")
    return 0
