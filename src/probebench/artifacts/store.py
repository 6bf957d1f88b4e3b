"""Content-addressed store of per-direction ablation results.

Key = sha256 of the canonical JSON of everything the result depends on (target model
fingerprint, prompt-set hash, checkpoint, direction bytes, ablation spec, effect-code version).
A rerun recomputes missing keys only. Entries are verified on read (sha256 of the payload in a
sidecar) and a corrupt entry is treated as missing and recomputed; a valid entry is never
overwritten.

    >>> store = CellStore("data/store/llama-s")                      # doctest: +SKIP
    >>> key = cell_key(target="...", direction=u_D, ...)              # doctest: +SKIP
    >>> store.get(key) is None                                         # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load

from probebench.errors import ProbebenchError
from probebench.artifacts.io import atomic_write_bytes, atomic_write_text, tensors_bytes


def cell_key(*, direction: np.ndarray, **parts) -> str:
    """sha256 over the canonical JSON of `parts` plus the exact float64 bytes of the direction."""
    digest = hashlib.sha256()
    digest.update(json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode())
    digest.update(b"\0direction\0")
    digest.update(np.ascontiguousarray(direction, dtype=np.float64).tobytes())
    return digest.hexdigest()


class StoreError(ProbebenchError):
    """A store directory that cannot be used: names the directory and the fix."""


class CellStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.root}: cannot create the cell store ({exc.strerror or exc}); "
                             "make its parent writable or remove what is in the way") from None
        self.corrupt: list[str] = []

    def check_writable(self) -> None:
        """Raise StoreError now if results could not be stored: called before computing, so an
        unwritable store costs a second, not a whole ablation followed by a PermissionError.

        Writes and removes a probe file, as `put` would (a mode check misses ACLs, read-only
        mounts and root)."""
        try:
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".writable-"):
                pass
        except OSError as exc:
            raise StoreError(f"{self.root}: the cell store is not writable ({exc.strerror or exc}); fix its "
                             f"permissions (chmod u+w {self.root}) or remove the directory") from None

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.safetensors", self.root / f"{key}.sha256"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        data_path, sum_path = self._paths(key)
        if not data_path.exists():
            return None
        try:
            data = data_path.read_bytes()
            if hashlib.sha256(data).hexdigest() != sum_path.read_text().strip():
                raise ValueError("checksum mismatch")
            return load(data)
        except Exception:  # any unreadable entry is recomputed, never trusted
            self.corrupt.append(key)
            return None

    def put(self, key: str, tensors: dict[str, np.ndarray]) -> None:
        data_path, sum_path = self._paths(key)
        if key not in self.corrupt and self.get(key) is not None:
            return  # a valid entry is never overwritten
        data = tensors_bytes(tensors)
        try:
            atomic_write_bytes(data_path, data)
            atomic_write_text(sum_path, hashlib.sha256(data).hexdigest() + "\n")
        except OSError as exc:  # e.g. the disk filled up mid-run
            raise StoreError(f"{data_path}: cannot store the result ({exc.strerror or exc}); free space or fix "
                             f"the permissions of {self.root}, then rerun (stored cells are kept)") from None
