"""``streamparity repro BUNDLE``: rerun one failing chunk from a failure bundle and print the comparison.

The bundle (written by ``pytest -m parity`` for every failing chunk) holds the chunk's inputs with
the caches that were fed, the expected and the actual outputs, and the judging context.  Only that
chunk runs; the comparison is printed in the same form as the test failure.  Exit status 1 when the
chunk fails again, 0 when it passes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from streamparity.backends.base import BackendSpec
from streamparity.backends.external.options import add_cli_arguments, configure_from_args
from streamparity.backends.registry import create_backend, parse_backend_spec
from streamparity.contract.loading import load_contract
from streamparity.contract.model import ROLE_CACHE_LEN, Contract
from streamparity.errors import BackendUnavailable, ModelMismatch, StreamparityError
from streamparity.judging.chunks import judge_chunk
from streamparity.judging.wording import describe_chunk
from streamparity.reference.reader import ChunkRecord
from streamparity.results.records import CLOSED_LOOP, FUNCTIONAL, ChunkResult
from streamparity.tools.bundles import read_bundle


def register(sub: Any) -> None:
    p = sub.add_parser("repro", help="rerun one failing chunk from a failure bundle", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    from streamparity.cli.validators import existing_file

    p.add_argument("bundle", type=existing_file, metavar="BUNDLE", help="failure bundle (.npz) from a parity run")
    p.add_argument("--backend", type=parse_backend_spec, default=None, metavar="ID",
                   help="backend to rerun on, e.g. ort-cpu-fp32, trt-cuda-fp16 (default: the bundle's)")
    p.add_argument("--onnx", type=existing_file, default=None, metavar="PATH",
                   help="ONNX model (default: the one the bundle was judged with)")
    p.add_argument("--contract", type=existing_file, default=None, metavar="PATH",
                   help="contract JSON (default: the bundle's)")
    p.add_argument("--engine-dir", type=Path, default=None, metavar="DIR",
                   help="engine cache folder for TensorRT (default: a temporary folder)")
    add_cli_arguments(p)  # --runtime/--recorded: to rerun on an out-of-process runtime or a recording
    p.set_defaults(func=run)


def bundle_context(path: Path, contract_arg: Path | None, onnx_arg: Path | None
                   ) -> tuple[dict[str, Any], Contract, Path, dict[str, np.ndarray], dict[str, np.ndarray],
                              dict[str, np.ndarray]]:
    meta, inputs, expected, actual = read_bundle(path)  # every metadata field present and of its type
    file = str(path)
    if meta["mode"] == CLOSED_LOOP and "stream_position" not in meta:
        raise StreamparityError("closed-loop bundle lacks stream_position (written by an older streamparity): the "
                                "input cache-length check it was judged with cannot be repeated", file=file,
                                field="meta.stream_position")
    contract_path = contract_arg or Path(meta["contract"])
    if not contract_path.is_file():
        raise StreamparityError(f"the bundle's contract {contract_path} is gone: pass --contract", file=file,
                                field="meta.contract")
    contract = load_contract(contract_path)
    onnx = onnx_arg or Path(meta["onnx"])
    if not onnx.is_file():
        raise StreamparityError(f"the bundle's ONNX {onnx} is gone: pass --onnx", file=file, field="meta.onnx")
    other = contract_arg is not None and contract.name != meta.get("contract_name", contract.name)

    def refuse(field: str, names: list[str], lacks: str, why: str = "") -> None:
        if other:  # the cause: the tensor names differ because the model does
            raise StreamparityError(f"judged under contract {meta['contract_name']!r}, not {contract.name!r} "
                                    f"(no {field} {names[0]}): leave --contract out",
                                    file=file, chunk=int(meta["chunk"]), field="--contract")
        raise StreamparityError(f"bundle lacks {lacks} {', '.join(names)}{why}", file=file,
                                chunk=int(meta["chunk"]), field=field)

    missing = [n for n in contract.input_names if n not in inputs]
    if missing:
        refuse("input", missing, "inputs")
    # the reference outputs the verdict was judged against: without them every comparison would be skipped
    needed = [*contract.compared_outputs(), contract.output_by_role(ROLE_CACHE_LEN).name]
    missing = [n for n in dict.fromkeys(needed) if n not in expected]
    if missing:
        refuse("expected", missing, "the expected outputs", ": its verdict cannot be repeated")
    return meta, contract, onnx, inputs, expected, actual


def rerun(contract: Contract, onnx: Path, spec: BackendSpec, meta: dict[str, Any], inputs: dict[str, np.ndarray],
          expected: dict[str, np.ndarray], engine_dir: Path) -> ChunkResult:
    chunk = int(meta["chunk"])
    try:
        backend = create_backend(spec, contract, onnx, {"engine_dir": engine_dir})
    except (StreamparityError, BackendUnavailable):
        raise
    except Exception as e:  # the runtime rejects the model: corrupt or not ONNX
        raise ModelMismatch(f"{spec.id} cannot load the model ({type(e).__name__}: {e})", file=str(onnx)) from None
    feeds = {n: inputs[n] for n in contract.input_names}
    try:
        try:
            out = backend.run(feeds)
        except Exception as e:  # a runtime error is the verdict, as in the parity run
            return ChunkResult(chunk=chunk, mode=str(meta["mode"]), backend=spec.id, precision=spec.precision,
                               error=f"{type(e).__name__}: {e}")
    finally:
        backend.close()
    rec = ChunkRecord(chunk=chunk, line=0, meta={}, inputs=dict(inputs), outputs=dict(expected))
    len_in = contract.input_by_role(ROLE_CACHE_LEN).name
    # the checks the original judged: the input cache length at its stream position (closed loop), and the
    # outputs against the inputs fed (functional); older functional bundles lack both fields and had exactly these
    checked_inputs = meta.get("checked_inputs", meta["mode"] == FUNCTIONAL)
    res = judge_chunk(contract, rec, out, mode=str(meta["mode"]), backend=spec.id, precision=spec.precision,
                      cache_len_in=feeds[len_in], stream_position=meta.get("stream_position"),
                      inputs=feeds if checked_inputs else None)
    res.bundle_inputs, res.bundle_outputs = feeds, dict(out)
    return res


def _overall(verdicts: dict[str, str], violations: list[str], error: object) -> str:
    """A chunk's verdict from bundles written before the verdict itself was stored."""
    if violations or error or "fail" in verdicts.values():
        return "fail"
    return "warn" if "warn" in verdicts.values() else "pass"


def _violation_keys(violations: list[str]) -> list[str]:
    """Which invariant each violation is about (its text up to the first colon), for comparing runs."""
    return sorted(v.split(":", 1)[0] for v in violations)


def run(args: argparse.Namespace) -> int:
    configure_from_args(args)
    meta, contract, onnx, inputs, expected, actual = bundle_context(args.bundle, args.contract, args.onnx)
    from streamparity.judging.invariants import check_inputs

    broken = check_inputs(contract, int(meta["chunk"]), inputs, require_caches=False)
    if broken:  # the run that wrote the bundle fed inputs that passed these checks: this bundle was altered
        raise StreamparityError(f"bundle input {broken[0].field}: {broken[0].message} (the run that wrote it fed "
                                f"checked inputs){f'; {len(broken) - 1} more' if len(broken) > 1 else ''}",
                                file=str(args.bundle), field=f"input/{broken[0].field}")
    try:
        spec = args.backend or parse_backend_spec(str(meta["backend"]))
    except argparse.ArgumentTypeError as e:
        raise StreamparityError(f"{e}; rerun it on another with --backend=ID", file=str(args.bundle),
                                field="meta.backend") from None
    print(f"repro: {args.bundle}: contract {contract.name}, chunk {meta['chunk']} ({meta['mode']}), recorded on "
          f"{meta['backend']}; rerunning on {spec.id} with {onnx}")
    with tempfile.TemporaryDirectory(prefix="streamparity-repro-") as tmp:
        res = rerun(contract, onnx, spec, meta, inputs, expected, args.engine_dir or Path(tmp))
    for line in describe_chunk(res, contract):  # the same lines as the pytest failure message
        print(line)
    # read_bundle required the recorded verdicts and violations; the chunk verdict, the per-output verdicts and
    # the contract violations must all match to say "reproduced"
    recorded = dict(meta["verdicts"])
    recorded_violations = list(meta["violations"])
    recorded["chunk"] = str(meta.get("verdict") or _overall(recorded, recorded_violations, meta.get("error")))
    now = {k: res.verdicts.get(k, "-") for k in recorded if k != "chunk"}
    now["chunk"] = res.verdict
    now_violations = [str(v) for v in res.violations]
    same = all(now[k] == v for k, v in recorded.items()) and \
        _violation_keys(now_violations) == _violation_keys(recorded_violations)
    print(f"recorded verdicts {recorded}; now {now}")
    print(f"recorded contract violations: {len(recorded_violations)}; now: {len(now_violations)}"
          + (f" (first: {now_violations[0]})" if now_violations else ""))
    print("reproduced" if same else "DIFFERENT from the recorded failure")
    if spec.id == meta["backend"] and actual:
        diffs = []
        got = res.bundle_outputs or {}
        for name, a in actual.items():
            if name in (res.metrics or {}) and name in got:
                diffs.append(f"{name} {float(np.max(np.abs(np.asarray(got[name], np.float64) - a))):.3g}")
        if diffs:
            print("rerun vs recorded actual outputs, max abs: " + ", ".join(diffs))
    if meta.get("mode") == "closed_loop":
        print("note: a closed-loop bundle feeds the caches that the failing runtime produced itself up to this "
              "chunk; a fixed model can still fail here. To confirm a fix, rerun the closed loop from chunk 0 "
              "with the bundle's `repro: pytest ...` line.")
    print(f"verdict: {res.verdict}")
    return 1 if res.verdict == "fail" else 0
