"""Contract: load and validate a contract JSON into typed, immutable objects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamparity.errors import ContractError

Precision = Literal["fp32", "fp16", "int8"]
Dim = int | str

ROLE_AUDIO = "audio"
ROLE_LENGTH = "length"
ROLE_CACHE_CHANNEL = "cache_channel"
ROLE_CACHE_TIME = "cache_time"
ROLE_CACHE_LEN = "cache_len"
ROLE_ENCODED = "encoded"
ROLE_ENCODED_LEN = "encoded_len"
CACHE_ROLES = (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME, ROLE_CACHE_LEN)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[Dim, ...]
    role: str
    feeds: str | None = None
    compare: bool = True

    def shape_str(self) -> str:
        return "[" + ", ".join(str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class CacheLenRule:
    rule: str
    initial: int
    step: int
    max: int

    def expected_out(self, cache_len_in: int) -> int:
        return min(cache_len_in + self.step, self.max)

    def expected_at(self, chunk: int) -> tuple[int, int]:
        """(in, out) cache length at chunk index `chunk` of an unbroken stream."""
        cin = min(self.initial + chunk * self.step, self.max)
        return cin, self.expected_out(cin)


@dataclass(frozen=True)
class Streaming:
    first_chunk_frames: int
    chunk_frames: int
    valid_out_len: int
    cache_channel_size: int
    cache_time_size: int
    cache_len: CacheLenRule
    cache_output_time_dim: str = "fixed"
    cache_pad_side: str = "left"
    nemo: Mapping[str, Any] = field(default_factory=dict)

    def frames_for(self, chunk: int) -> int:
        return self.first_chunk_frames if chunk == 0 else self.chunk_frames


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    reason: str
    warn_atol: float | None = None
    p95_max_abs: float | None = None
    p99_max_abs: float | None = None
    min_pass_fraction: float | None = None
    known_issue: str | None = None

    def describe(self) -> str:
        s = f"atol={self.atol:g}, rtol={self.rtol:g}"
        if self.warn_atol is not None:
            s += f", warn above {self.warn_atol:g}"
        return s


@dataclass(frozen=True)
class ProfileShape:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class Profile:
    name: str
    shapes: Mapping[str, ProfileShape]
    description: str = ""
    used: bool = True


@dataclass(frozen=True)
class StabilityGate:
    max_slope_per_chunk: float = 1e-6
    slope_sigma: float = 3.0
    max_late_early_ratio: float = 2.0
    window: int = 50
    reason: str = ""
    early_floor_fraction: float = 0.01
    max_slope_fraction_of_atol: float | None = 1e-3
    """The slope limit at a precision is ``max(max_slope_per_chunk, this x atol)``: FP16's rounding noise is
    ~100x FP32's, and a staircase step of its sliding-max cache error is a "significant" slope far above an
    FP32-sized limit.  1e-3 x atol lets an error grow by 30% of atol over 300 chunks; ``null``: absolute only."""


@dataclass(frozen=True)
class Gates:
    vs_baseline_factor: float = 4.0
    vs_baseline_floor: Mapping[str, float] = field(default_factory=dict)
    offline_atol: float | None = None
    offline_warmup_chunks: int = 0
    offline_reason: str = ""
    stability: StabilityGate = field(default_factory=StabilityGate)
    reason: str = ""


@dataclass(frozen=True)
class Latency:
    target_ms: float
    device: str
    precision: str | None = None
    reason: str = ""
    backends: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuildOptions:
    fp32_disable_tf32: bool = True
    fp16_fp32_layers: tuple[str, ...] = ()
    workspace_mib: int = 4096
    reason: str = ""


@dataclass(frozen=True)
class KnownIssue:
    id: str
    outputs: tuple[str, ...]
    reason: str
    status: str = "open"


@dataclass(frozen=True)
class Contract:
    name: str
    path: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    cache_layout: str
    streaming: Streaming
    tolerances: Mapping[str, Mapping[str, Tolerance]]
    dims: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    profiles: tuple[Profile, ...] = ()
    gates: Gates = field(default_factory=Gates)
    latency: Latency | None = None
    build: BuildOptions = field(default_factory=BuildOptions)
    known_issues: tuple[KnownIssue, ...] = ()
    description: str = ""
    model: Mapping[str, Any] = field(default_factory=dict)

    # -- lookups -------------------------------------------------------------------------
    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)

    def output(self, name: str) -> TensorSpec:
        for t in self.outputs:
            if t.name == name:
                return t
        raise KeyError(name)

    def input_by_role(self, role: str) -> TensorSpec:
        return _by_role(self.inputs, role, self.path, "inputs")

    def output_by_role(self, role: str) -> TensorSpec:
        return _by_role(self.outputs, role, self.path, "outputs")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def cache_feeds(self) -> dict[str, str]:
        """Map cache output name -> cache input name it feeds in the next chunk."""
        return {o.name: o.feeds for o in self.outputs if o.feeds}

    def compared_outputs(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs if o.compare and o.name in self.tolerances)

    def tolerance(self, output: str, precision: str) -> Tolerance:
        per = self.tolerances.get(output)
        if per is None:
            raise ContractError(f"no tolerance for output {output!r}", file=str(self.path), field="tolerances")
        tol = per.get(precision)
        if tol is None:  # no fallback to another precision: the loader makes every compared output cover the same set
            raise ContractError(
                f"no {precision} tolerance for output {output!r} (the contract has {', '.join(sorted(per))})",
                file=str(self.path),
                field=f"tolerances.{output}.{precision}",
            )
        return tol

    @property
    def precisions(self) -> tuple[str, ...]:
        """Precisions the contract has tolerances for (every compared output has all of them)."""
        return tuple(sorted({p for per in self.tolerances.values() for p in per}))

    def known_issue(self, issue_id: str) -> KnownIssue | None:
        for k in self.known_issues:
            if k.id == issue_id:
                return k
        return None

    def resolve(self, key: str) -> Path | None:
        """Resolve a model path (onnx, reference, ...) relative to the contract file."""
        value = self.model.get(key)
        if not value:
            return None
        p = Path(value)
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    def concrete_shape(self, spec: TensorSpec, bindings: Mapping[str, int]) -> tuple[int, ...]:
        out: list[int] = []
        for d in spec.shape:
            if isinstance(d, int):
                out.append(d)
            elif d in bindings:
                out.append(int(bindings[d]))
            else:
                raise ContractError(f"symbolic dim {d!r} of {spec.name} is unbound", file=str(self.path))
        return tuple(out)

    def cache_axes(self) -> tuple[int, int]:
        """(layers axis, batch axis) of the cache_channel / cache_time tensors."""
        return (0, 1) if self.cache_layout == "layers_first" else (1, 0)


def _by_role(specs: Sequence[TensorSpec], role: str, path: Path, where: str) -> TensorSpec:
    found = [t for t in specs if t.role == role]
    if len(found) != 1:
        raise ContractError(
            f"expected exactly one {where[:-1]} with role {role!r}, found {len(found)}",
            file=str(path),
            field=where,
        )
    return found[0]
