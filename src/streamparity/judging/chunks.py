"""One chunk judged: its outputs compared with the reference and the contract invariants checked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from streamparity.contract.model import ROLE_CACHE_LEN, ROLE_ENCODED, Contract
from streamparity.judging.invariants import check_outputs
from streamparity.judging.metrics import compare_output, verdict
from streamparity.reference.reader import ChunkRecord
from streamparity.results.records import ChunkResult


def _ints(a: Any) -> list[int]:
    return [int(x) for x in np.asarray(a).reshape(-1)]


def judge_chunk(contract: Contract, rec: ChunkRecord, outputs: Mapping[str, np.ndarray], *, mode: str,
                backend: str, precision: str, cache_len_in: np.ndarray, stream_position: int | None,
                inputs: Mapping[str, np.ndarray] | None, device: str = "cpu",
                unfetched: tuple[str, ...] = ()) -> ChunkResult:
    """Compare one chunk's outputs with the reference and check the contract invariants.  `unfetched`:
    outputs deliberately left on the device this chunk (caches where the reference stores none)."""
    res = ChunkResult(chunk=rec.chunk, mode=mode, backend=backend, precision=precision, device=device,
                      stream_position=stream_position, checked_inputs=inputs is not None)
    res.violations = check_outputs(contract, rec.chunk, outputs, cache_len_in=cache_len_in, inputs=inputs,
                                   stream_position=stream_position, allow_missing=unfetched)
    len_out = contract.output_by_role(ROLE_CACHE_LEN).name
    ref_len = rec.outputs.get(len_out)
    expected_len = int(np.asarray(ref_len).reshape(-1)[0]) if ref_len is not None else None
    for name in contract.compared_outputs():
        if name not in rec.outputs or name not in outputs:
            continue
        m = compare_output(contract, name, outputs[name], rec.outputs[name], chunk=rec.chunk, precision=precision,
                           cache_len=expected_len)
        res.metrics[name] = m
        res.verdicts[name] = verdict(m, contract.tolerance(name, precision))
    res.cache_len_in = _ints(cache_len_in)
    if len_out in outputs:
        res.cache_len_out = _ints(outputs[len_out])
    enc = contract.output_by_role(ROLE_ENCODED).name
    if enc in outputs:
        res.encoded = np.asarray(outputs[enc]).copy()
    return res
