"""The ``repro: pytest ...`` line of a failure: reruns just that case from the directory pytest was started in."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from streamparity.backends.base import BackendSpec
from streamparity.backends.external import options as ext_options
from streamparity.session import SessionConfig


def repro_line(config: pytest.Config, cfg: SessionConfig, nodeid: str, spec: BackendSpec,
               chunk: int | str | None) -> str:
    """The node id made relative to the invocation directory, and every option that changes what is judged.  A
    per-chunk case reruns that chunk (``chunk``: an id, or a selection such as ``3-7,40``); a run-level case (gates,
    stability) reruns the same chunk selection.  Its reports go to ``<report-dir>/repro``, so pasting the line does
    not overwrite the failing run's summary."""
    opt = config.option
    path, sep, rest = nodeid.partition("::")
    here = Path(str(config.invocation_params.dir))
    test_file = os.path.relpath(Path(str(config.rootpath)) / path, here)
    args = ["pytest", test_file + sep + rest]
    for flag, val in (("--contract", opt.contract), ("--onnx", opt.onnx), ("--reference", opt.reference),
                      ("--offline-reference", opt.offline_reference), ("--engine-dir", opt.engine_dir)):
        if val is not None:
            args.append(f"{flag}={val}")  # '=': a bare existing path would move pytest's rootdir
    report_dir = os.path.relpath(cfg.report_dir, here) if opt.report_dir is None else str(opt.report_dir)
    args.append(f"--report-dir={os.path.join(report_dir, 'repro')}")
    args.append(f"--backend={spec.id}")
    args += ext_options.repro_args(spec)
    if chunk is not None:
        args.append(f"--chunks={chunk}")
    elif cfg.chunks is not None:
        args.append(f"--chunks={cfg.chunks.text}")
    if opt.fail_on_warn:
        args.append("--fail-on-warn")
    if opt.closed_loop_items != "run":  # the node id names a chunk only then
        args.append(f"--closed-loop-items={opt.closed_loop_items}")
    for name in loaded_plugins(config):  # a backend registered by a plugin is needed to rerun it
        args += ["-p", name]
    args += ["-p", "no:xdist"] if config.pluginmanager.has_plugin("xdist") else []
    return "repro: " + shlex.join(args)


def loaded_plugins(config: pytest.Config) -> list[str]:
    """The plugins the run loaded with ``-p NAME`` (``-p no:...`` left out), for the lines that rerun it."""
    given, names = list(config.invocation_params.args), []
    for i, a in enumerate(given):
        name = a[2:] if a.startswith("-p") and len(a) > 2 else \
            given[i + 1] if a == "-p" and i + 1 < len(given) else None
        if name and not name.startswith("no:"):
            names.append(name)
    return names
