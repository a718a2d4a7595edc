"""pytest integration: options, markers, parametrization, report header, terminal summary, summary JSON.

Loaded by the repository's ``conftest.py`` (``pytest_plugins``) or with ``-p streamparity.pytest_plugin.plugin``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streamparity import __version__
from streamparity.backends.base import BackendSpec
from streamparity.backends.registry import parse_backend_spec, register_backend
from streamparity.contract.shipped import _contract, contract_registry, default_contract
from streamparity.drivers.selection import parse_chunks
from streamparity.environment import environment, placement
from streamparity.errors import BackendUnavailable, StreamparityError
from streamparity.judging.stability import StabilityResult, analyze
from streamparity.pytest_plugin import paired_options
from streamparity.reports.collector import SummaryCollector
from streamparity.results.records import CLOSED_LOOP, FUNCTIONAL, MODES, ChunkResult, RunResult
from streamparity.session import ParitySession, SessionConfig

MARKERS = {
    "parity": "runtime-vs-reference parity tests (functional and closed loop) and reference sanity",
    "functional": "functional mode: reference caches in, every chunk",
    "closed_loop": "closed-loop mode: the runtime's own caches fed back",
    "stability": "error-trend (drift) gates over closed-loop runs",
    "benchmark": "latency benchmarks (pytest-benchmark); run serially",
    "gpu": "needs a CUDA GPU",
    "trt": "needs TensorRT",
    "slow": "slow tests (minutes)",
}
DEFAULT_BACKENDS = ("ort-cpu-fp32", "ort-cpu-fp16", "trt-cuda-fp32", "trt-cuda-fp16")
PROPERTY = "streamparity"

SESSION_KEY = pytest.StashKey[ParitySession | StreamparityError]()
CFG_KEY = pytest.StashKey[SessionConfig]()
REBUILD_SINCE_KEY = "streamparity_rebuild_since"
COLLECTOR_KEY = pytest.StashKey[SummaryCollector]()
FAIL_ON_WARN_KEY = pytest.StashKey[bool]()






def _path(text: str) -> Path:
    return Path(text).expanduser()






def _backend(text: str) -> BackendSpec:
    return parse_backend_spec(text, check_kind=False)  # kinds: checked in pytest_configure, after the plugins


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from streamparity.pytest_plugin import hookspec

    pluginmanager.add_hookspecs(hookspec)


def _backends(config: pytest.Config) -> list[BackendSpec]:
    """The --backend ids, their kinds checked once every plugin had the chance to register its own."""
    config.hook.pytest_streamparity_backends(register=register_backend)
    try:
        return [parse_backend_spec(b.id) for b in config.option.backend or []] or \
            [parse_backend_spec(b) for b in DEFAULT_BACKENDS]
    except argparse.ArgumentTypeError as e:
        raise pytest.UsageError(f"argument --backend: {e}") from None


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("streamparity", "streamparity: streaming encoder parity")
    g.addoption("--contract", metavar="PATH|NAME", type=_contract, default=None,
                help="contract JSON, or the name of a shipped one "
                     f"({', '.join(contract_registry())}) (default: tiny-parakeet, the embedded model; "
                     "or $STREAMPARITY_CONTRACT)")
    g.addoption("--onnx", metavar="PATH", type=_path, default=None,
                help="ONNX model under test (default: the contract's model.onnx)")
    g.addoption("--reference", metavar="PATH", type=_path, default=None,
                help="reference JSONL (default: the contract's model.reference)")
    g.addoption("--offline-reference", metavar="PATH", type=_path, default=None,
                help="offline full-context reference .npz (default: the contract's, when --reference is not given)")
    g.addoption("--backend", metavar="ID", type=_backend, action="append", default=None,
                help="backend to test, repeatable: KIND-DEVICE-PRECISION, e.g. ort-cpu-fp32, ort-cpu-fp16, "
                     f"ort-cuda-fp32, trt-cuda-fp32, trt-cuda-fp16 (default: {' '.join(DEFAULT_BACKENDS)})")
    g.addoption("--chunks", metavar="SEL", type=parse_chunks, default=None,
                help="chunks to judge: N, A-B or a comma list such as 0-9,17 (default: all)")
    g.addoption("--report-dir", metavar="DIR", type=_path, default=None,
                help="where summary.json, report.md and plots go (default: reports/)")
    g.addoption("--engine-dir", metavar="DIR", type=_path, default=None,
                help="engine cache folder (default: engines/)")
    g.addoption("--rebuild-engines", action="store_true", default=False,
                help="build engines even when the cache holds a matching one (default: off)")
    g.addoption("--require-backends", action="store_true", default=False,
                help="fail, instead of skip, tests of a backend that cannot run here (missing TensorRT, GPU, "
                     "provider): for CI jobs that must judge those runtimes (default: off)")
    g.addoption("--fail-on-warn", action="store_true", default=False,
                help="treat warn verdicts (error above the contract's warn level) as failures (default: off)")
    paired_options.add_options(g)


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    opt = config.option
    root = Path(str(config.rootpath))
    cfg = SessionConfig(
        contract=opt.contract or default_contract(),
        onnx=opt.onnx,
        reference=opt.reference,
        offline=opt.offline_reference,
        backends=_backends(config),
        chunks=opt.chunks,
        report_dir=opt.report_dir or root / "reports",
        engine_dir=opt.engine_dir or root / "engines",
        rebuild_engines=opt.rebuild_engines,
        rebuild_since=_rebuild_since(config) if opt.rebuild_engines else None,
    )
    config.stash[CFG_KEY] = cfg
    _check_rootdir(config)
    config.stash[FAIL_ON_WARN_KEY] = bool(opt.fail_on_warn)
    config.stash[COLLECTOR_KEY] = SummaryCollector()
    config.pluginmanager.register(SummaryReporter(config), "streamparity-summary")
    if not (getattr(opt, "help", False) or getattr(opt, "version", False)):
        get_session(config)  # report bad inputs now, as one usage error, not as collection tracebacks


def _rebuild_since(config: pytest.Config) -> float:
    """One timestamp for the whole run, shared with xdist workers, so --rebuild-engines builds each engine once."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and REBUILD_SINCE_KEY in workerinput:
        return float(workerinput[REBUILD_SINCE_KEY])
    return time.time()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: hand the run's settings to each worker."""
    cfg = node.config.stash[CFG_KEY]
    if cfg.rebuild_since is not None:
        node.workerinput[REBUILD_SINCE_KEY] = cfg.rebuild_since


PATH_OPTIONS = ("--contract", "--onnx", "--reference", "--offline-reference", "--report-dir", "--engine-dir",
                *paired_options.PATH_OPTIONS)


def _check_rootdir(config: pytest.Config) -> None:
    """pytest picks its rootdir and ini file before plugins add options, so in ``--reference /data/ref.jsonl``
    it takes the existing path for a test path, roots the run there and skips ./pytest.ini.  Refuse that
    silently misconfigured run and say how to write it."""
    if config.inipath is not None:
        return
    args = list(config.invocation_params.args)
    culprits = [f"{a} {b}" for a, b in itertools.pairwise(args) if a in PATH_OPTIONS and Path(b).exists()]
    local_ini = [n for n in ("pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")
                 if (config.invocation_params.dir / n).is_file()]
    if culprits and local_ini:
        fixed = ", ".join(c.replace(" ", "=", 1) for c in culprits)
        raise pytest.UsageError(
            f"streamparity: pytest ignored {local_ini[0]} and rooted the run at {config.rootpath} because it "
            f"read the value of {', '.join(culprits)} as a test path. Write path options with '=': {fixed}")


def get_session(config: pytest.Config) -> ParitySession:
    if SESSION_KEY not in config.stash:
        try:
            config.stash[SESSION_KEY] = ParitySession(config.stash[CFG_KEY])
        except StreamparityError as e:
            config.stash[SESSION_KEY] = e
    s = config.stash[SESSION_KEY]
    if isinstance(s, StreamparityError):
        raise pytest.UsageError(f"streamparity: {s}")
    return s


def _uses_parity(metafunc: pytest.Metafunc) -> bool:
    return any(n in metafunc.fixturenames for n in ("parity_case", "parity_gate_case", "backend_spec"))


def _marks(spec: BackendSpec) -> list[pytest.MarkDecorator]:
    marks = []
    if spec.needs_gpu:
        marks.append(pytest.mark.gpu)
    if spec.kind == "trt":
        marks.append(pytest.mark.trt)
    return marks


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not _uses_parity(metafunc):
        return
    session = get_session(metafunc.config)
    specs = session.cfg.backends
    if "parity_case" in metafunc.fixturenames:
        mode = _mode_of(metafunc)
        chunks = session.functional_chunks() if mode == FUNCTIONAL else session.closed_loop_chunks()
        params = [pytest.param((spec, mode, k), id=f"{spec.id}-chunk{k:03d}", marks=_marks(spec))
                  for spec in specs for k in chunks]
        if not params:
            params = [pytest.param(None, id=f"no-{mode}-chunks", marks=pytest.mark.skip(
                reason=_no_chunks_reason(session, mode)))]
        metafunc.parametrize("parity_case", params)
    elif "parity_gate_case" in metafunc.fixturenames:
        mode = _mode_of(metafunc)
        params = [pytest.param((spec, mode), id=f"{spec.id}-{mode}", marks=_marks(spec)) for spec in specs]
        metafunc.parametrize("parity_gate_case", params)
    elif "backend_spec" in metafunc.fixturenames:
        metafunc.parametrize("backend_spec", [pytest.param(s, id=s.id, marks=_marks(s)) for s in specs])


def _no_chunks_reason(session: ParitySession, mode: str) -> str:
    sel = session.cfg.chunks.text if session.cfg.chunks else "all"
    if mode == FUNCTIONAL:
        have = [k for k in session.reference.chunk_ids if session.reference.meta(k).get("has_caches", True)]
        span = f"{have[0]}..{have[-1]}" if have else "none"
        return (f"no functional chunk in --chunks {sel}: the reference stores caches (needed in functional mode) "
                f"for chunks {span} only")
    return f"no closed-loop chunk in --chunks {sel}"


def _mode_of(metafunc: pytest.Metafunc) -> str:
    for m in metafunc.definition.iter_markers():
        if m.name in MODES:
            return m.name
    raise pytest.UsageError(f"{metafunc.definition.nodeid}: mark the test functional or closed_loop")


@pytest.fixture(scope="session")
def parity(request: pytest.FixtureRequest) -> Iterator[ParitySession]:
    """The session's ParitySession (contract, reference, backends, cached runs)."""
    s = get_session(request.config)
    yield s
    s.close()


def _skip_or_fail(config: pytest.Config, reason: str) -> None:
    __tracebackhide__ = True
    if config.option.require_backends:
        pytest.fail(f"{reason} (--require-backends)", pytrace=False)
    pytest.skip(reason)


def _backend_or_skip(session: ParitySession, backend_id: str) -> Any:
    __tracebackhide__ = True
    spec = parse_backend_spec(backend_id)
    try:
        return session.backend(spec)
    except BackendUnavailable as e:
        pytest.skip(f"{spec.id}: {e}")
    except StreamparityError as e:
        pytest.fail(f"{spec.id} cannot be built: {e}", pytrace=False)


@pytest.fixture(scope="session")
def trt_fp32(parity: ParitySession) -> Iterator[Any]:
    """The contract's FP32 TensorRT engine (its optimization profiles, TF32 off), built or loaded from the
    engine cache once per session; skips with the reason where TensorRT or a GPU is missing."""
    yield _backend_or_skip(parity, "trt-cuda-fp32")


@pytest.fixture(scope="session")
def trt_fp16(parity: ParitySession) -> Iterator[Any]:
    """The contract's FP16 TensorRT engine (pinned FP32 layers per the contract), once per session."""
    yield _backend_or_skip(parity, "trt-cuda-fp16")


@pytest.fixture(scope="session")
def ort_fp32(parity: ParitySession) -> Iterator[Any]:
    """ONNX Runtime FP32 on CPU: the baseline every runtime is compared with."""
    yield _backend_or_skip(parity, "ort-cpu-fp32")


def _gate_meaning(check: str) -> str:
    """What a run-level gate check measures, for its failure line."""
    if check == "p95":
        return "P95 over the chunks of the per-chunk max |error| (contract p95_max_abs)"
    if check == "p99":
        return "P99 over the chunks of the per-chunk max |error| (contract p99_max_abs)"
    if check == "pass_fraction":
        return "share of chunks within the warn level (contract min_pass_fraction)"
    if check.startswith("vs_"):
        return ("P95 error against the reference may be at most gates.vs_baseline_factor x that of ONNX Runtime "
                "CPU at the same precision (plus the contract's noise floor)")
    return "contract gate"


def _repro(config: pytest.Config, nodeid: str, spec: BackendSpec, chunk: int | None) -> str:
    """A pytest command line that reruns just this case from the directory pytest was started in: the node
    id made relative to that directory, and every option that changes what is judged.  A per-chunk case
    reruns that chunk; a run-level case (gates, stability) reruns the same chunk selection.  Its reports go
    to ``<report-dir>/repro``, so pasting the line does not overwrite the failing run's summary."""
    opt = config.option
    path, sep, rest = nodeid.partition("::")
    here = Path(str(config.invocation_params.dir))
    test_file = os.path.relpath(Path(str(config.rootpath)) / path, here)
    args = ["pytest", test_file + sep + rest]
    for flag, val in (("--contract", opt.contract), ("--onnx", opt.onnx), ("--reference", opt.reference),
                      ("--offline-reference", opt.offline_reference), ("--engine-dir", opt.engine_dir)):
        if val is not None:
            args.append(f"{flag}={val}")  # '=': a bare existing path would move pytest's rootdir
    report_dir = os.path.relpath(config.stash[CFG_KEY].report_dir, here) if opt.report_dir is None \
        else str(opt.report_dir)
    args.append(f"--report-dir={os.path.join(report_dir, 'repro')}")
    args.append(f"--backend={spec.id}")
    selection = config.stash[CFG_KEY].chunks
    if chunk is not None:
        args.append(f"--chunks={chunk}")
    elif selection is not None:
        args.append(f"--chunks={selection.text}")
    if opt.fail_on_warn:
        args.append("--fail-on-warn")
    # plugins the run loaded with -p (e.g. a backend registered by a test plugin) are needed to rerun it
    given = list(config.invocation_params.args)
    for i, a in enumerate(given):
        name = a[2:] if a.startswith("-p") and len(a) > 2 else \
            given[i + 1] if a == "-p" and i + 1 < len(given) else None
        if name and not name.startswith("no:"):
            args += ["-p", name]
    args += ["-p", "no:xdist"] if config.pluginmanager.has_plugin("xdist") else []
    return "repro: " + shlex.join(args)


def _record(request: pytest.FixtureRequest, payload: dict[str, Any]) -> None:
    props = request.node.user_properties
    props.append((PROPERTY, payload))
    # flat properties for JUnit XML dashboards
    props.append(("verdict", payload.get("verdict", "")))
    for out, m in payload.get("metrics", {}).items():
        props.append((f"max_abs.{out}", f"{m['max_abs']:.6g}"))


def judge(request: pytest.FixtureRequest, session: ParitySession, spec: BackendSpec, mode: str, chunk: int) -> None:
    """Body of every per-chunk parity test."""
    __tracebackhide__ = True
    run = _run_or_verdict(request, session, spec, mode, lambda why: _record(request, {
        "kind": "chunk", "backend": spec.id, "mode": mode, "chunk": chunk, "verdict": "skip", "reason": why}))
    res = run.by_chunk().get(chunk)
    if res is None:
        pytest.fail(f"{spec.id} {mode}: chunk {chunk} was not run", pytrace=False)
    _record(request, chunk_payload(res))
    message = failure_message(session, res)
    fail_on_warn = request.config.stash[FAIL_ON_WARN_KEY]
    if res.verdict == "fail" or (fail_on_warn and res.verdict == "warn"):
        from streamparity.tools.bundles import write_bundle

        bundle = write_bundle(session, res)
        lines = [message, _repro(request.config, request.node.nodeid, spec, chunk)]
        if bundle is not None:
            lines.append(f"repro: streamparity repro {shlex.quote(str(bundle))} --backend {spec.id}")
        pytest.fail("\n".join(lines), pytrace=False)
    # warn verdicts are counted in the summary and reported once per run by the gate test


def _run_or_verdict(request: pytest.FixtureRequest, session: ParitySession, spec: BackendSpec, mode: str,
                    on_unavailable: Callable[[str], None] | None) -> RunResult:
    """The backend's run in this mode, or the test's verdict: fail on a rejected reference or a backend
    that cannot run, skip (or fail, with --require-backends) where the backend is unavailable here.
    Errors become verdicts outside except blocks: no chained "During handling ..." tracebacks."""
    __tracebackhide__ = True
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


def _record_stability(request: pytest.FixtureRequest, payload: dict[str, Any]) -> None:
    props = request.node.user_properties
    props.append((PROPERTY, payload))
    # flat properties for JUnit XML dashboards
    props.append(("stability.verdict", payload["verdict"]))
    for out, r in payload.get("outputs", {}).items():
        for key in ("verdict", "slope", "stderr", "t", "ratio", "max_abs", "p99"):
            v = r.get(key)
            props.append((f"stability.{out}.{key}", v if isinstance(v, str) else f"{v:.4g}" if v is not None
                          else ""))


def judge_stability(request: pytest.FixtureRequest, session: ParitySession, spec: BackendSpec) -> None:
    __tracebackhide__ = True
    run = _run_or_verdict(request, session, spec, CLOSED_LOOP, lambda why: _record_stability(request, {
        "kind": "stability", "backend": spec.id, "mode": CLOSED_LOOP, "verdict": "skip", "reason": why,
        "outputs": {}}))
    gate = session.contract.gates.stability
    selected = set(session.closed_loop_chunks())
    chunks = [c for c in run.chunks if c.chunk in selected]
    head = f"[{spec.id} {CLOSED_LOOP}]"
    errored = [c for c in chunks if c.error]
    if errored:
        pytest.fail(f"{head} stability cannot be judged: {len(errored)} chunk(s) did not run, first: chunk "
                    f"{errored[0].chunk}: {errored[0].error}", pytrace=False)
    results: dict[str, StabilityResult] = {}
    outputs: dict[str, Any] = {}
    for name in session.contract.compared_outputs():
        pts = [(c.chunk, c.metrics[name].max_abs) for c in chunks if name in c.metrics]
        if not pts:
            continue
        tol = session.contract.tolerance(name, spec.precision)
        res = analyze([v for _, v in pts], gate, tol, chunks=[k for k, _ in pts])
        results[name] = res
        outputs[name] = {**res.to_dict(), "series": {str(k): v for k, v in pts},
                         "atol": tol.atol, "warn_atol": tol.warn_atol}
    verdicts = [r.verdict for r in results.values()]
    verdict = "fail" if "fail" in verdicts else "warn" if "warn" in verdicts else "pass"
    cache_len = {str(c.chunk): c.cache_len_out[0] for c in chunks if c.cache_len_out}
    _record_stability(request, {"kind": "stability", "backend": spec.id, "precision": spec.precision,
                                "mode": CLOSED_LOOP, "verdict": verdict, "outputs": outputs,
                                "cache_len": cache_len, "reason": gate.reason})
    if not results:
        pytest.fail(f"{head} no compared output has an error series to judge", pytrace=False)
    bad = {n: r for n, r in results.items() if r.verdict != "pass"}
    if not bad:
        return
    lines = [r.describe(f"{head} output {n!r}") for n, r in bad.items()]
    drift = any(r.t_excess > r.sigma or r.ratio > r.ratio_limit for r in bad.values())
    if gate.reason and drift:
        lines.append(f"gate: {gate.reason}")
    elif verdict == "fail" and any(r.nonfinite_chunks for r in bad.values()):
        lines.append("no trend judged: the error is not finite (NaN or Inf) on some chunks; see the chunk tests")
    elif verdict == "fail":
        lines.append("no trend: the errors are bounded-gate failures (max/P99 above the contract's limits), "
                     "not drift")
    if verdict == "fail":
        lines.append(_repro(request.config, request.node.nodeid, spec, None))
        pytest.fail("\n".join(lines), pytrace=False)
    warnings.warn(ParityWarning("\n".join(lines)), stacklevel=1)


class ParityWarning(UserWarning):
    """An error above the contract's warn level but within its fail tolerance."""


def chunk_payload(res: ChunkResult) -> dict[str, Any]:
    return {
        "kind": "chunk",
        "backend": res.backend,
        "precision": res.precision,
        "mode": res.mode,
        "chunk": res.chunk,
        "verdict": res.verdict,
        "error": res.error,
        "violations": [str(v) for v in res.violations],
        "cache_len_in": res.cache_len_in,
        "cache_len_out": res.cache_len_out,
        "step_ms": res.step_ms,
        "placement": placement(res.backend.split("-")[1] if res.backend.count("-") >= 2 else "cpu"),
        "metrics": {k: {"max_abs": m.max_abs, "mean_abs": m.mean_abs, "p95_abs": m.p95_abs, "p99_abs": m.p99_abs,
                        "max_rel": m.max_rel, "mismatches": m.mismatches, "numel": m.numel, "nonfinite": m.nonfinite,
                        "verdict": res.verdicts.get(k, "pass")}
                    for k, m in res.metrics.items()},
    }


def failure_message(session: ParitySession, res: ChunkResult) -> str:
    return "\n".join(res.describe(session.contract))


def judge_gates(request: pytest.FixtureRequest, session: ParitySession, spec: BackendSpec, mode: str) -> None:
    __tracebackhide__ = True
    run = _run_or_verdict(request, session, spec, mode, None)
    selected = session.functional_chunks() if mode == FUNCTIONAL else session.closed_loop_chunks()
    if not selected:
        pytest.skip(_no_chunks_reason(session, mode))
    gates = session.gates(spec, mode)
    direct = session.direct_vs_baseline(spec, mode)
    _record(request, {"kind": "gate", "backend": spec.id, "mode": mode,
                      "gates": [{"output": g.output, "checks": g.checks} for g in gates],
                      "verdict": "fail" if any(g.failed for g in gates) else "pass",
                      "vs_ort_fp32_direct_max": max(direct.values()) if direct else None})
    warned = [c for c in run.chunks if c.verdict == "warn" and c.chunk in set(selected)]
    if warned:
        worst_c = max(warned, key=lambda c: max((m.max_abs for m in c.metrics.values()), default=0.0))
        warnings.warn(ParityWarning(
            f"[{spec.id} {mode}] {len(warned)} of {len(selected)} chunks above the contract's warn level "
            f"(within tolerance); worst: " + " | ".join(worst_c.describe(session.contract))), stacklevel=1)
    failed = [(g, k) for g in gates for k in g.failed]
    if failed:
        lines = [f"[{spec.id} {mode}] run-level gates failed:"]
        for g, k in failed:
            c = g.checks[k]
            extra = f" (baseline p95 {c['baseline_p95']:.3g})" if "baseline_p95" in c else ""
            lines.append(f"  {g.output}: {k} = {c['value']:.4g}, limit {c['limit']:.4g}{extra} -- {_gate_meaning(k)}")
        for out in dict.fromkeys(g.output for g, _ in failed):
            lines.append(f"  {out} tolerance ({spec.precision}): "
                         f"{session.contract.tolerance(out, spec.precision).reason}")
        lines.append(_repro(request.config, request.node.nodeid, spec, None))
        pytest.fail("\n".join(lines), pytrace=False)


# -- reporting ------------------------------------------------------------------------------
def pytest_report_header(config: pytest.Config) -> list[str]:
    env = environment()
    cfg = config.stash[CFG_KEY]
    lines = [
        f"streamparity {__version__}: contract {cfg.contract}",
        f"backends: {', '.join(b.id for b in cfg.backends)}"
        + (f"; chunks {cfg.chunks.text}" if cfg.chunks else ""),
        "versions: " + ", ".join(f"{k} {env[k]}" for k in ("onnxruntime", "onnxruntime-gpu", "tensorrt", "torch",
                                                              "nemo-toolkit", "numpy") if k in env)
        + (f"; onnxruntime providers {', '.join(env['onnxruntime_providers'])}"
           if env.get("onnxruntime_providers") else ""),
        "devices: " + (", ".join(env["gpus"]) if env["gpus"] else "no CUDA GPU") + f"; cpu {env['cpu']} x"
        f"{env['cpu_count']}",
    ]
    lines.append("tensorrt: " + _tensorrt_status())
    session = config.stash.get(SESSION_KEY, None)
    if isinstance(session, ParitySession):
        ids = session.reference.chunk_ids
        lines.append(f"reference: {session.reference.path} ({len(ids)} chunks, {ids[0]}..{ids[-1]}; functional: "
                     f"{len(session.functional_chunks())} selected, closed loop: "
                     f"{len(session.closed_loop_chunks())} selected)")
        if cfg.chunks is not None:
            outside = [f"{lo}-{hi}" for lo, hi in cfg.chunks.ranges if lo < ids[0] or hi > ids[-1]]
            if outside:
                lines.append(f"WARNING: --chunks {cfg.chunks.text} reaches outside the reference "
                             f"({ids[0]}..{ids[-1]}): {', '.join(outside)} clipped")
    return lines


def _tensorrt_status() -> str:
    try:
        from streamparity.backends.tensorrt.loader import load_tensorrt

        return str(load_tensorrt().__version__)
    except BackendUnavailable as e:
        return f"unavailable, trt tests will skip ({e})"
    except Exception as e:  # a broken install must not break the header
        return f"unavailable, trt tests will skip ({type(e).__name__}: {e})"


class SummaryReporter:
    """Collects per-test payloads (in the controller under xdist) and writes the run's summary."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # user_properties travel with the report from xdist workers to the controller
        if report.when != "call" and not (report.when == "setup" and report.skipped):
            return
        collector = self.config.stash[COLLECTOR_KEY]
        for name, payload in report.user_properties:
            if name == PROPERTY and isinstance(payload, dict):
                collector.add(report.nodeid, report.outcome, payload)

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if hasattr(config, "workerinput"):
            return
        collector = config.stash[COLLECTOR_KEY]
        if not collector.records:
            return
        cfg = config.stash[CFG_KEY]
        if collector.rows():  # a benchmark-only run has no parity rows: no empty table
            terminalreporter.section("streamparity summary")
            for line in collector.table_lines():
                terminalreporter.write_line(line)
        meta: dict[str, Any] = {"environment": environment(), "contract": str(cfg.contract),
                                "backends": [b.id for b in cfg.backends],
                                "chunks": cfg.chunks.text if cfg.chunks else "all"}
        session = config.stash.get(SESSION_KEY, None)
        if isinstance(session, ParitySession):
            meta["reference"] = str(session.reference.path)
            meta["onnx"] = str(session.onnx)
            meta["contract_name"] = session.contract.name
            meta["known_issues"] = [{"id": k.id, "outputs": list(k.outputs), "reason": k.reason,
                                     "status": k.status} for k in session.contract.known_issues]
            meta["reference_check"] = session.reference_report().to_dict()
        try:
            for p in collector.write(cfg.report_dir, meta):
                terminalreporter.write_line(f"streamparity: wrote {p}")
        except OSError as e:
            terminalreporter.write_line(f"streamparity: could not write the report: {e}")


# -- latency benchmarks and the release gate (pytest-benchmark) ------------------------------------
@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """GPU names and runtime versions go into pytest-benchmark's saved machine info."""
    env = environment()
    machine_info["streamparity"] = {"gpus": list(env["gpus"]), **{
        k: env[k] for k in ("onnxruntime", "onnxruntime-gpu", "onnxruntime_providers", "tensorrt", "torch", "numpy")
        if k in env}}


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Release gate: ``--benchmark-compare-fail`` without a saved baseline is a clear usage error up front
    (pytest-benchmark would only warn, run every benchmark, then stop with a bare usage error)."""
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is None or not getattr(bs, "compare", None) or not getattr(bs, "compare_fail", None):
        return
    if getattr(bs, "compared_mapping", None) or hasattr(session.config, "workerinput"):
        return
    which = "the latest saved run" if bs.compare is True else f"a saved run matching {bs.compare!r}"
    raise pytest.UsageError(
        f"streamparity release gate: no baseline to compare with: {which} was not found in the benchmark "
        f"storage {bs.storage}.\n  Save a baseline first (same machine, same benchmark selection), e.g.\n"
        "    pytest -m benchmark -p no:xdist --backend=ID --benchmark-save=baseline\n"
        "  then gate a candidate with the same --backend selection\n"
        "    pytest -m benchmark -p no:xdist --backend=ID --onnx=CANDIDATE.onnx --benchmark-compare "
        "--benchmark-compare-fail=median:50%\n"
        "  (--benchmark-storage must name the same folder in both runs)")


__all__ = ["ParityWarning", "chunk_payload", "judge", "judge_gates", "judge_stability"]
