"""``streamparity check-reference``: validate a reference JSONL, build its index, measure the reader.

Validation: every line parses (format, dtypes, shapes, base64), no float tensor holds NaN/Inf,
and, with a contract, the contract invariants and cache chaining hold.  Throughput: the same
chunks are parsed by streamparity's reader and by ``json.loads`` + base64 decode in this run.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamparity.contract.loading import load_contract
from streamparity.contract.model import Contract
from streamparity.contract.shipped import contract_named_in
from streamparity.errors import ReferenceFormatError, ReferenceInvalid
from streamparity.reference.fastparse import DECODER_NAME, parse_chunk_json, parse_chunk_line
from streamparity.reference.reader import ReferenceFile


def register(sub: Any) -> None:
    p = sub.add_parser("check-reference", help="validate a reference JSONL, index it, measure read throughput",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from streamparity.cli.validators import contract_file

    p.add_argument("reference", type=Path, metavar="PATH", help="reference JSONL")
    p.add_argument("--contract", type=contract_file, default=None, metavar="PATH|NAME",
                   help="contract JSON to check the invariants against (default: the contract under contracts/ "
                        "whose name the reference header names; format checks only when there is none)")
    p.add_argument("--bench-chunks", default="8", metavar="N|all",
                   help="chunks (spread evenly) to time with both readers (default: 8; 'all' for every chunk)")
    p.add_argument("--no-bench", action="store_true", help="skip the throughput comparison (default: run it)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON")
    p.set_defaults(func=run)


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


@dataclass
class Bench:
    chunks: int = 0
    bytes: int = 0
    ours_s: float = 0.0
    json_s: float = 0.0
    ours_peak_rss_mb: float = 0.0
    after_json_peak_rss_mb: float = 0.0

    @property
    def ours_mb_s(self) -> float:
        return self.bytes / 1e6 / self.ours_s if self.ours_s > 0 else float("inf")

    @property
    def json_mb_s(self) -> float:
        return self.bytes / 1e6 / self.json_s if self.json_s > 0 else float("inf")

    @property
    def ratio(self) -> float:
        return self.json_s / self.ours_s if self.ours_s > 0 else float("inf")


@dataclass
class Figures:
    path: str
    chunks: int
    first: int
    last: int
    bytes: int
    largest_line: int
    index_s: float
    index_source: str
    validate_s: float
    contract: str | None
    random_access_s: float
    bench: Bench | None = None
    offline: str | None = None
    offline_coverage: str | None = None
    peak_rss_mb: float = 0.0
    start_rss_mb: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        if self.bench is not None:
            d["bench"] = {**vars(self.bench), "ours_mb_s": self.bench.ours_mb_s, "json_mb_s": self.bench.json_mb_s,
                          "ratio": self.bench.ratio}
        return d


def _nonfinite(rec_inputs: dict[str, np.ndarray], rec_outputs: dict[str, np.ndarray], file: str, line: int,
               chunk: int) -> None:
    for section, tensors in (("inputs", rec_inputs), ("outputs", rec_outputs)):
        for name, a in tensors.items():
            if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
                bad = int((~np.isfinite(a)).sum())
                first = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
                raise ReferenceInvalid(f"{bad} non-finite values (NaN/Inf) of {a.size}, first at index {first}",
                                       file=file, line=line, chunk=chunk, field=f"{section}.{name}")


def _bench_ids(ids: list[int], spec: str) -> list[int]:
    if spec == "all":
        return ids
    try:
        n = int(spec)
    except ValueError:
        raise ReferenceFormatError(f"--bench-chunks must be a number or 'all', got {spec!r}") from None
    if n <= 0 or n >= len(ids):
        return ids
    picks = np.linspace(0, len(ids) - 1, n).round().astype(int)
    return [ids[i] for i in sorted(set(picks.tolist()))]


def bench(ref: ReferenceFile, ids: list[int]) -> Bench:
    """Parse the same lines with our reader, then with json.loads + decode; bytes are read before timing."""
    b = Bench(chunks=len(ids))
    file = str(ref.path)
    with ref.path.open("rb") as f:
        for k in ids:
            e = ref._entry(k)
            f.seek(e.offset)
            line = f.read(e.length)
            b.bytes += len(line)
            t = time.perf_counter()
            parse_chunk_line(line, file=file, line_no=e.line, chunk=e.chunk)
            b.ours_s += time.perf_counter() - t
            del line
        b.ours_peak_rss_mb = _peak_rss_mb()
        for k in ids:
            e = ref._entry(k)
            f.seek(e.offset)
            line = f.read(e.length)
            t = time.perf_counter()
            parse_chunk_json(line, file=file, line_no=e.line, chunk=e.chunk)
            b.json_s += time.perf_counter() - t
            del line
        b.after_json_peak_rss_mb = _peak_rss_mb()
    return b


def check(path: Path, contract_path: Path | None, bench_spec: str | None) -> Figures:
    base_rss = _peak_rss_mb()
    sidecar = path.with_name(path.name + ".idx.json")
    before = sidecar.stat().st_mtime_ns if sidecar.is_file() else None
    t = time.perf_counter()
    ref = ReferenceFile(path)
    index_s = time.perf_counter() - t
    after = sidecar.stat().st_mtime_ns if sidecar.is_file() else None
    if before is not None and before == after:
        source = f"loaded from {sidecar.name}"
    else:
        source = "built" + (f", written to {sidecar.name}" if after is not None else " (kept in memory)")
    contract: Contract | None = None
    offline: Path | None = None
    coverage: str | None = None
    cpath = contract_path or contract_named_in(dict(ref.header))
    notes: list[str] = []
    if cpath is not None:
        contract = load_contract(cpath)
    else:
        notes.append(f"no contract named {ref.header.get('contract')!r} under contracts/: format and finiteness "
                     "checks only (pass --contract)")
    # validation pass: every chunk through our reader, non-finite values, then the contract checks
    from streamparity.drivers.progress import stderr_progress

    t = time.perf_counter()
    file = str(ref.path)
    bar = stderr_progress("check-reference: reading", len(ref))
    ts = t
    for rec in ref:
        _nonfinite(rec.inputs, rec.outputs, file, rec.line, rec.chunk)
        now = time.perf_counter()
        bar(rec.chunk, (now - ts) * 1e3)  # read + decode + check of one chunk
        ts = now
    bar.done()
    if contract is not None:
        from streamparity.reference.checks import check_reference

        offline = offline_for(contract, path, notes)
        report = check_reference(contract, ref, offline_path=offline)
        coverage = report.offline.describe() if report.offline is not None else None
        if not report.ok:
            first = report.violations[0] if report.violations else None
            line = ref._entry(first.chunk).line if first is not None and first.chunk in ref._by_chunk else None
            raise ReferenceInvalid(report.summary(), file=file, line=line,
                                   chunk=first.chunk if first else None, field=first.field if first else None)
    validate_s = time.perf_counter() - t
    # random access: a fresh reader (index from the sidecar) straight to the last chunk
    last = ref.entries[-1].chunk
    t = time.perf_counter()
    ReferenceFile(path).read(last)
    random_s = time.perf_counter() - t
    figs = Figures(path=file, chunks=len(ref), first=ref.entries[0].chunk, last=last, bytes=path.stat().st_size,
                   largest_line=max(e.length for e in ref.entries), index_s=index_s, index_source=source,
                   validate_s=validate_s, contract=str(cpath) if cpath else None, random_access_s=random_s,
                   notes=notes, start_rss_mb=base_rss, offline=str(offline) if offline else None,
                   offline_coverage=coverage)
    if bench_spec is not None:
        figs.bench = bench(ref, _bench_ids(ref.chunk_ids, bench_spec))
    figs.peak_rss_mb = _peak_rss_mb()
    return figs


def offline_for(contract: Contract, reference: Path, notes: list[str]) -> Path | None:
    """The contract's offline reference, when it names one and the checked reference is the contract's."""
    offline = contract.resolve("offline_reference")
    if offline is None:
        return None
    own = contract.resolve("reference")
    if own is None or own.resolve() != reference.resolve():
        notes.append(f"offline comparison skipped: {offline.name} belongs to the contract's reference "
                     f"({own}), not to this one")
        return None
    return offline


def _lines(mib: float, line_bytes: int) -> str:
    return f"{mib * 2**20 / max(line_bytes, 1):.1f}x"


def report_lines(f: Figures) -> list[str]:
    mb = 1e6
    lines = [
        f"reference {f.path}: ok",
        f"  chunks: {f.chunks} ({f.first}..{f.last}), {f.bytes / mb:.1f} MB, largest line {f.largest_line / mb:.2f} MB",
        f"  index: {f.index_source} in {f.index_s:.2f} s",
        f"  validated in {f.validate_s:.2f} s: format, dtypes, shapes, base64, no NaN/Inf"
        + (f", contract invariants and cache chaining ({f.contract})" if f.contract else "")
        + (f", offline reference ({f.offline})" if f.offline else ""),
        *([f"  {f.offline_coverage}"] if f.offline_coverage else []),
        f"  random access: chunk {f.last} (the last) in {f.random_access_s * 1e3:.1f} ms with a fresh reader, "
        "without parsing earlier chunks",
    ]
    if f.bench is not None:
        b = f.bench
        lines += [
            f"  throughput over {b.chunks} chunks ({b.bytes / mb:.1f} MB), same run, same bytes in memory:",
            f"    streamparity reader ({DECODER_NAME}): {b.ours_mb_s:8.1f} MB/s ({b.ours_s:.2f} s)",
            f"    json.loads + decode_tensor:   {b.json_mb_s:8.1f} MB/s ({b.json_s:.2f} s)",
            f"    ratio: {b.ratio:.1f}x",
            f"  peak RSS: {b.ours_peak_rss_mb:.0f} MiB after validation and our reader, {f.start_rss_mb:.0f} MiB "
            f"before reading: {_lines(b.ours_peak_rss_mb - f.start_rss_mb, f.largest_line)} largest lines; "
            f"{b.after_json_peak_rss_mb:.0f} MiB after the json.loads run",
        ]
    else:
        lines.append(f"  peak RSS: {f.peak_rss_mb:.0f} MiB, {f.start_rss_mb:.0f} MiB before reading: "
                     f"{_lines(f.peak_rss_mb - f.start_rss_mb, f.largest_line)} largest lines")
    lines += [f"  note: {n}" for n in f.notes]
    return lines


def run(args: argparse.Namespace) -> int:
    figs = check(args.reference, args.contract, None if args.no_bench else str(args.bench_chunks))
    for line in report_lines(figs):
        print(line)
    if args.json is not None:
        args.json.write_text(json.dumps(figs.to_dict(), indent=2), "utf-8")
    return 0
