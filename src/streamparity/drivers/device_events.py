"""Device time of a stream's steps from CUDA events: compute (the runner's ``execute``) and copies (the
device-memory ops), recorded on torch's current stream around each call and read after a synchronize.

Used by the latency benchmark (mean split over a run of steps) and by the paired release gate (device
compute per timed block).  Streams that are not device-resident loops (no ``ops``/``runner``) and machines
without torch or CUDA get a reason instead of figures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streamparity.backends.base import BackendSpec, Stream

COPY_METHODS = ("h2d", "d2h", "copy2d", "memset0")
COMPUTE_METHODS = ("execute",)


class _CudaTimed:
    """Records a CUDA event pair around every call of the wrapped methods (on torch's current stream)."""

    def __init__(self, inner: Any, kind: str, methods: tuple[str, ...], log: list[tuple[str, Any, Any]]) -> None:
        self._inner, self._kind, self._methods, self._log = inner, kind, methods, log

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in self._methods:
            return attr
        import torch

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            start.record()
            try:
                return attr(*args, **kwargs)
            finally:
                end.record()
                self._log.append((self._kind, start, end))

        return timed


def host_sync(spec: BackendSpec) -> Callable[[], None]:
    """What a host timer must call after each step so that it includes all queued device work."""
    if spec.needs_gpu:
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.synchronize
        except ImportError:
            pass
    return lambda: None


def unavailable_reason(stream: Stream) -> str | None:
    """Why device events cannot time this stream here, or None when they can."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (CUDA events come from torch.cuda)"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if getattr(stream, "ops", None) is None or getattr(stream, "runner", None) is None:
        return f"{type(stream).__name__} is not a device-resident loop (no ops/runner)"
    return None


class DeviceEventTimer:
    """Installs CUDA event pairs around a stream's compute and copy calls; ``read()`` returns the
    milliseconds of each kind since the last read (call it after a synchronize).  ``remove()`` restores
    the stream.  Raise-free only where :func:`unavailable_reason` is None."""

    def __init__(self, stream: Stream) -> None:
        why = unavailable_reason(stream)
        if why is not None:
            raise RuntimeError(f"device events cannot time this stream: {why}")
        self.stream = stream
        self._ops, self._runner = stream.ops, stream.runner  # type: ignore[attr-defined]
        self._log: list[tuple[str, Any, Any]] = []
        stream.ops = _CudaTimed(self._ops, "copy", COPY_METHODS, self._log)  # type: ignore[attr-defined]
        stream.runner = _CudaTimed(self._runner, "compute", COMPUTE_METHODS, self._log)  # type: ignore[attr-defined]
        self.note: str | None = getattr(self._runner, "timing_note", None)

    def read(self) -> dict[str, float]:
        totals = {"compute": 0.0, "copy": 0.0}
        for kind, start, end in self._log:
            totals[kind] += float(start.elapsed_time(end))
        self._log.clear()
        return totals

    def remove(self) -> None:
        self.stream.ops, self.stream.runner = self._ops, self._runner  # type: ignore[attr-defined]


def gpu_split(stream: Stream, step: Callable[[], None], steps: int) -> dict[str, Any]:
    """Mean compute and copy time per step (ms) of a device-resident stream, from CUDA events; the
    events are read after a synchronize, so the figures include all queued work."""
    why = unavailable_reason(stream)
    if why is not None:
        return {"gpu_split": f"skipped: {why}"}
    import torch

    timer = DeviceEventTimer(stream)
    try:
        totals = {"compute": 0.0, "copy": 0.0}
        for _ in range(steps):
            step()
            torch.cuda.synchronize()
            for kind, ms in timer.read().items():
                totals[kind] += ms
    finally:
        timer.remove()
    note = timer.note
    return {"compute_ms": totals["compute"] / steps, "copy_ms": totals["copy"] / steps,
            "gpu_split": f"CUDA events over {steps} steps" + (f"; {note}" if note else "")}
