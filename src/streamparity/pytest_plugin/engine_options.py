"""``--engine=BACKEND_ID=PATH``: judge a prebuilt TensorRT / TensorRT-RTX plan as it is (loaded, never rebuilt).

Each plan is checked against the contract before collection (:func:`check_supplied_engines`): a plan whose I/O
or profiles disagree stops the run with one line naming the plan and the tensor."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from streamparity.backends.registry import parse_backend_spec


def parse_engine_arg(text: str) -> tuple[str, Path]:
    backend, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"invalid --engine {text!r}: expected BACKEND_ID=PATH, e.g. "
                                         "trtrtx-cuda-fp16=engines/encoder-fp16.plan")
    return parse_backend_spec(backend, check_kind=False).id, Path(path).expanduser()


def add_options(group: Any) -> None:
    group.addoption("--engine", metavar="ID=PATH", type=parse_engine_arg, action="append", default=None,
                    help="judge this prebuilt plan for backend ID (trt-cuda-fp16=PATH, trtrtx-cuda-fp32=PATH...), "
                         "repeatable: loaded as it is, never rebuilt (default: build or load through the cache)")


def supplied_engines(config: pytest.Config) -> dict[str, Path]:
    """The --engine plans by backend id (one per id)."""
    out: dict[str, Path] = {}
    for backend_id, path in config.option.engine or []:
        if backend_id in out and out[backend_id] != path:
            raise pytest.UsageError(f"argument --engine: two plans for {backend_id}: {out[backend_id]}, {path}")
        out[backend_id] = path
    return out


def check_supplied_engines(config: pytest.Config, contract: Any) -> None:
    """Refuse, before collection, a supplied plan that disagrees with the contract (one line)."""
    supplied = supplied_engines(config)
    if not supplied:  # the plan checker's imports stay out of a run that judges no plan of its own
        return
    from streamparity.backends.tensorrt.plans import precheck_supplied
    from streamparity.errors import StreamparityError

    for backend_id, path in supplied.items():
        try:
            precheck_supplied(backend_id, path, contract)
        except (StreamparityError, argparse.ArgumentTypeError) as e:
            raise pytest.UsageError(f"streamparity: --engine={backend_id}={path}: {e}") from None
