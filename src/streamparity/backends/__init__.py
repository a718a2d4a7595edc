"""Runtimes under test.  Every backend implements :class:`~streamparity.backends.base.Backend`."""

from .base import Backend, HostStream, Stream
from .registry import BackendSpec, available_kinds, create_backend, parse_backend_spec

__all__ = [
    "Backend",
    "BackendSpec",
    "HostStream",
    "Stream",
    "available_kinds",
    "create_backend",
    "parse_backend_spec",
]
