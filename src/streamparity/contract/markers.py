"""Undecided-field markers: the ``"TODO: ..."`` strings drafts and imports leave for a person to resolve."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

TODO_PREFIX = "TODO: "
# informational sections: a "TODO" word in them is prose, never a decision
_PROSE = frozenset({"provenance", "description"})


def todo(text: str) -> str:
    """The marker for a decision a person must make, with what they need to know to make it."""
    return TODO_PREFIX + text


_TODO_WORD = re.compile(r"\s*todo\b", re.IGNORECASE)


def is_todo(value: Any) -> bool:
    """A string that starts with the word TODO, in any case and punctuation ("TODO", "todo: x", "TODO:x")."""
    return isinstance(value, str) and _TODO_WORD.match(value) is not None


def json_path(path: Sequence[Any]) -> str:
    """``$.streaming.cache_len.step``, ``$.inputs[2].shape``: the path style every contract message uses."""
    out = "$"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def undecided_fields(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[str, str]]:
    """Every (JSON path, marker text) still marked TODO, in document order."""
    if is_todo(doc):
        return [(json_path(path), doc)]
    found: list[tuple[str, str]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if not (path == () and k in _PROSE):
                found += undecided_fields(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            found += undecided_fields(v, (*path, i))
    return found
