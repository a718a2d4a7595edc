"""TODO docstring."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest


def _root() -> Path:
    return Path(__file__).resolve().parents[3]



def default_contract() -> Path:
    env = os.environ.get("STREAMPARITY_CONTRACT")
    if env:
        try:
            return _contract(env)
        except argparse.ArgumentTypeError as e:
            raise pytest.UsageError(f"streamparity: $STREAMPARITY_CONTRACT: {e}") from None
    return _root() / "contracts" / "tiny-parakeet.contract.json"



def contract_registry() -> dict[str, Path]:
    """Contracts shipped in ``contracts/``, by name: ``tiny-parakeet``, ``parakeet-tdt-0.6b-v3`` ..."""
    folder = _root() / "contracts"
    return {p.name.removesuffix(".contract.json"): p for p in sorted(folder.glob("*.contract.json"))}



def _contract(text: str) -> Path:
    registry = contract_registry()
    if text in registry:
        return registry[text]
    p = Path(text).expanduser()
    if not p.suffix and not p.exists():
        raise argparse.ArgumentTypeError(
            f"unknown contract {text!r}: give a path or one of {', '.join(registry) or '(none shipped)'}")
    return p
