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


def prefetched(read: Callable[[int], R], ids: Sequence[int], *, depth: int = DEPTH, workers: int | None = None,
               worth: Callable[[int], bool] | None = None) -> Iterator[R]:
    """``read(k)`` for every k in `ids`, in order, with up to `depth` reads under way ahead of the caller.

    Only the ids that `worth` accepts (default: all) are read ahead; the others are read in the caller's
    thread when it reaches them, so that stretches of small lines wake no thread at all.  `read` must be
    safe to call from several threads at once.  Leaving the loop early cancels the reads that have not
    started and waits for those that have."""
    pool = ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="streamparity-read")
    ahead: dict[int, Future[R]] = {}
    nxt = 0  # the next position whose read-ahead is decided
    try:
        for pos, k in enumerate(ids):
            while nxt < len(ids) and nxt < pos + max(1, depth):
                if worth is None or worth(ids[nxt]):
                    ahead[nxt] = pool.submit(read, ids[nxt])
                nxt += 1
            got = ahead.pop(pos, None)
            yield got.result() if got is not None else read(k)
    finally:
        for f in ahead.values():
            f.cancel()
        pool.shutdown(wait=True)
