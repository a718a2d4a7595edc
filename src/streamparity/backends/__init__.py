"""Runtimes under test.  Every backend implements :class:`~streamparity.backends.base.Backend`."""

from streamparity.backends.base import Backend, BackendSpec, HostStream, Stream
from streamparity.backends.registry import available_kinds, create_backend, parse_backend_spec

__all__ = [
    "Backend",
    "BackendSpec",
    "HostStream",
    "Stream",
    "available_kinds",
    "create_backend",
    "parse_backend_spec",
]
