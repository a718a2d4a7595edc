"""Cache layout of an exported encoder: wrap NeMo's batch-first cache I/O in transposes (layers-first).

NeMo exports ``cache_last_channel`` / ``cache_last_time`` as ``[B, layers, ...]``.  A layers-first
contract (``[layers, B, ...]``, as NeMo's ``get_initial_cache_state`` returns them) gets an ONNX whose
graph inputs are transposed into the exported body and whose cache outputs are transposed back out,
so that the body is exactly NeMo's export and only the layout at the boundary changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_PERM = [1, 0, 2, 3]


def _swap01(vi: Any) -> None:
    dims = vi.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ValueError(f"{vi.name} has rank {len(dims)}, a cache tensor has rank 4")
    a, b = type(dims[0])(), type(dims[0])()
    a.CopyFrom(dims[0])
    b.CopyFrom(dims[1])
    dims[0].CopyFrom(b)
    dims[1].CopyFrom(a)


def to_layers_first(model: Any, cache_inputs: Sequence[str], cache_outputs: Sequence[str]) -> Any:
    """A copy of `model` whose named rank-4 cache inputs and outputs are layers-first."""
    import onnx
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    ins = {v.name: v for v in g.input}
    outs = {v.name: v for v in g.output}
    new_nodes = []
    for name in cache_inputs:
        if name not in ins:
            raise ValueError(f"model has no input {name!r}")
        inner = f"{name}__batch_first"
        for node in g.node:
            for i, n in enumerate(node.input):
                if n == name:
                    node.input[i] = inner
        _swap01(ins[name])
        new_nodes.append(helper.make_node("Transpose", [name], [inner], perm=_PERM, name=f"{name}_to_batch_first"))
    tail = []
    for name in cache_outputs:
        if name not in outs:
            raise ValueError(f"model has no output {name!r}")
        inner = f"{name}__batch_first"
        for node in g.node:
            for i, n in enumerate(node.output):
                if n == name:
                    node.output[i] = inner
            for i, n in enumerate(node.input):
                if n == name:
                    node.input[i] = inner
        _swap01(outs[name])
        tail.append(helper.make_node("Transpose", [inner], [name], perm=_PERM, name=f"{name}_to_layers_first"))
    nodes = new_nodes + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    return m
