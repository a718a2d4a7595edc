"""``streamparity import-contract``: turn the checklist project's contract into a streamparity contract.

Reads its encoder_streaming.contract.json or the encoder.streaming_io section of its whole-model
contract.  What maps is mapped (with provenance); each decision the source cannot make (cache padding
side, cache_drop_size, the 0.1 cache_last_time waiver, the cache-length step, missing tolerances) is
a "TODO: ..." field the loader refuses until resolved.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from streamparity.errors import ContractError


def register(sub: Any) -> None:
    from streamparity.cli.validators import existing_file

    p = sub.add_parser("import-contract", help="import the checklist project's contract format",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", type=existing_file, metavar="SRC", help="the checklist's contract JSON")
    p.add_argument("--out", type=Path, required=True, metavar="PATH", help="contract JSON to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from streamparity.cli.contract_io import print_summary, write_contract
    from streamparity.contract.checklist_import import import_checklist

    try:
        doc = json.loads(args.source.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise ContractError(f"invalid JSON: {e.msg}", file=str(args.source), line=e.lineno) from None
    print_summary(args.out, write_contract(import_checklist(doc, str(args.source)), args.out))
    return 0
