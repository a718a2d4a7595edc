"""The runtime's side of the protocol for Python runtimes: a loop that reads requests from stdin and writes
replies to stdout.  ``streamparity serve-ort`` is built on it; a runtime in another language implements the
same frames (the README's runtime-protocol section, and the C reference runtime in tests/backends/external/data)."""

from __future__ import annotations

import abc
import sys
import traceback
from collections.abc import Mapping
from typing import IO, Any

import numpy as np

from streamparity.backends.external.protocol import PROTOCOL_VERSION, Frame, ProtocolError, encode_frame, read_frame


class RuntimeHandler(abc.ABC):
    """What a Python runtime implements; the loop does the framing, the version check and error replies."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """name, version, precision, device and any extra report info (JSON-serialisable)."""

    @abc.abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Functional mode: one chunk with every input given."""

    @abc.abstractmethod
    def open(self, state: Mapping[str, np.ndarray], fetch_caches: bool) -> int:
        """Open a stream from the initial caches; return its id."""

    @abc.abstractmethod
    def step(self, stream: int, inputs: Mapping[str, np.ndarray], fetch_caches: bool | None = None
             ) -> dict[str, np.ndarray]:
        """Closed loop: audio and length in; outputs plus the cache length that was fed to this step.
        `fetch_caches` overrides the stream's setting for this step (None: as opened)."""

    @abc.abstractmethod
    def state(self, stream: int) -> dict[str, np.ndarray]:
        """The caches the next step of `stream` will be fed."""

    @abc.abstractmethod
    def close(self, stream: int) -> None:
        """Forget the stream."""


def _read_exact(f: IO[bytes]) -> Any:
    def read(n: int) -> bytes:
        data = f.read(n)
        if data is None or len(data) != n:
            raise EOFError
        return data
    return read


def handle(handler: RuntimeHandler, req: Frame) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    op = req.header.get("op")
    if op == "describe":
        want = req.header.get("protocol")
        if want != PROTOCOL_VERSION:
            return {"ok": False, "protocol": PROTOCOL_VERSION,
                    "error": f"protocol version {want!r} requested, this runtime speaks {PROTOCOL_VERSION}"}, {}
        return {"ok": True, "protocol": PROTOCOL_VERSION, **handler.describe()}, {}
    if op == "run":
        return {"ok": True}, handler.run(req.tensors)
    if op == "open":
        return {"ok": True, "stream": handler.open(req.tensors, bool(req.header.get("fetch_caches", True)))}, {}
    if op == "step":
        fetch = req.header.get("fetch_caches")
        return {"ok": True}, handler.step(int(req.header.get("stream", 0)), req.tensors,
                                          None if fetch is None else bool(fetch))
    if op == "state":
        return {"ok": True}, handler.state(int(req.header.get("stream", 0)))
    if op == "close":
        handler.close(int(req.header.get("stream", 0)))
        return {"ok": True}, {}
    if op == "shutdown":
        return {"ok": True}, {}
    return {"ok": False, "error": f"unknown operation {op!r}"}, {}


def serve(handler: RuntimeHandler, stdin: IO[bytes] | None = None, stdout: IO[bytes] | None = None) -> int:
    """Answer requests until EOF or ``shutdown``.  Exceptions of the handler become error replies."""
    fin = stdin or sys.stdin.buffer
    fout = stdout or sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print() must not corrupt the frames
    read = _read_exact(fin)
    while True:
        try:
            req = read_frame(read)
        except EOFError:
            return 0
        except ProtocolError as e:
            print(f"streamparity runtime: {e}", file=sys.stderr)
            return 3
        try:
            header, tensors = handle(handler, req)
        except Exception as e:  # a runtime error is a reply, the loop goes on
            traceback.print_exc(file=sys.stderr)
            header, tensors = {"ok": False, "error": f"{type(e).__name__}: {e}"}, {}
        for part in encode_frame(header, tensors):
            fout.write(part)
        fout.flush()
        if req.header.get("op") == "shutdown":
            return 0
