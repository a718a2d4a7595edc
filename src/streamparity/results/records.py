"""TODO docstring."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamparity.contract.model import Contract
from streamparity.judging.invariants import Violation
from streamparity.judging.metrics import Metrics
from streamparity.judging.verdict import Verdict, worst
from streamparity.judging.wording import describe_failure

FUNCTIONAL = "functional"



CLOSED_LOOP = "closed_loop"



MODES = (FUNCTIONAL, CLOSED_LOOP)



@dataclass
class ChunkResult:
    chunk: int
    mode: str
    backend: str
    precision: str
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

    def describe(self, contract: Contract) -> list[str]:
        """What failed or warned and how far: the lines of a pytest failure and of ``streamparity repro``."""
        head = f"[{self.backend} {self.mode} chunk {self.chunk}]"
        lines: list[str] = []
        if self.error:
            lines.append(f"{head} runtime error: {self.error}")
        for v in self.violations:
            lines.append(f"{head} CONTRACT VIOLATION {v.field}: {v.message}")
        for name, m in self.metrics.items():
            vd = self.verdicts.get(name)
            if vd in ("fail", "warn"):
                tol = contract.tolerance(name, self.precision)
                label = "FAIL" if vd == "fail" else "WARN"
                lines.append(f"{head} {label} " + describe_failure(m, tol, what=f"{self.backend} vs reference"))
        return lines or [f"{head} ok"]

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
