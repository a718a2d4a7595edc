"""Options of the paired latency release gate (suite/benchmarks/test_paired_latency.py).

``add_options(group)`` adds them to pytest's streamparity option group; ``paired_options(config)`` reads
and checks them, raising StreamparityError with one line naming the option.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from streamparity.cli.validators import non_negative_int, positive_float
from streamparity.errors import StreamparityError
from streamparity.judging.paired_latency import min_pairs, per_look

PATH_OPTIONS = ("--baseline-onnx",)
DEFAULT_ROUNDS = 30
DEFAULT_MAX_ROUNDS = 90
DEFAULT_BLOCK_STEPS = 20
DEFAULT_WARMUP_STEPS = 20
DEFAULT_CONFIDENCE = 0.95


def add_options(group: pytest.OptionGroup) -> None:
    group.addoption("--baseline-onnx", metavar="PATH", type=lambda t: Path(t).expanduser(), default=None,
                    help="paired latency gate: the previous release's ONNX, timed against the model under test "
                         "(--onnx) in the same run, same backend, in alternating blocks (default: none; the "
                         "paired benchmark skips)")
    group.addoption("--gate-latency-ratio", metavar="R", type=positive_float, default=None,
                    help="paired latency gate: fail when candidate/baseline step time exceeds R with confidence "
                         "(CI lower bound > R), pass when CI upper bound <= R, e.g. 1.10 (default: report only)")
    group.addoption("--latency-inconclusive", choices=("fail", "pass"), default="fail",
                    help="paired latency gate: verdict when the ratio's interval straddles the limit "
                         "(default: fail)")
    group.addoption("--paired-rounds", metavar="N", type=non_negative_int, default=DEFAULT_ROUNDS,
                    help=f"paired latency gate: rounds, one candidate/baseline pair each (default: {DEFAULT_ROUNDS})")
    group.addoption("--paired-max-rounds", metavar="N", type=non_negative_int, default=DEFAULT_MAX_ROUNDS,
                    help="paired latency gate: while the verdict is inconclusive, time another --paired-rounds "
                         "rounds, up to N in all; each look's interval is widened (Bonferroni over the looks) so "
                         f"the stated confidence holds for the whole run (default: {DEFAULT_MAX_ROUNDS})")
    group.addoption("--paired-block-steps", metavar="N", type=non_negative_int, default=DEFAULT_BLOCK_STEPS,
                    help=f"paired latency gate: steps per timed block (default: {DEFAULT_BLOCK_STEPS})")
    group.addoption("--paired-warmup-steps", metavar="N", type=non_negative_int, default=DEFAULT_WARMUP_STEPS,
                    help=f"paired latency gate: warm-up steps per model (default: {DEFAULT_WARMUP_STEPS})")
    group.addoption("--paired-confidence", metavar="C", type=positive_float, default=DEFAULT_CONFIDENCE,
                    help=f"paired latency gate: confidence of the ratio's interval (default: {DEFAULT_CONFIDENCE})")


@dataclass(frozen=True)
class PairedOptions:
    baseline_onnx: Path | None
    limit: float | None
    inconclusive_passes: bool
    rounds: int
    max_rounds: int
    block_steps: int
    warmup_steps: int
    confidence: float


def looks(rounds: int, max_rounds: int) -> int:
    """How many times the gate may judge: after every `rounds` rounds, up to `max_rounds`."""
    return max(1, -(-max(max_rounds, rounds) // max(rounds, 1)))


def paired_options(config: pytest.Config) -> PairedOptions:
    o = config.option
    conf = float(o.paired_confidence)
    if not conf < 1.0:
        raise StreamparityError(f"--paired-confidence={conf:g}: must be below 1 (e.g. 0.95)")
    need = min_pairs(per_look(conf, looks(o.paired_rounds, o.paired_max_rounds)))
    if o.paired_rounds < need:
        raise StreamparityError(f"--paired-rounds={o.paired_rounds}: a {conf:.0%} interval for the median ratio "
                                f"needs at least {need} pairs (over {looks(o.paired_rounds, o.paired_max_rounds)} "
                                "looks, see --paired-max-rounds)")
    if o.paired_block_steps < 1:
        raise StreamparityError("--paired-block-steps=0: a block needs at least 1 step")
    base = o.baseline_onnx
    if base is not None and not base.is_file():
        raise StreamparityError(f"--baseline-onnx={base}: " + ("is a directory, not a file" if base.is_dir()
                                                                   else "file not found"))
    return PairedOptions(base, o.gate_latency_ratio, o.latency_inconclusive == "pass", int(o.paired_rounds),
                         max(int(o.paired_max_rounds), int(o.paired_rounds)), int(o.paired_block_steps),
                         int(o.paired_warmup_steps), conf)
