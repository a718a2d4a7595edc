"""pytest-benchmark integration and the stored-baseline release gate.

With ``--benchmark-compare-fail``, streamparity judges the comparison itself, inside each benchmark test, so that
a regression is a failed test (one line, in JUnit, summary.json and report.md) rather than pytest-benchmark's
end-of-run traceback; a benchmark that has no baseline to compare with, or that did not run, fails the gate too:
a release gate never passes having compared nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from streamparity.environment import environment

_GATE = pytest.StashKey["ReleaseGate | None"]()
_FIELDS = ("min", "max", "mean", "median", "stddev", "iqr")


def machine_info(machine_info: dict[str, Any]) -> None:
    """GPU names and runtime versions go into pytest-benchmark's saved machine info."""
    env = environment()
    machine_info["streamparity"] = {"gpus": list(env["gpus"]), **{
        k: env[k] for k in ("onnxruntime", "onnxruntime-gpu", "onnxruntime_providers", "tensorrt", "torch", "numpy")
        if k in env}}


def machine_info_difference(current: dict[str, Any], saved: dict[str, Any]) -> str:
    """One line naming the machine-info keys that differ (pytest-benchmark prints both dicts, ~3 KB)."""
    keys = sorted(k for k in set(current) | set(saved) if json.dumps(current.get(k), sort_keys=True, default=str)
                  != json.dumps(saved.get(k), sort_keys=True, default=str))
    return ("streamparity release gate: the baseline was saved on another machine or environment (differs in: "
            f"{', '.join(keys) or 'nothing visible'}); the comparison may not be fair")


@dataclass
class ReleaseGate:
    """The checks of ``--benchmark-compare-fail`` against the loaded baseline(s)."""

    checks: list[Any]
    baseline: dict[str, dict[str, Any]]
    """benchmark fullname -> saved benchmark (with 'stats'), over every compared file."""
    sources: dict[str, str]
    storage: str
    judged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def judge(self, fullname: str, stats: Any) -> tuple[bool, str, dict[str, Any]]:
        """(ok, message, record) of one benchmark against its baseline."""
        self.judged.append(fullname)
        saved = self.baseline.get(fullname)
        if saved is None:
            self.failed.append(fullname)
            have = ", ".join(sorted(self.baseline)[:6]) or "nothing"
            return False, (f"release gate: {fullname} was not compared: the baseline in {self.storage} has no "
                           f"result for it (it has: {have}); save the baseline with the same --backend selection"), \
                {"verdict": "fail", "compared": False}
        rows, bad = [], []
        for check in self.checks:
            cur = {check.field: float(getattr(stats, check.field))}
            base = {check.field: float(saved["stats"][check.field])}
            value = float(check.compute(cur, base))
            limit = float(check.threshold)
            pct = type(check).__name__.startswith("Percentage")
            row = {"field": check.field, "current_ms": cur[check.field] * 1e3, "baseline_ms": base[check.field] * 1e3,
                   "change": value, "limit": limit, "unit": "%" if pct else "s", "ok": value <= limit}
            rows.append(row)
            if not row["ok"]:
                how = f"({value:+.0f}%, limit +{limit:g}%)" if pct else \
                    f"(+{value * 1e3:.3f} ms, limit +{limit * 1e3:g} ms)"
                bad.append(f"'{check.field}' has failed {type(check).__name__}: {check.field} "
                           f"{row['current_ms']:.3f} ms vs baseline {row['baseline_ms']:.3f} ms {how}")
        record = {"verdict": "fail" if bad else "pass", "compared": True, "baseline": self.sources.get(fullname),
                  "checks": rows}
        if bad:
            self.failed.append(fullname)
            return False, f"release gate: {fullname}: Performance has regressed: " + "; ".join(bad), record
        return True, "", record


def _unreadable_saved_runs(bs: Any) -> list[str]:
    """The saved runs the comparison should use that pytest-benchmark skips (it only logs a warning), each as
    'path: why': for ``--benchmark-compare`` alone the newest saved run (else an older one is compared in
    silence), for ``--benchmark-compare=ID`` every run that matches."""
    storage = getattr(bs, "storage", None)
    query = getattr(storage, "query", None)
    if query is None:
        return []
    try:
        files = sorted(query(bs.compare if isinstance(bs.compare, str) else "[0-9][0-9][0-9][0-9]_"),
                       key=lambda f: Path(f).name)
    except Exception:  # a storage backend of another kind: keep pytest-benchmark's own message
        return []
    if bs.compare is True:
        files = files[-1:]
    bad = []
    for f in files:
        try:
            doc = json.loads(Path(f).read_text(encoding="utf8"))
            benches = doc.get("benchmarks") if isinstance(doc, dict) else None
            if not isinstance(benches, list):
                raise ValueError("no 'benchmarks' list")
            for i, bench in enumerate(benches):  # what pytest-benchmark's loader needs of each
                if not isinstance(bench, dict) or not isinstance(bench.get("stats"), dict):
                    raise ValueError(f"benchmark {i} has no 'stats' object")
        except (OSError, ValueError, UnicodeDecodeError) as e:
            bad.append(f"{f}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    return bad


def start(session: pytest.Session) -> None:
    """At session start: refuse a gate that cannot judge anything, then take the comparison over from
    pytest-benchmark (which would end the run in a traceback)."""
    config = session.config
    config.stash[_GATE] = None
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not getattr(bs, "compare_fail", None) or hasattr(config, "workerinput"):
        return
    if not getattr(bs, "compare", None):
        raise pytest.UsageError("streamparity release gate: --benchmark-compare-fail needs --benchmark-compare "
                                "(the saved run to compare with, e.g. --benchmark-compare=0001)")
    if getattr(config.option, "numprocesses", None) or getattr(config.option, "dist", "no") != "no":
        raise pytest.UsageError("streamparity release gate: benchmarks cannot run under xdist (pytest-benchmark "
                                "disables itself there, so nothing would be compared); add -p no:xdist")
    which = "the latest saved run" if bs.compare is True else f"a saved run matching {bs.compare!r}"
    unreadable = _unreadable_saved_runs(bs)
    if unreadable:
        raise pytest.UsageError(
            f"streamparity release gate: {which} is in the benchmark storage but cannot be read: "
            f"{unreadable[0]} (truncated or edited?); save the baseline again")
    if not getattr(bs, "compared_mapping", None):
        raise pytest.UsageError(
            f"streamparity release gate: no baseline to compare with: {which} was not found in the benchmark "
            f"storage {bs.storage}.\n  Save a baseline first (same machine, same benchmark selection), e.g.\n"
            "    pytest -m benchmark -p no:xdist --backend=ID --benchmark-save=baseline\n"
            "  then gate a candidate with the same --backend selection\n"
            "    pytest -m benchmark -p no:xdist --backend=ID --onnx=CANDIDATE.onnx --benchmark-compare "
            "--benchmark-compare-fail=median:50%\n"
            "  (--benchmark-storage must name the same folder in both runs)")
    baseline: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    needed = {"min", "max", "mean", "stddev", "median", "iqr", "ops"} | {c.field for c in bs.compare_fail}
    for path, mapping in bs.compared_mapping.items():
        for name, bench in mapping.items():
            stats = bench.get("stats") if isinstance(bench, dict) else None
            bad = sorted(f for f in needed if not isinstance(stats, dict) or isinstance(stats.get(f), bool)
                         or not isinstance(stats.get(f), (int, float)) or stats.get(f) != stats.get(f))
            if bad:  # pytest-benchmark's own table would end the run in a traceback on it
                raise pytest.UsageError(f"streamparity release gate: {bs.storage}/{path}: benchmark {name!r} has no "
                                        f"numeric stats.{', stats.'.join(bad)}: not a baseline to compare with "
                                        "(save it again)")
            baseline[name], sources[name] = bench, str(path)
    config.stash[_GATE] = ReleaseGate(list(bs.compare_fail), baseline, sources, str(bs.storage))
    bs.compare_fail = []  # judged per benchmark by the tests; pytest-benchmark still prints the comparison table


def gate(config: pytest.Config) -> ReleaseGate | None:
    return config.stash.get(_GATE, None)


def finish(session: pytest.Session) -> None:
    """A gate that judged no benchmark fails the run (exit 1): a release gate never passes on nothing."""
    g = gate(session.config)
    quiet = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    if g is not None and not g.judged and session.exitstatus in quiet:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def summary_lines(config: pytest.Config) -> list[str]:
    g = gate(config)
    if g is None:
        return []
    if not g.judged:
        return ["streamparity release gate: FAIL: no benchmark ran, nothing was compared with the baseline in "
                f"{g.storage} (select benchmarks with -m benchmark and backends that run here)"]
    verdict = "FAIL" if g.failed else "PASS"
    return [f"streamparity release gate: {verdict}: {len(g.judged)} benchmark(s) judged against {g.storage}, "
            f"{len(g.failed)} failed" + (f": {', '.join(g.failed)}" if g.failed else "")]


def not_run(request: pytest.FixtureRequest, reason: str) -> None:
    """A benchmark that cannot run here: a skip, but a failure under the gate (it was not compared) or with
    ``--require-backends``."""
    __tracebackhide__ = True
    g = gate(request.config)
    if g is not None:
        g.judged.append(request.node.nodeid)
        g.failed.append(request.node.nodeid)
        pytest.fail(f"release gate: {request.node.nodeid} did not run, so it was not compared: {reason}",
                    pytrace=False)
    if request.config.option.require_backends:
        pytest.fail(f"{reason} (--require-backends)", pytrace=False)
    pytest.skip(reason)


class _QuietMachineInfo:
    """pytest-benchmark's logger, minus its ~3 KB machine-info warning (replaced by one line)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def warning(self, text: str, *args: Any, **kwargs: Any) -> Any:
        if "machine_info is different" in str(text):
            return None
        return self._inner.warning(text, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def compare_machine_info(bs: Any, machine_info: dict[str, Any], compared: dict[str, Any]) -> Any:
    """Wrapper body of ``pytest_benchmark_compare_machine_info``: one line naming what differs, and no crash
    when the storage lies outside the working directory (pytest-benchmark's warning computes a relative path)."""
    logger = bs.logger
    bs.logger = _QuietMachineInfo(logger)
    result: Any = []
    try:
        result = yield
    except ValueError:  # 'DIR' is not in the subpath of CWD: only the warning's location failed
        result = []
    finally:
        bs.logger = logger
    saved = compared.get("machine_info") or {}
    if json.dumps(machine_info, sort_keys=True, default=str) != json.dumps(saved, sort_keys=True, default=str):
        logger.warning(machine_info_difference(machine_info, saved))
    return result
