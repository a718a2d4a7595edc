"""``streamparity bisect``: find the first intermediate tensor where a candidate leaves ORT FP32.

Inputs come from a failure bundle (``streamparity bisect BUNDLE``) or from a reference chunk
(``--chunk K``).  Every intermediate tensor of the candidate ONNX is marked as an output; the
candidate backend runs it and ONNX Runtime FP32 runs the baseline model (default: the contract's
ONNX) on the same inputs; the first tensor in topological order whose error exceeds the threshold
is reported, with the error profile along the graph.  Exit status 1 when a tensor diverges.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from streamparity.backends.base import BackendSpec
from streamparity.backends.registry import create_backend, parse_backend_spec
from streamparity.contract.loading import load_contract
from streamparity.contract.model import ROLE_ENCODED
from streamparity.errors import BackendUnavailable, ModelMismatch, StreamparityError
from streamparity.reference.reader import ReferenceFile
from streamparity.tools.layer_bisect import bisect, check_feeds, report_lines


def register(sub: Any) -> None:
    p = sub.add_parser("bisect", help="first divergent intermediate tensor, candidate vs ORT FP32",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from streamparity.cli.validators import existing_file, non_negative_float, regex

    p.add_argument("bundle", nargs="?", type=existing_file, default=None, metavar="BUNDLE",
                   help="failure bundle (.npz) giving the chunk's inputs, contract, model and backend")
    p.add_argument("--contract", type=existing_file, default=None, metavar="PATH",
                   help="contract JSON (default: the bundle's, else the embedded tiny contract)")
    p.add_argument("--onnx", type=existing_file, default=None, metavar="PATH",
                   help="candidate ONNX (default: the bundle's model, else the contract's)")
    p.add_argument("--baseline-onnx", type=existing_file, default=None, metavar="PATH",
                   help="model ORT FP32 runs as the baseline (default: the contract's model.onnx)")
    p.add_argument("--backend", type=parse_backend_spec, default=None, metavar="ID",
                   help="candidate backend, e.g. ort-cpu-fp16, trt-cuda-fp16 (default: the bundle's, else "
                        "ort-cpu-fp32)")
    p.add_argument("--reference", type=existing_file, default=None, metavar="PATH",
                   help="reference JSONL for --chunk (default: the contract's)")
    p.add_argument("--chunk", type=int, default=None, metavar="K",
                   help="take the inputs of reference chunk K (functional mode) instead of a bundle")
    p.add_argument("--atol", type=non_negative_float, default=None, metavar="X",
                   help="absolute threshold (default: the contract's atol for the encoded output at the candidate's "
                        "precision)")
    p.add_argument("--rtol", type=non_negative_float, default=None, metavar="X",
                   help="threshold relative to max|baseline| of each tensor (default: the contract's rtol)")
    p.add_argument("--only", type=regex, default=None, metavar="REGEX",
                   help="mark only tensors or nodes matching REGEX (fewer marked outputs disturb fusion less)")
    p.add_argument("--context", type=int, default=5, metavar="N",
                   help="agreeing tensors to show before the first divergent one (default: 5)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the per-tensor profile as JSON")
    p.set_defaults(func=run)


def _feeds(args: argparse.Namespace) -> tuple[Path, Path | None, BackendSpec | None, dict[str, np.ndarray],
                                              int | None, str]:
    """(contract, candidate onnx, backend, inputs, chunk, source file)."""
    if args.bundle is not None:
        from streamparity.tools.bundles import read_bundle

        meta, inputs, _, _ = read_bundle(args.bundle)
        contract = args.contract or Path(str(meta.get("contract", "")))
        onnx = Path(str(meta["onnx"])) if "onnx" in meta else None
        spec = parse_backend_spec(str(meta["backend"])) if "backend" in meta else None
        chunk = int(meta["chunk"]) if "chunk" in meta else None
        return contract, onnx, spec, inputs, chunk, str(args.bundle)
    if args.chunk is None:
        raise StreamparityError("give a failure BUNDLE or --chunk K (with --reference or the contract's reference)")
    from streamparity.contract.shipped import default_contract

    contract = args.contract or default_contract()
    c = load_contract(contract)
    ref_path = args.reference or c.resolve("reference")
    if ref_path is None:
        raise StreamparityError("no reference: pass --reference", file=str(contract), field="model.reference")
    rec = ReferenceFile(ref_path).read(args.chunk)
    return contract, None, None, dict(rec.inputs), args.chunk, f"{ref_path}:{rec.line}"


def _runner(spec: BackendSpec, contract_path: Path, engine_dir: Path, original: Path) -> Any:
    def run(model: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            backend = create_backend(spec, load_contract(contract_path), model, {"engine_dir": engine_dir})
        except ModelMismatch as e:  # name the user's model, not the instrumented temporary copy
            raise ModelMismatch(e.message, file=str(original), field=e.field) from None
        except Exception as e:  # ORT rejects the model: corrupt or not ONNX
            if isinstance(e, (StreamparityError, BackendUnavailable)):
                raise
            raise ModelMismatch(f"{spec.id} cannot load the model ({type(e).__name__}: {e})".replace(str(model),
                                str(original)), file=str(original)) from None
        try:
            return backend.run_all_outputs(feeds)
        finally:
            backend.close()

    return run


def run(args: argparse.Namespace) -> int:
    contract_path, bundle_onnx, bundle_spec, inputs, chunk, source = _feeds(args)
    if not contract_path.is_file():
        raise StreamparityError(f"contract {contract_path} not found: pass --contract", file=source,
                                field="contract")
    contract = load_contract(contract_path)
    candidate = args.onnx or bundle_onnx or contract.resolve("onnx")
    baseline = args.baseline_onnx or contract.resolve("onnx")
    if candidate is None or baseline is None:
        raise StreamparityError("no ONNX model: pass --onnx", file=str(contract_path), field="model.onnx")
    for p in (candidate, baseline):
        if not p.is_file():
            raise StreamparityError("ONNX model not found", file=str(p))
    spec = args.backend or bundle_spec or parse_backend_spec("ort-cpu-fp32")
    base_spec = parse_backend_spec("ort-cpu-fp32")
    if spec.id == base_spec.id and candidate.resolve() == baseline.resolve():
        print("note: candidate and baseline are the same model on the same backend: nothing can diverge "
              "(pass --onnx for a modified model or --backend for another runtime)")
    tol = contract.tolerance(contract.output_by_role(ROLE_ENCODED).name, spec.precision)
    atol = tol.atol if args.atol is None else args.atol
    rtol = tol.rtol if args.rtol is None else args.rtol
    feeds = check_feeds(inputs, contract.input_names, source)
    print(f"bisect: inputs from {source}; candidate {spec.id} on {candidate}; baseline {base_spec.id} on {baseline}")
    with tempfile.TemporaryDirectory(prefix="streamparity-bisect-") as tmp:
        res = bisect(candidate, baseline, feeds, run_candidate=_runner(spec, contract_path, Path(tmp), candidate),
                     run_baseline=_runner(base_spec, contract_path, Path(tmp), baseline), atol=atol, rtol=rtol,
                     candidate=spec.id, baseline=base_spec.id, chunk=chunk, only=args.only,
                     graph_outputs=contract.output_names, float_only=spec.kind == "trt")
    for line in report_lines(res, context=args.context, trt=spec.kind == "trt"):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(res.to_dict(), indent=1, default=str), "utf-8")
    return 1 if res.first is not None else 0
