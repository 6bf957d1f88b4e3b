"""Where one crosscoder audit (a key of params `crosscoders`) keeps its files, relative to the
project root: the stages, `probebench zoo pin --crosscoder KEY` and the report agree through here.

    >>> str(crosscoder_dir("zoo-gemma2")), str(pinned_dir("zoo-gemma2"))
    ('data/crosscoder/zoo-gemma2', 'zoo/crosscoder/zoo-gemma2')
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["audit_metrics_path", "crosscoder_dir", "pinned_dir", "pinned_key", "report_dir", "train_metrics_path"]


def crosscoder_dir(key: str) -> Path:
    """crosscoder_train's output: crosscoder.safetensors and controls/ (control (a)'s crosscoder)."""
    return Path("data/crosscoder") / key


def train_metrics_path(key: str) -> Path:
    return Path("metrics/crosscoder_train") / f"{key}.json"


def audit_metrics_path(key: str) -> Path:
    return Path("metrics/crosscoder") / f"{key}.json"


def report_dir(key: str) -> Path:
    """crosscoder_audit's tables: latents.csv, summary.json, cosine_vs_ce.png."""
    return Path("reports/crosscoder") / key


def pinned_key(key: str) -> str:
    """The audit's entry in zoo/manifest.json, and its directory under zoo/."""
    return f"crosscoder/{key}"


def pinned_dir(key: str, root: Path = Path("zoo")) -> Path:
    return root / pinned_key(key)
