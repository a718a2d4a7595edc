"""``streamparity serve-ort`` that dies on a chosen closed-loop step: a runtime fault for the plugin tests.

    python faulty_serve.py --crash-at-step=7 --onnx=MODEL
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from streamparity.backends.external.server import serve
from streamparity.cli.cmd_serve_ort import OrtHandler
from streamparity.contract.loading import load_contract
from streamparity.contract.shipped import default_contract


class Faulty(OrtHandler):
    crash_at = -1
    steps = 0

    def step(self, stream, inputs, fetch_caches=None):  # type: ignore[no-untyped-def]
        if self.steps == self.crash_at:
            print(f"faulty_serve: segfault on step {self.steps}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGSEGV)
        self.steps += 1
        return super().step(stream, inputs, fetch_caches)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--crash-at-step", type=int, default=-1)
    a = ap.parse_args()
    h = Faulty(load_contract(default_contract()), a.onnx, "fp32", 1)
    h.crash_at = a.crash_at_step
    return serve(h)


if __name__ == "__main__":
    raise SystemExit(main())
