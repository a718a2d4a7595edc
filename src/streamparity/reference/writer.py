"""The reference writer: one chunk per line, written to a temporary file and renamed when complete."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from streamparity.atomic import _FILE_MODE
from streamparity.errors import ReferenceFormatError
from streamparity.reference.reader import FORMAT_VERSION
from streamparity.reference.tensors import encode_tensor


class ReferenceWriter:
    """Writes a reference JSONL atomically (temp file, renamed on close)."""

    def __init__(self, path: str | Path, header: Mapping[str, Any], num_chunks: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.chmod(self._tmp, _FILE_MODE)
        self._f: IO[bytes] = os.fdopen(fd, "wb")
        self._expected = int(num_chunks)
        self._count = 0
        full = {"streamparity_reference": FORMAT_VERSION, **dict(header), "num_chunks": self._expected}
        self._f.write((json.dumps(full, sort_keys=True) + "\n").encode("ascii"))

    def write(self, chunk: int, meta: Mapping[str, Any], inputs: Mapping[str, np.ndarray],
              outputs: Mapping[str, np.ndarray]) -> None:
        big = [k for k, v in meta.items() if isinstance(v, int) and not isinstance(v, bool)
               and not -(2**63) <= v < 2**63]
        if big:  # what the reader refuses is never written
            raise ReferenceFormatError(f"meta field {big[0]!r} is an integer outside int64", file=str(self.path),
                                       chunk=int(chunk), field=f"meta.{big[0]}")
        parts = [
            f'{{"chunk": {int(chunk)}, "meta": ',
            json.dumps(dict(meta), sort_keys=True),
            ', "inputs": ',
            json.dumps({k: encode_tensor(v) for k, v in inputs.items()}),
            ', "outputs": ',
            json.dumps({k: encode_tensor(v) for k, v in outputs.items()}),
            "}\n",
        ]
        self._f.write("".join(parts).encode("ascii"))
        self._count += 1

    def close(self) -> None:
        try:
            if self._count != self._expected:
                raise ValueError(f"wrote {self._count} chunks, header promised {self._expected}")
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        try:
            os.unlink(self._tmp)
        except OSError:
            pass

    def __enter__(self) -> ReferenceWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
