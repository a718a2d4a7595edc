"""``streamparity calibrate``: measure the clean model on its reference and write tolerances into the contract.

Runs the contract's ONNX on the contract's reference with each --backend (functional and closed loop),
and writes atol/warn/P95/P99/pass-fraction tolerances per output and precision as a margin over the
measured errors, with a reason recording the measurement.  The contract file is replaced atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_BACKENDS = ("ort-cpu-fp32", "ort-cpu-fp16")


def register(sub: Any) -> None:
    p = sub.add_parser("calibrate", help="measure the clean model's error and write the contract's tolerances",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from streamparity.cli.validators import existing_file

    p.add_argument("contract", type=existing_file, metavar="CONTRACT", help="contract JSON (rewritten in place)")
    p.add_argument("--backend", action="append", default=None, metavar="ID",
                   help=f"backend to measure, repeatable (default: {' and '.join(DEFAULT_BACKENDS)})")
    p.add_argument("--margin", type=float, default=4.0, metavar="X",
                   help="fail limit = X x worst measured error; run gates = sqrt(X) x measured (default: 4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamparity.backends.registry import parse_backend_spec
    from streamparity.errors import StreamparityError
    from streamparity.tools.calibration import calibrate

    try:
        specs = [parse_backend_spec(b) for b in (args.backend or DEFAULT_BACKENDS)]
    except argparse.ArgumentTypeError as e:
        raise StreamparityError(str(e), field="--backend") from None
    res = calibrate(Path(args.contract), specs, margin=args.margin)
    for m in sorted(res.measurements, key=lambda m: (m.output, m.precision)):
        t = res.tolerances[m.output][m.precision]
        print(f"{m.output} {m.precision}: worst {m.worst:.3g} (chunk {m.worst_chunk}), P95 {m.p95:.3g}, "
              f"P99 {m.p99:.3g} over {m.chunks} chunk results on {', '.join(m.backends)} -> atol {t['atol']:g}, "
              f"warn {t['warn_atol']:g}, P95 gate {t['p95_max_abs']:g}, P99 gate {t['p99_max_abs']:g}")
    print(f"wrote tolerances into {res.contract}")
    if res.still_uncalibrated:
        print(f"note: still uncalibrated (no backend of that precision measured): {', '.join(res.still_uncalibrated)}")
    return 0
