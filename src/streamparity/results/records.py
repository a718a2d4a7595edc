"""The result records: what a driver produced for one chunk (:class:`ChunkResult`, with its arrays) and one run
(:class:`RunResult`), and the plain records that travel from pytest workers to the reports and make up
``summary.json``: :class:`ChunkSummary`, :class:`GateSummary`, :class:`StabilitySummary`, each with
``to_dict``/``from_dict``.  Verdicts come from :mod:`streamparity.judging.verdict` only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from streamparity.judging.invariants import Violation
from streamparity.judging.metrics import Metrics
from streamparity.judging.verdict import Outcome, Verdict, label, worst

FUNCTIONAL = "functional"
CLOSED_LOOP = "closed_loop"
MODES = (FUNCTIONAL, CLOSED_LOOP)
SUMMARY_VERSION = 1
"""``streamparity_summary`` of summary.json."""


@dataclass
class ChunkResult:
    chunk: int
    mode: str
    backend: str
    precision: str
    device: str = "cpu"
    metrics: dict[str, Metrics] = field(default_factory=dict)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    cache_len_in: list[int] = field(default_factory=list)
    cache_len_out: list[int] = field(default_factory=list)
    encoded: np.ndarray | None = None
    step_ms: float = 0.0
    error: str | None = None
    bundle_inputs: dict[str, np.ndarray] | None = None
    bundle_outputs: dict[str, np.ndarray] | None = None
    stream_position: int | None = None
    """The position in an unbroken stream the input cache length was checked against (None: not checked)."""
    checked_inputs: bool = False
    """Whether the outputs were checked against the inputs fed (batch dim, fixed cache shapes)."""

    @property
    def verdict(self) -> Verdict:
        if self.error or self.violations:
            return "fail"
        return worst(*self.verdicts.values()) if self.verdicts else "pass"



@dataclass
class RunResult:
    backend: str
    precision: str
    mode: str
    chunks: list[ChunkResult]
    describe: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    def by_chunk(self) -> dict[int, ChunkResult]:
        return {c.chunk: c for c in self.chunks}


@dataclass
class OutputSummary:
    """One output of one chunk: the figures the reports use."""

    max_abs: float
    mean_abs: float
    p95_abs: float
    p99_abs: float
    max_rel: float
    mismatches: int
    numel: int
    nonfinite: int
    verdict: Verdict = "pass"

    @classmethod
    def of(cls, m: Metrics, verdict: Verdict) -> OutputSummary:
        return cls(m.max_abs, m.mean_abs, m.p95_abs, m.p99_abs, m.max_rel, m.mismatches, m.numel, m.nonfinite, verdict)


@dataclass
class ChunkSummary:
    """The record of one per-chunk test: its verdict (``skip`` with a reason when the backend cannot run)."""

    backend: str
    mode: str
    chunk: int
    verdict: Outcome
    precision: str | None = None
    error: str | None = None
    violations: list[str] = field(default_factory=list)
    cache_len_in: list[int] = field(default_factory=list)
    cache_len_out: list[int] = field(default_factory=list)
    step_ms: float = 0.0
    placement: str | None = None
    metrics: dict[str, OutputSummary] = field(default_factory=dict)
    reason: str | None = None
    kind: Literal["chunk"] = "chunk"

    @classmethod
    def of(cls, res: ChunkResult, placement: str) -> ChunkSummary:
        return cls(res.backend, res.mode, res.chunk, res.verdict, res.precision, res.error,
                   [str(v) for v in res.violations], list(res.cache_len_in), list(res.cache_len_out), res.step_ms,
                   placement, {k: OutputSummary.of(m, res.verdicts.get(k, "pass")) for k, m in res.metrics.items()})

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "metrics"}
        d["metrics"] = {k: dict(m.__dict__) for k, m in self.metrics.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChunkSummary:
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "metrics"}
        return cls(**fields, metrics={k: OutputSummary(**m) for k, m in (d.get("metrics") or {}).items()})


@dataclass
class GateSummary:
    """The record of one run-level gate test (backend x mode)."""

    backend: str
    mode: str
    verdict: Outcome
    gates: list[dict[str, Any]] = field(default_factory=list)
    vs_ort_fp32_direct_max: float | None = None
    backend_info: dict[str, Any] = field(default_factory=dict)
    """The backend's ``describe()``: versions, the plan judged (path, sha256, supplied or built), a recording..."""
    kind: Literal["gate"] = "gate"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateSummary:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class StabilitySummary:
    """The record of one stability test (a closed-loop run): per-output figures and series."""

    backend: str
    mode: str
    verdict: Outcome
    precision: str | None = None
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache_len: dict[str, int] = field(default_factory=dict)
    reason: str | None = None
    kind: Literal["stability"] = "stability"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StabilitySummary:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


Record = ChunkSummary | GateSummary | StabilitySummary
_KINDS: dict[str, type[ChunkSummary] | type[GateSummary] | type[StabilitySummary]] = {
    "chunk": ChunkSummary, "gate": GateSummary, "stability": StabilitySummary}


def record_from_dict(d: dict[str, Any]) -> Record | None:
    """The typed record of a test's payload; None for a payload of another kind (benchmarks)."""
    cls = _KINDS.get(str(d.get("kind")))
    return cls.from_dict(d) if cls is not None else None


def overall(runs: list[dict[str, Any]], latency: list[dict[str, Any]], *, reference_ok: bool = True) -> str:
    """The run's verdict: the worst of every backend x mode run and every benchmark; FAIL when the reference
    itself was rejected (no runtime is judged then); NO RUNS when nothing ran."""
    outcomes = [str(r.get("verdict", "")).lower() for r in runs] + ([] if reference_ok else ["fail"])
    outcomes += ["fail" if lat.get("outcome") == "failed" else "pass" for lat in latency
                 if lat.get("outcome") in ("passed", "failed")]
    judged: list[Verdict] = [o for o in outcomes if o in ("pass", "warn", "fail")]  # type: ignore[misc]
    return label(worst(*judged)) if outcomes else "NO RUNS"
