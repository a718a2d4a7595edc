"""The run's inputs pinned at start: contract, ONNX (with its external weight files), reference and offline
reference, by size and modification time.  A file that changes while the suite judges it makes every later
verdict meaningless, so the run says so instead of mixing two inputs."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pin:
    what: str
    path: Path
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, what: str, path: Path) -> Pin:
        st = os.stat(path)
        return cls(what, path, st.st_size, st.st_mtime_ns)

    def change(self) -> str | None:
        """How the file changed since it was pinned, or None."""
        try:
            st = os.stat(self.path)
        except OSError as e:
            return f"{self.what} {self.path} is gone ({e.strerror})"
        if (st.st_size, st.st_mtime_ns) == (self.size, self.mtime_ns):
            return None
        when = time.strftime("%H:%M:%S", time.localtime(st.st_mtime_ns / 1e9))
        return (f"{self.what} {self.path} changed during the run (size {self.size} -> {st.st_size} bytes, modified "
                f"at {when}); this run's verdicts mix two inputs: rerun on a stable copy")

    def to_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "size": self.size, "mtime_ns": self.mtime_ns}


class PinnedInputs:
    def __init__(self, files: dict[str, Path | None], extra: list[tuple[str, Path]] | None = None) -> None:
        self.pins = [Pin.of(what, p) for what, p in files.items() if p is not None]
        self.pins += [Pin.of(what, p) for what, p in extra or []]

    def changed(self) -> list[str]:
        return [c for c in (p.change() for p in self.pins) if c is not None]

    def to_dict(self) -> dict[str, object]:
        return {p.what: p.to_dict() for p in self.pins}
