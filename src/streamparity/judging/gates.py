"""Run-level gates of one backend and mode: P95/P99 of the per-chunk max |error|, the share of chunks within the
warn level, and "not worse than ONNX Runtime CPU at the same precision"; each result describes itself."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamparity.contract.model import Contract
from streamparity.judging.metrics import percentile
from streamparity.judging.verdict import Verdict
from streamparity.results.records import ChunkResult


def gate_meaning(check: str) -> str:
    """What a run-level gate check measures, for its failure line."""
    if check == "p95":
        return "P95 over the chunks of the per-chunk max |error| (contract p95_max_abs)"
    if check == "p99":
        return "P99 over the chunks of the per-chunk max |error| (contract p99_max_abs)"
    if check == "pass_fraction":
        return "share of chunks within the warn level (contract min_pass_fraction)"
    if check.startswith("vs_"):
        return ("P95 error against the reference may be at most gates.vs_baseline_factor x that of ONNX Runtime "
                "CPU at the same precision (plus the contract's noise floor)")
    return "contract gate"


@dataclass
class GateResult:
    """The gate checks of one output: ``checks[name] = {value, limit, ok, ...}``."""

    backend: str
    mode: str
    output: str
    checks: dict[str, dict[str, Any]]

    @property
    def failed(self) -> list[str]:
        return [k for k, v in self.checks.items() if not v["ok"]]

    @property
    def verdict(self) -> Verdict:
        return "fail" if self.failed else "pass"

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, "checks": self.checks}


@dataclass
class RunGates:
    """Every gate of one run, and the direct difference from ORT FP32 (informational)."""

    backend: str
    precision: str
    mode: str
    gates: list[GateResult]
    vs_ort_fp32_direct_max: float | None = None

    def __iter__(self) -> Iterator[GateResult]:
        return iter(self.gates)

    @property
    def verdict(self) -> Verdict:
        return "fail" if any(g.failed for g in self.gates) else "pass"

    def describe(self, contract: Contract) -> list[str]:
        """The lines of a gate failure: what each failed check measured, its value and limit, and the tolerance's
        reason once per output; empty when every gate passed."""
        failed = [(g, k) for g in self.gates for k in g.failed]
        if not failed:
            return []
        lines = [f"[{self.backend} {self.mode}] run-level gates failed:"]
        for g, k in failed:
            c = g.checks[k]
            extra = f" (baseline p95 {c['baseline_p95']:.3g})" if "baseline_p95" in c else ""
            lines.append(f"  {g.output}: {k} = {c['value']:.4g}, limit {c['limit']:.4g}{extra} -- {gate_meaning(k)}")
        for out in dict.fromkeys(g.output for g, _ in failed):
            lines.append(f"  {out} tolerance ({self.precision}): {contract.tolerance(out, self.precision).reason}")
        return lines


def judge_gates(contract: Contract, backend: str, precision: str, mode: str, chunks: Sequence[ChunkResult],
                baseline: Sequence[ChunkResult] | None, baseline_id: str) -> list[GateResult]:
    """Gate checks per compared output over the selected chunks; `baseline` is ORT CPU at the same precision (None
    when the backend is that baseline or it cannot run)."""
    out: list[GateResult] = []
    for name in contract.compared_outputs():
        tol = contract.tolerance(name, precision)
        series = [c.metrics[name].max_abs for c in chunks if name in c.metrics]
        if not series:
            continue
        checks: dict[str, dict[str, Any]] = {}
        p95 = percentile(series, 95)
        p99 = percentile(series, 99)
        if tol.p95_max_abs is not None:
            checks["p95"] = {"value": p95, "limit": tol.p95_max_abs, "ok": p95 <= tol.p95_max_abs}
        if tol.p99_max_abs is not None:
            checks["p99"] = {"value": p99, "limit": tol.p99_max_abs, "ok": p99 <= tol.p99_max_abs}
        if tol.min_pass_fraction is not None:
            thr = tol.warn_atol if tol.warn_atol is not None else tol.atol
            frac = float(np.mean([v <= thr for v in series]))
            checks["pass_fraction"] = {"value": frac, "limit": tol.min_pass_fraction, "threshold": thr,
                                       "ok": frac >= tol.min_pass_fraction}
        if baseline is not None:
            bsel = [c.metrics[name].max_abs for c in baseline if name in c.metrics]
            if bsel:
                bp95 = percentile(bsel, 95)
                floor = contract.gates.vs_baseline_floor.get(precision, 0.0)
                limit = contract.gates.vs_baseline_factor * max(bp95, floor)
                checks[f"vs_{baseline_id.replace('-', '_')}"] = {
                    "value": p95, "baseline_p95": bp95, "floor": floor, "limit": limit, "ok": p95 <= limit}
        out.append(GateResult(backend, mode, name, checks))
    return out


def direct_difference(run: Iterable[ChunkResult], baseline: Iterable[ChunkResult]) -> dict[str, float]:
    """Max abs difference of the encoded output, runtime vs baseline, per chunk (not a reference comparison)."""
    base = {c.chunk: c for c in baseline}
    out: dict[str, float] = {}
    for c in run:
        b = base.get(c.chunk)
        if b is not None and b.encoded is not None and c.encoded is not None and b.encoded.shape == c.encoded.shape:
            out[str(c.chunk)] = float(np.max(np.abs(b.encoded.astype(np.float64) - c.encoded)))
    return out
