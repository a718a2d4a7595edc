"""Helpers for the out-of-process runtime tests: the C toy runtime (built with gcc into a temp folder), its
numpy twin, and its reference written with the product's ReferenceWriter."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from streamparity.reference.writer import ReferenceWriter

HERE = Path(__file__).resolve().parent / "data"
TOY_SOURCE = HERE / "toy_runtime.c"
TOY_CONTRACT = HERE / "toy.contract.json"
D, T, TC, STEP = 4, 2, 6, 2


def build_toy(out_dir: Path) -> Path:
    """Compile the C runtime; skips with the reason where there is no C compiler."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (gcc or cc) on PATH to build tests/backends/external/data/toy_runtime.c")
    exe = out_dir / "toy_runtime"
    r = subprocess.run([cc, "-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror", "-o",
                        str(exe), str(TOY_SOURCE)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return exe


def toy_step(audio: np.ndarray, ch: np.ndarray, tm: np.ndarray, ln: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The numpy twin of toy_runtime.c, batch 1: (outputs, next channel cache, next time cache, next length)."""
    s = np.zeros(D, np.float32)
    for j in range(TC):  # same summation order as the C loop
        s = (s + ch[0, 0, j]).astype(np.float32)
    out = (audio + tm[:, 0] + np.float32(0.5) * s[None, :, None]).astype(np.float32)
    frames = np.concatenate([ch[0, 0], audio[0].T], axis=0)[-TC:]
    nch = frames[None, None].astype(np.float32)
    ntm = audio[:, None].astype(np.float32).copy()
    nln = np.minimum(ln + STEP, TC).astype(np.int64)
    return out, nch, ntm, nln


def write_toy_reference(path: Path, chunks: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    ch = np.zeros((1, 1, TC, D), np.float32)
    tm = np.zeros((1, 1, D, T), np.float32)
    ln = np.zeros(1, np.int64)
    with ReferenceWriter(path, {"model": "toy", "seed": seed}, chunks) as w:
        for k in range(chunks):
            audio = rng.standard_normal((1, D, T)).astype(np.float32)
            length = np.array([T], np.int64)
            out, nch, ntm, nln = toy_step(audio, ch, tm, ln)
            w.write(k, {"has_caches": True}, {"audio_signal": audio, "length": length, "cache_last_channel": ch,
                                               "cache_last_time": tm, "cache_last_channel_len": ln},
                    {"outputs": out, "encoded_lengths": length, "cache_last_channel_next": nch,
                     "cache_last_time_next": ntm, "cache_last_channel_next_len": nln})
            ch, tm, ln = nch, ntm, nln
    return path


def live_processes(marker: str) -> list[int]:
    """Pids whose command line contains `marker` (a temp path): what a test leaves behind."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids
