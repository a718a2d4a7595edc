"""A parity session: the contract, the reference, the backends and their cached runs.

Shared by the pytest plugin and the CLI.  Runs are computed once per process (per xdist worker)
and are deterministic, so serial and ``-n 2`` runs give the same verdicts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamparity.backends.base import Backend, BackendSpec
from streamparity.backends.onnx_models import external_data_files
from streamparity.backends.registry import create_backend, parse_backend_spec
from streamparity.contract.loading import load_contract
from streamparity.contract.model import ROLE_ENCODED, Contract
from streamparity.contract.model_io import check_onnx_file
from streamparity.drivers.bundle_policy import BundlePolicy
from streamparity.drivers.closed_loop import run_closed_loop
from streamparity.drivers.functional import run_functional
from streamparity.drivers.progress import Progress
from streamparity.drivers.selection import ChunkSelection
from streamparity.errors import BackendUnavailable, ReferenceInvalid, StreamparityError, not_a_file
from streamparity.judging.gates import RunGates, direct_difference, judge_gates
from streamparity.judging.stability import RunStability, judge_run_stability
from streamparity.pinned_inputs import PinnedInputs
from streamparity.reference.checks import ReferenceReport, check_reference
from streamparity.reference.reader import ReferenceFile
from streamparity.results.records import CLOSED_LOOP, FUNCTIONAL, ChunkResult, RunResult

BASELINE = parse_backend_spec("ort-cpu-fp32")


@dataclass
class SessionConfig:
    contract: Path
    onnx: Path | None = None
    reference: Path | None = None
    offline: Path | None = None
    backends: list[BackendSpec] = field(default_factory=list)
    chunks: ChunkSelection | None = None
    report_dir: Path = Path("reports")
    engine_dir: Path = Path("engines")
    rebuild_engines: bool = False
    rebuild_since: float | None = None
    engines: dict[str, Path] = field(default_factory=dict)
    """Supplied plans by backend id (--engine=ID=PATH): loaded as they are, never rebuilt."""
    bundle_limit: int | None = None
    """Failing chunks per run that keep their bundle in memory (--max-chunk-failures; None: every one)."""
    fail_on_warn: bool = False
    """Whether a warn verdict fails (--fail-on-warn): those chunks get bundles too."""


def _require_file(path: Path, what: str, field: str) -> None:
    why = not_a_file(path)
    if why is not None:
        raise StreamparityError(f"{what} {why}", file=str(path), field=field)






def load_offline(path: Path) -> None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "encoded" not in z.files:
                raise StreamparityError("offline reference has no 'encoded' array", file=str(path),
                                        field="encoded")
    except StreamparityError:
        raise
    except Exception as e:
        raise StreamparityError(f"not an offline reference .npz ({type(e).__name__})", file=str(path),
                                field="model.offline_reference") from None


class ParitySession:
    def __init__(self, cfg: SessionConfig) -> None:
        self.cfg = cfg
        self.progress: Callable[[str, int], Progress | None] | None = None
        """(label, chunks) -> a progress callback for one run; the plugin sets it (drivers.progress)."""
        self.contract: Contract = load_contract(cfg.contract)
        onnx = cfg.onnx or self.contract.resolve("onnx")
        ref = cfg.reference or self.contract.resolve("reference")
        if onnx is None:
            raise StreamparityError("no ONNX model: pass --onnx or set model.onnx in the contract",
                                    file=str(cfg.contract), field="model.onnx")
        if ref is None:
            raise StreamparityError("no reference: pass --reference or set model.reference in the contract",
                                    file=str(cfg.contract), field="model.reference")
        _require_file(onnx, "ONNX model", "model.onnx")
        check_onnx_file(self.contract, onnx)
        self.onnx = onnx
        _require_file(ref, "reference", "model.reference")
        self.reference = ReferenceFile(ref)
        self.offline = cfg.offline or (self.contract.resolve("offline_reference") if cfg.reference is None else None)
        if self.offline is not None:
            _require_file(self.offline, "offline reference", "model.offline_reference")
            load_offline(self.offline)
        if cfg.chunks is not None and not cfg.chunks.filter(self.reference.chunk_ids):
            ids = self.reference.chunk_ids
            raise StreamparityError(f"--chunks {cfg.chunks.text} selects no chunk of the reference "
                                    f"({ids[0]}..{ids[-1]})", file=str(self.reference.path), field="--chunks")
        if cfg.chunks is not None:
            ids = self.reference.chunk_ids
            held = set(ids)
            outside = [f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in cfg.chunks.ranges
                       if lo < ids[0] or hi > ids[-1] or (lo == hi and lo not in held)]
            if outside:  # a part of the selection would silently judge nothing
                raise StreamparityError(f"--chunks {cfg.chunks.text}: {', '.join(outside)} reaches outside the "
                                        f"reference, which holds chunks {ids[0]}..{ids[-1]}",
                                        file=str(self.reference.path), field="--chunks")
        self._backends: dict[str, Backend | BackendUnavailable | StreamparityError] = {}
        self._runs: dict[tuple[str, str], RunResult] = {}
        self._ref_report: ReferenceReport | None = None
        weights = [(f"ONNX external data {w.name}", w) for w in external_data_files(self.onnx)]
        self.inputs = PinnedInputs({"contract": Path(cfg.contract), "ONNX model": self.onnx,
                                    "reference": self.reference.path, "offline reference": self.offline}, weights)

    def check_model_io(self) -> None:
        """The ONNX file's I/O against the contract: checked when the session opened (a mismatch stops the run
        there), read again only when a pinned input changed since."""
        if self.inputs.changed():
            check_onnx_file(self.contract, self.onnx)

    # -- selection --------------------------------------------------------------------
    def _chosen(self, ids: list[int]) -> list[int]:
        """The chunks of `ids` that --chunks selects (all without it)."""
        return self.cfg.chunks.filter(ids) if self.cfg.chunks else ids

    def functional_chunks(self) -> list[int]:
        return self._chosen(self.reference.chunks_with_caches())

    def functional_gaps(self) -> list[int]:
        """Chunks between the first and the last with stored caches that store none (``has_caches: false``):
        functional mode leaves them out, which a header line says (only those --chunks selects)."""
        have = self.reference.chunks_with_caches()
        if not have:
            return []
        stored = set(have)
        return self._chosen([k for k in self.reference.chunk_ids if have[0] < k < have[-1] and k not in stored])

    def closed_loop_chunks(self) -> list[int]:
        return self._chosen(self.reference.chunk_ids)

    def no_chunks_reason(self, mode: str) -> str:
        sel = self.cfg.chunks.text if self.cfg.chunks else "all"
        if mode == FUNCTIONAL:
            have = self.reference.chunks_with_caches()
            span = f"{have[0]}..{have[-1]}" if have else "none"
            return (f"no functional chunk in --chunks {sel}: the reference stores caches (needed in functional mode) "
                    f"for chunks {span} only")
        return f"no closed-loop chunk in --chunks {sel}"

    # -- reference --------------------------------------------------------------------
    def reference_report(self) -> ReferenceReport:
        if self._ref_report is None:
            self._ref_report = check_reference(self.contract, self.reference, offline_path=self.offline)
        return self._ref_report

    def require_reference(self) -> None:
        rep = self.reference_report()
        if not rep.ok:
            raise ReferenceInvalid("reference rejected before judging any runtime:\n" + rep.summary(),
                                   file=str(self.reference.path))

    # -- backends ---------------------------------------------------------------------
    def backend(self, spec: BackendSpec) -> Backend:
        got = self._backends.get(spec.id)
        if got is None:
            try:
                got = create_backend(spec, self.contract, self.onnx,
                                     {"engine_dir": self.cfg.engine_dir, "rebuild_engines": self.cfg.rebuild_engines,
                                      "rebuild_since": self.cfg.rebuild_since, "engines": self.cfg.engines})
            except (BackendUnavailable, StreamparityError) as e:
                got = e
            self._backends[spec.id] = got
        if isinstance(got, Exception):
            raise got
        return got

    def run(self, spec: BackendSpec, mode: str) -> RunResult:
        key = (spec.id, mode)
        if key not in self._runs:
            b = self.backend(spec)
            if mode == FUNCTIONAL:
                chunks = self.functional_chunks()
                bar = self.progress(f"{spec.id} {mode}", len(chunks)) if self.progress else None
                self._runs[key] = run_functional(b, self.contract, self.reference, chunks, on_step=bar,
                                                 bundles=self._bundle_policy(chunks))
            elif mode == CLOSED_LOOP:
                sel = self.closed_loop_chunks()
                upto = max(sel) if sel else -1
                bar = self.progress(f"{spec.id} {mode}", sum(1 for k in self.reference.chunk_ids if k <= upto)) \
                    if self.progress else None
                self._runs[key] = run_closed_loop(b, self.contract, self.reference, upto=upto, on_step=bar,
                                                  bundles=self._bundle_policy(sel))
            else:
                raise ValueError(mode)
            if bar is not None:
                bar.done()
        return self._runs[key]

    def _bundle_policy(self, selected: list[int]) -> BundlePolicy:
        return BundlePolicy.of(self.cfg.bundle_limit, self.cfg.fail_on_warn, selected)

    # -- run-level gates --------------------------------------------------------------
    def selected(self, mode: str) -> list[int]:
        return self.functional_chunks() if mode == FUNCTIONAL else self.closed_loop_chunks()

    def _baseline_chunks(self, spec: BackendSpec, mode: str, base: BackendSpec) -> list[ChunkResult] | None:
        if spec.id == base.id:
            return None
        try:
            run = self.run(base, mode)
        except (BackendUnavailable, StreamparityError):
            return None
        selected = set(self.selected(mode))
        return [c for c in run.chunks if c.chunk in selected]

    def gates(self, spec: BackendSpec, mode: str) -> RunGates:
        """Run-level gates over the selected chunks; the baseline is ONNX Runtime on CPU at the candidate's
        precision (FP16 runtimes are not held to FP32)."""
        selected = set(self.selected(mode))
        chunks = [c for c in self.run(spec, mode).chunks if c.chunk in selected]
        baseline = BackendSpec("ort", "cpu", spec.precision)
        gates = judge_gates(self.contract, spec.id, spec.precision, mode, chunks,
                            self._baseline_chunks(spec, mode, baseline), baseline.id)
        direct_base = self._baseline_chunks(spec, mode, BASELINE)
        direct = direct_difference(self.run(spec, mode).chunks, direct_base) if direct_base is not None else None
        return RunGates(spec.id, spec.precision, mode, gates, max(direct.values()) if direct else None)

    def stability(self, spec: BackendSpec) -> RunStability:
        selected = set(self.closed_loop_chunks())
        chunks = [c for c in self.run(spec, CLOSED_LOOP).chunks if c.chunk in selected]
        return judge_run_stability(self.contract, spec.id, spec.precision, chunks)

    def encoded_name(self) -> str:
        return self.contract.output_by_role(ROLE_ENCODED).name

    def close(self) -> None:
        for b in self._backends.values():
            if isinstance(b, Backend):
                b.close()
