"""``streamparity serve-ort --onnx=MODEL --precision=fp32``: ONNX Runtime as an out-of-process runtime.

Speaks the runtime protocol (the README's runtime-protocol section) on stdin/stdout, so that the suite can judge it with
``--runtime=ort:fp32='streamparity serve-ort --onnx=MODEL --precision=fp32'``: the reference implementation
of the runtime side, and the proof that a served runtime gets the verdicts of the in-process one.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from streamparity.backends.base import Stream
from streamparity.backends.external.server import RuntimeHandler, serve
from streamparity.contract.model import ROLE_AUDIO, ROLE_CACHE_LEN, ROLE_LENGTH, Contract


def register(sub: Any) -> None:
    p = sub.add_parser("serve-ort", help="serve ONNX Runtime over the runtime protocol (stdin/stdout)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from streamparity.cli.validators import existing_file

    p.add_argument("--onnx", type=existing_file, required=True, metavar="PATH", help="ONNX model to serve")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="precision (default: fp32)")
    p.add_argument("--contract", default=None, metavar="PATH|NAME",
                   help="contract naming the model's I/O (default: tiny-parakeet, the embedded model)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default: 1)")
    p.set_defaults(func=run)


class OrtHandler(RuntimeHandler):
    def __init__(self, contract: Contract, onnx: Path, precision: str, threads: int) -> None:
        from streamparity.backends.ort import OrtBackend

        self.contract = contract
        self.backend = OrtBackend(contract, onnx, precision=precision, device="cpu", cache_dir=None,
                                  threads=threads)
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.len_name = contract.input_by_role(ROLE_CACHE_LEN).name

    def describe(self) -> dict[str, Any]:
        d = self.backend.describe()
        return {"name": "streamparity serve-ort", "version": d.get("onnxruntime", "?"),
                "precision": self.backend.precision, "device": "cpu",
                "info": {"model": d.get("model"), "providers": d.get("providers")}}

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.backend.run(inputs)

    def open(self, state: Mapping[str, np.ndarray], fetch_caches: bool) -> int:
        sid = self.next_id
        self.next_id += 1
        self.streams[sid] = self.backend.open_stream(state, fetch_caches=fetch_caches)
        return sid

    def _stream(self, sid: int) -> Stream:
        if sid not in self.streams:
            raise KeyError(f"no open stream {sid}")
        return self.streams[sid]

    def step(self, stream: int, inputs: Mapping[str, np.ndarray], fetch_caches: bool | None = None
             ) -> dict[str, np.ndarray]:
        s = self._stream(stream)
        c = self.contract
        out = s.step(inputs[c.input_by_role(ROLE_AUDIO).name], inputs[c.input_by_role(ROLE_LENGTH).name],
                     fetch_caches=fetch_caches)
        out[self.len_name] = s.last_cache_len_in
        return out

    def state(self, stream: int) -> dict[str, np.ndarray]:
        return self._stream(stream).state_snapshot()

    def close(self, stream: int) -> None:
        s = self.streams.pop(stream, None)
        if s is not None:
            s.close()


def run(args: argparse.Namespace) -> int:
    from streamparity.contract.loading import load_contract
    from streamparity.contract.shipped import contract_by_name_or_path, default_contract

    contract = load_contract(contract_by_name_or_path(args.contract) if args.contract else default_contract())
    return serve(OrtHandler(contract, args.onnx, args.precision, args.threads))
