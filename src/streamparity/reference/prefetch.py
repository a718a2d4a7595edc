"""Reading chunks ahead: a few threads decode the next records of a large reference while the caller works.

Reading a full-size chunk line (69 MB with caches) is a file read and base64 decoding, both of which run
without Python's global lock, so they overlap a runtime's step (ONNX Runtime releases the lock too) or the
judging of the previous chunk.  Records come back in order; an error reading chunk k is raised when the
caller reaches chunk k, not before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from streamparity.environment import usable_cores

R = TypeVar("R")

DEPTH = 4
"""Records read ahead of the one the caller is on (each a decoded chunk: up to ~50 MB at full size)."""


def default_workers() -> int:
    """Reader threads: one on a machine of few cores (decoding then overlaps the step), two from 4 cores, four
    from 12 (a full-size line takes a core ~30 ms to read and decode, two steps of the real encoder on a GPU)."""
    cores = usable_cores()
    return 4 if cores >= 12 else 2 if cores >= 4 else 1


class Prefetched(Iterator[R]):
    """``read(k)`` for every k in `ids`, in order, with up to `depth` reads under way ahead of the caller; the
    first ones start when it is made, so a caller can set up (open a stream) while they run.

    Only the ids that `worth` accepts (default: all) are read ahead; the others are read in the caller's
    thread when it reaches them, so that stretches of small lines wake no thread at all (no thread starts
    before a read is handed to one).  `read` must be safe to call from several threads at once.  An error
    reading chunk k is raised when the caller reaches it, and ends the iteration.  :meth:`close` (also at the
    end, on an error, and when the object goes) cancels the reads that have not started and waits for those
    that have."""

    def __init__(self, read: Callable[[int], R], ids: Sequence[int], *, depth: int = DEPTH,
                 workers: int | None = None, worth: Callable[[int], bool] | None = None) -> None:
        self._read, self._ids, self._depth, self._worth = read, list(ids), max(1, depth), worth
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(max_workers=workers or default_workers(),
                                                                   thread_name_prefix="streamparity-read")
        self._ahead: dict[int, Future[R]] = {}
        self._pos = 0  # the next position handed to the caller
        self._nxt = 0  # the next position whose read-ahead is decided
        self._plan()

    def _plan(self) -> None:
        while self._pool is not None and self._nxt < len(self._ids) and self._nxt < self._pos + self._depth:
            k = self._ids[self._nxt]
            if self._worth is None or self._worth(k):
                self._ahead[self._nxt] = self._pool.submit(self._read, k)
            self._nxt += 1

    def __next__(self) -> R:
        if self._pool is None or self._pos >= len(self._ids):
            self.close()
            raise StopIteration
        pos = self._pos
        self._pos += 1
        got = self._ahead.pop(pos, None)
        self._plan()
        try:
            return got.result() if got is not None else self._read(self._ids[pos])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        pool, self._pool = getattr(self, "_pool", None), None  # None too when __init__ failed before making it
        if pool is not None:
            for f in self._ahead.values():
                f.cancel()
            self._ahead.clear()
            pool.shutdown(wait=True)

    def __del__(self) -> None:
        self.close()


def prefetched(read: Callable[[int], R], ids: Sequence[int], *, depth: int = DEPTH, workers: int | None = None,
               worth: Callable[[int], bool] | None = None) -> Prefetched[R]:
    """:class:`Prefetched`: its reads ahead start now."""
    return Prefetched(read, ids, depth=depth, workers=workers, worth=worth)
