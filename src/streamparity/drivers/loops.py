"""Drivers: run a backend over a reference in functional mode (reference caches in) or closed loop
(the backend's own caches fed back, for the whole reference)."""

from __future__ import annotations

















