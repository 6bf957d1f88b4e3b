"""Pinned artifacts: trained zoo models (and other trained files) committed with their hashes, so
the default pipeline measures the same weights on every machine instead of retraining them.

Training is chaotic across CPUs: float kernels differ in the last bits and 700 steps amplify
them into different weights, so a retrained zoo moves every downstream number. A pinned
artifact is a directory under ``zoo/`` tracked by git, plus an entry in ``zoo/manifest.json``
holding the sha256 of every file, the training params that produced it and its training
metrics. ``materialize`` verifies both before copying it to where the pipeline reads it; a
mismatch is an error that names the fix (retrain with ``zoo.source: train``, or re-pin).

    >>> entry = pin_dir("data/zoo/llama-s", "zoo/llama-s", params={"steps": 700}, metrics={})  # doctest: +SKIP
    >>> materialize("zoo/llama-s", entry, "data/zoo/llama-s", params={"steps": 700})          # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from probebench.errors import ProbebenchError
from probebench.artifacts.io import atomic_dir, atomic_write_text, dumps_json, file_sha256

MANIFEST = "manifest.json"


class PinnedError(ProbebenchError):
    """A pinned artifact that is missing, altered, or was trained with other params."""


def dir_digests(folder: str | Path) -> dict[str, str]:
    """sha256 of every file below `folder`, keyed by relative POSIX path, sorted."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _canonical(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True))


def pin_dir(src: str | Path, dst: str | Path, *, params: dict, metrics: dict) -> dict:
    """Copy a trained directory to `dst` (replacing it) and return its manifest entry."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise PinnedError(f"{src}: not a directory; train it first (dvc repro with zoo.source: train)")
    with atomic_dir(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    return {"files": dir_digests(dst), "params": _canonical(params), "metrics": _canonical(metrics)}


def materialize(pinned: str | Path, entry: dict | None, out: str | Path, *, params: dict, where: str) -> None:
    """Verify the pinned directory against its manifest entry and the current training params,
    then copy it to `out` atomically."""
    verify(pinned, entry, params=params, where=where)
    with atomic_dir(out) as tmp:
        shutil.copytree(pinned, tmp, dirs_exist_ok=True)


# keys of a pinned entry's params that are no params.yaml keys, said in words
_MEANING = {"models": "the fingerprints (weights' sha256) of the models it was trained on"}


def verify(pinned: str | Path, entry: dict | None, *, params: dict, where: str,
           retrain: tuple[str, str] = ("zoo.source: train", "probebench zoo pin")) -> None:
    """Refuse a pinned directory that is missing, altered, or was trained with other params.
    `retrain`: the params switch that retrains it and the command that pins it again (the zoo's by
    default; the crosscoders have their own)."""
    pinned = Path(pinned)
    switch, pin = retrain
    if entry is None or not pinned.is_dir():
        raise PinnedError(f"{where}: no pinned snapshot at {pinned} (zoo/{MANIFEST}); set {switch} "
                          f"to train it, then `{pin}` to pin it")
    if _canonical(params) != entry["params"]:
        changed = sorted(k for k in set(params) | set(entry["params"])
                         if _canonical(params).get(k) != entry["params"].get(k))
        plain = [k for k in changed if k not in _MEANING]
        shown = " and ".join(([f"params {plain}"] if plain else []) + [_MEANING[k] for k in changed if k in _MEANING])
        raise PinnedError(f"{where}: {shown} differ from what the pinned snapshot {pinned} was trained "
                          f"with; set {switch} to retrain (then `{pin}`), or restore them")
    got = dir_digests(pinned)
    if got != entry["files"]:
        bad = sorted(k for k in set(got) | set(entry["files"]) if got.get(k) != entry["files"].get(k))
        raise PinnedError(f"{where}: pinned files {bad} under {pinned} do not match zoo/{MANIFEST}; "
                          "restore them (git checkout -- zoo) or re-pin")


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def write_manifest(root: str | Path, manifest: dict) -> None:
    atomic_write_text(Path(root) / MANIFEST, dumps_json(dict(sorted(manifest.items()))))
