"""The plugin's command-line options (group ``streamparity``), markers, and the run's :class:`SessionConfig`."""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import pytest

from streamparity.backends.base import BackendSpec
from streamparity.backends.external import options as ext_options
from streamparity.backends.registry import parse_backend_spec, register_backend
from streamparity.cli.validators import non_negative_int
from streamparity.contract.shipped import contract_by_name_or_path, contract_registry, default_contract
from streamparity.drivers.selection import ChunkSelection, parse_chunks
from streamparity.pytest_plugin import engine_options, paired_options
from streamparity.session import SessionConfig

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
PRODUCT_MARKERS = frozenset(MARKERS) - {"slow"}


def is_product_test(item: pytest.Item) -> bool:
    """A test of the product: one that uses the ``parity`` fixture or carries a product marker."""
    return "parity" in getattr(item, "fixturenames", ()) or any(
        m.name in PRODUCT_MARKERS for m in item.iter_markers())


DEFAULT_BACKENDS = ("ort-cpu-fp32", "ort-cpu-fp16", "trt-cuda-fp32", "trt-cuda-fp16")
PATH_OPTIONS = ("--contract", "--onnx", "--reference", "--offline-reference", "--report-dir", "--engine-dir",
                *paired_options.PATH_OPTIONS)
REBUILD_SINCE_KEY = "streamparity_rebuild_since"


def _path(text: str) -> Path:
    if not text.strip():  # `--report-dir=` would mean the working directory, whose files a run then owns
        raise argparse.ArgumentTypeError("an empty path; give a file or folder")
    return Path(text).expanduser()


def _backend(text: str) -> BackendSpec:
    return parse_backend_spec(text, check_kind=False)  # kinds: checked in session_config, after the plugins


CLOSED_LOOP_ITEMS = ("run", "chunk")


def _closed_loop_items(text: str) -> str:
    if text not in CLOSED_LOOP_ITEMS:
        raise argparse.ArgumentTypeError(f"invalid choice {text!r}: use run or chunk")
    return text


def _contract(text: str) -> Path:
    return contract_by_name_or_path(text)


def add_options(parser: pytest.Parser) -> None:
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
    g.addoption("--chunks", metavar="SEL", type=parse_chunks, default=None, action=_JoinedChunks,
                help="chunks to judge: N, A-B or a comma list such as 0-9,17; repeatable, the selections are "
                     "joined (default: all)")
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
    g.addoption("--max-chunk-failures", metavar="N", type=non_negative_int, default=10,
                help="failing chunks per run (backend x mode) reported in full, with a bundle; later ones fail with "
                     "one line and no bundle; 0: every one in full (default: 10)")
    g.addoption("--closed-loop-items", metavar="run|chunk", type=_closed_loop_items, default="run",
                help="closed-loop tests: one per backend judging every chunk (a closed loop is one sequential run; "
                     "its failure names each failing chunk with a --chunks=K repro line), or one per chunk, "
                     "test_closed_loop[ID-chunkNNN] (default: run)")
    g.addoption("--all-bundles", action="store_true", default=False,
                help="write a failure bundle for every failing chunk, also past --max-chunk-failures (default: off)")
    ext_options.add_options(g)
    engine_options.add_options(g)
    paired_options.add_options(g)


class _JoinedChunks(argparse.Action):
    """``--chunks=0-9 --chunks=17`` selects both, as ``--chunks=0-9,17`` (and ``--backend`` repeats): a second
    ``--chunks`` (one in ``PYTEST_ADDOPTS``, one typed) never silently replaces the first."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                  option_string: str | None = None) -> None:
        before = getattr(namespace, self.dest, None)
        if before is not None and isinstance(values, ChunkSelection):
            values = parse_chunks(f"{before.text},{values.text}")
        setattr(namespace, self.dest, values)


def register_markers(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def _backends(config: pytest.Config) -> list[BackendSpec]:
    """The --backend ids, their kinds checked once every plugin had the chance to register its own."""
    config.hook.pytest_streamparity_backends(register=register_backend)
    try:
        given = list(dict.fromkeys(b.id for b in config.option.backend or []))  # a repeated id runs once
        return [parse_backend_spec(b) for b in given] or [parse_backend_spec(b) for b in DEFAULT_BACKENDS]
    except argparse.ArgumentTypeError as e:
        raise pytest.UsageError(f"argument --backend: {e}") from None


def _rebuild_since(config: pytest.Config) -> float:
    """One timestamp for the whole run, shared with xdist workers, so --rebuild-engines builds each engine once."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and REBUILD_SINCE_KEY in workerinput:
        return float(workerinput[REBUILD_SINCE_KEY])
    return time.time()


def session_config(config: pytest.Config) -> SessionConfig:
    opt = config.option
    root = Path(str(config.rootpath))
    try:
        contract = opt.contract or default_contract()
    except argparse.ArgumentTypeError as e:
        raise pytest.UsageError(f"streamparity: $STREAMPARITY_CONTRACT: {e}") from None
    return SessionConfig(
        contract=contract,
        onnx=opt.onnx,
        reference=opt.reference,
        offline=opt.offline_reference,
        backends=ext_options.session_backends(config, _backends(config)),
        chunks=opt.chunks,
        report_dir=opt.report_dir or root / "reports",
        engine_dir=opt.engine_dir or root / "engines",
        rebuild_engines=opt.rebuild_engines,
        rebuild_since=_rebuild_since(config) if opt.rebuild_engines else None,
        engines=engine_options.supplied_engines(config),
        bundle_limit=None if opt.all_bundles or not opt.max_chunk_failures else int(opt.max_chunk_failures),
        fail_on_warn=bool(opt.fail_on_warn),
    )


def check_rootdir(config: pytest.Config) -> None:
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
