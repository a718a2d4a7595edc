"""Typed results -> pytest outcomes: the bodies of the parity, gate and stability tests.  Judging happens in
:mod:`streamparity.judging`; here results become records on the test report, ``pytest.fail``, skips and
:class:`ParityWarning`s."""

from __future__ import annotations

import shlex
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamparity.backends.base import BackendSpec
from streamparity.backends.external import options as ext_options
from streamparity.drivers.selection import selection_text
from streamparity.environment import placement
from streamparity.errors import BackendUnavailable, StreamparityError
from streamparity.judging.verdict import fails, worst
from streamparity.judging.wording import describe_chunk
from streamparity.pytest_plugin.repro import loaded_plugins, repro_line
from streamparity.pytest_plugin.session import PROPERTY, plugin_session
from streamparity.results.records import (
    CLOSED_LOOP,
    ChunkResult,
    ChunkSummary,
    GateSummary,
    Record,
    RunResult,
    StabilitySummary,
)
from streamparity.session import ParitySession


class ParityWarning(UserWarning):
    """An error above the contract's warn level but within its fail tolerance."""


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """A backend's describe() as plain JSON values (it travels from xdist workers in the report)."""
    import json

    return dict(json.loads(json.dumps(d, default=str)))


def _flat(v: Any) -> str:
    return v if isinstance(v, str) else f"{v:.4g}" if v is not None else ""


def record(request: pytest.FixtureRequest, rec: Record) -> None:
    """Attach the record to the test's report, with flat properties for JUnit XML dashboards."""
    props = request.node.user_properties
    props.append((PROPERTY, rec.to_dict()))
    if isinstance(rec, StabilitySummary):
        props.append(("stability.verdict", rec.verdict))
        for out, r in rec.outputs.items():
            for key in ("verdict", "slope", "stderr", "t", "ratio", "max_abs", "p99"):
                props.append((f"stability.{out}.{key}", _flat(r.get(key))))
        return
    props.append(("verdict", rec.verdict))
    if isinstance(rec, ChunkSummary):
        for out, m in rec.metrics.items():
            props.append((f"max_abs.{out}", f"{m.max_abs:.6g}"))


def _skip_or_fail(config: pytest.Config, reason: str) -> None:
    __tracebackhide__ = True
    if config.option.require_backends:
        pytest.fail(f"{reason} (--require-backends)", pytrace=False)
    pytest.skip(reason)


def backend_or_skip(session: ParitySession, backend_id: str) -> Any:
    """The session's backend, or a skip with its reason (a failure when it exists but cannot be built)."""
    __tracebackhide__ = True
    spec = next((s for s in session.cfg.backends if s.id == backend_id), None) or BackendSpec(*backend_id.split("-"))
    try:
        return session.backend(spec)
    except BackendUnavailable as e:
        pytest.skip(f"{spec.id}: {e}")
    except StreamparityError as e:
        pytest.fail(f"{spec.id} cannot be built: {e}", pytrace=False)


def _reference_problem(session: ParitySession) -> str | None:
    rep = session.reference_report()
    if rep.ok:
        return None
    if rep.format_error:
        return f"reference rejected before judging any runtime, a chunk cannot be read: {rep.format_error}"
    first = rep.violations[0] if rep.violations else "streaming outputs differ from the offline reference"
    return (f"reference {rep.path} rejected before judging any runtime ({len(rep.violations)} violations; "
            f"see test_reference_is_sane): {first}")


def _get_run(session: ParitySession, spec: BackendSpec, mode: str) -> tuple[RunResult | None, str | None, str | None]:
    try:
        return session.run(spec, mode), None, None
    except BackendUnavailable as e:
        return None, str(e), None
    except StreamparityError as e:
        return None, None, str(e)


def _run_or_verdict(request: pytest.FixtureRequest, session: ParitySession, spec: BackendSpec, mode: str,
                    on_unavailable: Callable[[str], None] | None) -> RunResult:
    """The backend's run in this mode, or the test's verdict: fail on a rejected reference or a backend
    that cannot run, skip (or fail, with --require-backends) where the backend is unavailable here.
    Errors become verdicts outside except blocks: no chained "During handling ..." tracebacks."""
    __tracebackhide__ = True
    changed = session.inputs.changed()
    if changed:
        pytest.fail("; ".join(changed), pytrace=False)
    problem = _reference_problem(session)
    if problem:
        pytest.fail(problem, pytrace=False)
    run, unavailable, broken = _get_run(session, spec, mode)
    if unavailable is not None:
        if on_unavailable is not None:
            on_unavailable(unavailable)
        _skip_or_fail(request.config, f"{spec.id}: {unavailable}")
    if run is None:
        pytest.fail(f"{spec.id} cannot run: {broken}", pytrace=False)
    return run


def _repro(request: pytest.FixtureRequest, session: ParitySession, spec: BackendSpec, chunk: int | str | None) -> str:
    return repro_line(request.config, session.cfg, request.node.nodeid, spec, chunk)


def chunk_summary(res: ChunkResult) -> ChunkSummary:
    return ChunkSummary.of(res, placement(res.device))


def _bundle_repro(request: pytest.FixtureRequest, spec: BackendSpec, bundle: Path) -> str:
    plugins = [f"--plugin={name}" for name in loaded_plugins(request.config)]
    return "repro: " + shlex.join(["streamparity", *plugins, "repro", str(bundle), "--backend", spec.id,
                                   *ext_options.repro_args(spec)])


def _described(request: pytest.FixtureRequest, session: ParitySession, spec: BackendSpec,
               res: ChunkResult) -> list[str]:
    """A failing chunk in full: what failed and how far, its pytest repro line, its bundle's repro line."""
    from streamparity.tools.bundles import write_bundle

    lines = [*describe_chunk(res, session.contract), _repro(request, session, spec, res.chunk)]
    bundle = write_bundle(session, res)
    if bundle is not None:
        lines.append(_bundle_repro(request, spec, bundle))
    return lines


def _one_line(res: ChunkResult, session: ParitySession) -> str:
    full = describe_chunk(res, session.contract)
    return full[0] + (f" (+{len(full) - 1} more lines)" if len(full) > 1 else "")


def _past_the_limit(request: pytest.FixtureRequest, session: ParitySession, res: ChunkResult) -> None:
    """A failing chunk past --max-chunk-failures: no bundle, unless --all-bundles."""
    if request.config.option.all_bundles:
        from streamparity.tools.bundles import write_bundle

        write_bundle(session, res)


def judge(request: pytest.FixtureRequest, session: ParitySession, spec: BackendSpec, mode: str,
          chunk: int | None) -> None:
    """Body of every per-chunk parity test; ``chunk`` None: every selected chunk of the run (:func:`judge_run`)."""
    __tracebackhide__ = True
    if chunk is None:
        judge_run(request, session, spec, mode)
        return
    run = _run_or_verdict(request, session, spec, mode, lambda why: record(request, ChunkSummary(
        spec.id, mode, chunk, "skip", reason=why)))
    res = run.by_chunk().get(chunk)
    if res is None:
        pytest.fail(f"{spec.id} {mode}: chunk {chunk} was not run", pytrace=False)
    record(request, chunk_summary(res))
    fail_on_warn = plugin_session(request.config).fail_on_warn
    if fails(res.verdict, fail_on_warn):
        selected = set(session.selected(mode))
        failing = [c.chunk for c in run.chunks if c.chunk in selected and fails(c.verdict, fail_on_warn)]
        rank, limit = failing.index(chunk), int(request.config.option.max_chunk_failures)
        if limit and rank >= limit:  # past the first few: one line, no bundle (unless asked)
            _past_the_limit(request, session, res)
            pytest.fail(f"{_one_line(res, session)} -- failing chunk {rank + 1} of {len(failing)} in this run; the "
                        f"first {limit} are reported in full with bundles (--max-chunk-failures); "
                        + _repro(request, session, spec, chunk), pytrace=False)
        pytest.fail("\n".join(_described(request, session, spec, res)), pytrace=False)
    # warn verdicts are counted in the summary and reported once per run by the gate test


ONE_LINERS = 20
"""Failing chunks past --max-chunk-failures that a run-level test names one line each; the rest by their ids."""


def judge_run(request: pytest.FixtureRequest, session: ParitySession, spec: BackendSpec, mode: str) -> None:
    """Body of a run-level chunk test (the closed loop, one test per backend; ``--closed-loop-items=run``): every
    selected chunk judged, each chunk's record on the report, and the failing ones described as per-chunk tests
    would describe them: the first --max-chunk-failures in full with a bundle and both repro lines, later ones one
    line each."""
    __tracebackhide__ = True
    selected = session.selected(mode)
    props = request.node.user_properties

    def skipped(why: str) -> None:
        props.extend((PROPERTY, ChunkSummary(spec.id, mode, k, "skip", reason=why).to_dict()) for k in selected)

    run = _run_or_verdict(request, session, spec, mode, skipped)
    by_chunk = run.by_chunk()
    results = [by_chunk[k] for k in selected if k in by_chunk]
    props.extend((PROPERTY, chunk_summary(res).to_dict()) for res in results)
    fail_on_warn = plugin_session(request.config).fail_on_warn
    failing = [res for res in results if fails(res.verdict, fail_on_warn)]
    failing_ids = selection_text([res.chunk for res in failing])
    props += [("verdict", worst(*(res.verdict for res in results))), ("chunks", str(len(results))),
              ("failed_chunks", failing_ids)]
    missing = [k for k in selected if k not in by_chunk]
    if missing:
        pytest.fail(f"{spec.id} {mode}: {len(missing)} selected chunk(s) were not run: {selection_text(missing)}",
                    pytrace=False)
    if not failing:
        return
    limit = int(request.config.option.max_chunk_failures) or len(failing)
    lines = [f"[{spec.id} {mode}] {len(failing)} of {len(results)} chunks fail: {failing_ids}"]
    for res in failing[:limit]:
        lines += _described(request, session, spec, res)
    rest = failing[limit:]
    if rest:
        lines.append(f"past the first {limit} (--max-chunk-failures), one line each, "
                     f"{'bundles written (--all-bundles)' if request.config.option.all_bundles else 'no bundle'}:")
        for res in rest:
            _past_the_limit(request, session, res)
        lines += [_one_line(res, session) for res in rest[:ONE_LINERS]]
        if len(rest) > ONE_LINERS:
            lines.append(f"... and {len(rest) - ONE_LINERS} more: chunks "
                         f"{selection_text([r.chunk for r in rest[ONE_LINERS:]])} (summary.json has each)")
    if len(failing) > 1:
        lines.append(_repro(request, session, spec, failing_ids).replace(
            "repro:", "repro (every failing chunk):", 1))
    pytest.fail("\n".join(lines), pytrace=False)


def judge_gates(request: pytest.FixtureRequest, session: ParitySession, spec: BackendSpec, mode: str) -> None:
    """Body of the run-level gate tests."""
    __tracebackhide__ = True
    run = _run_or_verdict(request, session, spec, mode, None)
    selected = session.selected(mode)
    if not selected:
        pytest.skip(session.no_chunks_reason(mode))
    gates = session.gates(spec, mode)
    chosen = set(selected)
    errored = [c for c in run.chunks if c.error and c.chunk in chosen]
    judged = not errored and bool(gates.gates)  # gates over chunks that never ran would judge nothing and pass
    record(request, GateSummary(spec.id, mode, gates.verdict if judged else "fail", [g.to_dict() for g in gates],
                                gates.vs_ort_fp32_direct_max, _jsonable(run.describe)))
    if not judged:
        why = (f"{len(errored)} of {len(selected)} chunk(s) did not run, first: chunk {errored[0].chunk}: "
               f"{errored[0].error}" if errored else "no compared output has a result on the selected chunks")
        pytest.fail(f"[{spec.id} {mode}] run-level gates cannot be judged: {why}\n"
                    f"{_repro(request, session, spec, None)}", pytrace=False)
    warned = [c for c in run.chunks if c.verdict == "warn" and c.chunk in chosen]
    if warned:
        worst_c = max(warned, key=lambda c: max((m.max_abs for m in c.metrics.values()), default=0.0))
        warnings.warn(ParityWarning(
            f"[{spec.id} {mode}] {len(warned)} of {len(selected)} chunks above the contract's warn level "
            f"(within tolerance); worst: " + " | ".join(describe_chunk(worst_c, session.contract))), stacklevel=1)
    lines = gates.describe(session.contract)
    if lines:
        pytest.fail("\n".join([*lines, _repro(request, session, spec, None)]), pytrace=False)


def judge_stability(request: pytest.FixtureRequest, session: ParitySession, spec: BackendSpec) -> None:
    """Body of the stability (drift) test of one backend's closed loop."""
    __tracebackhide__ = True
    _run_or_verdict(request, session, spec, CLOSED_LOOP, lambda why: record(request, StabilitySummary(
        spec.id, CLOSED_LOOP, "skip", reason=why)))
    st = session.stability(spec)
    lines = st.describe()
    if st.errored:
        pytest.fail("\n".join(lines), pytrace=False)
    record(request, StabilitySummary(spec.id, CLOSED_LOOP, st.verdict, spec.precision, st.outputs_dict(),
                                     {str(k): v for k, v in st.cache_len.items()}, st.gate_reason))
    if not st.results:
        pytest.fail("\n".join(lines), pytrace=False)
    if st.verdict == "fail":
        pytest.fail("\n".join([*lines, _repro(request, session, spec, None)]), pytrace=False)
    if lines:
        warnings.warn(ParityWarning("\n".join(lines)), stacklevel=1)
