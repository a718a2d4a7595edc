"""The verdict: one type, one ordering (pass < warn < fail), one ``worst()``.  ``skip`` is an outcome of a
result that was not judged (its backend cannot run here); it never hides a warn or a fail."""

from __future__ import annotations

from typing import Literal

Verdict = Literal["pass", "warn", "fail"]
Outcome = Literal["pass", "warn", "fail", "skip"]
_RANK = {"skip": -1, "pass": 0, "warn": 1, "fail": 2}


def worst(*verdicts: Verdict) -> Verdict:
    """The worst of the given verdicts; ``pass`` for none."""
    out: Verdict = "pass"
    for v in verdicts:
        if _RANK[v] > _RANK[out]:
            out = v
    return out


def worst_outcome(*outcomes: Outcome) -> Outcome:
    """Like :func:`worst`, over outcomes: ``skip`` only when every outcome is a skip (and there is one)."""
    judged = [o for o in outcomes if o != "skip"]
    if not judged:
        return "skip" if outcomes else "pass"
    return worst(*judged)  # type: ignore[arg-type]


def fails(verdict: Outcome, fail_on_warn: bool) -> bool:
    """Whether a result with this verdict fails its test: a fail, or a warn under ``--fail-on-warn``."""
    return verdict == "fail" or (fail_on_warn and verdict == "warn")


def label(outcome: Outcome) -> str:
    """How tables spell an outcome: PASS, WARN, FAIL, SKIP."""
    return outcome.upper()
