"""Device-resident closed loop shared by the GPU backends (TensorRT, ONNX Runtime IOBinding, PyTorch CUDA).

The loop is written against two small protocols: :class:`DeviceOps` (raw byte buffers: alloc, copies,
memset) and :class:`DeviceRunner` (run the model on device tensors).  Cache outputs are written into the
spare half of a ping-pong pair and become the next chunk's cache inputs without leaving the device; with
``cache_output_time_dim == "dynamic_pad_to_input"`` they are padded with zeros on
the device, on the contract's ``cache_pad_side``.
Only audio + length go in per chunk, and only the compared outputs come out; the big caches, where a step
fetches them, come through the stream's :class:`~streamparity.backends.memory.HostStaging` if it has one
(reused page-locked buffers, each reused only once nothing holds the arrays fetched into it).

:class:`NumpyOps` + :class:`HostBackendRunner` run the same loop in host memory around any host backend;
the tests use them to prove the loop equals :class:`~streamparity.backends.base.HostStream`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from math import prod
from typing import Any, Generic, Protocol

import numpy as np

from streamparity.backends.base import Backend, Stream
from streamparity.backends.memory import B, DeviceOps, DeviceTensor, HostStaging, NumpyOps, Shape, nbytes_of
from streamparity.contract.model import (
    ROLE_AUDIO,
    ROLE_CACHE_CHANNEL,
    ROLE_CACHE_LEN,
    ROLE_CACHE_TIME,
    ROLE_LENGTH,
    Contract,
)

BindOutput = Callable[[str, Shape], Any]
"""Called by a runner with an output's name and shape; returns the device buffer to write it to."""






class DeviceRunner(Protocol[B]):
    """Runs the model once: inputs already on the device, outputs written where `bind_output` says."""

    def execute(self, inputs: Mapping[str, DeviceTensor[B]], bind_output: BindOutput) -> dict[str, Shape]:
        """Run; return the shape of every output written."""
        ...


class BufferPool(Generic[B]):
    """Named device buffers that only grow: allocated once per engine, reused by run() and streams."""

    def __init__(self, ops: DeviceOps[B]) -> None:
        self.ops = ops
        self._bufs: dict[str, tuple[B, int]] = {}
        self.owner: object | None = None

    def get(self, key: str, nbytes: int) -> B:
        have = self._bufs.get(key)
        if have is not None and have[1] >= nbytes:
            return have[0]
        if have is not None:
            self.ops.free(have[0])
        buf = self.ops.alloc(max(int(nbytes), 1))
        self._bufs[key] = (buf, max(int(nbytes), 1))
        return buf

    def capacity(self, key: str) -> int:
        have = self._bufs.get(key)
        return have[1] if have is not None else 0

    @property
    def total_bytes(self) -> int:
        return sum(n for _, n in self._bufs.values())

    def free_all(self) -> None:
        for buf, _ in self._bufs.values():
            self.ops.free(buf)
        self._bufs.clear()




def pad_left_on_device(ops: DeviceOps[B], dst: B, dst_shape: Shape, src: B, src_shape: Shape,
                       itemsize: int, *, name: str, side: str = "left") -> None:
    """Device version of :func:`base.pad_cache_to`: zeros on ``side`` of the one axis that is shorter."""
    if len(src_shape) != len(dst_shape):
        raise ValueError(f"{name}: rank {len(src_shape)} cannot be padded to {list(dst_shape)}")
    if any(s > d for s, d in zip(src_shape, dst_shape, strict=True)):
        raise ValueError(f"{name}: shape {list(src_shape)} exceeds input cache shape {list(dst_shape)}")
    short = [i for i, (s, d) in enumerate(zip(src_shape, dst_shape, strict=True)) if s != d]
    if len(short) > 1:
        raise ValueError(f"{name}: shape {list(src_shape)} differs from {list(dst_shape)} on axes {short}; "
                         "device padding supports one (time) axis")
    if not short:
        n = prod(src_shape) * itemsize
        if n:
            ops.copy2d(dst, 0, n, src, n, n, 1)
        return
    axis = short[0]
    inner = prod(dst_shape[axis + 1:]) * itemsize
    rows = prod(dst_shape[:axis])
    src_pitch = src_shape[axis] * inner
    dst_pitch = dst_shape[axis] * inner
    ops.memset0(dst, rows * dst_pitch)
    if rows and src_pitch:
        ops.copy2d(dst, dst_pitch - src_pitch if side == "left" else 0, dst_pitch, src, src_pitch, src_pitch, rows)


def run_once(contract: Contract, ops: DeviceOps[B], runner: DeviceRunner[B], pool: BufferPool[B],
             feeds: Mapping[str, np.ndarray], *,
             out_dtypes: Mapping[str, np.dtype[Any]] | None = None) -> dict[str, np.ndarray]:
    """One stateless call through device buffers: every input up, every output down.

    `out_dtypes` gives the dtype of every output the runner may write (default: the contract's outputs).
    """
    inputs: dict[str, DeviceTensor[B]] = {}
    for spec in contract.inputs:
        if spec.name not in feeds:
            raise KeyError(f"missing input {spec.name!r}")
        a = np.ascontiguousarray(feeds[spec.name], dtype=spec.dtype)
        buf = pool.get("in:" + spec.name, a.nbytes)
        ops.h2d(buf, a)
        inputs[spec.name] = DeviceTensor(buf, tuple(a.shape), a.dtype)
    dtypes = dict(out_dtypes) if out_dtypes is not None else {o.name: np.dtype(o.dtype) for o in contract.outputs}
    where: dict[str, B] = {}

    def bind(name: str, shape: Shape) -> B:
        where[name] = pool.get("out:" + name, nbytes_of(shape, dtypes[name]))
        return where[name]

    shapes = runner.execute(inputs, bind)
    return {name: ops.d2h(where[name], shape, dtypes[name]) for name, shape in shapes.items()}


class DeviceLoopStream(Stream, Generic[B]):
    """Closed loop with the caches kept on the device, swapped between ping-pong buffers each chunk."""

    keeps_previous_state = True

    def __init__(self, contract: Contract, ops: DeviceOps[B], runner: DeviceRunner[B], pool: BufferPool[B],
                 initial: Mapping[str, np.ndarray], *, fetch_caches: bool,
                 staging: HostStaging[B] | None = None) -> None:
        c = contract
        self.contract, self.ops, self.runner, self.pool = c, ops, runner, pool
        self.fetch_caches = fetch_caches
        if staging is not None and staging.ops is not ops:
            raise ValueError("the host staging must copy with the stream's own device ops (same stream)")
        self.staging = staging  # where the big caches a step fetches land (None: fresh host arrays)
        self.audio = c.input_by_role(ROLE_AUDIO)
        self.length = c.input_by_role(ROLE_LENGTH)
        self.feeds_map = c.cache_feeds()
        self.len_in = c.input_by_role(ROLE_CACHE_LEN).name
        self.len_out = c.output_by_role(ROLE_CACHE_LEN).name
        self.pad = c.streaming.cache_output_time_dim == "dynamic_pad_to_input"
        self.out_dtypes = {o.name: np.dtype(o.dtype) for o in c.outputs}
        self.big_caches = {o.name for o in c.outputs if o.role in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME)}
        self.cur: dict[str, DeviceTensor[B]] = {}
        self.prev: dict[str, DeviceTensor[B]] | None = None  # the last step's cache inputs, still on the device
        self.held: dict[str, DeviceTensor[B]] = {}  # the last step's cache outputs step() did not copy back
        self.order: list[str] = []  # the last step's outputs, in the runner's order
        self.phase: dict[str, int] = {}
        self._moved = (0, 0)
        self._snapshot_down = 0  # state_snapshot()/kept_state() copies since the last step: counted with the next
        self._kept_free: list[int] = []  # slots of device buffers keep_state() may reuse
        self._kept_slots = 0
        pool.owner = self
        up = 0
        for out_name, in_name in self.feeds_map.items():
            spec = c.input(in_name)
            if np.dtype(spec.dtype) != self.out_dtypes[out_name]:
                raise ValueError(f"cache {out_name} is {self.out_dtypes[out_name]} but feeds {in_name} "
                                 f"({spec.dtype})")
            a = np.ascontiguousarray(initial[in_name], dtype=spec.dtype)
            buf = pool.get(f"pp:{in_name}:0", a.nbytes)
            pool.get(f"pp:{in_name}:1", a.nbytes)
            ops.h2d(buf, a)
            up += a.nbytes
            self.cur[in_name] = DeviceTensor(buf, tuple(a.shape), a.dtype)
            self.phase[in_name] = 0
        self._len_host = np.array(initial[self.len_in], dtype=c.input(self.len_in).dtype, copy=True)
        self.last_cache_len_in: np.ndarray = self._len_host.copy()
        self._moved = (up, 0)

    def _spare(self, in_name: str, nbytes: int) -> B:
        return self.pool.get(f"pp:{in_name}:{1 - self.phase[in_name]}", nbytes)

    def step(self, audio: np.ndarray, length: np.ndarray, *,
             fetch_caches: bool | None = None) -> dict[str, np.ndarray]:
        if self.pool.owner is not self:
            raise RuntimeError("another stream or run() has used this backend's device buffers since this "
                               "stream was opened; open one stream at a time")
        ops, pool = self.ops, self.pool
        inputs: dict[str, DeviceTensor[B]] = dict(self.cur)
        up = 0
        for spec, host in ((self.audio, audio), (self.length, length)):
            a = np.ascontiguousarray(host, dtype=spec.dtype)
            buf = pool.get("in:" + spec.name, a.nbytes)
            ops.h2d(buf, a)
            up += a.nbytes
            inputs[spec.name] = DeviceTensor(buf, tuple(a.shape), a.dtype)
        self.last_cache_len_in = self._len_host.copy()
        self.prev, self.held = None, {}
        where: dict[str, B] = {}

        def bind(name: str, shape: Shape) -> B:
            n = nbytes_of(shape, self.out_dtypes[name])
            in_name = self.feeds_map.get(name)
            if in_name is None:
                where[name] = pool.get("out:" + name, n)
            elif self.pad:
                where[name] = pool.get("scratch:" + name, n)
            else:
                where[name] = self._spare(in_name, n)
            return where[name]

        shapes = self.runner.execute(inputs, bind)
        missing = [o for o in self.feeds_map if o not in shapes]
        if missing:
            raise RuntimeError(f"runner produced no cache output(s) {missing}")
        # the inputs stay in their ping-pong half until the step after next writes there: kept for bundles
        prev = dict(self.cur)
        for out_name, in_name in self.feeds_map.items():
            dtype = self.out_dtypes[out_name]
            if self.pad:
                want = self.cur[in_name].shape
                dst = self._spare(in_name, nbytes_of(want, dtype))
                pad_left_on_device(ops, dst, want, where[out_name], shapes[out_name], dtype.itemsize,
                                   name=out_name, side=self.contract.streaming.cache_pad_side)
                self.cur[in_name] = DeviceTensor(dst, want, dtype)
            else:
                self.cur[in_name] = DeviceTensor(where[out_name], shapes[out_name], dtype)
            self.phase[in_name] = 1 - self.phase[in_name]
        self.prev, self.order = prev, list(shapes)
        fetch = self.fetch_caches if fetch_caches is None else fetch_caches
        out: dict[str, np.ndarray] = {}
        down = 0
        for name, shape in shapes.items():
            if name in self.big_caches and not fetch:
                self.held[name] = DeviceTensor(where[name], shape, self.out_dtypes[name])
                continue
            if name in self.big_caches and self.staging is not None:
                out[name] = self.staging.fetch(where[name], shape, self.out_dtypes[name])
            else:
                out[name] = ops.d2h(where[name], shape, self.out_dtypes[name])
            down += out[name].nbytes
        if self.len_out in out:
            self._len_host = out[self.len_out].copy()
        self._moved = (up, down + self._snapshot_down)
        self._snapshot_down = 0
        return out

    def _to_host(self, tensors: Mapping[str, DeviceTensor[B]], *, counted: bool = False) -> dict[str, np.ndarray]:
        """Host copies of device tensors; `counted`: state copies, added to the next step's bytes_moved."""
        host = {name: self.ops.d2h(t.buf, t.shape, t.dtype) for name, t in tensors.items()}
        if counted:
            self._snapshot_down += sum(a.nbytes for a in host.values())
        return host

    def state_snapshot(self) -> dict[str, np.ndarray]:
        return self._to_host(self.cur, counted=True)

    def keep_state(self) -> tuple[int, dict[str, DeviceTensor[B]]]:
        """A device-to-device copy of the current state into a slot of this stream's buffers (reused once
        released): nothing crosses to the host unless :meth:`kept_state` is called."""
        if self._kept_free:
            slot = self._kept_free.pop()
        else:
            slot, self._kept_slots = self._kept_slots, self._kept_slots + 1
        copies: dict[str, DeviceTensor[B]] = {}
        for name, t in self.cur.items():
            buf = self.pool.get(f"kept:{slot}:{name}", t.nbytes)
            if t.nbytes:
                self.ops.copy2d(buf, 0, t.nbytes, t.buf, t.nbytes, t.nbytes, 1)
            copies[name] = DeviceTensor(buf, t.shape, t.dtype)
        self.ops.synchronize()
        return slot, copies

    def kept_state(self, kept: Any) -> dict[str, np.ndarray]:
        _, copies = kept
        return self._to_host(copies, counted=True)

    def release_state(self, kept: Any) -> None:
        self._kept_free.append(kept[0])

    def previous_state(self) -> dict[str, np.ndarray] | None:
        if self.prev is None or self.pool.owner is not self:
            return None
        return self._to_host(self.prev)

    def complete_outputs(self, out: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.pool.owner is not self or not self.held:
            return dict(out)
        late = self._to_host(self.held)
        full = {**out, **late}
        return {k: full[k] for k in self.order if k in full}

    @property
    def bytes_moved(self) -> tuple[int, int]:
        return self._moved

    def close(self) -> None:
        if self.pool.owner is self:
            self.pool.owner = None


# -- host reference implementation ------------------------------------------------------------------




class HostBackendRunner:
    """:class:`DeviceRunner` that runs a host backend (e.g. ONNX Runtime CPU) on :class:`NumpyOps` buffers."""

    def __init__(self, backend: Backend, ops: NumpyOps) -> None:
        self.backend = backend
        self.ops = ops

    def execute(self, inputs: Mapping[str, DeviceTensor[np.ndarray]], bind_output: BindOutput
                ) -> dict[str, Shape]:
        feeds = {name: self.ops.view(t.buf, t.shape, t.dtype) for name, t in inputs.items()}
        result = self.backend.run(feeds)
        shapes: dict[str, Shape] = {}
        for name, value in result.items():
            a = np.ascontiguousarray(value)
            self.ops.h2d(bind_output(name, tuple(a.shape)), a)
            shapes[name] = tuple(a.shape)
        return shapes
