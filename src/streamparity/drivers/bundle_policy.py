"""Which failing chunks keep in memory what their failure bundle needs (the state a chunk ran on, its outputs).

At full size that is ~50 MB a chunk; a closed loop whose cache length is stuck fails all 300 chunks and would hold
15 GB.  The report writes bundles for the first ``--max-chunk-failures`` failing chunks of the selection only
(every one with ``--all-bundles``), so the drivers keep exactly those: the first `limit` chunks, in chunk order,
that fail (``warn`` too under ``--fail-on-warn``) among the selected ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from streamparity.judging.verdict import fails
from streamparity.results.records import ChunkResult


@dataclass
class BundlePolicy:
    limit: int | None = None
    """How many failing chunks keep their bundle; None: every one."""
    warn: bool = False
    """Whether a warn verdict fails (``--fail-on-warn``): such a chunk is reported, so it gets its bundle."""
    chunks: frozenset[int] | None = None
    """The selected chunks (``--chunks``); None: every chunk run.  A chunk outside it is never reported."""
    taken: int = field(default=0, init=False)

    @classmethod
    def of(cls, limit: int | None, warn: bool, chunks: Iterable[int] | None) -> BundlePolicy:
        return cls(limit, warn, frozenset(chunks) if chunks is not None else None)

    def wants(self, r: ChunkResult) -> bool:
        """Whether `r`, the next result in chunk order, keeps its bundle (counted when it does)."""
        if not fails(r.verdict, self.warn) or (self.chunks is not None and r.chunk not in self.chunks):
            return False
        if self.limit is not None and self.taken >= self.limit:
            return False
        self.taken += 1
        return True
