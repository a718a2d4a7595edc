"""The suite's side of the pipe: one runtime process, requests with a deadline, faults as messages.

Every failure of the process (exit, crash, garbage, an error reply, no answer within the timeout) raises
:class:`RuntimeFault` with the runtime command, the operation, what was being run and the last lines of
the runtime's stderr.  A fault that leaves the pipe unusable kills the process (its whole process group);
processes still alive at interpreter exit are killed too, so no runtime outlives the suite.
"""

from __future__ import annotations

import atexit
import collections
import fcntl
import os
import select
import shlex
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from streamparity.backends.external.protocol import Frame, ProtocolError, encode_frame, read_frame

STDERR_TAIL = 8
PIPE_BYTES = 1 << 20
_LIVE: weakref.WeakSet[RuntimeProcess] = weakref.WeakSet()


class RuntimeFault(Exception):
    """The runtime process failed an operation; the message says which, where and why."""


class _Timeout(Exception):
    pass


class _Eof(Exception):
    pass


class RuntimeProcess:
    def __init__(self, command: str, *, label: str, timeout: float) -> None:
        self.command = command
        self.label = label
        self.timeout = float(timeout)
        self.dead: str | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=200)
        try:
            argv = shlex.split(command)
        except ValueError as e:
            raise RuntimeFault(f"runtime {label!r}: cannot split the command {command!r} ({e})") from None
        if not argv:
            raise RuntimeFault(f"runtime {label!r}: empty command")
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True, bufsize=0)
        except OSError as e:
            raise RuntimeFault(f"runtime {label!r} (command: {command}) cannot be started: {e}") from None
        assert self.proc.stdin and self.proc.stdout and self.proc.stderr
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        os.set_blocking(self._in, False)
        os.set_blocking(self._out, False)
        for fd in (self._in, self._out):  # 1 MiB pipes (Linux): fewer wake-ups for 25 MB cache tensors
            try:
                fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
            except OSError:
                pass
        self._err_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._err_thread.start()
        _LIVE.add(self)

    # -- I/O with a deadline ---------------------------------------------------------------
    def _drain_stderr(self) -> None:
        assert self.proc.stderr
        for raw in iter(self.proc.stderr.readline, b""):
            self._tail.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def _write_all(self, parts: list[bytes], deadline: float) -> None:
        for part in parts:
            view = memoryview(part)
            while view:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Timeout("writing the request")
                _, w, _ = select.select([], [self._in], [], left)
                if not w:
                    continue
                try:
                    n = os.write(self._in, view[: 1 << 20])
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    raise _Eof("the runtime closed its stdin") from None
                view = view[n:]

    def _reader(self, deadline: float) -> Any:
        def read_exact(n: int) -> bytearray:
            buf = bytearray(n)
            view = memoryview(buf)
            got = 0
            while got < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _Timeout(f"reading the reply ({got} of {n} bytes of a frame part received)")
                r, _, _ = select.select([self._out], [], [], left)
                if not r:
                    continue
                try:
                    k = os.readv(self._out, [view[got:]])
                except BlockingIOError:
                    continue
                if k == 0:
                    raise _Eof("the runtime closed its stdout" + (f" after {got} of {n} bytes" if got else ""))
                got += k
            return buf  # no copy: numpy wraps it (writable arrays)
        return read_exact

    # -- requests --------------------------------------------------------------------------
    def request(self, op: str, header: Mapping[str, Any] | None = None,
                tensors: Mapping[str, np.ndarray] | None = None, *, what: str = "",
                timeout: float | None = None) -> Frame:
        """Send one request and return the reply; any failure raises RuntimeFault (and kills on pipe faults)."""
        if self.dead is not None:
            raise RuntimeFault(self._message(op, what, f"the process is gone ({self.dead})"))
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            self._write_all(encode_frame({"op": op, **(header or {})}, tensors), deadline)
            reply = read_frame(self._reader(deadline))
        except _Timeout as e:
            self.kill(f"no answer within {self.timeout:g} s")
            raise RuntimeFault(self._message(op, what, f"no answer within the timeout of "
                                                       f"{self.timeout:g} s ({e}); killed")) from None
        except _Eof as e:
            self.kill("closed its pipe")
            raise RuntimeFault(self._message(op, what, f"{e}; {self._exit_text()}")) from None
        except (ProtocolError, ValueError, KeyError) as e:
            self.kill("protocol violation")
            raise RuntimeFault(self._message(op, what, f"protocol violation: {e}")) from None
        if reply.header.get("ok") is not True:
            raise RuntimeFault(self._message(op, what, f"the runtime replied with an error: "
                                                       f"{reply.header.get('error', reply.header)!s}"))
        return reply

    def fault(self, op: str, what: str, why: str, *, kill: bool = True) -> RuntimeFault:
        """A RuntimeFault for a reply that is well-formed but wrong (names, shapes, dtypes)."""
        if kill:
            self.kill(why)
        return RuntimeFault(self._message(op, what, why))

    def _exit_text(self) -> str:
        try:
            rc = self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return "the process is still running"
        if rc < 0:
            try:
                return f"the process was killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"the process was killed by signal {-rc}"
        return f"the process exited with status {rc}"

    def stderr_tail(self) -> list[str]:
        self._err_thread.join(timeout=0.5 if self.dead else 0.05)
        return list(self._tail)[-STDERR_TAIL:]

    def _message(self, op: str, what: str, why: str) -> str:
        tail = self.stderr_tail()
        where = f" {what}" if what else ""
        text = f"runtime {self.label!r} failed in operation '{op}'{where}: {why} [command: {self.command}]"
        if tail:
            text += "; last stderr lines: " + " | ".join(tail)
        else:
            text += "; stderr was empty"
        return text

    # -- ending ----------------------------------------------------------------------------
    def kill(self, why: str = "killed") -> None:
        if self.dead is None:
            self.dead = why
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            pass
        self._reap_group()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        _LIVE.discard(self)

    def _reap_group(self) -> None:
        """Children the runtime started share its process group: end them as well."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        """Ask the runtime to shut down, then make sure it is gone."""
        if self.dead is None and self.proc.poll() is None:
            try:
                self.request("shutdown", timeout=min(self.timeout, 2.0))
                self.proc.wait(timeout=2.0)
            except (RuntimeFault, subprocess.TimeoutExpired):
                pass
        self.kill("closed")


@atexit.register
def _kill_all() -> None:
    for p in list(_LIVE):
        p.kill("interpreter exit")
