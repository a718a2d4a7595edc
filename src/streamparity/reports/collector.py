"""Reports: the run's verdict table (terminal), summary.json, and the human-readable report."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamparity.atomic import atomic_write_text
from streamparity.judging.verdict import Outcome, Verdict, label, worst
from streamparity.results.records import SUMMARY_VERSION, ChunkSummary, GateSummary, Record, StabilitySummary, overall


@dataclass
class RunRow:
    backend: str
    mode: str
    chunks: int = 0
    passed: int = 0
    warned: int = 0
    failed: int = 0
    skipped: int = 0
    worst: dict[str, tuple[float, int]] = field(default_factory=dict)
    series: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    cache_len: dict[int, int] = field(default_factory=dict)
    step_ms: list[float] = field(default_factory=list)
    placements: dict[str, int] = field(default_factory=dict)
    violations: list[tuple[int, str]] = field(default_factory=list)
    failed_chunks: list[int] = field(default_factory=list)
    first_output_failure: tuple[int, str] | None = None
    """(chunk, what) of the earliest chunk whose outputs failed their tolerance."""
    """(chunk, first message) of every chunk with contract-invariant violations or a run error."""
    gates: list[dict[str, Any]] = field(default_factory=list)
    gate_outcome: str | None = None
    backend_info: dict[str, Any] = field(default_factory=dict)
    skip_reason: str | None = None
    stability: dict[str, Any] = field(default_factory=dict)
    stability_outcome: str | None = None
    output_verdicts: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))

    @property
    def outcome(self) -> Outcome:
        """The run's verdict: the worst of its chunks, its gate test and its stability test; skip when nothing ran."""
        gate: Verdict = "fail" if self.gate_outcome == "failed" else "pass"
        stab: Verdict = "fail" if self.stability_outcome == "failed" else "pass"
        chunks: Verdict = "fail" if self.failed else "warn" if self.warned else "pass"
        v = worst(chunks, gate, stab)
        return "skip" if v != "fail" and self.chunks == 0 and self.skipped else v

    @property
    def verdict(self) -> str:
        """:attr:`outcome` as the summary table and summary.json spell it (PASS, WARN, FAIL, SKIP)."""
        return label(self.outcome)


_LEFT = 74
"""Width of the run columns of the summary table (backend .. 1st fail), blank on an output's continuation line."""


def _add_chunk(row: RunRow, rec: ChunkSummary, outcome: str) -> None:
    row.chunks += 1
    k = rec.chunk
    if rec.verdict == "fail" or outcome == "failed":
        row.failed += 1
        row.failed_chunks.append(k)
        bad = [(o, m) for o, m in rec.metrics.items() if m.verdict == "fail" or (outcome == "failed" and
               m.verdict == "warn")]
        if bad and (row.first_output_failure is None or k < row.first_output_failure[0]):
            o, m = bad[0]
            row.first_output_failure = (k, f"output {o!r} {m.verdict}: max abs {m.max_abs:.3g}, {m.mismatches} of "
                                           f"{m.numel} elements mismatched")
    elif rec.verdict == "warn":
        row.warned += 1
    else:
        row.passed += 1
    for out, m in rec.metrics.items():
        row.series[out][k] = m.max_abs
        row.output_verdicts[out][m.verdict] = row.output_verdicts[out].get(m.verdict, 0) + 1
        # the largest error; among equal ones the earliest chunk (the same under xdist as serially)
        if out not in row.worst or not m.max_abs <= row.worst[out][0] or \
                (m.max_abs == row.worst[out][0] and k < row.worst[out][1]):
            row.worst[out] = (m.max_abs, k)
    if rec.cache_len_out:
        row.cache_len[k] = int(rec.cache_len_out[0])
    if rec.step_ms:
        row.step_ms.append(float(rec.step_ms))
    problems = [*rec.violations, *([rec.error] if rec.error else [])]
    if problems:
        row.violations.append((k, str(problems[0])))
    if rec.placement:
        row.placements[rec.placement] = row.placements.get(rec.placement, 0) + 1


class SummaryCollector:
    """Aggregates the payloads that parity tests attach to their reports."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, Record | dict[str, Any]]] = []

    def add(self, nodeid: str, outcome: str, record: Record | dict[str, Any]) -> None:
        """A test's typed record, or the plain payload of a benchmark (``kind: latency``)."""
        self.records.append((nodeid, outcome, record))

    def rows(self) -> list[RunRow]:
        rows: dict[tuple[str, str], RunRow] = {}
        for _nodeid, outcome, rec in self.records:
            if isinstance(rec, dict):  # benchmarks: kept apart, see to_json
                continue
            row = rows.setdefault((rec.backend, rec.mode), RunRow(rec.backend, rec.mode))
            if isinstance(rec, GateSummary):
                row.gates = rec.gates
                row.gate_outcome = outcome
                row.backend_info = rec.backend_info
            elif isinstance(rec, StabilitySummary):
                row.stability = rec.outputs
                row.stability_outcome = outcome
                for k, v in rec.cache_len.items():
                    row.cache_len.setdefault(int(k), int(v))
            elif rec.verdict == "skip":
                row.skipped += 1
                row.skip_reason = rec.reason
            else:
                _add_chunk(row, rec, outcome)
        return sorted(rows.values(), key=lambda r: (r.mode, r.backend))

    def table_lines(self) -> list[str]:
        rows = self.rows()
        head = f"{'backend':<16} {'mode':<12} {'verdict':<7} {'chunks':>6} {'pass':>5} {'warn':>5} {'fail':>5} " \
               f"{'1st fail':>8}  " \
               f"{'output':<26} {'worst max_abs':>13} {'@chunk':>6} {'p95':>9}"
        lines = [head, "-" * len(head)]
        for r in rows:
            outs = sorted(r.worst) or ["-"]
            for i, out in enumerate(outs):
                first = str(min(r.failed_chunks)) if r.failed_chunks else "-"
                left = (f"{r.backend:<16} {r.mode:<12} {r.verdict:<7} {r.chunks:>6} {r.passed:>5} {r.warned:>5} "
                        f"{r.failed:>5} {first:>8}  ") if i == 0 else " " * _LEFT
                if out == "-":
                    reason = f"skipped: {r.skip_reason}" if r.skip_reason else ""
                    lines.append(left + reason)
                    continue
                worst, at = r.worst[out]
                vals = list(r.series[out].values())
                p95 = float(np.percentile(vals, 95)) if vals and np.all(np.isfinite(vals)) else float("inf")
                lines.append(left + f"{out:<26} {worst:>13.3g} {at:>6} {p95:>9.3g}")
            if r.violations:
                first_chunk, first = min(r.violations)
                lines.append(" " * _LEFT + f"{'contract invariants':<26} {len(r.violations)} chunk(s) violate, first "
                             f"@chunk {first_chunk}: {first}")
            if r.first_output_failure is not None:
                k, what = r.first_output_failure
                lines.append(" " * _LEFT + f"{'first tolerance failure':<26} @chunk {k}: {what}")
            if r.gate_outcome == "failed":
                failed = [f"{g.get('output')}: {name}" for g in r.gates for name, c in (g.get("checks") or {}).items()
                          if not c.get("ok", True)]
                which = ", ".join(failed) or "see the gate test"
                lines.append(" " * _LEFT + f"{'run-level gates':<26} failed: {which}")
        return lines

    def to_json(self, meta: dict[str, Any]) -> dict[str, Any]:
        runs = []
        for r in self.rows():
            outputs = {}
            for out, ser in r.series.items():
                vals = [ser[k] for k in sorted(ser)]
                finite = np.all(np.isfinite(vals)) if vals else True
                outputs[out] = {
                    "worst_max_abs": r.worst[out][0],
                    "worst_chunk": r.worst[out][1],
                    "p95_max_abs": float(np.percentile(vals, 95)) if vals and finite else None,
                    "p99_max_abs": float(np.percentile(vals, 99)) if vals and finite else None,
                    "mean_max_abs": float(np.mean(vals)) if vals and finite else None,
                    "series": {str(k): ser[k] for k in sorted(ser)},
                    "verdicts": dict(r.output_verdicts.get(out, {})),
                }
            runs.append({
                "backend": r.backend, "mode": r.mode, "verdict": r.verdict, "chunks": r.chunks,
                "passed": r.passed, "warned": r.warned, "failed": r.failed, "skipped": r.skipped,
                "first_failed_chunk": min(r.failed_chunks) if r.failed_chunks else None,
                "skip_reason": r.skip_reason,
                "pass_rate": r.passed / r.chunks if r.chunks else None,
                "outputs": outputs, "gates": r.gates, "gate_outcome": r.gate_outcome,
                "stability": r.stability, "stability_outcome": r.stability_outcome,
                "cache_len": {str(k): v for k, v in sorted(r.cache_len.items())},
                "step_ms": {"p50": _pct(r.step_ms, 50), "p95": _pct(r.step_ms, 95), "p99": _pct(r.step_ms, 99)},
                "placements": dict(sorted(r.placements.items())),
                "backend_info": r.backend_info,
                "violations": {"chunks": len(r.violations),
                               "first": (dict(zip(("chunk", "message"), min(r.violations), strict=True))
                                         if r.violations else None),
                               "by_chunk": {str(k): m for k, m in sorted(r.violations)[:50]}},
            })
        latency = [{**p, "outcome": outcome, "nodeid": nodeid} for nodeid, outcome, p in self.records
                   if isinstance(p, dict) and p.get("kind") == "latency"]
        paired = [{**p, "outcome": outcome, "nodeid": nodeid} for nodeid, outcome, p in self.records
                  if isinstance(p, dict) and p.get("kind") == "latency_paired"]
        reference_ok = (meta.get("reference_check") or {}).get("ok", True) is not False
        return {"streamparity_summary": SUMMARY_VERSION, **meta,
                "verdict": overall(runs, [*latency, *paired], reference_ok=reference_ok),
                "runs": runs, "latency": latency, "latency_paired": paired}

    def write(self, report_dir: Path, meta: dict[str, Any]) -> list[Path]:
        doc = self.to_json(meta)
        path = report_dir / "summary.json"
        atomic_write_text(path, json.dumps(doc, indent=1, default=str))
        written = [path]
        try:
            from streamparity.reports.markdown import write_markdown_report
        except ImportError:
            return written
        written += write_markdown_report(doc, report_dir)
        return written


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None
