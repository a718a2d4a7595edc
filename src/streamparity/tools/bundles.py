"""Failure bundles: one self-contained ``.npz`` per failing case, replayed by ``streamparity repro``."""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamparity.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from streamparity.results.records import ChunkResult
    from streamparity.session import ParitySession

BUNDLE_VERSION = 1


def bundle_path(report_dir: Path, res: ChunkResult) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{res.backend}-{res.mode}-chunk{res.chunk:03d}")
    return report_dir / "bundles" / f"{safe}.npz"


def write_bundle(session: ParitySession, res: ChunkResult) -> Path | None:
    """Write the inputs (caches included), expected and actual outputs and the judging context."""
    if res.bundle_inputs is None:
        return None
    rec = session.reference.read(res.chunk)
    meta: dict[str, Any] = {
        "version": BUNDLE_VERSION,
        "contract": str(session.contract.path),
        "contract_name": session.contract.name,
        "onnx": str(session.onnx),
        "reference": str(session.reference.path),
        "backend": res.backend,
        "precision": res.precision,
        "mode": res.mode,
        "chunk": res.chunk,
        "tolerances": {name: vars(session.contract.tolerance(name, res.precision))
                       for name in session.contract.compared_outputs()},
        "verdict": res.verdict,
        "verdicts": res.verdicts,
        "violations": [str(v) for v in res.violations],
        "error": res.error,
    }
    arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    for k, v in res.bundle_inputs.items():
        arrays[f"input/{k}"] = np.asarray(v)
    for k, v in rec.outputs.items():
        arrays[f"expected/{k}"] = np.asarray(v)
    for k, v in (res.bundle_outputs or {}).items():
        arrays[f"actual/{k}"] = np.asarray(v)
    path = bundle_path(session.cfg.report_dir, res)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(path, buf.getvalue())
    return path


def read_bundle(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray],
                                     dict[str, np.ndarray]]:
    from streamparity.errors import StreamparityError

    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            groups: dict[str, dict[str, np.ndarray]] = {"input": {}, "expected": {}, "actual": {}}
            for key in z.files:
                if "/" in key:
                    g, name = key.split("/", 1)
                    if g in groups:
                        groups[g][name] = z[key]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # UnicodeDecodeError is a ValueError
        raise StreamparityError("not a streamparity bundle (an .npz written by a failing parity test; "
                                f"{type(e).__name__})", file=str(path)) from None
    if meta.get("version") != BUNDLE_VERSION:
        raise StreamparityError(f"bundle version {meta.get('version')} is not {BUNDLE_VERSION}", file=str(path),
                                field="version")
    return meta, groups["input"], groups["expected"], groups["actual"]
