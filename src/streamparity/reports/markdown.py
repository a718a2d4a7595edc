"""The human-readable report of one run: ``report.md`` with its SVG figures, beside ``summary.json``.

Called by :meth:`streamparity.report.SummaryCollector.write` with the summary document.  Sections: the
verdict table (backend x mode x output), run-level gates, stability figures and plots, the cache-length
progression, latency, known issues, the reference check, versions and devices.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from streamparity.atomic import atomic_write_text
from streamparity.judging.verdict import Verdict, worst
from streamparity.reports import plots
from streamparity.results.records import overall

REPORT_NAME = "report.md"
_MARK = {"pass": "pass", "warn": "**warn**", "fail": "**FAIL**", "skip": "skip"}


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "yes" if v else "no"
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return str(v)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def _contract_info(doc: Mapping[str, Any]) -> tuple[dict[str, dict[str, dict[str, float | None]]], dict[int, int]]:
    """Tolerances (precision -> output -> atol/warn_atol) and the expected cache length per chunk, from the
    contract the run used; empty when it cannot be loaded (the report is still written)."""
    path = doc.get("contract")
    if not path:
        return {}, {}
    try:
        from streamparity.contract.loading import load_contract

        c = load_contract(path)
    except Exception:
        return {}, {}
    tols: dict[str, dict[str, dict[str, float | None]]] = {}
    for out, per in c.tolerances.items():
        for prec, t in per.items():
            tols.setdefault(prec, {})[out] = {"atol": t.atol, "warn_atol": t.warn_atol}
    chunks: set[int] = set()
    for r in doc.get("runs", []):
        chunks.update(int(k) for k in r.get("cache_len", {}))
    expected = {k: c.streaming.cache_len.expected_at(k)[1] for k in sorted(chunks)}
    return tols, expected


def output_verdict(run: Mapping[str, Any], output: str) -> Verdict:
    """One output of one run: the worst of its chunk verdicts, its run-level gates and its stability."""
    counts = (run.get("outputs", {}).get(output) or {}).get("verdicts") or {}
    gates: list[Verdict] = ["fail" for g in run.get("gates") or [] if g.get("output") == output
                            and any(not c.get("ok", True) for c in g.get("checks", {}).values())]
    st = (run.get("stability", {}).get(output) or {}).get("verdict")
    return worst(*[v for v in ("pass", "warn", "fail") if counts.get(v)], *gates,  # type: ignore[arg-type]
                 *([st] if st in ("pass", "warn", "fail") else []))


def _overall(doc: Mapping[str, Any]) -> str:
    return str(doc.get("verdict") or overall(list(doc.get("runs", [])),
                                             [*doc.get("latency", []), *doc.get("latency_paired", [])]))


def _verdict_section(doc: Mapping[str, Any]) -> list[str]:
    rows = []
    for r in doc.get("runs", []):
        outs = plots.run_outputs(r)
        if not outs:
            rows.append([r.get("backend"), r.get("mode"), "–", str(r.get("verdict", "")).lower(), "–", "–", "–", "–",
                         r.get("skip_reason") or ""])
            continue
        for out in outs:
            o = r.get("outputs", {}).get(out) or {}
            counts = o.get("verdicts") or {}
            total = sum(counts.values())
            rate = f"{100.0 * counts.get('pass', 0) / total:.1f}%" if total else "–"
            worst = o.get("worst_max_abs")
            if worst is None:
                st = r.get("stability", {}).get(out) or {}
                worst, at = st.get("max_abs"), st.get("worst_chunk")
            else:
                at = o.get("worst_chunk")
            rows.append([r.get("backend"), r.get("mode"), out, _MARK.get(output_verdict(r, out), "?"), _fmt(worst),
                         _fmt(at, "d") if isinstance(at, int) else _fmt(at), _fmt(o.get("p95_max_abs")), rate,
                         total or "–"])
        v = r.get("violations") or {}
        if v.get("chunks"):
            first = v.get("first") or {}
            rows.append([r.get("backend"), r.get("mode"), "contract invariants", _MARK.get("fail", "fail"),
                         str(first.get("message", ""))[:300].replace("|", "/"), _fmt(first.get("chunk"), "d"), "–",
                         "–", f"{v['chunks']} chunk(s) violate"])
    return ["## Verdicts", "",
            "Per backend, mode and output: the worst per-chunk max |error| and its chunk, the P95 over chunks, "
            "and the share of chunks that passed (warn and fail excluded).  An output fails when any chunk, "
            "run-level gate or the stability gate fails.", "",
            *_table(["backend", "mode", "output", "verdict", "worst max_abs", "@chunk", "P95", "pass rate",
                     "chunks"], rows), ""]


def _gates_section(doc: Mapping[str, Any]) -> list[str]:
    rows = []
    for r in doc.get("runs", []):
        for g in r.get("gates") or []:
            for name, c in g.get("checks", {}).items():
                rows.append([r.get("backend"), r.get("mode"), g.get("output"), name, _fmt(c.get("value"), ".4g"),
                             _fmt(c.get("limit"), ".4g"), "ok" if c.get("ok") else "**FAIL**"])
    if not rows:
        return []
    return ["## Run-level gates", "", *_table(["backend", "mode", "output", "check", "value", "limit", "result"],
                                              rows), ""]


def _stability_section(doc: Mapping[str, Any], figures: Mapping[str, Path], report_dir: Path) -> list[str]:
    lines = ["## Stability", ""]
    rows = []
    reasons: list[str] = []
    gate_reason = ""
    for r in doc.get("runs", []):
        for out, s in (r.get("stability") or {}).items():
            early, late = s.get("early") or {}, s.get("late") or {}
            slope = (f"{_fmt(s.get('slope'))} ± {_fmt(s.get('stderr'), '.2g')}" if s.get("stderr") is not None
                     else "– (too few chunks; bounds only)")
            rows.append([r.get("backend"), out, _MARK.get(str(s.get("verdict")), s.get("verdict")), s.get("n"),
                         slope, _fmt(s.get("slope_limit")), _fmt(s.get("t"), ".2f"), _fmt(early.get("mean")),
                         _fmt(late.get("mean")), _fmt(s.get("ratio"), ".2f"), _fmt(s.get("max_abs")),
                         _fmt(s.get("p99"))])
            for why in s.get("reasons") or []:
                reasons.append(f"- {r.get('backend')} `{out}`: {why}")
    if rows:
        lines += ["Least-squares trend of the per-chunk max |error| over the closed loop (slope per chunk ± its "
                  "standard error, widened for autocorrelation; t = slope / stderr), mean of the early and late "
                  "windows and their ratio, max and P99 over the run.", "",
                  *_table(["backend", "output", "verdict", "chunks", "slope ± stderr", "slope limit", "t",
                           "early mean", "late mean", "late/early", "max", "P99"], rows), ""]
        lines += reasons + ([""] if reasons else [])
    else:
        judged = [f"{r.get('backend')} {r.get('mode')}: {r.get('stability_outcome')}" for r in doc.get("runs", [])
                  if r.get("stability_outcome")]
        lines += ([f"The stability test ran without figures to show ({'; '.join(judged)}): chunks that did not "
                   "run, or a skip; its test says why.", ""] if judged
                  else ["No stability gate ran (select it with `-m stability`).", ""])
    for r in doc.get("runs", []):
        st = r.get("stability") or {}
        gate_reason = gate_reason or next((v.get("reason", "") for v in st.values() if isinstance(v, dict)
                                           and v.get("reason")), "")
    figs = [(k, p) for k, p in figures.items() if k != "cache_len"]
    if figs:
        lines += ["### Error vs chunk", "",
                  "Per-chunk max |error| (log scale) with the contract's atol (fail, red dashed) and warn level "
                  "(orange dotted) and the fitted trend (black).", ""]
        for key, p in figs:
            lines += [f"![{key}]({_rel(p, report_dir)})", ""]
    if "cache_len" in figures:
        lines += ["### Cache length", "", "Cache length out per chunk of every closed loop; the dashed line is the "
                  "contract's rule.", "", f"![cache length]({_rel(figures['cache_len'], report_dir)})", ""]
    return lines


def _rel(p: Path, base: Path) -> str:
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return p.as_posix()


def _latency_section(doc: Mapping[str, Any]) -> list[str]:
    lines = ["## Latency", ""]
    rows = [[r.get("backend"), r.get("mode"), _fmt((r.get("step_ms") or {}).get("p50")),
             _fmt((r.get("step_ms") or {}).get("p95")), _fmt((r.get("step_ms") or {}).get("p99"))]
            for r in doc.get("runs", []) if (r.get("step_ms") or {}).get("p50") is not None]
    bench = list(doc.get("latency", []))
    if bench:
        brows = []
        for b in bench:
            target = b.get("target_ms")
            brows.append([b.get("backend"), b.get("precision", "–"), _fmt(b.get("p50_ms")), _fmt(b.get("p95_ms")),
                          _fmt(b.get("p99_ms")), _fmt(b.get("compute_ms")), _fmt(b.get("copy_ms")),
                          _fmt(target) + (f" on {b.get('target_device')}" if target is not None else ""),
                          b.get("target_status", "–")])
        lines += ["Benchmarks (`-m benchmark`): per-chunk `Stream.step` after warm-up, milliseconds.", "",
                  *_table(["backend", "precision", "P50", "P95", "P99", "compute (GPU)", "copies (GPU)", "target",
                           "target status"], brows), ""]
    paired = [[b.get("backend"), _fmt(b.get("candidate_ms")), _fmt(b.get("baseline_ms")), _fmt(b.get("ratio")),
               f"[{_fmt(b.get('ratio_lo'))}, {_fmt(b.get('ratio_hi'))}]", b.get("pairs"), _fmt(b.get("limit")),
               str(b.get("verdict", "–")).upper()] for b in doc.get("latency_paired", [])]
    if paired:
        lines += ["Paired release gate (candidate vs `--baseline-onnx`, same run, alternating blocks): medians in ms "
                  "per step, ratio = candidate / baseline with its confidence interval.", "",
                  *_table(["backend", "candidate", "baseline", "ratio", "CI", "pairs", "limit", "verdict"], paired),
                  ""]
    if rows:
        lines += ["Step time measured during the parity runs (one pass, no warm-up; for orientation only), ms.",
                  "", *_table(["backend", "mode", "P50", "P95", "P99"], rows), ""]
    if not bench and not rows and not paired:
        lines += ["No latency measured in this run (benchmarks: `pytest -m benchmark`).", ""]
    return lines


def _known_issues_section(doc: Mapping[str, Any]) -> list[str]:
    issues = doc.get("known_issues") or []
    if not issues:
        return ["## Known issues", "", "None declared in the contract.", ""]
    rows = [[k.get("id"), ", ".join(k.get("outputs", [])), k.get("status", ""), k.get("reason", "")] for k in issues]
    return ["## Known issues", "", *_table(["id", "outputs", "status", "reason"], rows), ""]


def _environment_section(doc: Mapping[str, Any]) -> list[str]:
    env = dict(doc.get("environment") or {})
    gpus = env.pop("gpus", [])
    lines = ["## Versions and devices", "",
             f"- devices: {', '.join(gpus) if gpus else 'no CUDA GPU'}; CPU {env.pop('cpu', '?')} x "
             f"{env.pop('cpu_count', '?')}"]
    lines += [f"- {k}: {v}" for k, v in sorted(env.items())]
    for key in ("contract", "onnx", "reference"):
        if doc.get(key):
            lines.append(f"- {key}: `{doc[key]}`")
    lines.append(f"- backends: {', '.join(doc.get('backends', []))}; chunks: {doc.get('chunks', 'all')}")
    rc = doc.get("reference_check")
    if isinstance(rc, Mapping) and "ok" in rc:
        lines.append(f"- reference check: {'ok' if rc.get('ok') else '**FAILED**'}")
    described: set[str] = set()
    for r in doc.get("runs", []):
        info = r.get("backend_info") or {}
        if info and r["backend"] not in described:  # what was judged: plan, runtime, recording ...
            described.add(r["backend"])
            flat = [f"{k}: {_cell(v)[:160]}" for k, v in info.items() if not isinstance(v, (dict, list))
                    and k not in ("id", "kind", "precision", "device")]
            lines.append(f"- {r['backend']}: " + "; ".join(flat))
    for r in doc.get("runs", []):
        where = r.get("placements") or {}
        if where:
            lines.append(f"- {r['backend']} {r['mode']} judged on: "
                         + ", ".join(f"{k} ({n} chunks)" for k, n in where.items()))
    return [*lines, ""]


def render(doc: Mapping[str, Any], figures: Mapping[str, Path], report_dir: Path) -> str:
    name = doc.get("contract_name") or Path(str(doc.get("contract", "streamparity"))).stem
    run = doc.get("run") or {}
    lines = [f"# streamparity report: {name}", "", f"**Overall: {_overall(doc)}**", "",
             *([f"Run `{run.get('id')}`, started {run.get('started')}.", ""] if run else []),
             "Machine-readable: [`summary.json`](summary.json); per-test JUnit XML properties with "
             "`--junitxml` (property `streamparity` holds each test's payload).", ""]
    rc = doc.get("reference_check")
    if isinstance(rc, Mapping) and rc.get("ok") is False:
        first = rc.get("format_error") or next(iter(rc.get("violations") or []), None) or \
            (rc.get("offline") or {}).get("coverage", "the offline comparison failed")
        lines += [f"**The reference was rejected before any runtime was judged**: {_cell(first)[:400]}", ""]
    lines += _verdict_section(doc)
    lines += _gates_section(doc)
    lines += _stability_section(doc, figures, report_dir)
    lines += _latency_section(doc)
    lines += _known_issues_section(doc)
    lines += _environment_section(doc)
    return "\n".join(lines).rstrip() + "\n"


def write_markdown_report(doc: dict[str, Any], report_dir: Path) -> list[Path]:
    """Write the SVG figures and ``report.md`` into `report_dir`; return the files written."""
    report_dir.mkdir(parents=True, exist_ok=True)
    tols, expected = _contract_info(doc)
    figures = plots.write_plots(doc, report_dir, tolerances=tols, expected_cache_len=expected)
    path = report_dir / REPORT_NAME
    atomic_write_text(path, render(doc, figures, report_dir))
    return [*figures.values(), path]


__all__ = ["REPORT_NAME", "output_verdict", "render", "write_markdown_report"]
