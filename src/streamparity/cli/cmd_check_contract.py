"""``streamparity check-contract``: every violation of a contract, each with its JSON path.

Schema violations are all listed, then the fields still marked TODO, then (when those are clean) the
semantic checks the loader makes.  Exit 2 if anything is wrong, 0 and "ok" otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from streamparity.cli.validators import contract_file
from streamparity.errors import ContractError


def register(sub: Any) -> None:
    p = sub.add_parser("check-contract", help="list every violation in a contract (exit 2 if any)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("contract", type=contract_file, metavar="PATH|NAME",
                   help="contract JSON, or a shipped contract's name")
    p.set_defaults(func=run)


def violations(path: Path) -> list[str]:
    from streamparity.contract.loading import load_contract, schema_violations
    from streamparity.contract.markers import undecided_fields

    try:
        doc = json.loads(path.read_text("utf-8"))
    except OSError as e:
        raise ContractError(f"cannot read contract: {e.strerror}", file=str(path)) from None
    except json.JSONDecodeError as e:
        raise ContractError(f"invalid JSON: {e.msg}", file=str(path), line=e.lineno) from None
    found = [f"{p}: {m}" for p, m in schema_violations(doc)]
    found += [f"{p}: undecided: {t}" for p, t in undecided_fields(doc)]
    if not found:
        try:
            load_contract(path)
        except ContractError as e:
            found.append(f"{e.field or '$'}: {e.message}")
    return found


def run(args: argparse.Namespace) -> int:
    found = violations(args.contract)
    for line in found:
        print(f"{args.contract}: {line}", file=sys.stderr)
    if found:
        print(f"{len(found)} violation(s)", file=sys.stderr)
        return 2
    print("ok")
    return 0
