"""``streamparity init-contract``: draft a contract from an ONNX and, where given, a NeMo config or .nemo.

I/O names, dtypes, shapes, roles and the cache layout come from the ONNX; the streaming schedule
(chunk frames, valid_out_len, cache sizes, the cache-length rule, pre-encode and drop sizes) and the
optimization profiles from NeMo's own streaming_cfg after setup_streaming_params.  Tolerances, and
whatever else cannot be inferred, are written as "TODO: ..." fields that the loader refuses.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    from streamparity.cli.validators import existing_file

    p = sub.add_parser("init-contract", help="draft a contract from an ONNX (+ NeMo config or .nemo)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", type=existing_file, required=True, metavar="MODEL", help="the streaming encoder ONNX")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--nemo-config", type=existing_file, default=None, metavar="CONFIG.json",
                     help="encoder config as make-reference takes it ({encoder, seed, streaming})")
    src.add_argument("--nemo", type=existing_file, default=None, metavar="MODEL.nemo", help="a NeMo ASR model")
    for opt in ("chunk-size", "shift-size", "left-chunks"):
        p.add_argument(f"--{opt}", type=int, default=None, metavar="N",
                       help=f"with --nemo: setup_streaming_params {opt.replace('-', '_')} (default: NeMo's)")
    p.add_argument("--name", default=None, help="contract name (default: from the ONNX file name)")
    p.add_argument("--out", type=Path, required=True, metavar="PATH", help="contract JSON to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamparity.cli.contract_io import print_summary, write_contract
    from streamparity.contract.draft import draft_contract

    config: dict[str, Any] | None = None
    encoder = None
    streaming = None
    source = None
    if args.nemo_config is not None:
        from streamparity.tools.generator import build_encoder, load_config

        config = load_config(args.nemo_config)
        encoder = build_encoder(config)
        streaming = dict(config["streaming"])
        source = f"NeMo ConformerEncoder from {args.nemo_config.name}"
    elif args.nemo is not None:
        from streamparity.tools.generator import load_nemo_encoder

        streaming = {"chunk_size": args.chunk_size, "shift_size": args.shift_size, "left_chunks": args.left_chunks}
        encoder = load_nemo_encoder(args.nemo, streaming, "cpu")
        source = str(args.nemo)
    doc = draft_contract(args.onnx, encoder=encoder, streaming_args=streaming, name=args.name, source=source)
    if args.nemo_config is not None:
        doc["model"]["nemo_config"] = str(args.nemo_config)
    print_summary(args.out, write_contract(doc, args.out))
    return 0
