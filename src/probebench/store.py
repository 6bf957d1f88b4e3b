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
from pathlib import Path

import numpy as np
from safetensors.numpy import load

from probebench.io import atomic_write_bytes, atomic_write_text, tensors_bytes


def cell_key(*, direction: np.ndarray, **parts) -> str:
    """sha256 over the canonical JSON of `parts` plus the exact float64 bytes of the direction."""
    digest = hashlib.sha256()
    digest.update(json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode())
    digest.update(b"\0direction\0")
    digest.update(np.ascontiguousarray(direction, dtype=np.float64).tobytes())
    return digest.hexdigest()


class CellStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.corrupt: list[str] = []

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
        atomic_write_bytes(data_path, data)
        atomic_write_text(sum_path, hashlib.sha256(data).hexdigest() + "\n")
