"""Contract invariants, checked on every chunk for runtimes and references alike.

The checklist's "cache_len monotonic (>=)" assertion passed while ``cache_last_channel_len``
stayed 0 on every chunk.  Here the cache length must follow the contract's exact progression.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamparity.contract.model import (
    ROLE_CACHE_CHANNEL,
    ROLE_CACHE_LEN,
    ROLE_CACHE_TIME,
    ROLE_ENCODED,
    ROLE_ENCODED_LEN,
    Contract,
)


@dataclass(frozen=True)
class Violation:
    chunk: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"chunk {self.chunk}, {self.field}: {self.message}"


@functools.cache
def _dtype(name: str) -> np.dtype[Any]:
    """The contract's dtype name as a numpy dtype: compared on every chunk, where ``a.dtype.name`` costs ~10x (the
    name decides where they differ: a byte order)."""
    return np.dtype(name)


def _nonfinite(a: np.ndarray) -> int:
    """NaN/Inf values of a float array (one isfinite pass where there are none)."""
    if a.dtype.kind != "f":
        return 0
    finite = np.isfinite(a)
    return 0 if finite.all() else int(a.size - np.count_nonzero(finite))


def _scalar_per_batch(a: np.ndarray) -> list[int]:
    return [int(x) for x in np.asarray(a).reshape(-1)]


def check_outputs(
    contract: Contract,
    chunk: int,
    outputs: Mapping[str, np.ndarray],
    *,
    cache_len_in: np.ndarray | None,
    inputs: Mapping[str, np.ndarray] | None = None,
    stream_position: int | None = None,
    allow_missing: tuple[str, ...] = (),
) -> list[Violation]:
    """Check one chunk's outputs against the contract.

    `stream_position`, when given, is the chunk's index in an unbroken stream: the input cache
    length must then be the rule's value at that position (a stream whose cache is reset fails).
    """
    out: list[Violation] = []
    s = contract.streaming
    batch: int | None = None
    if inputs is not None:
        audio = inputs.get(contract.input_by_role("audio").name)
        if audio is not None:
            batch = int(np.asarray(audio).shape[0])
    for spec in contract.outputs:
        if spec.name not in outputs:
            if spec.name not in allow_missing:
                out.append(Violation(chunk, spec.name, "output is missing"))
            continue
        a = np.asarray(outputs[spec.name])
        if a.dtype != _dtype(spec.dtype) and a.dtype.name != spec.dtype:
            out.append(Violation(chunk, spec.name, f"dtype {a.dtype.name}, contract says {spec.dtype}"))
        if a.ndim != len(spec.shape):
            out.append(Violation(chunk, spec.name, f"rank {a.ndim} (shape {list(a.shape)}), contract says "
                                                   f"{spec.shape_str()}"))
            continue
        for axis, (got, want) in enumerate(zip(a.shape, spec.shape)):
            if isinstance(want, int) and got != want:
                out.append(Violation(chunk, spec.name,
                                     f"dim {axis} is {got}, contract says {want} (shape {list(a.shape)} vs "
                                     f"{spec.shape_str()})"))
            elif want == "B" and batch is not None and got != batch:
                out.append(Violation(chunk, spec.name, f"batch dim {axis} is {got}, input batch is {batch}"))
        bad = _nonfinite(a)
        if bad:
            out.append(Violation(chunk, spec.name, f"{bad} non-finite values (NaN/Inf)"))
        if spec.role == ROLE_ENCODED and a.ndim >= 1 and a.shape[-1] != s.valid_out_len:
            out.append(Violation(chunk, spec.name, f"time dim {a.shape[-1]} != valid_out_len {s.valid_out_len}"))
        if spec.role == ROLE_ENCODED_LEN:
            vals = _scalar_per_batch(a)
            if any(v != s.valid_out_len for v in vals):
                out.append(Violation(chunk, spec.name, f"encoded lengths {vals} != valid_out_len {s.valid_out_len}"))
        if spec.role in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME) and inputs is not None and spec.feeds \
                and spec.feeds in inputs:
            want_shape = np.asarray(inputs[spec.feeds]).shape
            if s.cache_output_time_dim == "fixed" and a.shape != want_shape:
                out.append(Violation(chunk, spec.name, f"shape {list(a.shape)} differs from input {spec.feeds} "
                                                       f"{list(want_shape)} (cache_output_time_dim=fixed)"))
    # cache length progression
    len_spec = contract.output_by_role(ROLE_CACHE_LEN)
    rule = s.cache_len
    if len_spec.name in outputs and cache_len_in is not None:
        cin = _scalar_per_batch(cache_len_in)
        cout = _scalar_per_batch(outputs[len_spec.name])
        if len(cin) != len(cout):
            out.append(Violation(chunk, len_spec.name, f"{len(cout)} values for {len(cin)} streams"))
        for b, (i, o) in enumerate(zip(cin, cout)):
            want = rule.expected_out(i)
            if o != want:
                stuck = " (stuck: the streaming cache does not carry over)" if o == i else ""
                out.append(Violation(chunk, len_spec.name,
                                     f"batch {b}: cache length {i} -> {o}, contract rule {rule.rule} "
                                     f"min(in + {rule.step}, {rule.max}) requires {want}{stuck}"))
        if stream_position is not None:
            want_in, _ = rule.expected_at(stream_position)
            for b, i in enumerate(cin):
                if i != want_in:
                    out.append(Violation(chunk, contract.input_by_role(ROLE_CACHE_LEN).name,
                                         f"batch {b}: input cache length {i} at stream position {stream_position}, "
                                         f"an unbroken stream has {want_in} (cache reset or skipped chunk?)"))
    return out


def check_inputs(contract: Contract, chunk: int, inputs: Mapping[str, np.ndarray],
                 *, require_caches: bool) -> list[Violation]:
    out: list[Violation] = []
    s = contract.streaming
    for spec in contract.inputs:
        if spec.name not in inputs:
            if spec.role in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME) and not require_caches:
                continue
            out.append(Violation(chunk, spec.name, "input is missing"))
            continue
        a = np.asarray(inputs[spec.name])
        if a.dtype != _dtype(spec.dtype) and a.dtype.name != spec.dtype:
            out.append(Violation(chunk, spec.name, f"dtype {a.dtype.name}, contract says {spec.dtype}"))
        if a.ndim != len(spec.shape):
            out.append(Violation(chunk, spec.name, f"rank {a.ndim}, contract says {spec.shape_str()}"))
            continue
        for axis, (got, want) in enumerate(zip(a.shape, spec.shape)):
            if isinstance(want, int) and got != want:
                out.append(Violation(chunk, spec.name, f"dim {axis} is {got}, contract says {want}"))
        if spec.role == "audio":
            want_t = s.frames_for(chunk)
            if a.shape[-1] != want_t:
                out.append(Violation(chunk, spec.name, f"{a.shape[-1]} frames, contract schedule says {want_t}"))
        bad = _nonfinite(a)
        if bad:
            out.append(Violation(chunk, spec.name, f"{bad} non-finite values (NaN/Inf)"))
    return out
