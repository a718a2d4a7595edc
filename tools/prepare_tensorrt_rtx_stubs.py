#!/usr/bin/env python3
"""Generate mypy stubs for the installed TensorRT-RTX (``tensorrt_rtx``), which ships none (no py.typed, no .pyi,
no stubs package), so that the build and run code is type-checked against the RTX API too.

    python tools/prepare_tensorrt_rtx_stubs.py OUTPUT [--as-tensorrt]   # then: MYPYPATH=OUTPUT mypy --strict ...

mypy's own ``stubgen`` reads the pybind11 module (about 3,000 lines, seconds); two defects are repaired and
printed: ``add_scale_nd`` has a parameter without a default after defaulted ones (a syntax error), and
``IHostMemory`` lacks ``__buffer__`` although plans are buffers (``bytes(memoryview(plan))``).  With
``--as-tensorrt`` a ``tensorrt`` package re-exporting ``tensorrt_rtx`` is written beside them: the code's
``import tensorrt as trt`` then checks against the RTX API (streamparity binds one module to ``trt`` at run time).

Exit status 0 on success, 2 when tensorrt_rtx is not installed, 1 when stubgen fails or a stub does not parse.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

MODULES = ("tensorrt_rtx", "tensorrt_rtx_bindings", "tensorrt_rtx_bindings.tensorrt_rtx")
REPAIRS = (
    (re.compile(r"(def add_scale_nd\(.*power: Weights = \.\.\., channel_axis: typing\.SupportsInt)\)"),
     r"\1 = ...)", "add_scale_nd: default for channel_axis (non-default parameter after defaults)"),
    (re.compile(r"^class IHostMemory:\n", re.M),
     "class IHostMemory:\n    def __buffer__(self, flags: int, /) -> memoryview: ...\n",
     "IHostMemory: __buffer__ (plans support the buffer protocol)"),
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output", type=Path)
    ap.add_argument("--as-tensorrt", action="store_true", help="also write a tensorrt shim re-exporting tensorrt_rtx")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("tensorrt_rtx") is None:
        print("tensorrt_rtx is not installed (pip install -e '.[rtx]')", file=sys.stderr)
        return 2
    out: Path = args.output
    shutil.rmtree(out, ignore_errors=True)
    stubgen = Path(sys.executable).with_name("stubgen")  # mypy's (compiled: no `python -m mypy.stubgen`)
    if not stubgen.exists():
        stubgen = Path(shutil.which("stubgen") or "stubgen")
    cmd = [str(stubgen), "-o", str(out)]
    for m in MODULES:
        cmd += ["-m", m]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        print(r.stdout + r.stderr, file=sys.stderr)
        return 1
    bindings = out / "tensorrt_rtx_bindings" / "tensorrt_rtx.pyi"
    text = bindings.read_text("utf-8")
    for pattern, repl, what in REPAIRS:
        text, n = pattern.subn(repl, text, count=1)
        print(f"{'repaired' if n else 'not needed'}: {what}")
    bindings.write_text(text, "utf-8")
    if args.as_tensorrt:
        shim = out / "tensorrt"
        shim.mkdir()
        (shim / "__init__.pyi").write_text("from tensorrt_rtx import *\n\n__version__: str\n", "utf-8")
    for f in sorted(out.rglob("*.pyi")):
        try:
            ast.parse(f.read_text("utf-8"), str(f))
        except SyntaxError as e:
            print(f"{f}: does not parse after the repairs: {e}", file=sys.stderr)
            return 1
    print(f"stubs in {out}: {sum(len(f.read_text('utf-8').splitlines()) for f in out.rglob('*.pyi'))} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
