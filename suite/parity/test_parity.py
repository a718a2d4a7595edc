"""Parity of each backend against the PyTorch reference, chunk by chunk, in both modes.

Parametrized by the streamparity plugin from ``--backend`` and ``--chunks``: functional tests per chunk
(``ort-cpu-fp16-chunk017``), closed-loop tests per backend (``ort-cpu-fp16``; ``--closed-loop-items=chunk`` makes
them per chunk too).
"""

from __future__ import annotations

import pytest

from streamparity.pytest_plugin.outcomes import judge, judge_gates

pytestmark = pytest.mark.parity


def test_reference_is_sane(parity):
    """The reference itself obeys the contract: exact cache-length progression, chained caches,
    no NaN, shapes and dtypes, and agreement with the offline full-context encoder."""
    __tracebackhide__ = True
    report = parity.reference_report()
    if not report.ok:
        pytest.fail(report.summary(), pytrace=False)


def test_model_io_matches_contract(parity):
    """The ONNX file's graph inputs and outputs (names, dtypes, ranks, cache layout, fixed and symbolic dims)
    are the contract's, read from the file itself; each runtime's own view is checked when it loads the model."""
    __tracebackhide__ = True
    from streamparity.errors import ModelMismatch

    try:
        parity.check_model_io()
    except ModelMismatch as e:
        pytest.fail(str(e), pytrace=False)


@pytest.mark.functional
def test_functional(request, parity, parity_case):
    spec, mode, chunk = parity_case
    judge(request, parity, spec, mode, chunk)


@pytest.mark.closed_loop
def test_closed_loop(request, parity, parity_case):
    spec, mode, chunk = parity_case
    judge(request, parity, spec, mode, chunk)


@pytest.mark.functional
def test_functional_gates(request, parity, parity_gate_case):
    spec, mode = parity_gate_case
    judge_gates(request, parity, spec, mode)


@pytest.mark.closed_loop
def test_closed_loop_gates(request, parity, parity_gate_case):
    spec, mode = parity_gate_case
    judge_gates(request, parity, spec, mode)
