"""Failure bundles: one self-contained ``.npz`` per failing case, replayed by ``streamparity repro``."""

from __future__ import annotations

import io
import json
import re
import zipfile
import zlib
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
        "stream_position": res.stream_position,
        "checked_inputs": res.checked_inputs,
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


_VERDICTS = ("pass", "warn", "fail")
_MAX_INDEX = 2**31 - 1


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _index(v: Any) -> bool:
    return type(v) is int and 0 <= v <= _MAX_INDEX


def _verdict(v: Any) -> bool:
    return v in _VERDICTS


# field -> (check, what it must be, required)
_FIELDS: dict[str, tuple[Any, str, bool]] = {
    "contract": (_str, "a path string", True),
    "contract_name": (_str, "a string", False),
    "onnx": (_str, "a path string", True),
    "reference": (_str, "a path string", False),
    "backend": (_str, "a backend id string", True),
    "precision": (_str, "a string", False),
    "mode": (lambda v: v in ("functional", "closed_loop"), "'functional' or 'closed_loop'", True),
    "chunk": (_index, f"an integer 0..{_MAX_INDEX}", True),
    "tolerances": (lambda v: isinstance(v, dict), "an object", False),
    "verdict": (_verdict, "pass, warn or fail", False),
    "verdicts": (lambda v: isinstance(v, dict) and all(_verdict(x) for x in v.values()),
                 "an object of pass/warn/fail", True),
    "violations": (lambda v: isinstance(v, list) and all(_str(x) for x in v), "a list of strings", True),
    "error": (lambda v: v is None or _str(v), "a string or null", False),
    "stream_position": (lambda v: v is None or _index(v), f"null or an integer 0..{_MAX_INDEX}", False),
    "checked_inputs": (lambda v: type(v) is bool, "true or false", False),
}


def check_meta(meta: Any, file: str) -> dict[str, Any]:
    """The bundle's judging context with every field of the right type (booleans are not integers)."""
    from streamparity.errors import StreamparityError

    if not isinstance(meta, dict):
        raise StreamparityError("bundle metadata is not a JSON object", file=file, field="meta")
    if type(meta.get("version")) is not int or meta["version"] != BUNDLE_VERSION:
        raise StreamparityError(f"bundle version {str(meta.get('version'))[:40]} is not {BUNDLE_VERSION}", file=file,
                                field="meta.version")
    for key, (ok, want, required) in _FIELDS.items():
        if key not in meta:
            if required:
                raise StreamparityError(f"bundle metadata lacks {key!r}", file=file, field=f"meta.{key}")
            continue
        if not ok(meta[key]):
            shown = json.dumps(meta[key])[:40]
            raise StreamparityError(f"bundle metadata {key} must be {want}, got {shown}", file=file,
                                    field=f"meta.{key}")
    # a closed loop is judged at its stream position; a functional chunk is not
    if "stream_position" in meta and (meta["stream_position"] is None) == (meta["mode"] == "closed_loop"):
        raise StreamparityError(f"bundle metadata stream_position {json.dumps(meta['stream_position'])} does not "
                                f"fit mode {meta['mode']}", file=file, field="meta.stream_position")
    return meta


def read_bundle(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray],
                                     dict[str, np.ndarray]]:
    from streamparity import strictjson
    from streamparity.errors import StreamparityError

    file = str(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a plain .npy array
            raise StreamparityError("not a streamparity bundle (an .npz written by a failing parity test; this is "
                                    "one .npy array)", file=file)
        with loaded as z:
            if "meta" not in z.files:
                raise StreamparityError("not a streamparity bundle (an .npz written by a failing parity test; "
                                        "it has no meta)", file=file)
            raw = z["meta"]
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise StreamparityError(f"bundle meta must be uint8 bytes, got {raw.dtype} {list(raw.shape)}",
                                        file=file, field="meta")
            meta = strictjson.loads(bytes(raw), file=file, what="bundle metadata", allow_nonfinite=True)
            groups: dict[str, dict[str, np.ndarray]] = {"input": {}, "expected": {}, "actual": {}}
            for key in z.files:
                if key == "meta":
                    continue
                g, _, name = key.partition("/")
                if g not in groups or not name:
                    raise StreamparityError(f"bundle holds an unknown array {key[:60]!r} (expected input/NAME, "
                                            "expected/NAME or actual/NAME)", file=file, field=key[:60])
                a = z[key]
                if a.dtype.kind not in "fiub":
                    raise StreamparityError(f"array {key[:60]} has non-numeric dtype {a.dtype}", file=file,
                                            field=key[:60])
                if g == "expected" and a.dtype.kind == "f" and not np.isfinite(a).all():
                    # expected outputs come from a checked reference: NaN/Inf there cannot be judged against
                    raise StreamparityError(f"expected output {name[:60]} holds {int((~np.isfinite(a)).sum())} "
                                            "non-finite values: not what the reference held", file=file,
                                            field=key[:60])
                groups[g][name] = a
    except StreamparityError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        # UnicodeDecodeError is a ValueError; a corrupt member raises zlib.error or BadZipFile on read
        raise StreamparityError("not a streamparity bundle (an .npz written by a failing parity test; "
                                f"{type(e).__name__})", file=file) from None
    return check_meta(meta, file), groups["input"], groups["expected"], groups["actual"]
