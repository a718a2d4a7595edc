"""Runtimes under test: base types, the registry, the device-memory layer and one module per runtime."""
