"""Reusable read buffers for a reference's large lines, shared by the threads that read them.

A fresh 69 MB ``bytes`` per full-size chunk line costs a page fault per 4 KiB (zeroed, then copied into) on
every read, ~3x the copy itself.  A reader takes a buffer, reads a line into it, parses it and gives it back;
the buffers outlive the threads that read ahead, so a second pass over a file (the functional run, then the
closed loop) starts on warm ones.  Nothing decoded from a buffer may point into it.
"""

from __future__ import annotations

import threading


class LineBuffers:
    """At most `keep` free buffers (one per thread reading at once); a buffer is resized to each line."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._free: list[bytearray] = []
        self._lock = threading.Lock()

    def take(self, length: int) -> bytearray:
        """A buffer of exactly `length` bytes, free for the caller alone until :meth:`give_back`."""
        with self._lock:
            buf = self._free.pop() if self._free else bytearray()
        if len(buf) != length:  # lines with caches differ by a few bytes: resized in place
            try:
                if len(buf) > length:
                    del buf[length:]
                else:
                    buf.extend(bytes(length - len(buf)))
            except BufferError:  # a kept exception's frame still views it: start a new one
                buf = bytearray(length)
        return buf

    def give_back(self, buf: bytes | bytearray) -> None:
        """`buf` free again (``bytes``, a small line read as such: ignored).  Give each buffer back once."""
        if isinstance(buf, bytearray):
            with self._lock:
                if len(self._free) < self.keep:
                    self._free.append(buf)
