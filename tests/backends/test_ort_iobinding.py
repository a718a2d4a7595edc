"""ONNX Runtime through IOBinding in the shared device-resident loop equals the host closed loop.

On CPU the runner binds host buffers by pointer (device_type="cpu"); on a CUDA host the same runner
binds GPU buffers and the caches never leave the device.
"""

from __future__ import annotations

import numpy as np

from streamparity.backends.base import HostStream
from streamparity.backends.device_loop import BufferPool, DeviceLoopStream
from streamparity.backends.memory import NumpyOps
from streamparity.backends.ort import OrtBackend, OrtIOBindingRunner
from streamparity.drivers.closed_loop import initial_state
from streamparity.reference.reader import ReferenceFile
from tests.conftest import TINY_ONNX, TINY_REFERENCE


def test_iobinding_loop_equals_host_loop(tiny_contract):
    ref = ReferenceFile(TINY_REFERENCE)
    backend = OrtBackend(tiny_contract, TINY_ONNX)
    init = initial_state(tiny_contract, ref.read(0))
    ops = NumpyOps()
    runner = OrtIOBindingRunner(backend, lambda b: int(b.ctypes.data), device_type="cpu", device_id=0)
    dev = DeviceLoopStream(tiny_contract, ops, runner, BufferPool(ops), init, fetch_caches=True)
    host = HostStream(backend, init, fetch_caches=True)
    for k, rec in enumerate(ref):
        if k == 40:
            break
        a = dev.step(rec.inputs["audio_signal"], rec.inputs["length"])
        b = host.step(rec.inputs["audio_signal"], rec.inputs["length"])
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"chunk {k} {name}")
        up, _down = dev.bytes_moved
        assert up == rec.inputs["audio_signal"].nbytes + rec.inputs["length"].nbytes
    assert int(a["cache_last_channel_next_len"][0]) == 24


def test_iobinding_without_cache_download(tiny_contract):
    ref = ReferenceFile(TINY_REFERENCE)
    backend = OrtBackend(tiny_contract, TINY_ONNX)
    ops = NumpyOps()
    runner = OrtIOBindingRunner(backend, lambda b: int(b.ctypes.data), device_type="cpu", device_id=0)
    dev = DeviceLoopStream(tiny_contract, ops, runner, BufferPool(ops), initial_state(tiny_contract, ref.read(0)),
                           fetch_caches=False)
    rec = ref.read(0)
    out = dev.step(rec.inputs["audio_signal"], rec.inputs["length"])
    assert set(out) == {"outputs", "encoded_lengths", "cache_last_channel_next_len"}
    assert dev.bytes_moved[1] == sum(v.nbytes for v in out.values())
