"""The backend interface shared by ONNX Runtime, TensorRT and the PyTorch-on-CUDA runners."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamparity.contract.model import (
    ROLE_AUDIO,
    ROLE_CACHE_CHANNEL,
    ROLE_CACHE_LEN,
    ROLE_CACHE_TIME,
    ROLE_LENGTH,
    Contract,
)


@dataclass(frozen=True)
class BackendSpec:
    kind: str
    device: str
    precision: str

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.device}-{self.precision}"

    @property
    def needs_gpu(self) -> bool:
        return self.device == "cuda"


class Stream(abc.ABC):
    """A closed-loop stream: the backend's own caches are fed back from chunk to chunk."""

    keeps_previous_state: bool = False
    """True where :meth:`previous_state` works: the closed loop then copies state only for failing chunks."""

    last_cache_len_in: np.ndarray
    """The cache length fed to the last step (host copy): what the contract's progression is judged on."""

    @abc.abstractmethod
    def step(self, audio: np.ndarray, length: np.ndarray, *,
             fetch_caches: bool | None = None) -> dict[str, np.ndarray]:
        """Run one chunk; return the outputs to compare (host arrays), the big caches included if fetched
        (`fetch_caches`: this step only; None = the stream's default)."""

    def state_snapshot(self) -> dict[str, np.ndarray]:
        """Host copies of the cache inputs of the next step (for failure bundles); may be slow on GPUs."""
        return {}

    def keep_state(self) -> Any:
        """A copy of the cache inputs of the next step, kept where they live (on the device for device-resident
        streams: no transfer), for the bundle of a chunk judged later; :meth:`kept_state` brings it to the
        host, :meth:`release_state` gives it up.  Here: a host snapshot."""
        return self.state_snapshot()

    def kept_state(self, kept: Any) -> dict[str, np.ndarray]:
        """Host copies of a state :meth:`keep_state` kept."""
        return dict(kept)

    def release_state(self, kept: Any) -> None:  # noqa: B027 - optional hook
        """Give up a state :meth:`keep_state` kept."""

    def previous_state(self) -> dict[str, np.ndarray] | None:
        """Host copies of the cache inputs the last step ran on, or None where the stream does not keep
        them (the closed loop then snapshots before every step).  Copies only when called: after a failure."""
        return None

    def complete_outputs(self, out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`out` (what the last step returned) with the cache outputs it did not return copied back, in the
        step's output order: a failure bundle's outputs."""
        return dict(out)

    @property
    def bytes_moved(self) -> tuple[int, int]:
        """(host->device, device->host) bytes of the last step, with the state copies to the host made since the
        step before (a snapshot before it, a kept state brought back for a bundle); host backends report 0."""
        return (0, 0)

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


class Backend(abc.ABC):
    """One runtime at one precision, running the contract's streaming encoder."""

    kind: str = "abstract"

    def __init__(self, contract: Contract, precision: str, device: str) -> None:
        self.contract = contract
        self.precision = precision
        self.device = device

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.device}-{self.precision}"

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One stateless call: all inputs in (host), all outputs out (host)."""

    def run_all_outputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call returning every output of the loaded model, not only the contract's: what bisection
        needs from a model whose intermediate tensors were marked as outputs.  Backends whose
        :meth:`run` already returns every model output (ONNX Runtime) need not override it."""
        return self.run(feeds)

    def open_stream(self, initial: Mapping[str, np.ndarray], *, fetch_caches: bool = True) -> Stream:
        """A closed-loop stream starting from `initial` caches. GPU backends keep caches on the device."""
        return HostStream(self, initial, fetch_caches=fetch_caches)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "device": self.device, "precision": self.precision}

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def pad_cache_to(array: np.ndarray, like: tuple[int, ...], *, name: str, side: str = "left") -> np.ndarray:
    """Pad (zeros) a dynamic cache output along its time axis up to the input cache shape.

    ``side`` is the contract's ``streaming.cache_pad_side``: left keeps the valid frames at the end (NeMo),
    right keeps them as a prefix (the checklist's runtime)."""
    if array.shape == like:
        return array
    if array.ndim != len(like):
        raise ValueError(f"{name}: rank {array.ndim} cannot be padded to {list(like)}")
    pads = []
    for got, want in zip(array.shape, like):
        if got > want:
            raise ValueError(f"{name}: shape {list(array.shape)} exceeds input cache shape {list(like)}")
        pads.append((want - got, 0) if side == "left" else (0, want - got))
    return np.pad(array, pads)


class HostStream(Stream):
    """Closed loop through host memory: cache outputs are copied back and fed as inputs."""

    keeps_previous_state = True

    def __init__(self, backend: Backend, initial: Mapping[str, np.ndarray], *, fetch_caches: bool) -> None:
        c = backend.contract
        self.backend = backend
        self.audio_name = c.input_by_role(ROLE_AUDIO).name
        self.length_name = c.input_by_role(ROLE_LENGTH).name
        self.feeds_map = c.cache_feeds()
        self.cache_inputs = [c.input_by_role(r).name for r in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME, ROLE_CACHE_LEN)]
        self.state: dict[str, np.ndarray] = {k: np.asarray(initial[k]).copy() for k in self.cache_inputs}
        self.pad = c.streaming.cache_output_time_dim == "dynamic_pad_to_input"
        self.pad_side = c.streaming.cache_pad_side
        self.fetch_caches = fetch_caches
        self.last_cache_len_in: np.ndarray = self.state[c.input_by_role(ROLE_CACHE_LEN).name].copy()
        self.big_caches = {o.name for o in c.outputs if o.role in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME)}
        self._prev: dict[str, np.ndarray] | None = None
        self._held: dict[str, np.ndarray] = {}
        self._order: list[str] = []

    def state_snapshot(self) -> dict[str, np.ndarray]:
        return dict(self.state)

    def previous_state(self) -> dict[str, np.ndarray] | None:
        return dict(self._prev) if self._prev is not None else None

    def complete_outputs(self, out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        full = {**out, **self._held}
        return {k: full[k] for k in self._order if k in full}

    def step(self, audio: np.ndarray, length: np.ndarray, *,
             fetch_caches: bool | None = None) -> dict[str, np.ndarray]:
        feeds = dict(self.state)
        feeds[self.audio_name] = audio
        feeds[self.length_name] = length
        self.last_cache_len_in = self.state[self.cache_inputs[2]].copy()
        self._prev = None  # the step may fail half-way
        out = self.backend.run(feeds)
        self._prev = {k: feeds[k] for k in self.cache_inputs}  # the arrays are replaced, never written to
        for out_name, in_name in self.feeds_map.items():
            v = out[out_name]
            if self.pad:
                v = pad_cache_to(v, self.state[in_name].shape, name=out_name, side=self.pad_side)
            self.state[in_name] = v
        fetch = self.fetch_caches if fetch_caches is None else fetch_caches
        self._order = list(out)
        self._held = {} if fetch else {k: out.pop(k) for k in list(out) if k in self.big_caches}
        return out
