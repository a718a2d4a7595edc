"""Deliberate faults injected into an ONNX model, to prove that the suite catches them.

Each function returns a modified copy; nothing here is used to judge a real runtime.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

FAULTS = ("scale-weight", "offset-output", "scale-output", "freeze-output", "passthrough-cache-len", "nan-output")


def _onnx() -> Any:
    import onnx

    return onnx


def load(path: Path):  # type: ignore[no-untyped-def]
    return _onnx().load(str(path))


def save(model, path: Path) -> Path:  # type: ignore[no-untyped-def]
    from streamparity.atomic import atomic_write_bytes

    atomic_write_bytes(path, model.SerializeToString())
    return path


def scale_initializer(model, pattern: str, factor: float):  # type: ignore[no-untyped-def]
    """Multiply every initializer whose name matches `pattern` by `factor` (a weight change)."""
    onnx = _onnx()
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    hits = 0
    for init in m.graph.initializer:
        if re.search(pattern, init.name):
            arr = numpy_helper.to_array(init)
            if arr.dtype.kind != "f":
                continue
            init.CopyFrom(numpy_helper.from_array((arr * factor).astype(arr.dtype), init.name))
            hits += 1
    if not hits:
        raise ValueError(f"no float initializer matches {pattern!r}")
    return m


def _rewire_output(model, output: str, op: str, value: float | int):  # type: ignore[no-untyped-def]
    onnx = _onnx()
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    outs = {o.name: o for o in m.graph.output}
    if output not in outs:
        raise ValueError(f"model has no output {output!r}")
    elem = outs[output].type.tensor_type.elem_type
    np_dtype = helper.tensor_dtype_to_np_dtype(elem)
    raw = f"{output}__prefault"
    for node in m.graph.node:
        for i, name in enumerate(node.output):
            if name == output:
                node.output[i] = raw
        for i, name in enumerate(node.input):
            if name == output:
                node.input[i] = raw
    const = f"{output}__fault_value"
    m.graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np_dtype), const))
    if op == "Freeze":
        zero = f"{output}__fault_zero"
        m.graph.initializer.append(numpy_helper.from_array(np.array(0, dtype=np_dtype), zero))
        mid = f"{output}__fault_mid"
        m.graph.node.append(helper.make_node("Mul", [raw, zero], [mid], name=f"fault_{output}_zero"))
        m.graph.node.append(helper.make_node("Add", [mid, const], [output], name=f"fault_{output}_freeze"))
    else:
        m.graph.node.append(helper.make_node(op, [raw, const], [output], name=f"fault_{output}_{op.lower()}"))
    return m


def offset_output(model, output: str, delta: float):  # type: ignore[no-untyped-def]
    """output += delta (a small corruption of a cache or of the encoder output)."""
    return _rewire_output(model, output, "Add", delta)


def scale_output(model, output: str, factor: float):  # type: ignore[no-untyped-def]
    """output *= factor; factor 0 on a cache output resets the cache every chunk."""
    return _rewire_output(model, output, "Mul", factor)


def freeze_output(model, output: str, value: float | int):  # type: ignore[no-untyped-def]
    """output := value (e.g. cache_last_channel_len stuck at 0)."""
    return _rewire_output(model, output, "Freeze", value)


def nan_output(model, output: str):  # type: ignore[no-untyped-def]
    """output += NaN."""
    return _rewire_output(model, output, "Add", float("nan"))


def passthrough(model, output: str, from_input: str):  # type: ignore[no-untyped-def]
    """output := the graph input `from_input` (cache length never advances, yet is 'monotonic >=')."""
    onnx = _onnx()
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    raw = f"{output}__prefault"
    for node in m.graph.node:
        for i, name in enumerate(node.output):
            if name == output:
                node.output[i] = raw
    m.graph.node.append(helper.make_node("Identity", [from_input], [output], name=f"fault_{output}_passthrough"))
    # keep the original computation alive as a dangling value (it is pruned by runtimes)
    return m


def break_node(model, node_name: str, factor: float = 1.5):  # type: ignore[no-untyped-def]
    """Multiply the first output of the named node by `factor`: a model broken at a known layer."""
    onnx = _onnx()
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    target = next((n for n in m.graph.node if n.name == node_name), None)
    if target is None:
        raise ValueError(f"no node named {node_name!r}")
    out = target.output[0]
    raw = f"{out}__prefault"
    target.output[0] = raw
    const = f"{node_name}__fault_factor"
    m.graph.initializer.append(numpy_helper.from_array(np.array(factor, dtype=np.float32), const))
    m.graph.node.append(helper.make_node("Mul", [raw, const], [out], name=f"fault_{node_name}"))
    # keep topological order: move the fault node right after the target
    nodes = list(m.graph.node)
    fault = nodes.pop()
    idx = nodes.index(target)
    nodes.insert(idx + 1, fault)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def add_dead_work(model, output: str, *, layers: int, dim: int = 256):  # type: ignore[no-untyped-def]
    """A slower model with identical results: ``output += 0 * sum(X @ W1 @ ... @ Wn)`` (a compute regression).

    X is a fixed [dim, dim] matrix scaled by the mean of the original output, so the chain depends on the
    model's input and cannot be constant-folded; the W are random orthogonal matrices (norms preserved, no
    overflow), so ``0 * sum`` is exactly 0 and the output is unchanged bit for bit.  On the tiny encoder
    (ONNX Runtime CPU, one thread) 10 layers of 256 make a step ~4.5x slower, 1 layer of 256 ~1.5x.
    """
    onnx = _onnx()
    from onnx import helper, numpy_helper

    if layers < 1 or dim < 1:
        raise ValueError(f"add_dead_work needs layers >= 1 and dim >= 1, got {layers} and {dim}")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    if output not in {o.name for o in g.output}:
        raise ValueError(f"model has no output {output!r}")
    raw = f"{output}__before_work"
    for node in g.node:
        for i, name in enumerate(node.output):
            if name == output:
                node.output[i] = raw
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32), "work_x"),
             numpy_helper.from_array(np.array(0.0, np.float32), "work_zero")]
    nodes = [helper.make_node("ReduceMean", [raw], ["work_scale"], keepdims=0, name="work_scale"),
             helper.make_node("Mul", ["work_x", "work_scale"], ["work_h0"], name="work_h0")]
    for i in range(layers):
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        inits.append(numpy_helper.from_array(q.astype(np.float32), f"work_w{i}"))
        nodes.append(helper.make_node("MatMul", [f"work_h{i}", f"work_w{i}"], [f"work_h{i + 1}"], name=f"work_mm{i}"))
    nodes += [helper.make_node("ReduceSum", [f"work_h{layers}"], ["work_sum"], keepdims=0, name="work_sum"),
              helper.make_node("Mul", ["work_sum", "work_zero"], ["work_nil"], name="work_nil"),
              helper.make_node("Add", [raw, "work_nil"], [output], name="work_add")]
    g.node.extend(nodes)
    g.initializer.extend(inits)
    onnx.checker.check_model(m)
    return m
