"""Facts proven about content, remembered by digest across runs (a contract is schema-valid, say).

A fact is remembered under the SHA-256 of everything its proof depends on: the caller passes the content and
what else decides (the schema, the code that proves it, a library's version), so that a change to any of them
proves it again.  Only proofs are remembered, never failures: what fails is checked in full every time, for its
messages.

Entries are files named by their digest and holding it, written atomically, in one folder per kind of fact under
the cache folder: ``$STREAMPARITY_CACHE_DIR``, else ``$XDG_CACHE_HOME/streamparity``, else
``~/.cache/streamparity``.  ``STREAMPARITY_CACHE_DIR=`` (empty) turns the memo off.  A cache folder that cannot
be written only costs the time; a file that does not hold its own name is not believed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from streamparity.atomic import atomic_write_text

CACHE_ENV = "STREAMPARITY_CACHE_DIR"
_known: set[tuple[str, str]] = set()  # (kind, digest) proven in this process


def cache_dir() -> Path | None:
    """The user's streamparity cache folder, or None where ``$STREAMPARITY_CACHE_DIR`` is set empty (no cache)."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return Path(configured).expanduser() if configured.strip() else None
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache") / "streamparity"


def key(*parts: bytes) -> str:
    """The digest of a fact's content and of everything its proof depends on (the parts are length-prefixed:
    no two different lists of parts give the same bytes)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()


def proven(kind: str, digest: str) -> bool:
    """Whether the fact `digest` of `kind` was proven before (in this process, or in a run whose memo is here)."""
    if (kind, digest) in _known:
        return True
    folder = cache_dir()
    if folder is None:
        return False
    try:
        held = (folder / kind / digest).read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return False
    if held != digest:
        return False
    _known.add((kind, digest))
    return True


def remember(kind: str, digest: str) -> None:
    """Records that the fact `digest` of `kind` is proven."""
    _known.add((kind, digest))
    folder = cache_dir()
    if folder is None:
        return
    try:
        atomic_write_text(folder / kind / digest, digest + "\n")
    except OSError:
        pass  # a read-only home or cache: the next run proves it again
