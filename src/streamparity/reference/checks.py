"""Sanity checks on the reference itself, run before any runtime is judged.

A reference generator can be wrong (the checklist's was: its cache never carried over, and
the parity checks agreed with it).  A reference is rejected when any chunk breaks the contract
invariants, when its caches do not chain (inputs of chunk k == cache outputs of chunk k-1),
when its cache length does not follow the contract progression from chunk 0, or when its
streaming outputs disagree with the offline full-context reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamparity.backends.base import pad_cache_to
from streamparity.contract.model import ROLE_CACHE_LEN, ROLE_ENCODED, Contract
from streamparity.errors import ReferenceFormatError, ReferenceInvalid, StreamparityError
from streamparity.judging.invariants import Violation, check_inputs, check_outputs
from streamparity.reference.reader import ReferenceFile

CHAIN_ATOL = 1e-6


@dataclass
class OfflineCheck:
    compared_chunks: int
    skipped_chunks: int
    max_abs: float
    worst_chunk: int
    atol: float
    passed: bool
    total_chunks: int = 0
    """chunks of the stream; compared + skipped (warm-up) + beyond_end = total."""
    beyond_end: int = 0
    """chunks past the end of the offline output: none can be compared (more than one rejects the offline file)."""
    offline_frames: int = 0
    stream_frames: int = 0

    def coverage(self) -> str:
        """How many chunks the comparison covered and why the others were not, in one line."""
        why = [f"{self.skipped_chunks} warm-up chunk(s), gates.offline_warmup_chunks"] if self.skipped_chunks else []
        if self.beyond_end:
            why.append(f"{self.beyond_end} chunk(s) past the end of the offline output ({self.offline_frames} "
                       f"frames, the stream has {self.stream_frames})")
        return (f"offline comparison covered {self.compared_chunks} of {self.total_chunks} chunks"
                + (f" (left out: {'; '.join(why)})" if why else ""))

    def describe(self) -> str:
        if self.passed:
            return f"{self.coverage()}: max abs {self.max_abs:.3g} at chunk {self.worst_chunk} <= {self.atol:g}"
        if self.beyond_end > 1:
            return (f"the offline reference is shorter than the stream: {self.coverage()}; an offline output of "
                    "the same audio covers every chunk (is it the companion of another reference?)")
        if self.compared_chunks == 0:
            return f"{self.coverage()}: nothing to compare"
        return (f"streaming outputs differ from the offline reference: max abs {self.max_abs:.3g} at chunk "
                f"{self.worst_chunk} > {self.atol:g} ({self.coverage()})")


@dataclass
class ReferenceReport:
    path: str
    chunks: int
    functional_chunks: list[int]
    violations: list[Violation] = field(default_factory=list)
    offline: OfflineCheck | None = None
    format_error: str | None = None
    """The first chunk that could not be read (bad base64, shape, dtype, ...): checking stopped there."""

    @property
    def ok(self) -> bool:
        return not self.format_error and not self.violations and (self.offline is None or self.offline.passed)

    def summary(self, limit: int = 8) -> str:
        lines = [f"reference {self.path} is invalid:"]
        if self.format_error:
            lines.append(f"  unreadable: {self.format_error}")
        for v in self.violations[:limit]:
            lines.append(f"  {v}")
        if len(self.violations) > limit:
            lines.append(f"  ... and {len(self.violations) - limit} more violations")
        if self.offline is not None and not self.offline.passed:
            lines.append(f"  {self.offline.describe()}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "chunks": self.chunks,
            "functional_chunks": len(self.functional_chunks),
            "violations": [str(v) for v in self.violations],
            "format_error": self.format_error,
            "offline": None if self.offline is None else {**vars(self.offline), "coverage": self.offline.coverage()},
            "ok": self.ok,
        }


def check_reference(contract: Contract, ref: ReferenceFile, *, offline_path: Path | None = None) -> ReferenceReport:
    """Every chunk's invariants, cache chaining and, where given, agreement with the offline reference.  A chunk
    that cannot be decoded ends the check with ``format_error`` set (file, line, chunk and field named)."""
    report = ReferenceReport(path=str(ref.path), chunks=len(ref), functional_chunks=[])
    try:
        return _check_chunks(contract, ref, report, offline_path)
    except StreamparityError as e:
        report.format_error = str(e)
        return report


def _check_chunks(contract: Contract, ref: ReferenceFile, report: ReferenceReport,
                  offline_path: Path | None) -> ReferenceReport:
    feeds = contract.cache_feeds()
    len_in_name = contract.input_by_role(ROLE_CACHE_LEN).name
    len_out_name = contract.output_by_role(ROLE_CACHE_LEN).name
    enc_name = contract.output_by_role(ROLE_ENCODED).name
    pad = contract.streaming.cache_output_time_dim == "dynamic_pad_to_input"
    prev_out: dict[str, np.ndarray] | None = None
    encoded: list[np.ndarray] = []
    layout = ref.header.get("cache_layout")
    if layout is not None and layout != contract.cache_layout and ref.chunk_ids:
        report.violations.append(Violation(ref.chunk_ids[0], "header.cache_layout",
                                           f"the reference says its caches are {layout!r}, the contract "
                                           f"{contract.cache_layout!r}"))
    known = {"inputs": {t.name for t in contract.inputs}, "outputs": {t.name for t in contract.outputs}}
    for pos, rec in enumerate(ref):
        for section, tensors in (("inputs", rec.inputs), ("outputs", rec.outputs)):
            extra = sorted(set(tensors) - known[section])
            if extra:  # another model's reference, or a renamed tensor: never silently ignored
                report.violations.append(Violation(rec.chunk, f"{section}.{extra[0]}",
                                                   f"not a tensor of the contract ({len(extra)} such: "
                                                   f"{', '.join(extra[:4])})"))
        has_caches = all(n in rec.inputs for n in feeds.values())
        if has_caches:
            report.functional_chunks.append(rec.chunk)
        report.violations += check_inputs(contract, rec.chunk, rec.inputs, require_caches=False)
        if len_in_name not in rec.inputs:
            prev_out = dict(rec.outputs)
            continue
        # cache tensors may be omitted on chunks stored for the closed loop only
        optional = () if has_caches else tuple(n for n in feeds if n != len_out_name)
        report.violations += check_outputs(contract, rec.chunk, rec.outputs, cache_len_in=rec.inputs[len_in_name],
                                           inputs=rec.inputs if has_caches else None, stream_position=pos,
                                           allow_missing=optional)
        # chaining: this chunk's cache inputs are the previous chunk's cache outputs
        if prev_out is not None:
            for out_name, in_name in feeds.items():
                if out_name not in prev_out or in_name not in rec.inputs:
                    continue
                want = np.asarray(prev_out[out_name])
                got = np.asarray(rec.inputs[in_name])
                if pad and want.shape != got.shape:
                    try:
                        want = pad_cache_to(want, got.shape, name=out_name, side=contract.streaming.cache_pad_side)
                    except ValueError as e:
                        report.violations.append(Violation(rec.chunk, in_name, str(e)))
                        continue
                if want.shape != got.shape:
                    report.violations.append(Violation(rec.chunk, in_name, f"shape {list(got.shape)} does not chain "
                                                       f"from chunk {rec.chunk - 1}'s {out_name} {list(want.shape)}"))
                elif want.dtype.kind in "iu":
                    if not np.array_equal(want, got):
                        report.violations.append(Violation(
                            rec.chunk, in_name, f"{got.reshape(-1).tolist()} but chunk {rec.chunk - 1} produced "
                            f"{want.reshape(-1).tolist()}: the cache was not carried over (reset?)"))
                elif np.array_equal(want, got):  # a chained reference: bit for bit (NaN is not equal: below)
                    pass
                else:
                    diff = float(np.max(np.abs(want.astype(np.float64) - got))) if want.size else 0.0
                    if not diff <= CHAIN_ATOL:
                        report.violations.append(Violation(
                            rec.chunk, in_name, f"differs from chunk {rec.chunk - 1}'s {out_name} by {diff:.3g}: "
                            "the cache was not carried over (reset?)"))
        prev_out = dict(rec.outputs)
        if enc_name in rec.outputs:
            encoded.append(np.asarray(rec.outputs[enc_name]))
    if offline_path is not None:
        report.offline = check_offline(contract, encoded, offline_path)
    return report


def load_offline_encoded(offline_path: Path) -> np.ndarray:
    try:
        with np.load(offline_path) as z:
            return np.asarray(z["encoded"])
    except (OSError, KeyError, ValueError) as e:
        raise ReferenceFormatError(f"cannot read offline reference ({e})", file=str(offline_path),
                                   field="encoded") from None


def check_offline(contract: Contract, encoded: list[np.ndarray], offline_path: Path) -> OfflineCheck:
    """Streaming outputs, concatenated over time, must match the offline full-context encoder output
    after the contract's warm-up (the first chunk is zero-padded, which takes a while to wash out)."""
    try:
        return compare_offline(contract, encoded, load_offline_encoded(offline_path))
    except ReferenceFormatError as e:
        if e.file is not None:
            raise
        raise ReferenceFormatError(e.message, file=str(offline_path), field=e.field) from None


def compare_offline(contract: Contract, encoded: list[np.ndarray], offline: np.ndarray) -> OfflineCheck:
    """The comparison itself, on arrays (the generator runs it before writing the offline file)."""
    skip = contract.gates.offline_warmup_chunks
    atol = contract.gates.offline_atol if contract.gates.offline_atol is not None else 1e-4
    total = len(encoded)
    if not encoded:
        return OfflineCheck(0, 0, float("inf"), -1, atol, False)
    t = encoded[0].shape[-1]
    if offline.ndim != encoded[0].ndim or offline.shape[:-1] != encoded[0].shape[:-1]:
        raise ReferenceFormatError(f"offline output has shape {list(offline.shape)}, the stream's encoder output "
                                   f"{list(encoded[0].shape[:-1])} + [frames]: not the same batch and features",
                                   field="encoded")
    frames = int(offline.shape[-1])
    worst_abs, worst_chunk, n, beyond = 0.0, -1, 0, 0
    for k, enc in enumerate(encoded):
        if k < skip:
            continue
        lo = k * t
        if lo + t > frames:
            beyond = total - k
            break
        d = np.abs(offline[..., lo:lo + t].astype(np.float64) - enc)
        m = float(d.max()) if np.all(np.isfinite(d)) else float("inf")
        n += 1
        if m > worst_abs or not np.isfinite(m):
            worst_abs, worst_chunk = m, k
    # the offline encoder may end a partial chunk early; a whole chunk missing means another audio
    passed = n > 0 and worst_abs <= atol and beyond <= 1
    return OfflineCheck(n, min(skip, total), worst_abs, worst_chunk, atol, passed, total_chunks=total,
                        beyond_end=beyond, offline_frames=frames, stream_frames=total * t)


def require_valid(contract: Contract, ref: ReferenceFile, *, offline_path: Path | None = None) -> ReferenceReport:
    report = check_reference(contract, ref, offline_path=offline_path)
    if not report.ok:
        first = report.violations[0] if report.violations else None
        raise ReferenceInvalid(report.summary(), file=str(ref.path), chunk=first.chunk if first else None,
                               field=first.field if first else "offline")
    return report
