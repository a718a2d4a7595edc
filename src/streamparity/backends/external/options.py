"""``--runtime=NAME:PRECISION=COMMAND``, ``--recorded=NAME:PRECISION=PATH`` and ``--runtime-timeout=SECONDS``:
parsing, and the process-wide table that the ``ext`` and ``rec`` backend factories read.

Importing this module registers the two kinds with the backend registry (ids ``ext-NAME-PRECISION`` and
``rec-NAME-PRECISION``: the NAME takes the middle, "device", place of built-in ids).  The pytest plugin calls
:func:`add_options` and :func:`session_backends`; CLI commands call :func:`add_cli_arguments` and
:func:`configure_from_args`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from streamparity.backends.base import Backend, BackendSpec
from streamparity.backends.external.backend import DEFAULT_TIMEOUT_S, ExternalBackend, RuntimeConfig
from streamparity.backends.registry import register_backend
from streamparity.contract.model import Contract
from streamparity.errors import StreamparityError

_ITEM = re.compile(r"^(?P<name>[a-z][a-z0-9]*):(?P<precision>fp32|fp16)=(?P<value>.+)$", re.S)
RESERVED = ("cpu", "cuda")

_RUNTIMES: dict[tuple[str, str], RuntimeConfig] = {}
_RECORDED: dict[tuple[str, str], Path] = {}


def parse_item(text: str, what: str = "COMMAND") -> tuple[str, str, str]:
    m = _ITEM.match(text.strip())
    if not m or m.group("name") in RESERVED:
        raise argparse.ArgumentTypeError(
            f"invalid {text!r}: expected NAME:PRECISION={what}, NAME lower-case letters and digits (not cpu or "
            f"cuda), PRECISION fp32|fp16, e.g. cpp:fp16={'./serve --engine=e.plan' if what == 'COMMAND' else 'rec/'}")
    return m.group("name"), m.group("precision"), m.group("value").strip()


def _runtime_item(text: str) -> tuple[str, str, str]:
    return parse_item(text, "COMMAND")


def _recorded_item(text: str) -> tuple[str, str, str]:
    return parse_item(text, "PATH")


def _timeout(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v > 0:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: a positive number of seconds")
    return v


HELP_RUNTIME = ("out-of-process runtime to judge, repeatable: NAME:PRECISION=COMMAND; the suite starts COMMAND and "
                "talks the runtime protocol (see the README) on its stdin/stdout; backend id ext-NAME-PRECISION")
HELP_RECORDED = ("recorded runtime outputs to judge, repeatable: NAME:PRECISION=DIR (made by `streamparity record`); "
                 "backend id rec-NAME-PRECISION")
HELP_TIMEOUT = f"seconds a runtime may take to answer one request before it is killed (default: {DEFAULT_TIMEOUT_S:g})"


def _declare(add: Any) -> None:
    """Declare the options through `add`: pytest's ``group.addoption`` or argparse's ``add_argument``."""
    add("--runtime", metavar="NAME:PRECISION=COMMAND", type=_runtime_item, action="append", default=None,
        help=HELP_RUNTIME)
    add("--recorded", metavar="NAME:PRECISION=PATH", type=_recorded_item, action="append", default=None,
        help=HELP_RECORDED)
    add("--runtime-timeout", metavar="SECONDS", type=_timeout, default=DEFAULT_TIMEOUT_S, help=HELP_TIMEOUT)


def add_options(group: Any) -> None:
    """pytest: add the options to the plugin's option group."""
    _declare(group.addoption)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """argparse (CLI commands): the same options."""
    _declare(parser.add_argument)


def configure(runtimes: list[tuple[str, str, str]] | None, recorded: list[tuple[str, str, str]] | None,
              timeout: float = DEFAULT_TIMEOUT_S) -> list[BackendSpec]:
    """Fill the table; returns the backend specs given (``ext-...`` then ``rec-...``)."""
    specs: list[BackendSpec] = []
    for name, precision, command in runtimes or []:
        _RUNTIMES[(name, precision)] = RuntimeConfig(name, precision, command, timeout)
        specs.append(BackendSpec("ext", name, precision))
    for name, precision, path in recorded or []:
        _RECORDED[(name, precision)] = Path(path).expanduser()
        specs.append(BackendSpec("rec", name, precision))
    return specs


def configure_from_args(args: argparse.Namespace) -> list[BackendSpec]:
    return configure(getattr(args, "runtime", None), getattr(args, "recorded", None),
                     getattr(args, "runtime_timeout", DEFAULT_TIMEOUT_S))


def session_backends(config: Any, backends: list[BackendSpec]) -> list[BackendSpec]:
    """pytest_configure: the session's backend list.  With --runtime/--recorded and no --backend, only the given
    runtimes are judged (ONNX Runtime FP32 still runs where a gate compares with it)."""
    opt = config.option
    extra = configure(opt.runtime, opt.recorded, opt.runtime_timeout)
    if not extra:
        return backends
    given = list(opt.backend or [])
    return [b for b in given if b not in extra] + extra if given else extra


def _ext(spec: BackendSpec, contract: Contract, onnx: Path, opts: dict[str, Any]) -> Backend:
    cfg = _RUNTIMES.get((spec.device, spec.precision))
    if cfg is None:
        raise StreamparityError(f"no runtime command for {spec.id}: pass --runtime={spec.device}:{spec.precision}"
                                "=COMMAND", field="--runtime")
    return ExternalBackend(contract, cfg)


def _rec(spec: BackendSpec, contract: Contract, onnx: Path, opts: dict[str, Any]) -> Backend:
    from streamparity.backends.external.recorded import RecordedBackend

    path = _RECORDED.get((spec.device, spec.precision))
    if path is None:
        raise StreamparityError(f"no recording for {spec.id}: pass --recorded={spec.device}:{spec.precision}=DIR",
                                field="--recorded")
    return RecordedBackend(contract, spec.device, spec.precision, path)


register_backend("ext", _ext, named=True, replace=True)
register_backend("rec", _rec, named=True, replace=True)


def repro_args(spec: BackendSpec) -> list[str]:
    """The options a repro command line needs to rebuild `spec` (empty for built-in kinds)."""
    if spec.kind == "ext" and (spec.device, spec.precision) in _RUNTIMES:
        cfg = _RUNTIMES[(spec.device, spec.precision)]
        out = [f"--runtime={cfg.name}:{cfg.precision}={cfg.command}"]
        return out + ([f"--runtime-timeout={cfg.timeout:g}"] if cfg.timeout != DEFAULT_TIMEOUT_S else [])
    if spec.kind == "rec" and (spec.device, spec.precision) in _RECORDED:
        return [f"--recorded={spec.device}:{spec.precision}={_RECORDED[(spec.device, spec.precision)]}"]
    return []
