"""argparse validators of the command line: each rejects a bad value with a one-line reason."""

from __future__ import annotations

import argparse
from pathlib import Path

from streamparity.errors import not_a_file


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return v



def non_negative_int(text: str) -> int:
    """An argparse type: a whole number 0..1000000 (counts of chunks, rounds, steps)."""
    try:
        v = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number") from None
    if not 0 <= v <= 1_000_000:
        raise argparse.ArgumentTypeError(f"{v} must be between 0 and 1000000")
    return v


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} must be a finite number > 0")
    return v


def existing_file(text: str) -> Path:
    p = Path(text)
    why = not_a_file(p)
    if why == "not found":
        raise argparse.ArgumentTypeError(f"{text!r}: no such file")
    if why is not None:
        raise argparse.ArgumentTypeError(f"{text!r} {why}")
    return p


def contract_file(text: str) -> Path:
    """A contract path, or the name of a shipped contract (as pytest's --contract takes it)."""
    from streamparity.contract.shipped import contract_by_name_or_path

    if not text.strip():
        raise argparse.ArgumentTypeError("an empty contract; give a path or a shipped contract's name")
    return existing_file(str(contract_by_name_or_path(text)))


def regex(text: str) -> str:
    """An argparse type: a valid regular expression."""
    import re

    try:
        re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid regular expression ({e})") from None
    return text



def non_negative_float(text: str) -> float:
    """An argparse type: a finite float >= 0."""
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return v
