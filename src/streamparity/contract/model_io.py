"""Up-front model checks: the ONNX file's inputs and outputs against the contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamparity.contract.model import Contract
from streamparity.errors import ModelMismatch

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


def check_model_io(contract: Contract, onnx_path: Path, inputs: list[Any], outputs: list[Any]) -> None:
    """The ONNX's I/O names, ranks, static dims and dtypes must agree with the contract."""
    file = str(onnx_path)
    got_in = {i.name: i for i in inputs}
    got_out = {o.name: o for o in outputs}
    for section, specs, got in (("inputs", contract.inputs, got_in), ("outputs", contract.outputs, got_out)):
        for spec in specs:
            if spec.name not in got:
                raise ModelMismatch(f"model has no {section[:-1]} {spec.name!r} (model {section}: "
                                    f"{', '.join(got)})", file=file, field=f"{section}.{spec.name}")
            node = got[spec.name]
            dtype = _ORT_DTYPES.get(node.type, node.type)
            if dtype != spec.dtype:
                raise ModelMismatch(f"{spec.name} is {dtype} in the model, {spec.dtype} in the contract",
                                    file=file, field=f"{section}.{spec.name}")
            shape = list(node.shape)
            if len(shape) != len(spec.shape):
                raise ModelMismatch(f"{spec.name} has rank {len(shape)} in the model ({shape}), contract says "
                                    f"{spec.shape_str()}", file=file, field=f"{section}.{spec.name}")
            for axis, (m, c) in enumerate(zip(shape, spec.shape)):
                if isinstance(m, int) and isinstance(c, int) and m != c:
                    raise ModelMismatch(f"{spec.name} dim {axis} is {m} in the model, {c} in the contract",
                                        file=file, field=f"{section}.{spec.name}")


def check_onnx_file(contract: Contract, path: Path) -> None:
    """The file must be an ONNX model whose I/O agrees with the contract (weights are not loaded)."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ModelMismatch(f"not a readable ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                            file=str(path)) from None
    if not model.graph.input and not model.graph.output:
        raise ModelMismatch("not an ONNX model (the graph has no inputs or outputs)", file=str(path))

    class _Node:
        def __init__(self, vi: Any) -> None:
            t = vi.type.tensor_type
            self.name = vi.name
            self.type = f"tensor({_ONNX_ELEM.get(t.elem_type, str(t.elem_type))})"
            self.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]

    inits = {i.name for i in model.graph.initializer}
    check_model_io(contract, path, [_Node(v) for v in model.graph.input if v.name not in inits],
                   [_Node(v) for v in model.graph.output])


_ONNX_ELEM = {1: "float", 10: "float16", 7: "int64", 6: "int32", 9: "bool", 11: "double"}
