"""Calibration: measure the clean model's error on its reference and write tolerances into the contract.

The clean model (the contract's ONNX) runs on the contract's reference with each chosen backend, in
functional and closed-loop mode, through the same ParitySession the parity tests use.  Per output and
precision the per-chunk max-abs errors are pooled over backends and modes; the tolerances are a margin
over that distribution:

* ``atol`` (a chunk fails above it): ``margin x worst``
* ``warn_atol`` (a chunk warns above it), ``p95_max_abs``, ``p99_max_abs`` (run gates):
  ``sqrt(margin) x`` worst, P95 and P99 -- a percentile over many chunks moves far less between runs than
  one chunk's worst, so the run gates can sit closer to the measurement and see small drifts
* ``min_pass_fraction`` 0.95 of chunks at or under ``warn_atol`` (the clean run has 1.0)
* ``rtol`` 0: ``atol`` already covers the worst element error measured

Every limit is raised to a floor of a few units in the last place of the precision at the output's
scale (max |reference value|), so that a bit-exact baseline (error 0) never yields a limit that float
noise on another machine would break.  Calibration refuses a reference that the reference checks reject,
and a clean model that breaks a contract invariant (tolerances cannot excuse those).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamparity.atomic import atomic_write_text
from streamparity.backends.base import BackendSpec
from streamparity.contract.calibration_state import uncalibrated_doc
from streamparity.contract.loading import parse_contract
from streamparity.errors import ContractError, ReferenceInvalid, StreamparityError
from streamparity.judging.metrics import percentile
from streamparity.results.records import CLOSED_LOOP, FUNCTIONAL

# floors: units in the last place at the output's scale (fp32 eps 2^-23, fp16 eps 2^-10)
ULP_FLOOR = {"fp32": 64 * 2.0**-23, "fp16": 2 * 2.0**-10, "int8": 2.0**-7}
MIN_PASS_FRACTION = 0.95


@dataclass
class Measurement:
    output: str
    precision: str
    backends: list[str]
    chunks: int
    worst: float
    worst_chunk: int
    p95: float
    p99: float
    scale: float
    series: list[float] = field(default_factory=list, repr=False)

    def floor(self) -> float:
        return float(ULP_FLOOR.get(self.precision, ULP_FLOOR["fp32"]) * max(self.scale, 1.0))


def _round_up(x: float) -> float:
    """Two significant digits, rounded up (limits read well and never drop below the computed value)."""
    if x <= 0 or not math.isfinite(x):
        return x
    e = math.floor(math.log10(x)) - 1
    return float(math.ceil(x / 10**e - 1e-9) * 10**e)


def tolerance_entry(m: Measurement, margin: float) -> dict[str, Any]:
    floor = m.floor()
    root = math.sqrt(margin)
    atol = _round_up(max(margin * m.worst, floor))
    warn = min(_round_up(max(root * m.worst, floor)), atol)
    p95 = min(_round_up(max(root * m.p95, floor)), atol)
    p99 = min(_round_up(max(root * m.p99, floor)), atol)
    return {
        "atol": atol, "rtol": 0.0, "warn_atol": warn, "p95_max_abs": p95, "p99_max_abs": p99,
        "min_pass_fraction": MIN_PASS_FRACTION,
        "reason": (f"calibrated by streamparity calibrate on {', '.join(m.backends)} over {m.chunks} chunk results "
                   f"(functional + closed loop): worst {m.worst:.3g} (chunk {m.worst_chunk}), P95 {m.p95:.3g}, "
                   f"P99 {m.p99:.3g}; atol = {margin:g} x worst, warn/P95/P99 gates = {root:.3g} x measured, "
                   f"floor {floor:.3g} ({m.precision} ulps at output scale {m.scale:.3g}); rtol 0"),
    }


def _scales(session: Any, outputs: Sequence[str]) -> dict[str, float]:
    out = dict.fromkeys(outputs, 0.0)
    for rec in session.reference:
        for n in outputs:
            if n in rec.outputs and rec.outputs[n].size:
                out[n] = max(out[n], float(np.max(np.abs(rec.outputs[n]))))
    return out


def measure(session: Any, specs: Sequence[BackendSpec]) -> dict[tuple[str, str], Measurement]:
    """Per (output, precision): the clean model's per-chunk errors over the chosen backends, both modes."""
    rep = session.reference_report()
    if not rep.ok:
        raise ReferenceInvalid("refusing to calibrate on a reference that the reference checks reject:\n"
                               + rep.summary(), file=str(session.reference.path))
    outputs = session.contract.compared_outputs()
    scales = _scales(session, outputs)
    found: dict[tuple[str, str], Measurement] = {}
    for spec in specs:
        for mode in (FUNCTIONAL, CLOSED_LOOP):
            run = session.run(spec, mode)
            for c in run.chunks:
                if c.error or c.violations:
                    why = c.error or "; ".join(str(v) for v in c.violations[:3])
                    raise StreamparityError(f"the clean model breaks the contract on {spec.id} ({mode}) at chunk "
                                            f"{c.chunk}: {why}; calibration cannot excuse that",
                                            file=str(session.onnx), chunk=c.chunk)
                for name in outputs:
                    met = c.metrics.get(name)
                    if met is None:
                        continue
                    m = found.setdefault((name, spec.precision), Measurement(
                        name, spec.precision, [], 0, 0.0, -1, 0.0, 0.0, scales[name]))
                    if spec.id not in m.backends:
                        m.backends.append(spec.id)
                    m.series.append(met.max_abs)
                    if not math.isfinite(met.max_abs):
                        raise StreamparityError(f"the clean model gives non-finite {name} on {spec.id} ({mode}) at "
                                                f"chunk {c.chunk}", file=str(session.onnx), chunk=c.chunk, field=name)
                    if met.max_abs > m.worst or m.worst_chunk < 0:
                        m.worst, m.worst_chunk = met.max_abs, c.chunk
    for m in found.values():
        m.chunks = len(m.series)
        m.p95, m.p99 = percentile(m.series, 95), percentile(m.series, 99)
    return found


@dataclass
class CalibrationResult:
    contract: Path
    measurements: list[Measurement]
    tolerances: dict[str, dict[str, dict[str, Any]]]
    still_uncalibrated: list[str]


def calibrate(contract_path: Path, specs: Sequence[BackendSpec], *, margin: float = 4.0) -> CalibrationResult:
    from streamparity.session import ParitySession, SessionConfig

    if not margin >= 1.0:
        raise StreamparityError(f"--margin must be at least 1, got {margin:g}", field="--margin")
    session = ParitySession(SessionConfig(contract=contract_path))
    try:
        found = measure(session, specs)
    finally:
        session.close()
    try:
        doc = json.loads(Path(contract_path).read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ContractError(f"cannot re-read the contract ({e})", file=str(contract_path)) from None
    written: dict[str, dict[str, dict[str, Any]]] = {}
    for (name, prec), m in sorted(found.items()):
        entry = tolerance_entry(m, margin)
        doc["tolerances"].setdefault(name, {})[prec] = entry
        written.setdefault(name, {})[prec] = entry
    parse_contract(doc, Path(contract_path).resolve())  # never write a contract that does not load
    atomic_write_text(Path(contract_path), json.dumps(doc, indent=2) + "\n")
    return CalibrationResult(Path(contract_path), list(found.values()), written, uncalibrated_doc(doc))
