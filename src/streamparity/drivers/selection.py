"""Parsing of ``--chunks`` selections such as ``17``, ``0-49`` or ``0-9,20,290-299``."""

from __future__ import annotations

import argparse
import re

MAX_CHUNK = 2**31 - 1
_NUMBER = re.compile(r"[0-9]{1,10}")  # ASCII digits only: int() would also take "1_0", "+1" and "١"


def _shown(text: str) -> str:
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


def _number(s: str) -> int | None:
    s = s.strip()
    return int(s) if _NUMBER.fullmatch(s) and int(s) <= MAX_CHUNK else None


class ChunkSelection:
    def __init__(self, text: str) -> None:
        self.text = text
        self.ranges: list[tuple[int, int]] = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            lo_s, sep, hi_s = part.partition("-")
            lo = _number(lo_s)
            hi = _number(hi_s) if sep else lo
            if lo is None or hi is None:
                raise argparse.ArgumentTypeError(
                    f"invalid chunk selection {_shown(text)}: use N, A-B or a comma list such as 0-9,17 "
                    f"(chunk ids 0..{MAX_CHUNK})")
            if hi < lo:
                raise argparse.ArgumentTypeError(f"invalid chunk range {_shown(part)} in {_shown(text)}: "
                                                 "need 0 <= A <= B")
            self.ranges.append((lo, hi))
        if not self.ranges:
            raise argparse.ArgumentTypeError("empty chunk selection")

    def __contains__(self, chunk: int) -> bool:
        return any(lo <= chunk <= hi for lo, hi in self.ranges)

    def filter(self, chunks: list[int]) -> list[int]:
        return [c for c in chunks if c in self]

    def __repr__(self) -> str:
        return f"ChunkSelection({self.text!r})"


def parse_chunks(text: str) -> ChunkSelection:
    return ChunkSelection(text)


def selection_text(chunks: list[int]) -> str:
    """Chunk ids as the shortest ``--chunks`` selection that names exactly them: ``[0, 1, 2, 7]`` -> ``0-2,7``."""
    parts: list[str] = []
    ids = sorted(set(chunks))
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)
