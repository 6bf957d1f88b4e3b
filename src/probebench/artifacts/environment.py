"""The software environment a run used, and how it differs from the locked one.

`requirements.lock` pins the exact versions that produced the committed reports; the README's
commands install with it as a constraints file. Provenance records the versions actually used
(`versions()`), and `probebench check` warns about every package whose installed version differs
from the lock (`lock_differences`), because a different torch or numpy can move the last digits.

    >>> parse_lock("torch==2.13.0\\n# comment\\nnumpy==2.4.6 ; python_version >= '3.11'\\n")
    {'torch': '2.13.0', 'numpy': '2.4.6'}
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

# The packages whose version can change a reported number.
KEY_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "scipy", "scikit-learn", "pandas",
                "pyarrow", "dvc")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, str]:
    """`name==version` lines of a pip constraints/lock file (comments and markers ignored)."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)\s*==\s*([^\s]+)", line)
        if m:
            out[_norm(re.sub(r"\[.*\]", "", m.group(1)))] = m.group(2)
    return out


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions(packages=KEY_PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that can move a number (for provenance)."""
    return {p: installed_version(p) for p in packages}


def _public(version: str) -> str:
    return version.split("+", 1)[0]  # 2.13.0+cpu satisfies ==2.13.0 (PEP 440 local label)


def lock_differences(lock: str | Path, packages=KEY_PACKAGES) -> list[str]:
    """One line per key package whose installed version differs from the lock."""
    path = Path(lock)
    if not path.exists():
        return [f"{path}: not found; install with the README's commands to use the locked versions"]
    locked = parse_lock(path.read_text(encoding="utf-8"))
    out = []
    for p in packages:
        want, got = locked.get(_norm(p)), installed_version(p)
        if want is not None and (got is None or _public(got) != _public(want)):
            out.append(f"{p} {got or 'not installed'} differs from {path} ({want})")
    return out
