"""The ``ext`` backend: a runtime in another process, driven through the frame protocol.

Backend ids are ``ext-NAME-PRECISION``: kind ``ext``, the middle part (the "device" of built-in ids) is the
runtime's NAME from ``--runtime=NAME:PRECISION=COMMAND``; where the runtime really runs is its own business
and is reported by its ``describe`` reply.  One process per backend object (so one per xdist worker); in
functional mode a fault ends the process and the next chunk starts a fresh one; in closed loop a fault ends
the stream (the driver fails the chunk and every later one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamparity.backends.base import Backend, Stream
from streamparity.backends.external.client import RuntimeFault, RuntimeProcess
from streamparity.backends.external.protocol import PROTOCOL_VERSION
from streamparity.contract.model import (
    ROLE_AUDIO,
    ROLE_CACHE_CHANNEL,
    ROLE_CACHE_LEN,
    ROLE_CACHE_TIME,
    ROLE_LENGTH,
    Contract,
    TensorSpec,
)
from streamparity.errors import StreamparityError

DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RuntimeConfig:
    name: str
    precision: str
    command: str
    timeout: float = DEFAULT_TIMEOUT_S


def check_tensors(contract: Contract, specs: tuple[TensorSpec, ...] | list[TensorSpec],
                  got: Mapping[str, np.ndarray], batch: int) -> str | None:
    """Why `got` does not hold the contract tensors `specs` (names, dtypes, ranks, fixed dims, batch), or None."""
    missing = [s.name for s in specs if s.name not in got]
    if missing:
        return f"reply lacks tensors {missing} (it has {sorted(got)})"
    for s in specs:
        a = got[s.name]
        if np.dtype(a.dtype) != np.dtype(s.dtype):
            return f"tensor {s.name!r} is {a.dtype}, the contract says {s.dtype}"
        if len(a.shape) != len(s.shape) or any(
                (isinstance(d, int) and d != g) or (d == "B" and g != batch) for d, g in zip(s.shape, a.shape)):
            return f"tensor {s.name!r} has shape {list(a.shape)}, the contract says {s.shape_str()} (B={batch})"
    return None


class ExternalBackend(Backend):
    kind = "ext"

    def __init__(self, contract: Contract, cfg: RuntimeConfig) -> None:
        super().__init__(contract, cfg.precision, cfg.name)
        self.cfg = cfg
        self._proc: RuntimeProcess | None = None
        self.info: dict[str, Any] = {}
        self.calls = 0
        self.restarts = 0
        self.process()  # a runtime that cannot start or speaks another protocol version fails at once

    def process(self) -> RuntimeProcess:
        """The live runtime process; a fresh one (version-checked) after a fault."""
        if self._proc is not None and self._proc.dead is None:
            return self._proc
        if self._proc is not None:
            self.restarts += 1
        try:
            proc = RuntimeProcess(self.cfg.command, label=f"{self.id}", timeout=self.cfg.timeout)
        except RuntimeFault as e:  # the command cannot be started (not found, not executable)
            raise StreamparityError(str(e), field="--runtime") from None
        try:
            reply = proc.request("describe", {"protocol": PROTOCOL_VERSION}, what="at start")
        except RuntimeFault as e:
            proc.kill()
            raise StreamparityError(str(e), field="--runtime") from None
        version = reply.header.get("protocol")
        if version != PROTOCOL_VERSION:
            proc.kill()
            raise StreamparityError(f"runtime {self.id!r} speaks protocol version {version!r}, this streamparity "
                                    f"speaks {PROTOCOL_VERSION} [command: {self.cfg.command}]", field="--runtime")
        said = reply.header.get("precision")
        if said is not None and said != self.precision:
            proc.kill()
            raise StreamparityError(f"runtime {self.id!r} reports precision {said!r} but was given as "
                                    f"{self.precision} [command: {self.cfg.command}]", field="--runtime")
        self.info = {k: v for k, v in reply.header.items() if k not in ("ok", "tensors", "payload_bytes")}
        self._proc = proc
        return proc

    def _checked(self, proc: RuntimeProcess, op: str, what: str, out: Mapping[str, np.ndarray],
                 specs: list[TensorSpec], batch: int) -> dict[str, np.ndarray]:
        why = check_tensors(self.contract, specs, out, batch)
        if why is not None:
            raise proc.fault(op, what, why)
        return dict(out)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        what = f"(functional call {self.calls})"
        proc = self.process()
        ordered = {n: feeds[n] for n in self.contract.input_names if n in feeds}
        ordered.update({n: v for n, v in feeds.items() if n not in ordered})
        reply = proc.request("run", tensors=ordered, what=what)
        batch = int(feeds[self.contract.input_by_role(ROLE_AUDIO).name].shape[0])
        return self._checked(proc, "run", what, reply.tensors, list(self.contract.outputs), batch)

    def open_stream(self, initial: Mapping[str, np.ndarray], *, fetch_caches: bool = True) -> Stream:
        return ExternalStream(self, initial, fetch_caches=fetch_caches)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(out_of_process=True, command=self.cfg.command, protocol=PROTOCOL_VERSION,
                 timeout_s=self.cfg.timeout, runtime=dict(self.info), restarts=self.restarts)
        return d

    def close(self) -> None:
        if self._proc is not None:
            self._proc.close()


class ExternalStream(Stream):
    """A stream whose caches live in the runtime: per step only audio and length go out."""

    def __init__(self, backend: ExternalBackend, initial: Mapping[str, np.ndarray], *, fetch_caches: bool) -> None:
        c = backend.contract
        self.backend = backend
        self.steps = 0
        self.closed = False
        self._pending: RuntimeFault | None = None
        self.cache_specs = [c.input_by_role(r) for r in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME, ROLE_CACHE_LEN)]
        self.len_name = c.input_by_role(ROLE_CACHE_LEN).name
        state = {s.name: np.asarray(initial[s.name]) for s in self.cache_specs}
        self.batch = int(state[self.len_name].shape[0])
        self.last_cache_len_in = state[self.len_name].copy()
        self.proc = backend.process()
        reply = self.proc.request("open", {"fetch_caches": bool(fetch_caches)}, tensors=state,
                                  what="(opening the closed-loop stream)")
        self.stream_id = reply.header.get("stream", 0)
        self.fetch_caches = fetch_caches
        self.all_outputs = list(c.outputs)
        self.small_outputs = [s for s in c.outputs if s.role not in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME)]
        self.audio_name = c.input_by_role(ROLE_AUDIO).name
        self.length_name = c.input_by_role(ROLE_LENGTH).name

    def step(self, audio: np.ndarray, length: np.ndarray, *,
             fetch_caches: bool | None = None) -> dict[str, np.ndarray]:
        what = f"(closed-loop step {self.steps} of the stream)"
        self.steps += 1
        if self._pending is not None:
            raise self._pending
        fetch = self.fetch_caches if fetch_caches is None else fetch_caches
        header: dict[str, Any] = {"stream": self.stream_id}
        if fetch_caches is not None:
            header["fetch_caches"] = bool(fetch_caches)
        reply = self.proc.request("step", header,
                                  tensors={self.audio_name: audio, self.length_name: length}, what=what)
        fed = reply.tensors.get(self.len_name)
        if fed is None:
            raise self.proc.fault("step", what, f"reply lacks {self.len_name!r}, the cache length the runtime fed "
                                                f"to this step (required in step replies)")
        out = self.backend._checked(self.proc, "step", what, reply.tensors,
                                    self.all_outputs if fetch else self.small_outputs, self.batch)
        self.last_cache_len_in = np.asarray(fed).copy()
        out.pop(self.len_name, None)
        return out

    def state_snapshot(self) -> dict[str, np.ndarray]:
        """The runtime's own caches for the next step (an extra round trip: the ``state`` operation)."""
        if self.proc.dead is not None or self.closed:
            return {}
        what = f"(state before closed-loop step {self.steps})"
        try:
            reply = self.proc.request("state", {"stream": self.stream_id}, what=what)
            return self.backend._checked(self.proc, "state", what, reply.tensors, self.cache_specs, self.batch)
        except RuntimeFault as e:  # the driver asks outside its error handling: the next step reports it
            self._pending = e
            return {}

    def close(self) -> None:
        if not self.closed and self.proc.dead is None:
            try:
                self.proc.request("close", {"stream": self.stream_id}, what="(closing the stream)")
            except RuntimeFault:
                pass
        self.closed = True
