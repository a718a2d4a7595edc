"""Content-addressed engine cache: one plan per (model, builder, GPU, build options), built once.

Layout under an engine dir::

    <name>-<precision>-<key[:16]>.plan    the serialized engine
    <name>-<precision>-<key[:16]>.json    manifest: key, key material, plan sha256/size, build time
    <name>-<precision>-<key[:16]>.lock    inter-process build lock (pytest-xdist workers)
    timing-<builder>-<version>-<gpu>.cache  builder timing cache, shared by all entries

The key is the sha256 of a canonical JSON of the key material, so any change of ONNX bytes (external
weight files included),
builder version, GPU or build option names a different file.  Corrupt entries are logged and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamparity.atomic import atomic_write_bytes
from streamparity.backends.onnx_models import model_sha256
from streamparity.errors import EngineCacheError

log = logging.getLogger("streamparity.backends.tensorrt.engine_cache")

MANIFEST_FORMAT = 1
LOCK_TIMEOUT_S = 3600.0

BuildFn = Callable[[Path], bytes]
"""Builds a plan; receives the timing-cache path (may not exist yet) and returns the plan bytes."""
VerifyFn = Callable[[bytes], None]
"""Raises if the plan bytes cannot be used (e.g. they do not deserialize)."""



@dataclass(frozen=True)
class CacheEntry:
    plan_path: Path
    manifest: dict[str, Any]
    built: bool

    @property
    def manifest_path(self) -> Path:
        return self.plan_path.with_suffix(".json")

    @property
    def key(self) -> str:
        return str(self.manifest["key"])

    def read_plan(self) -> bytes:
        return self.plan_path.read_bytes()


def _canonical_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, bytes):
        return obj.hex()
    raise TypeError(f"key material value {obj!r} ({type(obj).__name__}) is not JSON-serialisable")


def canonical_json(material: Mapping[str, Any]) -> str:
    """Sorted keys, no whitespace, tuples as lists; NaN/inf and unknown types are rejected."""
    return json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                      default=_canonical_default)


def cache_key(material: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of `material`."""
    try:
        text = canonical_json(material)
    except (TypeError, ValueError) as e:
        raise EngineCacheError(f"engine key material cannot be hashed: {e}") from None
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def onnx_sha256(path: str | Path) -> str:
    """Content digest of a model, external weight files included (:func:`streamparity.onnx_files.model_sha256`)."""
    return model_sha256(path)


def key_material(*, onnx: str | Path, builder: str, builder_version: str, gpu_name: str,
                 compute_capability: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The standard key material layout: model bytes, builder, GPU and every build option."""
    return {
        "onnx_sha256": onnx_sha256(onnx),
        "builder": {"name": builder, "version": builder_version},
        "gpu": {"name": gpu_name, "compute_capability": compute_capability},
        "options": dict(options),
    }


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "_", text).strip("_") or "x"


def entry_stem(name: str, precision: str, key: str) -> str:
    return f"{_safe(name)}-{_safe(precision)}-{key[:16]}"


def timing_cache_path(engine_dir: Path, material: Mapping[str, Any]) -> Path:
    """One timing cache per (builder, builder version, GPU name, compute capability)."""
    b = material.get("builder", {}) if isinstance(material.get("builder"), Mapping) else {}
    g = material.get("gpu", {}) if isinstance(material.get("gpu"), Mapping) else {}
    parts = [b.get("name", "builder"), b.get("version", "unknown"), g.get("name", "gpu"),
             g.get("compute_capability", "")]
    return Path(engine_dir) / ("timing-" + "-".join(_safe(str(p)) for p in parts if p != "") + ".cache")


def load_timing_cache(path: Path) -> bytes | None:
    """The timing cache bytes, or None when absent or unreadable (a cold start, never an error)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("ignoring unreadable timing cache %s: %s", path, e)
        return None
    return data or None


def save_timing_cache(path: Path, data: bytes) -> None:
    """Atomically replace the timing cache (last writer wins; entries are only hints)."""
    if data:
        atomic_write_bytes(path, bytes(data))


def _check(plan: Path, manifest_path: Path, key: str, verify_fn: VerifyFn | None
           ) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None) for a good entry; (None, reason) otherwise; (None, None) for a cold cache."""
    has_plan, has_manifest = plan.is_file(), manifest_path.is_file()
    if not has_plan and not has_manifest:
        return None, None
    if not has_plan:
        return None, "plan file is missing (manifest without plan)"
    if not has_manifest:
        return None, "manifest is missing (plan without manifest: interrupted write?)"
    try:
        manifest = json.loads(manifest_path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"manifest is unreadable ({e})"
    if not isinstance(manifest, dict):
        return None, "manifest is not a JSON object"
    if manifest.get("key") != key:
        return None, f"manifest key {str(manifest.get('key'))[:16]}... differs from {key[:16]}..."
    size = plan.stat().st_size
    if manifest.get("plan_size") != size:
        return None, f"plan size {size} differs from manifest {manifest.get('plan_size')} (truncated?)"
    data = plan.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if manifest.get("plan_sha256") != digest:
        want = str(manifest.get("plan_sha256"))[:16]
        return None, f"plan sha256 {digest[:16]}... differs from manifest {want}... (corrupt bytes)"
    if verify_fn is not None:
        try:
            verify_fn(data)
        except Exception as e:
            return None, f"plan does not load ({type(e).__name__}: {e})"
    return manifest, None


def _discard(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _discard_stale_temps(d: Path, stem: str) -> None:
    """Temp files of an interrupted write (killed mid-build: atomic_write never renamed them); called under the
    entry's lock, so no live writer owns them."""
    for p in d.glob(f".{stem}.*.tmp"):
        log.info("removing %s left by an interrupted engine write", p)
        _discard(p)


def write_manifest(path: Path, manifest: Mapping[str, Any]) -> None:
    text = json.dumps(dict(manifest), sort_keys=True, indent=1, allow_nan=False, default=_canonical_default)
    atomic_write_bytes(path, text.encode("utf-8"))


def mark_verified(entry: CacheEntry, how: str) -> CacheEntry:
    """Record in the manifest that the plan has now loaded (`how`: e.g. the GPU it deserialized on)."""
    if entry.manifest.get("verified") is True:
        return entry
    m = {**entry.manifest, "verified": True, "verified_by": how}
    m.pop("not_verified_reason", None)
    try:
        write_manifest(entry.manifest_path, m)
    except OSError as e:
        log.warning("could not record verification in %s: %s", entry.manifest_path, e)
    return CacheEntry(entry.plan_path, m, entry.built)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def get_or_build(engine_dir: str | Path, name: str, key_material: Mapping[str, Any], build_fn: BuildFn, *,
                 rebuild: bool = False, verify_fn: VerifyFn | None = None, fresh_after: float | None = None,
                 lock_timeout: float = LOCK_TIMEOUT_S, manifest_extra: Mapping[str, Any] | None = None,
                 unverified_reason: str | None = None) -> CacheEntry:
    """The cached plan for `key_material`, building it (once across processes) when absent or corrupt.

    `manifest_extra` (filled in by `build_fn`, e.g. the network's I/O) is added to a new entry's manifest.
    Without `verify_fn` the manifest records ``verified: false`` and `unverified_reason` (e.g. no GPU to
    deserialize on); :func:`mark_verified` records a later successful load.
    `rebuild` forces a build; with `fresh_after` (a timestamp shared by the workers of one run) an entry
    created after it counts as already rebuilt, so xdist workers rebuild an engine once, not once each.
    """
    from filelock import FileLock, Timeout

    d = Path(engine_dir)
    d.mkdir(parents=True, exist_ok=True)
    material = dict(key_material)
    key = cache_key(material)
    opts = material.get("options")
    precision = str((opts.get("precision") if isinstance(opts, Mapping) else None)
                    or material.get("precision") or "any")
    stem = entry_stem(name, precision, key)
    plan = d / f"{stem}.plan"
    manifest_path = d / f"{stem}.json"

    def fresh(m: dict[str, Any]) -> bool:
        if not rebuild:
            return True
        created = m.get("created")
        return fresh_after is not None and isinstance(created, (int, float)) and created >= fresh_after

    if plan.is_file():  # lock-free fast path for warm caches
        m, _ = _check(plan, manifest_path, key, verify_fn)
        if m is not None and fresh(m):
            return CacheEntry(plan, m, built=False)
    try:
        with FileLock(str(d / f"{stem}.lock"), timeout=lock_timeout):
            _discard_stale_temps(d, stem)
            m, reason = _check(plan, manifest_path, key, verify_fn)
            if m is not None and fresh(m):
                return CacheEntry(plan, m, built=False)
            if reason is not None:
                log.warning("engine cache entry %s is corrupt: %s; rebuilding", plan, reason)
                _discard(manifest_path, plan)
            elif m is not None:
                log.info("rebuilding engine %s (rebuild requested)", plan)
            return _build(d, plan, manifest_path, name, precision, key, material, build_fn, verify_fn,
                          manifest_extra, unverified_reason)
    except Timeout:
        raise EngineCacheError(f"timed out after {lock_timeout:g}s waiting for another process to build it",
                               file=str(plan)) from None


def _build(d: Path, plan: Path, manifest_path: Path, name: str, precision: str, key: str,
           material: dict[str, Any], build_fn: BuildFn, verify_fn: VerifyFn | None,
           manifest_extra: Mapping[str, Any] | None = None, unverified_reason: str | None = None) -> CacheEntry:
    timing = timing_cache_path(d, material)
    t0 = time.perf_counter()
    data = build_fn(timing)
    seconds = time.perf_counter() - t0
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EngineCacheError(f"engine builder returned {type(data).__name__}, not bytes", file=str(plan))
    blob = bytes(data)
    if not blob:
        raise EngineCacheError("engine builder returned an empty plan (the build failed)", file=str(plan))
    if verify_fn is not None:
        try:
            verify_fn(blob)
        except Exception as e:
            raise EngineCacheError(f"freshly built plan does not load ({type(e).__name__}: {e})",
                                   file=str(plan)) from e
    _discard(manifest_path)  # a plan without manifest is never trusted
    atomic_write_bytes(plan, blob)
    builder = material.get("builder", {})
    now = time.time()
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "precision": precision,
        "key": key,
        "key_material": material,
        "plan_file": plan.name,
        "plan_sha256": hashlib.sha256(blob).hexdigest(),
        "plan_size": len(blob),
        "build_seconds": round(seconds, 3),
        "created": now,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
        "builder_version": builder.get("version") if isinstance(builder, Mapping) else None,
        "timing_cache": timing.name if material.get("options", {}).get("timing_cache", True) else None,
        "verified": verify_fn is not None,
    }
    if verify_fn is None:
        manifest["not_verified_reason"] = unverified_reason or "no verification was run"
    manifest.update(dict(manifest_extra or {}))
    write_manifest(manifest_path, manifest)
    _fsync_dir(d)
    log.info("built engine %s in %.1fs", plan, seconds)
    return CacheEntry(plan, manifest, built=True)
