"""Layer-wise bisection: the first intermediate tensor where a candidate runtime leaves ORT FP32.

Every intermediate tensor of the candidate ONNX is marked as a graph output, the failing chunk's
inputs are run through the candidate backend (ORT FP16, TensorRT, or ORT FP32 on a modified
model) and through ONNX Runtime FP32 on the baseline model, and the tensors common to both are
compared in the candidate graph's topological order.  A tensor diverges when
``max|cand - base| > atol + rtol * max|base|`` (or it has new NaN/Inf, or its shape differs).

Marking outputs is intrusive: a builder such as TensorRT cannot fuse across a marked tensor, so
the instrumented engine is not the engine that failed; the report says so.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamparity.errors import ModelMismatch, StreamparityError

FUSION_NOTE = ("marking intermediate tensors as outputs changes what a runtime may fuse (TensorRT cannot fuse "
               "across a marked tensor, ONNX Runtime keeps the marked nodes): the instrumented candidate is not "
               "bit-identical to the one that failed. Confirm the culprit by fixing it, not by this profile alone.")


@dataclass
class TensorError:
    index: int
    name: str
    node: str
    op: str
    shape: tuple[int, ...]
    max_abs: float
    ref_max: float
    rel: float
    limit: float
    nonfinite: int
    diverged: bool
    note: str = ""


@dataclass
class BisectResult:
    candidate: str
    baseline: str
    chunk: int | None
    atol: float
    rtol: float
    marked: int
    compared: list[TensorError] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    outputs_diverged: list[str] = field(default_factory=list)

    @property
    def first(self) -> TensorError | None:
        return next((t for t in self.compared if t.diverged), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["first"] = asdict(self.first) if self.first else None
        return d


def _onnx() -> Any:
    import onnx

    return onnx


def topo_tensors(model: Any) -> list[tuple[str, str, str]]:
    """(tensor, node name, op type) for every top-level node output, in the graph's node order
    (ONNX requires topological order; it is checked here)."""
    known = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    out: list[tuple[str, str, str]] = []
    for pos, node in enumerate(model.graph.node):
        for name in node.input:
            if name not in known:
                raise ModelMismatch(f"node {node.name or pos!r} reads {name!r} before it is produced: the graph is "
                                    "not topologically sorted", field="graph.node")
        for name in node.output:
            if name:
                known.add(name)
                out.append((name, node.name or f"#{pos}", node.op_type))
    return out


FLOAT_TYPES = (1, 10, 11, 16)  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
NOT_FLOAT = "not floating point (left unmarked)"


def float_tensors(model: Any) -> set[str]:
    """Names of the tensors that ONNX shape inference types as floating point (external data not needed)."""
    onnx = _onnx()
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as e:  # inference is best effort: an unknown type means "not marked"
        raise ModelMismatch(f"ONNX shape inference failed ({type(e).__name__}: {e}), so tensor types are unknown; "
                            "pass --only REGEX to choose the tensors to mark", field="graph") from None
    g = inferred.graph
    return {v.name for v in (*g.value_info, *g.output, *g.input)
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type in FLOAT_TYPES}


def instrument(onnx_path: Path, *, only: str | None = None,
               float_only: bool = False) -> tuple[Path, list[tuple[str, str, str]], set[str]]:
    """A copy of the model with every intermediate tensor (matching `only`, a regex) marked as an output.

    With `float_only`, only tensors typed floating point by shape inference are marked: TensorRT keeps
    integer shape computations on the host as shape tensors, which cannot be bound as device outputs.
    Returns (copy, every node output in topological order, the tensors left unmarked for their type).
    External weight files are kept where they are: the copy is written beside the original so that
    its relative external-data references still resolve, and removed by the caller.
    """
    onnx = _onnx()
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError, OSError, ...
        raise ModelMismatch(f"cannot load ONNX ({type(e).__name__}: {e})", file=str(onnx_path)) from None
    try:
        tensors = topo_tensors(model)
    except ModelMismatch as e:
        raise ModelMismatch(e.message, file=str(onnx_path), field=e.field) from None
    existing = {o.name for o in model.graph.output}
    pat = re.compile(only) if only else None
    marked = [t for t in tensors if t[0] not in existing and (pat is None or pat.search(t[0]) or pat.search(t[1]))]
    if pat is not None and not marked:
        raise ModelMismatch(f"--only {only!r} matches none of the model's {len(tensors)} intermediate tensors or "
                            "their nodes", file=str(onnx_path), field="--only")
    unmarked: set[str] = set()
    if float_only:
        try:
            floats = float_tensors(model)
        except ModelMismatch as e:
            raise ModelMismatch(e.message, file=str(onnx_path), field=e.field) from None
        unmarked = {t[0] for t in marked if t[0] not in floats}
        marked = [t for t in marked if t[0] in floats]
    for name, _, _ in marked:
        vi = onnx.ValueInfoProto()
        vi.name = name
        model.graph.output.append(vi)
    fd, tmp = tempfile.mkstemp(prefix=f".{onnx_path.stem}.bisect-", suffix=".onnx", dir=onnx_path.parent)
    os.close(fd)
    onnx.save(model, tmp)
    return Path(tmp), tensors, unmarked


def _as_float(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.float64, copy=False)


def compare_tensor(cand: np.ndarray, base: np.ndarray, *, atol: float, rtol: float) -> tuple[float, float, int, bool,
                                                                                               str]:
    """(max_abs, ref_max, new non-finite, diverged, note) for one tensor."""
    c = np.asarray(cand)
    b = np.asarray(base)
    if c.shape != b.shape:
        return float("inf"), float("nan"), 0, True, f"shape {list(c.shape)} != baseline {list(b.shape)}"
    if c.size == 0:
        return 0.0, 0.0, 0, False, ""
    if c.dtype.kind not in "fiub" or b.dtype.kind not in "fiub":
        return 0.0, 0.0, 0, False, "not numeric"
    if c.dtype.kind in "iub" and b.dtype.kind in "iub":
        diff = np.abs(c.astype(np.int64) - b.astype(np.int64))
        m = float(diff.max())
        return m, float(np.abs(b.astype(np.int64)).max()), 0, m > 0, ""
    c64, b64 = _as_float(c), _as_float(b)
    fin_b = np.isfinite(b64)
    new_nonfinite = int((~np.isfinite(c64) & fin_b).sum())
    both = fin_b & np.isfinite(c64)
    diff = np.abs(c64 - b64)[both]
    m = float(diff.max()) if diff.size else 0.0
    ref_max = float(np.abs(b64[fin_b]).max()) if fin_b.any() else 0.0
    diverged = new_nonfinite > 0 or m > atol + rtol * ref_max
    return m, ref_max, new_nonfinite, diverged, ""


Runner = Callable[[Path, Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def bisect(
    candidate_onnx: Path,
    baseline_onnx: Path,
    feeds: Mapping[str, np.ndarray],
    *,
    run_candidate: Runner,
    run_baseline: Runner,
    atol: float,
    rtol: float,
    candidate: str,
    baseline: str = "ort-cpu-fp32",
    chunk: int | None = None,
    only: str | None = None,
    graph_outputs: tuple[str, ...] = (),
    float_only: bool = False,
) -> BisectResult:
    """Run both instrumented models on `feeds` and compare every common tensor in topological order.

    `float_only` marks only floating-point tensors in the candidate (TensorRT, see :func:`instrument`)."""
    made: list[Path] = []
    try:
        cand_path, order, unmarked = instrument(candidate_onnx, only=only, float_only=float_only)
        made.append(cand_path)
        if baseline_onnx.resolve() == candidate_onnx.resolve() and not float_only:
            base_path = cand_path
        else:
            base_path, _, _ = instrument(baseline_onnx, only=only)
            made.append(base_path)
        cand_out = run_candidate(cand_path, feeds)
        base_out = run_baseline(base_path, feeds)
    finally:
        for p in made:
            try:
                p.unlink()
            except OSError:
                pass
    res = BisectResult(candidate=candidate, baseline=baseline, chunk=chunk, atol=atol, rtol=rtol,
                       marked=len(order))
    skipped: dict[str, int] = {}
    for i, (name, node, op) in enumerate(order):
        if name in unmarked and name not in cand_out:
            skipped[NOT_FLOAT] = skipped.get(NOT_FLOAT, 0) + 1
            continue
        if name not in cand_out:
            skipped["not produced by the candidate"] = skipped.get("not produced by the candidate", 0) + 1
            continue
        if name not in base_out:
            skipped["not in the baseline model"] = skipped.get("not in the baseline model", 0) + 1
            continue
        m, ref_max, nonfinite, diverged, note = compare_tensor(cand_out[name], base_out[name], atol=atol, rtol=rtol)
        if note == "not numeric":
            skipped["not numeric"] = skipped.get("not numeric", 0) + 1
            continue
        rel = m / ref_max if ref_max > 0 else (0.0 if m == 0 else float("inf"))
        res.compared.append(TensorError(i, name, node, op, tuple(np.asarray(cand_out[name]).shape), m, ref_max, rel,
                                        atol + rtol * ref_max, nonfinite, diverged, note))
        if diverged and name in graph_outputs:
            res.outputs_diverged.append(name)
    res.skipped = skipped
    inner = [t for t in res.compared if t.name not in graph_outputs]
    if not inner and skipped.get("not produced by the candidate"):
        raise StreamparityError(
            f"the {candidate} backend returned none of the {skipped['not produced by the candidate']} marked "
            "intermediate tensors, only its own outputs: bisection needs a backend that returns every output of "
            "the (instrumented) model", file=str(candidate_onnx))
    return res


_LAYER = re.compile(r"^/?([^/]+)")


def layer_of(node: str) -> str:
    """Group key of a node name: NeMo exports name nodes '/layers.3/self_attn/MatMul' -> 'layers.3'."""
    m = _LAYER.match(node)
    if not m or "/" not in node.strip("/"):
        return "(top level)"
    return m.group(1)


def profile(res: BisectResult) -> list[tuple[str, int, int, float, float]]:
    """(group, tensors, diverged, max abs, max rel) per layer group, in first-appearance (graph) order."""
    groups: dict[str, list[TensorError]] = {}
    for t in res.compared:
        groups.setdefault(layer_of(t.node), []).append(t)
    out = []
    for g, ts in groups.items():
        out.append((g, len(ts), sum(t.diverged for t in ts), max(t.max_abs for t in ts),
                    max((t.rel for t in ts if np.isfinite(t.rel)), default=0.0)))
    return out


def report_lines(res: BisectResult, *, context: int = 5, trt: bool = False) -> list[str]:
    where = f" on chunk {res.chunk}" if res.chunk is not None else ""
    skipped = ", ".join(f"{v} {k}" for k, v in res.skipped.items())
    lines = [f"bisect: {res.candidate} vs {res.baseline}{where}: {len(res.compared)} tensors compared in topological "
             f"order (of {res.marked} in the graph" + (f"; skipped: {skipped}" if skipped else "") + ")",
             f"threshold: max|candidate - baseline| > atol {res.atol:g} + rtol {res.rtol:g} * max|baseline|, "
             "or new NaN/Inf, or a shape change"]
    first = res.first
    if first is None:
        lines.append("no tensor diverges: the candidate matches the baseline everywhere at this threshold")
    else:
        pos = res.compared.index(first)
        lines.append(f"first divergent tensor: {first.name}")
        lines.append(f"  produced by node {first.node} ({first.op}), shape {list(first.shape)}: max abs error "
                     f"{first.max_abs:.3g} (limit {first.limit:.3g}), {first.rel:.3g} of max|baseline| "
                     f"{first.ref_max:.3g}" + (f", {first.nonfinite} new NaN/Inf" if first.nonfinite else "")
                     + (f"; {first.note}" if first.note else ""))
        lines.append(f"  tensors before it in topological order ({min(context, pos)} shown of {pos} that agree):")
        for t in res.compared[max(0, pos - context):pos]:
            lines.append(f"    {t.index:5d} {t.name:60s} {t.op:12s} max abs {t.max_abs:.3g}")
        after = [t for t in res.compared[pos + 1:] if t.diverged]
        lines.append(f"  then {len(after)} more divergent tensors downstream"
                     + (f" (the graph outputs {', '.join(res.outputs_diverged)} among them)"
                        if res.outputs_diverged else ""))
    lines.append("error profile along the graph (per layer, in graph order):")
    lines.append(f"    {'group':24s} {'tensors':>7s} {'diverged':>8s} {'max abs':>10s} {'max rel':>10s}")
    for g, n, d, m, r in profile(res):
        lines.append(f"    {g:24s} {n:7d} {d:8d} {m:10.3g} {r:10.3g}")
    lines.append(("note: " if not trt else "WARNING: ") + FUSION_NOTE)
    return lines


def check_feeds(feeds: Mapping[str, np.ndarray], names: tuple[str, ...], file: str) -> dict[str, np.ndarray]:
    missing = [n for n in names if n not in feeds]
    if missing:
        raise StreamparityError(f"the inputs lack {', '.join(missing)} (functional-mode inputs with caches are needed)",
                                file=file, field="inputs")
    return {n: np.asarray(feeds[n]) for n in names}
