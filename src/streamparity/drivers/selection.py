"""Parsing of ``--chunks`` selections such as ``17``, ``0-49`` or ``0-9,20,290-299``."""

from __future__ import annotations

import argparse


class ChunkSelection:
    def __init__(self, text: str) -> None:
        self.text = text
        self.ranges: list[tuple[int, int]] = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            lo_s, sep, hi_s = part.partition("-")
            try:
                lo = int(lo_s)
                hi = int(hi_s) if sep else lo
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"invalid chunk selection {text!r}: use N, A-B or a comma list such as 0-9,17") from None
            if lo < 0 or hi < lo:
                raise argparse.ArgumentTypeError(f"invalid chunk range {part!r} in {text!r}: need 0 <= A <= B")
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
