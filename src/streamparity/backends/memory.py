"""The device-memory layer every GPU backend imports: byte-buffer operations on one device (host numpy,
cuda-python's runtime, PyTorch), the tensors that live in them, their sizes, and the page-locked host buffers
the big device->host fetches are staged in (:class:`HostStaging`)."""

from __future__ import annotations

import ctypes
import importlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np

from streamparity.errors import BackendUnavailable

if TYPE_CHECKING:
    import torch

B = TypeVar("B")

Shape = tuple[int, ...]

class DeviceOps(Protocol[B]):
    """Byte-buffer operations on one device, ordered on one stream."""

    def alloc(self, nbytes: int) -> B: ...

    def free(self, buf: B) -> None: ...

    def h2d(self, dst: B, src: np.ndarray) -> None:
        """Copy the contiguous host array `src` to the start of `dst`."""
        ...

    def d2h(self, src: B, shape: Shape, dtype: np.dtype[Any]) -> np.ndarray:
        """A host copy of the first bytes of `src` as an array (waits for the stream)."""
        ...

    def memset0(self, dst: B, nbytes: int) -> None: ...

    def copy2d(self, dst: B, dst_offset: int, dst_pitch: int, src: B, src_pitch: int, width: int,
               rows: int) -> None:
        """Device-to-device copy of `rows` rows of `width` bytes (pitches in bytes, no overlap)."""
        ...

    def synchronize(self) -> None: ...

@dataclass(frozen=True)
class DeviceTensor(Generic[B]):
    buf: B
    shape: Shape
    dtype: np.dtype[Any]

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * self.dtype.itemsize

def nbytes_of(shape: Shape, dtype: np.dtype[Any]) -> int:
    return prod(shape) * dtype.itemsize


@dataclass(frozen=True)
class HostBuffer:
    """Host bytes a device copies to: `array` (uint8) over them, `handle` what owns them (a pinned torch tensor, a
    cudaMallocHost block's ctypes view, or the array itself).  The memory lives as long as `array` or any array
    made over it: it goes back when the last of them does."""

    array: np.ndarray
    handle: Any


class HostStagingOps(DeviceOps[B], Protocol[B]):
    """:class:`DeviceOps` that also copy device bytes into host buffers of their own (page-locked on a GPU)."""

    def alloc_host(self, nbytes: int) -> HostBuffer: ...

    def d2h_into(self, dst: HostBuffer, src: B, nbytes: int) -> None:
        """Copy the first `nbytes` of `src` to the start of `dst`; returns once they are there."""
        ...


PINNED_STAGING_MAX_BYTES = 512 * 2**20
"""Host buffers one :class:`HostStaging` may hold (page-locked memory is the host's to lend, not ours to hoard)."""


class _Slot:
    __slots__ = ("buffer", "lease", "nbytes")

    def __init__(self, buffer: HostBuffer, nbytes: int) -> None:
        self.buffer, self.nbytes = buffer, nbytes
        self.lease: weakref.ref[np.ndarray] | None = None

    def free(self) -> bool:
        return self.lease is None or self.lease() is None


class HostStaging(Generic[B]):
    """Reused host buffers (page-locked on a GPU) for the big device->host fetches: the copy runs at the link's
    speed, into memory already mapped, instead of through the driver's pageable staging.

    :meth:`fetch` copies into a free buffer and returns an array over it.  A buffer is free again only once that
    array and every array made from it are gone: each fetch makes a fresh array over a memoryview of the buffer,
    so every view of it (slices, reshapes) keeps it alive (numpy stops a view's base at the first array whose base
    is no array), and a weak reference to it says when the last one went.  A thread still judging a fetched cache
    thus keeps its buffer from being written; another buffer is taken meanwhile.  Past `max_bytes` of buffers a
    fetch falls back to a fresh host array (``ops.d2h``).  Not thread-safe: one stream fetches at a time."""

    def __init__(self, ops: HostStagingOps[B], *, max_bytes: int = PINNED_STAGING_MAX_BYTES) -> None:
        self.ops = ops
        self.max_bytes = max_bytes
        self._slots: list[_Slot] = []
        self.fetches = self.fallbacks = self.allocations = 0

    @property
    def total_bytes(self) -> int:
        return sum(s.nbytes for s in self._slots)

    @property
    def slots(self) -> int:
        return len(self._slots)

    def _take(self, nbytes: int) -> _Slot | None:
        free = [s for s in self._slots if s.free()]
        fits = [s for s in free if s.nbytes >= nbytes]
        if fits:
            return min(fits, key=lambda s: s.nbytes)
        for s in free:  # too small: given back where a new one would not fit beside it
            if self.total_bytes + nbytes <= self.max_bytes:
                break
            self._slots.remove(s)
        if self.total_bytes + nbytes > self.max_bytes:
            return None
        slot = _Slot(self.ops.alloc_host(nbytes), nbytes)
        self._slots.append(slot)
        self.allocations += 1
        return slot

    def fetch(self, src: B, shape: Shape, dtype: np.dtype[Any]) -> np.ndarray:
        """A host copy of the first bytes of `src` as an array over a staging buffer (waits for the copy)."""
        dtype = np.dtype(dtype)
        n = nbytes_of(shape, dtype)
        self.fetches += 1
        slot = self._take(n) if n else None
        if slot is None:
            self.fallbacks += 1
            return self.ops.d2h(src, shape, dtype)
        self.ops.d2h_into(slot.buffer, src, n)
        whole = np.frombuffer(slot.buffer.array.data, dtype=dtype, count=prod(shape))
        slot.lease = weakref.ref(whole)
        return whole.reshape(shape)

    def free_all(self) -> None:
        """Forget every buffer: each goes back once nothing made over it is left."""
        self._slots.clear()


class NumpyOps:
    """:class:`DeviceOps` over host byte arrays: the loop's logic, testable without a GPU."""

    def alloc(self, nbytes: int) -> np.ndarray:
        return np.zeros(nbytes, dtype=np.uint8)

    def free(self, buf: np.ndarray) -> None:
        pass

    def h2d(self, dst: np.ndarray, src: np.ndarray) -> None:
        flat = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
        dst[: flat.size] = flat

    def view(self, buf: np.ndarray, shape: Shape, dtype: np.dtype[Any]) -> np.ndarray:
        return buf[: nbytes_of(shape, dtype)].view(dtype).reshape(shape)

    def d2h(self, src: np.ndarray, shape: Shape, dtype: np.dtype[Any]) -> np.ndarray:
        return self.view(src, shape, dtype).copy()

    def alloc_host(self, nbytes: int) -> HostBuffer:
        a = np.empty(nbytes, dtype=np.uint8)
        return HostBuffer(a, a)

    def d2h_into(self, dst: HostBuffer, src: np.ndarray, nbytes: int) -> None:
        dst.array[:nbytes] = src[:nbytes]

    def memset0(self, dst: np.ndarray, nbytes: int) -> None:
        dst[:nbytes] = 0

    def copy2d(self, dst: np.ndarray, dst_offset: int, dst_pitch: int, src: np.ndarray, src_pitch: int,
               width: int, rows: int) -> None:
        if rows == 0 or width == 0:
            return
        d = np.lib.stride_tricks.as_strided(dst[dst_offset:], shape=(rows, width), strides=(dst_pitch, 1))
        s = np.lib.stride_tricks.as_strided(src, shape=(rows, width), strides=(src_pitch, 1))
        d[...] = s

    def synchronize(self) -> None:
        pass


class CountingOps(NumpyOps):
    """:class:`NumpyOps` that counts the bytes crossing host<->device (h2d, d2h) and moved on the device
    (copy2d, memset0): what a closed loop would move on a GPU, measured on the CPU."""

    def __init__(self) -> None:
        self.h2d_bytes = self.d2h_bytes = self.device_bytes = 0

    def h2d(self, dst: np.ndarray, src: np.ndarray) -> None:
        self.h2d_bytes += int(np.asarray(src).nbytes)
        super().h2d(dst, src)

    def d2h(self, src: np.ndarray, shape: Shape, dtype: np.dtype[Any]) -> np.ndarray:
        self.d2h_bytes += nbytes_of(shape, np.dtype(dtype))
        return super().d2h(src, shape, dtype)

    def d2h_into(self, dst: HostBuffer, src: np.ndarray, nbytes: int) -> None:
        self.d2h_bytes += int(nbytes)
        super().d2h_into(dst, src, nbytes)

    def memset0(self, dst: np.ndarray, nbytes: int) -> None:
        self.device_bytes += int(nbytes)
        super().memset0(dst, nbytes)

    def copy2d(self, dst: np.ndarray, dst_offset: int, dst_pitch: int, src: np.ndarray, src_pitch: int,
               width: int, rows: int) -> None:
        self.device_bytes += int(width) * int(rows)
        super().copy2d(dst, dst_offset, dst_pitch, src, src_pitch, width, rows)


def load_cudart() -> Any:
    """cuda-python's runtime bindings, or BackendUnavailable."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BackendUnavailable("cuda-python is not installed (pip install cuda-python); the TensorRT backend "
                             "uses it for device memory and streams")


def _cuda_call(rt: Any, result: Any, what: str) -> Any:
    """Unpack a cuda-python (err, value...) tuple; raise RuntimeError naming the call on error."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        _, text = rt.cudaGetErrorString(err)
        msg = text.decode() if isinstance(text, bytes) else str(text)
        raise RuntimeError(f"{what} failed: {getattr(err, 'name', err)}: {msg}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else tuple(rest)


def gpu_count(rt: Any) -> tuple[int, str]:
    err, count = rt.cudaGetDeviceCount()
    if err != rt.cudaError_t.cudaSuccess:
        _, text = rt.cudaGetErrorString(err)
        return 0, text.decode() if isinstance(text, bytes) else str(text)
    return int(count), ""


class CudartOps:
    """:class:`~streamparity.backends.memory.DeviceOps` on one GPU and one CUDA stream."""

    def __init__(self, rt: Any, device: int) -> None:
        self.rt = rt
        self.device = device
        _cuda_call(rt, rt.cudaSetDevice(device), f"cudaSetDevice({device})")
        self.stream = _cuda_call(rt, rt.cudaStreamCreate(), "cudaStreamCreate")
        self.handle = int(self.stream)
        self._kind = rt.cudaMemcpyKind

    def alloc(self, nbytes: int) -> int:
        return int(_cuda_call(self.rt, self.rt.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))

    def free(self, buf: int) -> None:
        _cuda_call(self.rt, self.rt.cudaFree(buf), "cudaFree")

    def h2d(self, dst: int, src: np.ndarray) -> None:
        a = np.ascontiguousarray(src)
        _cuda_call(self.rt, self.rt.cudaMemcpyAsync(dst, a.ctypes.data, a.nbytes, self._kind.cudaMemcpyHostToDevice,
                                                    self.stream), "cudaMemcpyAsync(H2D)")
        # pageable source: the call returns once the bytes are staged, so `a` may be freed afterwards

    def d2h(self, src: int, shape: Shape, dtype: np.dtype[Any]) -> np.ndarray:
        out = np.empty(shape, dtype=dtype)
        if out.nbytes:
            _cuda_call(self.rt, self.rt.cudaMemcpyAsync(out.ctypes.data, src, out.nbytes,
                                                        self._kind.cudaMemcpyDeviceToHost, self.stream),
                       "cudaMemcpyAsync(D2H)")
        self.synchronize()
        return out

    def alloc_host(self, nbytes: int) -> HostBuffer:
        """Page-locked (cudaMallocHost), freed once the last array over it is gone."""
        ptr = int(_cuda_call(self.rt, self.rt.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))
        raw = (ctypes.c_ubyte * nbytes).from_address(ptr)
        done = weakref.finalize(raw, _free_host, self.rt.cudaFreeHost, ptr)
        done.atexit = False  # at exit the process gives it back
        return HostBuffer(np.frombuffer(memoryview(raw), dtype=np.uint8), raw)  # its base holds `raw`

    def d2h_into(self, dst: HostBuffer, src: int, nbytes: int) -> None:
        if nbytes:
            _cuda_call(self.rt, self.rt.cudaMemcpyAsync(dst.array.ctypes.data, src, nbytes,
                                                        self._kind.cudaMemcpyDeviceToHost, self.stream),
                       "cudaMemcpyAsync(D2H, pinned)")
        self.synchronize()

    def memset0(self, dst: int, nbytes: int) -> None:
        if nbytes:
            _cuda_call(self.rt, self.rt.cudaMemsetAsync(dst, 0, nbytes, self.stream), "cudaMemsetAsync")

    def copy2d(self, dst: int, dst_offset: int, dst_pitch: int, src: int, src_pitch: int, width: int,
               rows: int) -> None:
        if rows and width:
            _cuda_call(self.rt, self.rt.cudaMemcpy2DAsync(dst + dst_offset, dst_pitch, src, src_pitch, width, rows,
                                                          self._kind.cudaMemcpyDeviceToDevice, self.stream),
                       "cudaMemcpy2DAsync(D2D)")

    def synchronize(self) -> None:
        _cuda_call(self.rt, self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def gpu(self) -> tuple[str, str]:
        """(GPU name, compute capability 'major.minor')."""
        prop = _cuda_call(self.rt, self.rt.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        raw = prop.name
        name = raw.split(b"\0", 1)[0].decode() if isinstance(raw, bytes) else str(raw)
        return name.strip(), f"{prop.major}.{prop.minor}"

    def close(self) -> None:
        if self.stream is not None:
            self.rt.cudaStreamDestroy(self.stream)
            self.stream = None


def _free_host(free: Callable[[int], Any], ptr: int) -> None:
    try:
        free(ptr)
    except Exception:  # pragma: no cover - a torn-down CUDA context at interpreter exit
        pass


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise BackendUnavailable(f"PyTorch is not installed ({e}); pip install 'streamparity[nemo]'") from None
    return torch


def _torch_dtype(dtype: np.dtype[Any]) -> torch.dtype:
    import torch

    return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype


class TorchOps:
    """:class:`~streamparity.backends.memory.DeviceOps` over uint8 torch tensors on one device."""

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)

    def alloc(self, nbytes: int) -> torch.Tensor:
        return self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.device)

    def free(self, buf: torch.Tensor) -> None:
        pass  # released with the last reference

    def view(self, buf: torch.Tensor, shape: Shape, dtype: np.dtype[Any]) -> torch.Tensor:
        return buf[: nbytes_of(shape, dtype)].view(_torch_dtype(dtype)).view(shape)

    def h2d(self, dst: torch.Tensor, src: np.ndarray) -> None:
        flat = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
        if not flat.flags.writeable:
            flat = flat.copy()
        dst[: flat.size].copy_(self.torch.from_numpy(flat))

    def d2h(self, src: torch.Tensor, shape: Shape, dtype: np.dtype[Any]) -> np.ndarray:
        out: np.ndarray = self.view(src, shape, dtype).cpu().numpy()
        return out

    def alloc_host(self, nbytes: int) -> HostBuffer:
        """Page-locked beside a CUDA device (torch's pinned host allocator); the array keeps the tensor alive."""
        t = self.torch.empty(nbytes, dtype=self.torch.uint8, pin_memory=self.device.type == "cuda")
        return HostBuffer(t.numpy(), t)

    def d2h_into(self, dst: HostBuffer, src: torch.Tensor, nbytes: int) -> None:
        if nbytes:
            dst.handle[:nbytes].copy_(src[:nbytes])  # into pinned memory: one DMA, then the stream waited for

    def memset0(self, dst: torch.Tensor, nbytes: int) -> None:
        dst[:nbytes].zero_()

    def copy2d(self, dst: torch.Tensor, dst_offset: int, dst_pitch: int, src: torch.Tensor, src_pitch: int,
               width: int, rows: int) -> None:
        if rows and width:
            d = dst.as_strided((rows, width), (dst_pitch, 1), dst.storage_offset() + dst_offset)
            d.copy_(src.as_strided((rows, width), (src_pitch, 1), src.storage_offset()))

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

