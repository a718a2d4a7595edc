"""Stability (drift) gate of every closed-loop run: the per-chunk error series of each compared output
must show no significant growth, a bounded max and P99, and no late/early blow-up.

Parametrized per backend by the streamparity plugin (``parity_gate_case``); ids read
``ort-cpu-fp32-closed_loop``.  Limits: ``gates.stability`` of the contract; the analysis:
:func:`streamparity.stability.analyze`.  The result is recorded (payload ``"kind": "stability"``) for
summary.json, report.md and JUnit XML properties.
"""

from __future__ import annotations

import pytest

from streamparity.pytest_plugin.outcomes import judge_stability

pytestmark = [pytest.mark.parity, pytest.mark.stability]


@pytest.mark.closed_loop
def test_closed_loop_stability(request, parity, parity_gate_case):
    """No error trend over the closed loop: slope not significantly above the contract's limit, late
    errors not a multiple of the early ones, max and P99 bounded."""
    spec, _mode = parity_gate_case
    judge_stability(request, parity, spec)
