"""The wording of failures: what, where and how far, with the bound beside each figure."""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamparity.contract.model import Contract

if TYPE_CHECKING:
    from streamparity.results.records import ChunkResult

from streamparity.contract.model import Tolerance
from streamparity.judging.metrics import Metrics


def describe_failure(m: Metrics, tol: Tolerance, *, what: str) -> str:
    """A torch.testing-style message: what, where and how far."""
    if m.shape_error or m.nonfinite or m.mismatches:
        lines = [f"{what}: output {m.output!r}, chunk {m.chunk} is not close"]
    else:
        lines = [f"{what}: output {m.output!r}, chunk {m.chunk} is within tolerance but above the warn level "
                 f"{tol.warn_atol:g}"]
    if m.shape_error:
        lines.append(f"  {m.shape_error}")
        return "\n".join(lines)
    lines += [
        f"  mismatched elements: {m.mismatches} / {m.numel} ({m.mismatch_pct:.1f}%) in region {m.region}",
        f"  non-finite elements: {m.nonfinite}" + (
            f" (first at index {m.worst_index}: actual {m.worst_actual:.6g}, expected {m.worst_expected:.6g})"
            if m.nonfinite else ""),
        f"  greatest absolute difference: {m.max_abs:.3g} at index {m.worst_index} "
        f"(actual {m.worst_actual:.6g}, expected {m.worst_expected:.6g})" if not m.nonfinite else
        "  greatest absolute difference: not finite (NaN or Inf in the actual or expected values)",
        f"  greatest relative difference: {m.max_rel:.3g} at index {m.rel_index} (|expected| floored at atol)"
        if not m.nonfinite else "  greatest relative difference: not finite",
        f"  mean abs {m.mean_abs:.3g}, p95 {m.p95_abs:.3g}, p99 {m.p99_abs:.3g}",
        f"  tolerance: {tol.describe()} -- {tol.reason}",
    ]
    if tol.known_issue:
        lines.append(f"  known issue: {tol.known_issue}")
    return "\n".join(lines)


def describe_chunk(res: ChunkResult, contract: Contract) -> list[str]:
    """What failed or warned and how far: the lines of a pytest failure and of ``streamparity repro``."""
    head = f"[{res.backend} {res.mode} chunk {res.chunk}]"
    lines: list[str] = []
    if res.error:
        lines.append(f"{head} runtime error: {res.error}")
    for v in res.violations:
        lines.append(f"{head} CONTRACT VIOLATION {v.field}: {v.message}")
    for name, m in res.metrics.items():
        vd = res.verdicts.get(name)
        if vd in ("fail", "warn"):
            tol = contract.tolerance(name, res.precision)
            label = "FAIL" if vd == "fail" else "WARN"
            lines.append(f"{head} {label} " + describe_failure(m, tol, what=f"{res.backend} vs reference"))
    return lines or [f"{head} ok"]
