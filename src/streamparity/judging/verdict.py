"""TODO docstring."""

from __future__ import annotations

from typing import Literal

Verdict = Literal["pass", "warn", "fail"]



_RANK = {"pass": 0, "warn": 1, "fail": 2}



def worst(*verdicts: Verdict) -> Verdict:
    out: Verdict = "pass"
    for v in verdicts:
        if _RANK[v] > _RANK[out]:
            out = v
    return out
