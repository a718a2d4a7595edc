"""Session fixtures for the parity tests and for tests of your own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from streamparity.pytest_plugin.outcomes import backend_or_skip
from streamparity.pytest_plugin.session import plugin_session
from streamparity.session import ParitySession


@pytest.fixture(scope="session")
def parity(request: pytest.FixtureRequest) -> Iterator[ParitySession]:
    """The session's ParitySession (contract, reference, backends, cached runs)."""
    s = plugin_session(request.config)
    try:
        session = s.parity()
    except pytest.UsageError as e:  # only the defaults were given, and they are not there: one line per test
        pytest.fail(str(e), pytrace=False)
    yield session
    s.close()


@pytest.fixture(scope="session")
def trt_fp32(parity: ParitySession) -> Iterator[Any]:
    """The contract's FP32 TensorRT engine (its optimization profiles, TF32 off), built or loaded from the
    engine cache once per session; skips with the reason where TensorRT or a GPU is missing."""
    yield backend_or_skip(parity, "trt-cuda-fp32")


@pytest.fixture(scope="session")
def trt_fp16(parity: ParitySession) -> Iterator[Any]:
    """The contract's FP16 TensorRT engine (pinned FP32 layers per the contract), once per session."""
    yield backend_or_skip(parity, "trt-cuda-fp16")


@pytest.fixture(scope="session")
def ort_fp32(parity: ParitySession) -> Iterator[Any]:
    """ONNX Runtime FP32 on CPU: the baseline every runtime is compared with."""
    yield backend_or_skip(parity, "ort-cpu-fp32")
