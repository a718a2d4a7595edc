"""Parity of each backend against the PyTorch reference, chunk by chunk, in both modes.

Parametrized by the streamparity plugin from ``--backend`` and ``--chunks``; ids read
``ort-cpu-fp16-chunk017``.
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
    __tracebackhide__ = True
    import onnxruntime as ort

    from streamparity.contract.model_io import check_model_io
    from streamparity.errors import ModelMismatch

    sess = ort.InferenceSession(str(parity.onnx), providers=["CPUExecutionProvider"])
    try:
        check_model_io(parity.contract, parity.onnx, sess.get_inputs(), sess.get_outputs())
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
