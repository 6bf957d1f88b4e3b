"""Numeric reproduction check: do the reports this checkout produced equal the committed ones?

Byte identity is the wrong test across machines (float kernels differ in the last bits), and
a plain text diff flags every 7th decimal. Here two texts must be identical except for their
numbers, and every pair of numbers must agree within `tol` plus one unit of the last printed
decimal (a value printed with 3 decimals may round either way).

    >>> numeric_diff("rho 0.61234, n=256", "rho 0.61236, n=256", tol=1e-4)
    []
    >>> numeric_diff("rho 0.612, n=256", "rho 0.652, n=256", tol=1e-4)
    ['number 0: 0.612 vs 0.652 (|diff| 0.04 > 0.0011)']
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

_NUM = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _decimals(token: str) -> int:
    mantissa, _, exp = token.lower().partition("e")
    places = len(mantissa.split(".", 1)[1]) if "." in mantissa else 0
    return places - (int(exp) if exp else 0)


def numeric_diff(a: str, b: str, *, tol: float = 1e-4, limit: int = 5) -> list[str]:
    """Differences between two texts that are the same but for their numbers (at most `limit`)."""
    text_a, text_b = _NUM.split(a), _NUM.split(b)
    nums_a, nums_b = _NUM.findall(a), _NUM.findall(b)
    if text_a != text_b or len(nums_a) != len(nums_b):
        for i, (x, y) in enumerate(zip(text_a, text_b)):
            if x != y:
                return [f"text differs near {x[:40]!r} vs {y[:40]!r}"]
        return [f"{len(nums_a)} vs {len(nums_b)} numbers"]
    out = []
    for i, (x, y) in enumerate(zip(nums_a, nums_b)):
        if x == y:
            continue
        allowed = tol + 10.0 ** -min(_decimals(x), _decimals(y))
        if abs(float(x) - float(y)) > allowed:
            out.append(f"number {i}: {x} vs {y} (|diff| {abs(float(x) - float(y)):.3g} > {allowed:.2g})")
            if len(out) >= limit:
                break
    return out


def committed_text(path: str, rev: str = "HEAD") -> str | None:
    res = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True)
    return res.stdout.decode("utf-8") if res.returncode == 0 else None


def verify(paths: list[str], *, rev: str = "HEAD", tol: float = 1e-4) -> dict[str, list[str]]:
    """{path: differences} for every path whose working copy differs numerically from `rev`."""
    problems = {}
    for path in paths:
        old = committed_text(path, rev)
        if old is None:
            problems[path] = [f"not committed at {rev}"]
        elif not Path(path).exists():
            problems[path] = ["missing in the working tree (run the pipeline first)"]
        else:
            diff = numeric_diff(old, Path(path).read_text(encoding="utf-8"), tol=tol)
            if diff:
                problems[path] = diff
    return problems
