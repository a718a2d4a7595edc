"""Up-front model checks: the ONNX file's inputs and outputs against the contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamparity.contract.model import ROLE_AUDIO, ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME, Contract, TensorSpec
from streamparity.errors import ModelMismatch
from streamparity.onnx_wire import ValueInfo, WireError, read_io

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


def model_cache_layout(shape: list[Any], layers: int) -> str | None:
    """Where a model's cache puts its layer count: batch_first [B, layers, ...], layers_first [layers, B, ...]."""
    if len(shape) < 2:
        return None
    first, second = shape[0], shape[1]
    if second == layers and first != layers:
        return "batch_first"
    if first == layers and second != layers:
        return "layers_first"
    return None


def _layout_check(contract: Contract, spec: TensorSpec, shape: list[Any], file: str, field: str) -> None:
    if spec.role not in (ROLE_CACHE_CHANNEL, ROLE_CACHE_TIME) or len(shape) != len(spec.shape):
        return
    layers = spec.shape[contract.cache_axes()[0]]
    if not isinstance(layers, int):
        return
    got = model_cache_layout(shape, layers)
    if got is not None and got != contract.cache_layout:
        form = "[B, layers, ...]" if got == "batch_first" else "[layers, B, ...]"
        raise ModelMismatch(f"cache layout mismatch: the model's {spec.name} is {form} ({got}) {_fmt(shape)}, "
                            f"the contract says {contract.cache_layout} {spec.shape_str()}", file=file, field=field)


def _fmt(shape: list[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def check_model_io(contract: Contract, onnx_path: Path, inputs: list[Any], outputs: list[Any], *,
                   extra_outputs: bool = False) -> None:
    """The ONNX's I/O names, dtypes, ranks, cache layout and every fixed and symbolic dim against the contract.

    A dim fixed in both must be equal; a dim the model fixes where the contract has a symbol must be
    that symbol's whole ``dims`` range; a dim the model leaves symbolic is accepted (the model is more general).
    An output the contract does not name is refused unless `extra_outputs` (a tool's model with intermediate
    tensors exposed, run on the host)."""
    file = str(onnx_path)
    got_in = {i.name: i for i in inputs}
    got_out = {o.name: o for o in outputs}
    known = {spec.name for spec in contract.inputs}
    extra = [n for n in got_in if n not in known]
    if extra:  # no driver would feed it: every chunk would fail in the runtime
        raise ModelMismatch(f"model has input(s) {', '.join(map(repr, extra))} that the contract does not name "
                            f"(contract inputs: {', '.join(sorted(known))})", file=file, field=f"inputs.{extra[0]}")
    for section, specs, got in (("inputs", contract.inputs, got_in), ("outputs", contract.outputs, got_out)):
        for spec in specs:
            if spec.name not in got:
                raise ModelMismatch(f"model has no {section[:-1]} {spec.name!r} (model {section}: "
                                    f"{', '.join(got)})", file=file, field=f"{section}.{spec.name}")
            node = got[spec.name]
            dtype = _ORT_DTYPES.get(node.type, node.type)  # ORT's NodeArg and ValueInfo both spell tensor(float)
            if dtype != spec.dtype:
                raise ModelMismatch(f"{spec.name} is {dtype} in the model, {spec.dtype} in the contract",
                                    file=file, field=f"{section}.{spec.name}")
            shape = list(node.shape)
            if len(shape) != len(spec.shape):
                raise ModelMismatch(f"{spec.name} has rank {len(shape)} in the model ({shape}), contract says "
                                    f"{spec.shape_str()}", file=file, field=f"{section}.{spec.name}")
            _layout_check(contract, spec, shape, file, f"{section}.{spec.name}")
            if spec.role == ROLE_AUDIO and shape and isinstance(shape[-1], int) and shape[-1] > 0:
                frames = sorted({contract.streaming.first_chunk_frames, contract.streaming.chunk_frames})
                if frames != [shape[-1]]:  # the schedule feeds chunks the model cannot take
                    raise ModelMismatch(f"{spec.name} has {shape[-1]} frames fixed in the model {_fmt(shape)}, the "
                                        f"contract's schedule feeds {' and '.join(map(str, frames))} "
                                        "(streaming.first_chunk_frames, chunk_frames)", file=file,
                                        field=f"{section}.{spec.name}")
            for axis, (m, c) in enumerate(zip(shape, spec.shape)):
                if not isinstance(m, int) or m <= 0:  # symbolic (or ORT's -1/None): any contract value fits
                    continue
                if isinstance(c, int) and m != c:
                    raise ModelMismatch(f"{spec.name} dim {axis} is {m} in the model {_fmt(shape)}, {c} in the "
                                        f"contract {spec.shape_str()}", file=file, field=f"{section}.{spec.name}")
                if isinstance(c, str) and c in contract.dims:
                    lo, hi = contract.dims[c]
                    if (lo, hi) != (m, m):
                        raise ModelMismatch(f"{spec.name} dim {axis} is fixed to {m} in the model {_fmt(shape)}, the "
                                            f"contract's {c} ranges {lo}..{hi}", file=file,
                                            field=f"{section}.{spec.name}")
    # after the contract's own outputs, so that a renamed output is reported as the missing one
    known_out = {spec.name for spec in contract.outputs}
    extra_out = [n for n in got_out if n not in known_out]
    if extra_out and not extra_outputs:  # computed on every chunk and never judged; no device buffer for it
        names = ", ".join(map(repr, extra_out[:5])) + (f" and {len(extra_out) - 5} more" if len(extra_out) > 5 else "")
        raise ModelMismatch(f"model has output(s) {names} that the contract does not name "
                            f"(contract outputs: {', '.join(sorted(known_out))}); name each in the contract's "
                            'outputs (with "compare": false where it need not be judged)', file=file,
                            field=f"outputs.{extra_out[0]}")


def read_onnx_io(path: Path) -> tuple[list[ValueInfo], list[ValueInfo]]:
    """The graph's inputs (initializers excluded) and outputs, without loading weights."""
    try:
        inputs, outputs = read_io(path)
    except (OSError, WireError) as e:
        raise ModelMismatch(f"not a readable ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                            file=str(path)) from None
    if not inputs and not outputs:
        raise ModelMismatch("not an ONNX model (the graph has no inputs or outputs)", file=str(path))
    return inputs, outputs


def check_onnx_file(contract: Contract, path: Path) -> None:
    """The file must be an ONNX model whose I/O agrees with the contract (weights are not loaded)."""
    inputs, outputs = read_onnx_io(path)
    check_model_io(contract, path, inputs, outputs)


