"""The report directory of one run: usable before any test runs, owned by one run at a time, never showing an
earlier run's files as current.

Before collection the run only checks that the directory could be written (:meth:`RunDir.check`: a usage error
otherwise); nothing is created then, so a pytest run of other tests leaves no trace.  Once the run is known to hold
product tests it takes the directory (:meth:`RunDir.open`): its lock (a second run on the same directory is refused,
naming the holder), removes what an earlier run left there (its summary, report, plots, bundles and temporary
files; nothing else) and writes ``run.json`` with ``complete: false``.  Files a run would own in a directory that
no run marked as its own (no ``run.json`` of a run: a ``report.md`` of the user's) are never removed or
overwritten: the run is refused, naming them.  The summary
and report carry the run's id and start time; ``run.json`` is rewritten with ``complete: true`` last, so a
killed run is recognisable: ``run.json`` says incomplete and there is no summary."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamparity.atomic import atomic_write_text
from streamparity.errors import StreamparityError

RUN_FILE = "run.json"
LOCK_FILE = ".streamparity.lock"
_OWNED = re.compile(r"^(summary\.json|report\.md|cache_len\.(svg|png)|error_.*\.(svg|png)|\..*\.tmp)$")
"""What a run owns in its report directory (``.png``: figures of the versions that drew them with matplotlib)."""


class ReportDirError(StreamparityError):
    """The report directory cannot be used (not a directory, not writable, or in use by another run)."""


@dataclass
class RunDir:
    path: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _lock: Any = None

    def meta(self) -> dict[str, Any]:
        return {"id": self.run_id, "started": self.started}

    def check(self) -> None:
        """Whether the directory could be used, creating nothing: it is a directory, or can be made one, and can be
        written."""
        d = self.path
        if d.exists() and not d.is_dir():
            raise ReportDirError("--report-dir is a file, not a directory", file=str(d), field="--report-dir")
        existing = next((p for p in (d, *d.parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            why = "a file is in its path" if existing is not None and not existing.is_dir() else "permission denied"
            raise ReportDirError(f"--report-dir cannot be written ({why}: {existing})", file=str(d),
                                 field="--report-dir")

    def open(self) -> None:
        """Check, lock and clear the directory for this run (controller only)."""
        d = self.path
        self.check()
        foreign = self._foreign_files()
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ReportDirError(f"holds {shown}, which no streamparity run wrote (there is no {RUN_FILE} of a "
                                 "run): they are left alone; give this run its own --report-dir, or remove them",
                                 file=str(d), field="--report-dir")
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".{LOCK_FILE}.{os.getpid()}.probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ReportDirError(f"--report-dir cannot be written ({e.strerror or e})", file=str(d),
                                 field="--report-dir") from None
        from filelock import FileLock, Timeout

        lock = FileLock(str(d / LOCK_FILE))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            holder = _read_run(d)
            raise ReportDirError(f"another streamparity run is writing this report directory (run "
                                 f"{holder.get('id', '?')}, pid {holder.get('pid', '?')}, started "
                                 f"{holder.get('started', '?')}); give this run its own --report-dir",
                                 file=str(d), field="--report-dir") from None
        self._lock = lock
        self._clear()
        self._write_marker(complete=False)

    def _owned_files(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        found = [p for p in self.path.iterdir() if p.is_file() and _OWNED.match(p.name)]
        bundles = self.path / "bundles"
        if bundles.is_dir():
            found += [p for p in bundles.iterdir() if p.is_file() and (p.suffix == ".npz" or p.name.endswith(".tmp"))]
        return sorted(found)

    def _foreign_files(self) -> list[str]:
        """Files a run would remove or overwrite, in a directory that no run marked as its own."""
        if _read_run(self.path).get("streamparity_run"):
            return []
        return [str(p.relative_to(self.path)) for p in self._owned_files()]

    def _clear(self) -> None:
        for p in self._owned_files():
            p.unlink(missing_ok=True)

    def _write_marker(self, *, complete: bool) -> None:
        atomic_write_text(self.path / RUN_FILE, json.dumps(
            {"streamparity_run": 1, **self.meta(), "pid": os.getpid(), "complete": complete,
             **({"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")} if complete else {})}, indent=1) + "\n")

    def close(self, *, complete: bool) -> None:
        """Mark the run complete (after the summary and report were written) and release the lock."""
        if self._lock is None:
            return
        try:
            if complete:
                self._write_marker(complete=True)
        finally:
            self._lock.release()
            self._lock = None


def _read_run(d: Path) -> dict[str, Any]:
    try:
        doc = json.loads((d / RUN_FILE).read_text("utf-8"))
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}
