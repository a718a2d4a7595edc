"""ONNX models on disk: the files one model is made of, their content digest, and cached FP16 copies.

A model over 2 GB (the full-size parakeet encoder is 2.4 GB in FP32) cannot be one protobuf: NeMo's export
writes the graph to ``encoder.onnx`` and each weight to its own file beside it ("external data").  Anything
keyed by "the model's bytes" must therefore hash those files too, or a re-export with new weights and the
same graph would be served a stale engine or FP16 copy.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from streamparity.errors import ModelMismatch
from streamparity.onnx_wire import WireError, external_extents

EXTERNAL_DATA_ABOVE = 1 << 30
"""FP16 copies larger than this (bytes of tensor data) are written with their tensors in a separate file."""

_memo: dict[tuple[str, int, int, int, int], str] = {}
_memo_lock = threading.Lock()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Streamed sha256 hex of one file, memoised by (path, size, mtime, inode, ctime): a file rewritten in place
    with the same size within the clock's resolution, or given its old mtime back, still changes its ctime."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    with _memo_lock:
        hit = _memo.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    with _memo_lock:
        _memo[key] = digest
    return digest


def _proto_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a loaded ``onnx`` graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from _proto_tensors(a.g)
            for g in a.graphs:
                yield from _proto_tensors(g)


def external_data_files(path: Path) -> list[Path]:
    """The files holding the model's external tensors, sorted; [] for a self-contained model or for a file
    that is not a readable ONNX model (whoever loads it reports that).  A referenced file that is missing
    raises ModelMismatch naming it."""
    try:
        extents = external_extents(path)
    except (OSError, WireError):  # not ONNX, truncated, ...: not this function's verdict
        return []
    files = sorted(Path(path).parent / loc for loc in extents)
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise ModelMismatch(f"the model keeps weights in {len(files)} external data file(s) beside it, and "
                            f"{len(missing)} are missing: {', '.join(f.name for f in missing[:5])}"
                            + (" ..." if len(missing) > 5 else ""), file=str(path))
    sizes = {loc: (Path(path).parent / loc).stat().st_size for loc in extents}
    short = [(loc, need, sizes[loc]) for loc, need in sorted(extents.items()) if sizes[loc] < need]
    if short:
        loc, need, have = short[0]
        raise ModelMismatch(f"external data file {loc} holds {have} bytes, the model's tensors need {need} "
                            f"(truncated?)" + (f"; {len(short) - 1} more files short" if len(short) > 1 else ""),
                            file=str(path))
    return files


def model_sha256(path: str | Path) -> str:
    """Content digest of a model: the file's sha256 when self-contained, else the sha256 of the graph file's
    digest and each external data file's name and digest (any changed weight changes it)."""
    p = Path(path)
    graph = file_sha256(p)
    external = external_data_files(p)
    if not external:
        return graph
    h = hashlib.sha256(graph.encode("ascii"))
    for f in external:
        h.update(b"\0" + os.path.relpath(f, p.parent).encode("utf-8") + b"\0" + file_sha256(f).encode("ascii"))
    return h.hexdigest()


def fp16_variant(onnx_path: Path, cache_dir: Path, *, op_block_list: Sequence[str] | None = None,
                 node_block_list: Sequence[str] = ()) -> Path:
    """An FP16 copy of the model (weights and math in FP16, I/O kept FP32), cached in `cache_dir` by the
    model's content digest and the block lists.  Models over 2 GB are shape-inferred from their path and
    the copy keeps its tensors in one external data file when it is large.  Writes are atomic: the graph
    file, which names its data file, appears last."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    options = f"{sorted(op_block_list) if op_block_list is not None else 'default'}|{sorted(node_block_list)}"
    digest = hashlib.sha256((model_sha256(onnx_path) + "|" + options).encode("utf-8")).hexdigest()[:16]
    out = Path(cache_dir) / f"{onnx_path.stem}.fp16-{digest}.onnx"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    external = external_data_files(onnx_path)
    try:
        if external:
            # onnx.shape_inference.infer_shapes() serializes the whole model: impossible past 2 GB.  The
            # path variant reads the graph alone; its output sits beside the weights so they still resolve.
            fd, tmp = tempfile.mkstemp(prefix=f".{onnx_path.stem}.inferred-", suffix=".onnx", dir=onnx_path.parent)
            os.close(fd)
            try:
                onnx.shape_inference.infer_shapes_path(str(onnx_path), tmp)
                model = onnx.load(tmp, load_external_data=False)
                onnx.external_data_helper.load_external_data_for_model(model, str(onnx_path.parent))
            finally:
                os.unlink(tmp)
        else:
            model = onnx.load(str(onnx_path))
        kwargs: dict[str, Any] = {"keep_io_types": True, "disable_shape_infer": bool(external),
                                  "node_block_list": list(node_block_list)}
        if op_block_list is not None:
            kwargs["op_block_list"] = list(op_block_list)
        m16 = convert_float_to_float16(model, **kwargs)
    except ModelMismatch:
        raise
    except Exception as e:  # onnx / converter errors: name the model, no traceback
        why = str(e).splitlines()[0][:300] if str(e) else "no message"
        raise ModelMismatch(f"cannot make the FP16 copy of the model ({type(e).__name__}: {why})",
                            file=str(onnx_path)) from None
    data_bytes = sum(t.ByteSize() for t in _proto_tensors(m16.graph))
    tmp_graph = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        if data_bytes > EXTERNAL_DATA_ABOVE:
            location = f"{out.stem}.{uuid.uuid4().hex[:8]}.data"  # unique: never overwrites a file in use
            onnx.save_model(m16, str(tmp_graph), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=location, size_threshold=1024)
            # the data was written beside the temporary graph under its final name; the graph goes last
        else:
            tmp_graph.write_bytes(m16.SerializeToString())
        os.replace(tmp_graph, out)
    finally:
        if tmp_graph.exists():
            tmp_graph.unlink()
    return out
