"""What Python's garbage collector walks in a pytest run with this plugin.

An embedded parity run spent ~15% of its time in full collections that walked objects living for the whole run:
modules and classes, pytest's configuration, the collected tests, the contract.  Those are put out of the
collector's sight with :func:`gc.freeze`, so that its collections walk only what the run allocates:

* :func:`at_plugin_import`: what the interpreter and pytest have loaded before the plugin's own imports;
* :func:`at_collection_finish`: in a run of parity tests only, what collection made.  A run with any other test
  gets everything back there, and its collections behave as always;
* the run's end leaves the freeze in place: pytest's two full collections at the end, and the interpreter's
  at exit, skip what exists for the whole run anyway (~50 ms of an embedded run).  A later run in the same
  process (pytester's in-process runs) gives it back first, at :func:`at_configure`.

Only what this module froze is ever given back; a process that froze objects itself is left alone.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable

_state: dict[str, str | None] = {"frozen": None}  # what this module froze: "import", "run" or nothing (None)


def at_plugin_import() -> None:
    if not gc.get_freeze_count():
        gc.freeze()
        _state["frozen"] = "import"


def _give_back() -> None:
    if _state["frozen"]:
        gc.unfreeze()
        _state["frozen"] = None


def at_configure() -> None:
    """A run starts: what an earlier run in this process left frozen is collectable again."""
    if _state["frozen"] == "run":
        _give_back()


def at_collection_finish(items: Iterable[object]) -> None:
    """In a run of parity tests only (every item uses the ``parity`` fixture), everything made so far lives for
    the run and is frozen; any other run gets back what was frozen.  No collection first: it would cost what the
    freeze saves, and what it would free (cycles left by imports and collection) is a few kilobytes."""
    listed = list(items)
    parity_only = bool(listed) and all("parity" in getattr(i, "fixturenames", ()) for i in listed)
    if not parity_only:
        _give_back()
    elif _state["frozen"] or not gc.get_freeze_count():
        gc.freeze()
        _state["frozen"] = "run"
