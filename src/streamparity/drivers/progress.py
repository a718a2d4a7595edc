"""Progress lines for long work: ``<label>: chunk k of N, 12.3 ms/chunk, 8.1 s elapsed``.

:class:`Progress` is an ``on_step(chunk, ms)`` callback for the drivers (and any loop over chunks).  It stays
silent for work shorter than `after_s` and then writes at most one line every `every_s`, plus a final line for
work it reported on, so short runs, ``-q`` and CI logs are not flooded.  Lines are whole lines (no carriage
returns): they read the same in a terminal and in a log file.

The sinks: :func:`terminal_progress` writes through pytest's terminal reporter (absent on xdist workers, where
it returns None), :func:`stderr_progress` writes to stderr (the CLI commands).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

Write = Callable[[str], None]
OnStep = Callable[[int, float], None]


class Progress:
    def __init__(self, label: str, total: int, write: Write, *, after_s: float = 3.0, every_s: float = 3.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.write = label, int(total), write
        self.after_s, self.every_s, self.clock = after_s, every_s, clock
        self.start = clock()
        self.count = 0
        self.step_ms = 0.0
        self.last_line: float | None = None

    def line(self, chunk: int | None = None) -> str:
        elapsed = self.clock() - self.start
        where = f"chunk {chunk} ({self.count} of {self.total})" if chunk is not None else \
            f"{self.count} of {self.total} chunks"
        per = self.step_ms / max(self.count, 1)
        return f"{self.label}: {where}, {per:.1f} ms/chunk, {elapsed:.1f} s elapsed"

    def __call__(self, chunk: int, ms: float) -> None:
        self.count += 1
        self.step_ms += float(ms)
        now = self.clock()
        if now - self.start < self.after_s:
            return
        if self.last_line is not None and now - self.last_line < self.every_s:
            return
        self.last_line = now
        self.write(self.line(chunk))

    def done(self) -> None:
        """A closing line, only where progress was shown."""
        if self.last_line is not None:
            self.write(self.line() + " (done)")


def terminal_progress(config: Any, label: str, total: int, **kw: Any) -> Progress | None:
    """Progress through pytest's terminal reporter; None on xdist workers (no reporter) and under ``-qq``."""
    reporter = config.pluginmanager.get_plugin("terminalreporter") if config is not None else None
    if reporter is None or getattr(config.option, "verbose", 0) < -1:
        return None

    capman = config.pluginmanager.get_plugin("capturemanager")

    def emit(text: str) -> None:
        # after a row of progress dots (-q), start a fresh line; the dots go on below it
        if getattr(getattr(reporter, "_tw", None), "width_of_current_line", 0):
            reporter.write("\n")
        reporter.write_line(f"streamparity: {text}")

    def write(text: str) -> None:
        if capman is not None:  # inside a test the output is captured: write past it, as pytest's own lines do
            with capman.global_and_fixture_disabled():
                emit(text)
        else:
            emit(text)

    return Progress(label, total, write, **kw)


def stderr_progress(label: str, total: int, **kw: Any) -> Progress:
    def write(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    return Progress(label, total, write, **kw)


def attach_terminal_progress(config: Any, session: Any) -> None:
    """What the plugin calls once its :class:`~streamparity.session.ParitySession` exists: every run the
    session makes then reports progress through the terminal reporter."""
    session.progress = lambda label, total: terminal_progress(config, label, total)
