"""Issue 13: long runs report progress, throttled; short ones stay silent."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from streamparity.drivers.progress import Progress, attach_terminal_progress, terminal_progress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_silent_for_short_work_then_at_most_one_line_per_interval() -> None:
    clock = Clock()
    lines: list[str] = []
    p = Progress("ort-cpu-fp32 closed_loop", 300, lines.append, after_s=3.0, every_s=3.0, clock=clock)
    for k in range(300):
        clock.t = k * 0.1  # 100 ms per chunk: 30 s in all
        p(k, 100.0)
    p.done()
    assert 8 <= len(lines) <= 11
    assert lines[0].startswith("ort-cpu-fp32 closed_loop: chunk 30 (31 of 300), 100.0 ms/chunk, 3.0 s elapsed")
    assert lines[-1].endswith("(done)") and "300 of 300 chunks" in lines[-1]
    quick: list[str] = []
    q = Progress("x", 10, quick.append, clock=Clock())
    for k in range(10):
        q(k, 1.0)
    q.done()
    assert quick == []


class Reporter:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.append(text)

    def write_line(self, text: str) -> None:
        self.lines.append(text)


def _config(reporter: Any, verbose: int = 0) -> Any:
    pm = SimpleNamespace(get_plugin=lambda name: reporter if name == "terminalreporter" else None)
    return SimpleNamespace(pluginmanager=pm, option=SimpleNamespace(verbose=verbose))


def test_terminal_progress_goes_through_the_reporter_and_not_on_xdist_workers() -> None:
    rep = Reporter()
    p = terminal_progress(_config(rep, verbose=-1), "run", 2, after_s=0.0, every_s=0.0)
    assert p is not None
    p(0, 5.0)
    assert rep.lines and rep.lines[0].startswith("streamparity: run: chunk 0 (1 of 2), 5.0 ms/chunk")
    assert terminal_progress(_config(None), "run", 2) is None  # xdist worker: no terminal reporter
    assert terminal_progress(_config(rep, verbose=-2), "run", 2) is None  # -qq
    session = SimpleNamespace(progress=None)
    attach_terminal_progress(_config(rep), session)
    assert isinstance(session.progress("a", 3), Progress)
