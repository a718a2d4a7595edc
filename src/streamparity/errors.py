"""User-facing errors: each names the file, and where known the line, chunk and field."""

from __future__ import annotations

from pathlib import Path


def not_a_file(path: Path) -> str | None:
    """Why `path` cannot be read as a file, for a message after its name ("is a directory, not a file", "is not
    a regular file ...", "not found"), or None for a regular file."""
    if path.is_dir():
        return "is a directory, not a file"
    if path.exists() and not path.is_file():
        return "is not a regular file (a device, FIFO or socket)"
    return None if path.is_file() else "not found"


class StreamparityError(Exception):
    """An error about user input, printed without a traceback by the CLI and the pytest plugin."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        chunk: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.chunk = chunk
        self.field = field
        super().__init__(self.format())

    def where(self) -> str:
        parts: list[str] = []
        if self.file is not None:
            parts.append(str(self.file) + (f":{self.line}" if self.line is not None else ""))
        if self.chunk is not None:
            parts.append(f"chunk {self.chunk}")
        if self.field is not None:
            parts.append(f"field {self.field!r}")
        return ", ".join(parts)

    def format(self) -> str:
        where = self.where()
        return f"{where}: {self.message}" if where else self.message


class ContractError(StreamparityError):
    """The contract JSON is missing, malformed or violates the schema."""


class ReferenceFormatError(StreamparityError):
    """The reference JSONL is malformed, truncated, or has bad tensors."""


class ReferenceInvalid(StreamparityError):
    """The reference parses but violates the contract (it cannot be trusted to judge a runtime)."""


class ModelMismatch(StreamparityError):
    """The model's I/O disagrees with the contract."""


class EngineCacheError(StreamparityError):
    """An engine cache entry is corrupt, truncated or stale."""


class BackendUnavailable(Exception):
    """A backend cannot run here (missing library or device); tests skip with this reason."""
