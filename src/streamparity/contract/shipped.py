"""The contracts shipped in the repository's ``contracts/`` folder, by name, and the default one."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

DEFAULT_NAME = "tiny-parakeet"
CONTRACT_ENV = "STREAMPARITY_CONTRACT"


def contracts_folder() -> Path:
    return Path(__file__).resolve().parents[3] / "contracts"


def contract_registry() -> dict[str, Path]:
    """Contracts shipped in ``contracts/``, by name: ``tiny-parakeet``, ``parakeet-tdt-0.6b-v3`` ..."""
    return {p.name.removesuffix(".contract.json"): p for p in sorted(contracts_folder().glob("*.contract.json"))}


def contract_by_name_or_path(text: str) -> Path:
    """argparse-style: a shipped contract's name or a path; ArgumentTypeError for a name that is not shipped."""
    registry = contract_registry()
    if text in registry:
        return registry[text]
    p = Path(text).expanduser()
    if not p.suffix and not p.exists():
        raise argparse.ArgumentTypeError(
            f"unknown contract {text!r}: give a path or one of {', '.join(registry) or '(none shipped)'}")
    return p


def default_contract() -> Path:
    """``$STREAMPARITY_CONTRACT`` (a name or a path) or the embedded default; ArgumentTypeError for a bad name."""
    env = os.environ.get(CONTRACT_ENV)
    if env:
        path = contract_by_name_or_path(env)
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"{env[:200]!r} is neither a shipped contract's name nor a contract file")
        return path
    return contracts_folder() / f"{DEFAULT_NAME}.contract.json"


def contract_named_in(header: dict[str, object]) -> Path | None:
    """The shipped contract whose ``name`` a reference header gives."""
    name = header.get("contract")
    if not isinstance(name, str):
        return None
    for p in contract_registry().values():
        try:
            if json.loads(p.read_text("utf-8")).get("name") == name:
                return p
        except (OSError, ValueError):
            continue
    return None
