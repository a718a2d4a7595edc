"""Hooks that other pytest plugins (or a ``conftest.py``) implement to extend streamparity."""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("pytest")


@hookspec
def pytest_streamparity_backends(register: Callable[..., None]) -> None:
    """Add backend kinds: call ``register(kind, factory)`` (see
    :func:`streamparity.backends.registry.register_backend`) for each.  Called once, before the ``--backend``
    ids are checked, so ``--backend KIND-cpu-fp32`` can name a kind that a plugin adds."""


