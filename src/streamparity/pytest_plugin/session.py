"""The plugin's session object: every hook of :mod:`streamparity.pytest_plugin.plugin` is one call into it."""

from __future__ import annotations

import os
from typing import Any

import pytest

from streamparity import __version__
from streamparity.backends.base import BackendSpec
from streamparity.contract import shipped
from streamparity.drivers.progress import attach_terminal_progress
from streamparity.environment import environment
from streamparity.errors import BackendUnavailable, StreamparityError
from streamparity.judging.verdict import fails
from streamparity.pytest_plugin import engine_options, gc_policy, paired_options
from streamparity.pytest_plugin.options import (
    REBUILD_SINCE_KEY,
    check_rootdir,
    is_product_test,
    register_markers,
    session_config,
)
from streamparity.reports.collector import SummaryCollector
from streamparity.reports.run_dir import ReportDirError, RunDir
from streamparity.results.records import CLOSED_LOOP, FUNCTIONAL, MODES, ChunkSummary, record_from_dict
from streamparity.session import ParitySession

PROPERTY = "streamparity"
"""The test-report property that holds a test's record (``to_dict``); it travels from xdist workers."""
_KEY = pytest.StashKey["PluginSession"]()


def plugin_session(config: pytest.Config) -> PluginSession:
    return config.stash[_KEY]


def _marks(spec: BackendSpec) -> list[pytest.MarkDecorator]:
    marks = []
    if spec.needs_gpu:
        marks.append(pytest.mark.gpu)
    if spec.kind in ("trt", "trtrtx"):
        marks.append(pytest.mark.trt)
    return marks


def _mode_of(metafunc: pytest.Metafunc) -> str:
    for m in metafunc.definition.iter_markers():
        if m.name in MODES:
            return m.name
    raise pytest.UsageError(f"{metafunc.definition.nodeid}: mark the test functional or closed_loop")


class PluginSession:
    """The run's settings, its :class:`ParitySession` (built once, lazily) and the collector of results."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.cfg = session_config(config)
        self.fail_on_warn = self.cfg.fail_on_warn
        self.collector = SummaryCollector()
        self._parity: ParitySession | StreamparityError | None = None
        self.run_dir: RunDir | None = None
        self._parity_tests = False  # whether a test marked parity reported (in the xdist controller too)

    @classmethod
    def configure(cls, config: pytest.Config) -> None:
        register_markers(config)
        gc_policy.at_configure()
        session = cls(config)
        config.stash[_KEY] = session
        config.pluginmanager.register(session, "streamparity-session")  # for pytest_runtest_logreport
        check_rootdir(config)
        session.check_report_dir()
        if not (getattr(config.option, "help", False) or getattr(config.option, "version", False)):
            # bad inputs now, as one usage error, not as collection tracebacks
            if session.defaults_missing():  # an installation without the shipped default: only a test that needs
                session.try_parity()      # it fails (one line)
            else:
                engine_options.check_supplied_engines(config, session.parity().contract)
            try:  # the paired gate's options too, whether or not its test is selected: a typo is not ignored
                paired_options.paired_options(config)
            except StreamparityError as e:
                raise pytest.UsageError(f"streamparity: {e}") from None

    def defaults_missing(self) -> bool:
        """Whether this run names none of streamparity's inputs (no option, no ``$STREAMPARITY_CONTRACT``) and the
        shipped defaults are not there: an installed wheel holds no ``contracts/`` or ``fixtures/``, and a run of
        other tests must not fail on them.  Otherwise a bad input is a usage error at configure."""
        cfg = self.cfg
        given = self.config.option.contract is not None or bool(os.environ.get(shipped.CONTRACT_ENV)) or any(
            v is not None for v in (cfg.onnx, cfg.reference, cfg.offline, cfg.chunks)) or bool(cfg.engines)
        return not given and not shipped.contracts_folder().is_dir()

    def try_parity(self) -> None:
        """Builds the session now where it can be built; an error is kept for the first product test to raise."""
        try:
            self.parity()
        except pytest.UsageError:
            pass

    def parity(self) -> ParitySession:
        if self._parity is None:
            try:
                self._parity = ParitySession(self.cfg)
                attach_terminal_progress(self.config, self._parity)  # long runs show chunk k of N
            except StreamparityError as e:
                self._parity = e
        if isinstance(self._parity, StreamparityError):
            if self.defaults_missing():
                raise pytest.UsageError(f"streamparity: no --contract given, and this installation ships no contracts "
                                        f"(they are in a repository checkout's contracts/, not in an installed "
                                        f"package): pass --contract=PATH ({self._parity})")
            raise pytest.UsageError(f"streamparity: {self._parity}")
        return self._parity

    def _owns_report_dir(self) -> bool:
        """The controller owns the report directory (a collect-only or help run writes no report)."""
        opt = self.config.option
        return not (hasattr(self.config, "workerinput") or opt.collectonly or getattr(opt, "help", False)
                    or getattr(opt, "version", False))

    def check_report_dir(self) -> None:
        """At configure: a report directory that could not be written is a usage error before collection; nothing
        is created yet (a run of other tests leaves no trace)."""
        if not self._owns_report_dir():
            return
        try:
            RunDir(self.cfg.report_dir).check()
        except ReportDirError as e:
            raise pytest.UsageError(f"streamparity: {e}") from None

    def open_report_dir(self) -> None:
        """Once the run is known to hold product tests, before any test runs: the report directory is locked and
        an earlier run's files are cleared (:class:`RunDir`)."""
        if self.run_dir is not None or not self._owns_report_dir():
            return
        self.run_dir = RunDir(self.cfg.report_dir)
        try:
            self.run_dir.open()
        except ReportDirError as e:
            self.run_dir = None
            raise pytest.UsageError(f"streamparity: {e}") from None

    def configure_node(self, node: Any) -> None:
        """xdist controller: hand the run's settings to each worker."""
        if self.cfg.rebuild_since is not None:
            node.workerinput[REBUILD_SINCE_KEY] = self.cfg.rebuild_since

    # -- parametrization ----------------------------------------------------------------
    def parametrize(self, metafunc: pytest.Metafunc) -> None:
        names = metafunc.fixturenames
        if not any(n in names for n in ("parity_case", "parity_gate_case", "backend_spec")):
            return
        session = self.parity()
        specs = self.cfg.backends
        if "parity_case" in names:
            mode = _mode_of(metafunc)
            chunks = session.selected(mode)
            if mode == CLOSED_LOOP and self.config.option.closed_loop_items == "run" and chunks:
                params = [pytest.param((spec, mode, None), id=spec.id, marks=_marks(spec)) for spec in specs]
            else:
                params = [pytest.param((spec, mode, k), id=f"{spec.id}-chunk{k:03d}", marks=_marks(spec))
                          for spec in specs for k in chunks]
            if not params:
                params = [pytest.param(None, id=f"no-{mode}-chunks", marks=pytest.mark.skip(
                    reason=session.no_chunks_reason(mode)))]
            metafunc.parametrize("parity_case", params)
        elif "parity_gate_case" in names:
            mode = _mode_of(metafunc)
            metafunc.parametrize("parity_gate_case", [pytest.param((spec, mode), id=f"{spec.id}-{mode}",
                                                                   marks=_marks(spec)) for spec in specs])
        else:
            metafunc.parametrize("backend_spec", [pytest.param(s, id=s.id, marks=_marks(s)) for s in specs])

    # -- reporting ----------------------------------------------------------------------
    def report_header(self) -> list[str]:
        env = environment()
        cfg = self.cfg
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
            "tensorrt: " + _tensorrt_status(),
        ]
        if isinstance(self._parity, ParitySession):
            s = self._parity
            ids = s.reference.chunk_ids
            lines.append(f"reference: {s.reference.path} ({len(ids)} chunks, {ids[0]}..{ids[-1]}; functional: "
                         f"{len(s.selected(FUNCTIONAL))} selected, closed loop: "
                         f"{len(s.closed_loop_chunks())} selected)")
            gaps = s.functional_gaps()
            if gaps:
                shown = ", ".join(map(str, gaps[:10])) + (f" and {len(gaps) - 10} more" if len(gaps) > 10 else "")
                lines.append(f"reference: chunk(s) {shown} store no caches (has_caches: false) between chunks that "
                             "do: functional mode leaves them out")
        return lines

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Collect the records of the tests (in the controller under xdist: user_properties travel with reports)."""
        if "parity" in report.keywords:
            self._parity_tests = True
        if report.when != "call" and not (report.when == "setup" and report.skipped):
            return
        for name, payload in report.user_properties:
            if name == PROPERTY and isinstance(payload, dict):
                rec = record_from_dict(payload)
                self.collector.add(report.nodeid, self._outcome_of(report.outcome, rec),
                                   rec if rec is not None else payload)

    def _outcome_of(self, outcome: str, rec: object) -> str:
        """A chunk's own outcome: a run-level test that failed holds chunks that passed."""
        if outcome == "failed" and isinstance(rec, ChunkSummary) and not fails(rec.verdict, self.fail_on_warn):
            return "passed"
        return outcome

    def terminal_summary(self, terminalreporter: Any, extra: list[str]) -> None:
        if hasattr(self.config, "workerinput"):
            return
        for line in extra:
            terminalreporter.write_line(line)
        if not self.collector.records and not self._parity_tests:  # a run of other tests: no parity report
            if self.run_dir is not None:
                self.run_dir.close(complete=True)  # nothing to report: the run still completed
            return
        if self.collector.rows():  # a benchmark-only run has no parity rows: no empty table
            terminalreporter.section("streamparity summary")
            for line in self.collector.table_lines():
                terminalreporter.write_line(line)
        try:
            for p in self.collector.write(self.cfg.report_dir, self.summary_meta()):
                terminalreporter.write_line(f"streamparity: wrote {p}")
        except OSError as e:
            terminalreporter.write_line(f"streamparity: could not write the report: {e}")
            return
        if self.run_dir is not None:
            self.run_dir.close(complete=True)

    def summary_meta(self) -> dict[str, Any]:
        cfg = self.cfg
        meta: dict[str, Any] = {"run": self.run_dir.meta() if self.run_dir is not None else None,
                                "environment": environment(), "contract": str(cfg.contract),
                                "backends": [b.id for b in cfg.backends],
                                "chunks": cfg.chunks.text if cfg.chunks else "all"}
        if isinstance(self._parity, ParitySession):
            s = self._parity
            meta["reference"] = str(s.reference.path)
            meta["onnx"] = str(s.onnx)
            meta["contract_name"] = s.contract.name
            meta["known_issues"] = [{"id": k.id, "outputs": list(k.outputs), "reason": k.reason, "status": k.status}
                                    for k in s.contract.known_issues]
            meta["reference_check"] = s.reference_report().to_dict()
            meta["inputs"] = {**s.inputs.to_dict(), "changed_during_run": s.inputs.changed()}
        return meta

    def close(self) -> None:
        if isinstance(self._parity, ParitySession):
            self._parity.close()

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        gc_policy.at_collection_finish(session.items)
        if any(is_product_test(i) for i in session.items):
            self.open_report_dir()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """The xdist controller collects nothing itself and sees only test ids: it takes the report directory
        when the first worker has collected tests, before any of them runs."""
        if ids:
            self.open_report_dir()

    def pytest_unconfigure(self) -> None:
        if self.run_dir is not None:  # no report was written (or it failed): the marker stays incomplete
            self.run_dir.close(complete=False)


def _tensorrt_status() -> str:
    try:
        from streamparity.backends.tensorrt.loader import load_tensorrt

        return str(load_tensorrt().__version__)
    except BackendUnavailable as e:
        return f"unavailable, trt tests will skip ({e})"
    except Exception as e:  # a broken install must not break the header
        return f"unavailable, trt tests will skip ({type(e).__name__}: {e})"
