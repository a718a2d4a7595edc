"""Stability (drift) gate of every closed-loop run: the per-chunk error series of each compared output
must show no significant growth, a bounded max and P99, and no late/early blow-up.

Parametrized per backend by the streamparity plugin (``parity_gate_case``); ids read
``ort-cpu-fp32-closed_loop``.  Limits: ``gates.stability`` of the contract; the analysis:
:func:`streamparity.stability.analyze`.  The result is recorded (payload ``"kind": "stability"``) for
summary.json, report.md and JUnit XML properties.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from streamparity.backends.registry import BackendSpec
from streamparity.drivers import CLOSED_LOOP
from streamparity.pytest_plugin import PROPERTY, ParityWarning, _get_run, _reference_problem, _repro
from streamparity.session import ParitySession
from streamparity.stability import StabilityResult, analyze

pytestmark = [pytest.mark.parity, pytest.mark.stability]


def _record(request: pytest.FixtureRequest, payload: dict[str, Any]) -> None:
    props = request.node.user_properties
    props.append((PROPERTY, payload))
    # flat properties for JUnit XML dashboards
    props.append(("stability.verdict", payload["verdict"]))
    for out, r in payload.get("outputs", {}).items():
        for key in ("verdict", "slope", "stderr", "t", "ratio", "max_abs", "p99"):
            v = r.get(key)
            props.append((f"stability.{out}.{key}", v if isinstance(v, str) else f"{v:.4g}" if v is not None
                          else ""))


def judge_stability(request: pytest.FixtureRequest, session: ParitySession, spec: BackendSpec) -> None:
    __tracebackhide__ = True
    # errors become verdicts outside the except blocks: no chained "During handling ..." tracebacks
    problem = _reference_problem(session)
    if problem:
        pytest.fail(problem, pytrace=False)
    run, unavailable, broken = _get_run(session, spec, CLOSED_LOOP)
    if unavailable is not None:
        _record(request, {"kind": "stability", "backend": spec.id, "mode": CLOSED_LOOP, "verdict": "skip",
                          "reason": unavailable, "outputs": {}})
        pytest.skip(f"{spec.id}: {unavailable}")
    if run is None:
        pytest.fail(f"{spec.id} cannot run: {broken}", pytrace=False)
    gate = session.contract.gates.stability
    selected = set(session.closed_loop_chunks())
    chunks = [c for c in run.chunks if c.chunk in selected]
    head = f"[{spec.id} {CLOSED_LOOP}]"
    broken = [c for c in chunks if c.error]
    if broken:
        pytest.fail(f"{head} stability cannot be judged: {len(broken)} chunk(s) did not run, first: chunk "
                    f"{broken[0].chunk}: {broken[0].error}", pytrace=False)
    results: dict[str, StabilityResult] = {}
    outputs: dict[str, Any] = {}
    for name in session.contract.compared_outputs():
        pts = [(c.chunk, c.metrics[name].max_abs) for c in chunks if name in c.metrics]
        if not pts:
            continue
        tol = session.contract.tolerance(name, spec.precision)
        res = analyze([v for _, v in pts], gate, tol, chunks=[k for k, _ in pts])
        results[name] = res
        outputs[name] = {**res.to_dict(), "series": {str(k): v for k, v in pts},
                         "atol": tol.atol, "warn_atol": tol.warn_atol}
    verdicts = [r.verdict for r in results.values()]
    verdict = "fail" if "fail" in verdicts else "warn" if "warn" in verdicts else "pass"
    cache_len = {str(c.chunk): c.cache_len_out[0] for c in chunks if c.cache_len_out}
    _record(request, {"kind": "stability", "backend": spec.id, "precision": spec.precision, "mode": CLOSED_LOOP,
                      "verdict": verdict, "outputs": outputs, "cache_len": cache_len, "reason": gate.reason})
    if not results:
        pytest.fail(f"{head} no compared output has an error series to judge", pytrace=False)
    bad = {n: r for n, r in results.items() if r.verdict != "pass"}
    if not bad:
        return
    lines = [r.describe(f"{head} output {n!r}") for n, r in bad.items()]
    if gate.reason:
        lines.append(f"gate: {gate.reason}")
    if verdict == "fail":
        repro = _repro(request.config, request.node.nodeid, spec, None)
        chunks = request.config.option.chunks
        lines.append(repro + (f" --chunks {chunks.text}" if chunks is not None else ""))
        pytest.fail("\n".join(lines), pytrace=False)
    warnings.warn(ParityWarning("\n".join(lines)), stacklevel=1)


@pytest.mark.closed_loop
def test_closed_loop_stability(request, parity, parity_gate_case):
    """No error trend over the closed loop: slope not significantly above the contract's limit, late
    errors not a multiple of the early ones, max and P99 bounded."""
    spec, _mode = parity_gate_case
    judge_stability(request, parity, spec)
