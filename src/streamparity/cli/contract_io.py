"""Writing a drafted or imported contract: model paths made relative to the file, an atomic write, a summary."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from streamparity.atomic import atomic_write_text
from streamparity.contract.loading import validate_document
from streamparity.contract.markers import undecided_fields


def write_contract(doc: dict[str, Any], out: Path) -> list[tuple[str, str]]:
    """Validate against the schema, write, and return the fields still marked TODO."""
    model = doc.get("model", {})
    for key in ("onnx", "nemo_config", "reference"):
        if key in model and Path(model[key]).exists():
            model[key] = os.path.relpath(Path(model[key]).resolve(), out.resolve().parent)
    validate_document(doc, str(out))
    atomic_write_text(out, json.dumps(doc, indent=2) + "\n")
    return undecided_fields(doc)


def print_summary(out: Path, todos: list[tuple[str, str]]) -> None:
    print(f"wrote {out}")
    if todos:
        print(f"{len(todos)} field(s) marked TODO; the loader refuses the contract until each is filled in:")
        for path, text in todos:
            print(f"  {path}: {text}")
    else:
        print("no TODO fields: check it with `streamparity check-contract " + str(out) + "`")
