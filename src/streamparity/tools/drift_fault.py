"""Fault injector that proves a stability gate: a slow, growing drift of the attention cache.

A backend wrapper, not a runtime: it runs the real ONNX Runtime FP32 backend and, after every call, adds
``rate * calls * pattern`` to the ``cache_channel`` output (``pattern``: a fixed seeded random tensor with
max |value| 1).  In a closed loop the perturbed cache is fed back, so the runtime's own caches carry a
corruption that grows chunk after chunk -- the kind of slow state drift that stays inside the per-chunk
tolerance for the first chunks and must fail the stability gate.  (A pure ONNX edit cannot do this: the
graph has no chunk counter, and every cache frame leaves the 12-chunk attention window, so constant
offsets or gains saturate.)

Used two ways:

* in-process: ``DriftBackend(inner, rate)`` around any backend;
* as a pytest plugin (``-p streamparity.tools.drift_fault``, with plain ``pytest`` or ``python -m pytest``,
  from any folder): registers the backend kind ``drift`` so that ``--backend=drift-cpu-fp32`` runs the real
  parity and stability tests on it, for the embedded model or your own contract; the rate comes from
  ``STREAMPARITY_DRIFT_RATE`` (default :data:`DEFAULT_RATE`, sized for the embedded model).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from streamparity.backends.base import Backend, BackendSpec
from streamparity.contract.model import ROLE_CACHE_CHANNEL, Contract
from streamparity.errors import StreamparityError

DEFAULT_RATE = 5e-7
"""Per-chunk growth of the cache offset: on the tiny model the encoder error grows ~2.8e-7 per chunk and stays
under atol 1e-4 for all 300 chunks (8e-5 at the end), yet fails the stability gate (limit 1e-7 per chunk)."""


class DriftBackend(Backend):
    kind = "drift"

    def __init__(self, inner: Backend, rate: float, *, seed: int = 0) -> None:
        super().__init__(inner.contract, inner.precision, inner.device)
        self.inner = inner
        self.rate = float(rate)
        self.target = inner.contract.output_by_role(ROLE_CACHE_CHANNEL).name
        self.seed = seed
        self.calls = 0
        self._pattern: np.ndarray | None = None

    def _pattern_like(self, a: np.ndarray) -> np.ndarray:
        if self._pattern is None or self._pattern.shape != a.shape:
            p = np.random.default_rng(self.seed).standard_normal(a.shape)
            self._pattern = (p / np.abs(p).max()).astype(a.dtype)
        return self._pattern

    def open_stream(self, initial: Mapping[str, np.ndarray], *, fetch_caches: bool = True) -> Any:
        self.calls = 0  # every stream starts its drift from zero
        return super().open_stream(initial, fetch_caches=fetch_caches)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.inner.run(feeds)
        self.calls += 1
        cache = out[self.target]
        out[self.target] = (cache + self.rate * self.calls * self._pattern_like(cache)).astype(cache.dtype)
        return out

    def describe(self) -> dict[str, Any]:
        d = self.inner.describe()
        d.update(id=self.id, kind=self.kind, fault=f"cache drift {self.rate:g} x chunk on {self.target}")
        return d

    def close(self) -> None:
        self.inner.close()


def _factory(spec: BackendSpec, contract: Contract, onnx: Path, opts: dict[str, Any]) -> Backend:
    from streamparity.backends.ort import OrtBackend

    inner = OrtBackend(contract, onnx, precision=spec.precision, device=spec.device,
                       cache_dir=opts.get("engine_dir"))
    return DriftBackend(inner, drift_rate(os.environ.get("STREAMPARITY_DRIFT_RATE")))


def drift_rate(text: str | None) -> float:
    """The drift per chunk from ``$STREAMPARITY_DRIFT_RATE`` (unset: :data:`DEFAULT_RATE`): a finite number >= 0."""
    if text is None or not text.strip():
        return DEFAULT_RATE
    try:
        rate = float(text)
    except ValueError:
        rate = float("nan")
    if not math.isfinite(rate) or rate < 0:
        raise StreamparityError(f"$STREAMPARITY_DRIFT_RATE: {text[:40]!r} is not a finite number >= 0 "
                                f"(the cache drift per chunk, default {DEFAULT_RATE:g})")
    return rate


def pytest_streamparity_backends(register: Any) -> None:
    """Loaded with ``-p streamparity.tools.drift_fault``: adds the ``drift`` kind (``--backend=drift-cpu-fp32``)."""
    try:
        drift_rate(os.environ.get("STREAMPARITY_DRIFT_RATE"))  # a bad rate is a usage error, not 11 failed tests
    except StreamparityError as e:
        import pytest

        raise pytest.UsageError(str(e)) from None
    register("drift", _factory)
