"""Whether a contract's tolerances were measured (``streamparity calibrate``) or are a drafted placeholder.

A drafted contract marks each placeholder tolerance by starting its ``reason`` with
:data:`NEEDS_CALIBRATION`; calibration replaces the reason with the measurement it made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from streamparity.contract.model import Contract

NEEDS_CALIBRATION = "needs calibration"


def placeholder_reason(detail: str) -> str:
    return f"{NEEDS_CALIBRATION}: {detail}"


def is_placeholder(reason: str) -> bool:
    return reason.strip().lower().startswith(NEEDS_CALIBRATION)


def uncalibrated(contract: Contract) -> list[str]:
    """``output.precision`` of every tolerance that still holds a drafted placeholder."""
    return [f"{out}.{prec}" for out, per in contract.tolerances.items() for prec, t in per.items()
            if is_placeholder(t.reason)]


def uncalibrated_doc(doc: Mapping[str, Any]) -> list[str]:
    tols = doc.get("tolerances", {})
    return [f"{out}.{prec}" for out, per in tols.items() for prec, t in per.items()
            if is_placeholder(str(t.get("reason", "")))]
