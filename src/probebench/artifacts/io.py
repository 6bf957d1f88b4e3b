"""Atomic, deterministic writes: an interrupted run leaves no half-written output, and the same
inputs give the same bytes (no timestamps, no random key order, no safetensors metadata)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import load_file, save

from probebench.errors import InputFileError


class OutputNotWritableError(InputFileError):
    """An output a stage is about to replace cannot be written: refused before anything is removed."""


def unwritable(path: str | Path, *, check_mode: bool = True) -> tuple[str, Path] | None:
    """Why `path` (a file or directory about to be replaced) cannot be written and what to make
    writable, or None if it can be.

    A file or directory without write permission bits counts as read-only even for root (someone
    made it so on purpose); `check_mode=False` skips that for outputs DVC links read-only from its
    cache itself. The nearest existing directory above `path` must be writable: the replacement is
    renamed into it.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "a.csv").write_text("x")
    >>> (d / "a.csv").chmod(0o444)
    >>> unwritable(d / "a.csv")[0]
    'read-only (mode 444)'
    >>> unwritable(d / "new" / "b.csv") is None
    True
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        return None   # a dangling link (DVC's symlink cache) is replaced, not written through
    if path.exists() and check_mode:
        mode = path.stat().st_mode & 0o777
        if not mode & 0o222 or not os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
            return f"read-only (mode {mode:o})", path
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        return f"in a directory that is not writable ({parent})", parent
    return None


def check_outputs_writable(outputs: list[tuple[str | Path, bool]], *, owner: str) -> None:
    """Raise OutputNotWritableError naming the first output (path, check_mode) that cannot be
    replaced: called before a stage, or `dvc repro`, removes anything."""
    for path, check_mode in outputs:
        problem = unwritable(path, check_mode=check_mode)
        if problem is not None:
            reason, fix = problem
            raise OutputNotWritableError(f"{path}: output of {owner} is {reason}; fix: chmod u+w {fix} (or move it "
                                         "away), then rerun; nothing was removed")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`. The new file
    keeps the mode of the file it replaces (0644 for a new one: mkstemp would leave 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=True) + "\n"


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in blocks (model weights can be large)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, dumps_json(obj))


def read_json(path: str | Path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def tensors_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    """safetensors bytes without `__metadata__` (its order is not deterministic)."""
    return save({k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())})


def write_tensors(path: str | Path, tensors: dict[str, np.ndarray]) -> None:
    atomic_write_bytes(path, tensors_bytes(tensors))


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
    return load_file(str(path))


def write_parquet(path: str | Path, df: pd.DataFrame) -> None:
    """Parquet without the pandas index; pyarrow writes no timestamps, so bytes are stable."""
    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def write_figure(path: str | Path, fig) -> None:
    """Save a matplotlib figure as PNG atomically, without the Software tag (it carries the
    matplotlib version, so the same inputs would not give the same bytes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    atomic_write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
