"""Numeric reproduction check: do the reports this checkout produced equal the committed ones?

Byte identity is the wrong test across machines (float kernels differ in the last bits), and
a plain text diff flags every 7th decimal. Here two texts must be identical except for their
numbers, and every pair of floats must agree within `tol` (no slack beyond it: a number printed
with 3 decimals that rounds the other way differs by 0.001). Integers must match exactly: a
count or an N that moves by one is a different result, not float noise. In a CSV file a column
whose committed values are all integers is an integer column; in a JSON file a key whose
committed values are all whole numbers (`"n_label_driven": 12.0`) is compared exactly too.

    >>> numeric_diff("rho 0.61234, n=256", "rho 0.61236, n=256", tol=1e-4)
    []
    >>> numeric_diff("rho 0.612, n=256", "rho 0.652, n=256", tol=1e-4)
    ['number 0: 0.612 vs 0.652 (|diff| 0.04 > 0.0001)']
    >>> numeric_diff("rho 0.61234, n=256", "rho 0.61234, n=257", tol=1e-4)
    ['number 1: 256 vs 257 (integers must match exactly)']
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

from probebench.errors import ProbebenchError

_NUM = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
_INT = re.compile(r"[-+]?\d+")


class VerifyError(ProbebenchError):
    """`probebench verify` was asked something it cannot answer (a tolerance that is no number)."""


def check_tol(tol: float) -> float:
    """`tol` if it is a finite number >= 0; NaN would pass every file and a negative one fail all."""
    if not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise VerifyError(f"--tol {tol}: must be a finite number >= 0 (the absolute tolerance per number, "
                          "e.g. --tol 1e-4)")
    return float(tol)


def _same_number(x: str, y: str, tol: float, exact: bool | None) -> str | None:
    """None if the two number tokens agree, else why not. `exact` None: exact when either token
    is written as an integer (running text); True/False: the caller knows (a CSV column)."""
    if exact or (exact is None and (_INT.fullmatch(x) or _INT.fullmatch(y))):
        return None if float(x) == float(y) else "integers must match exactly"
    diff = abs(float(x) - float(y))
    return None if diff <= tol else f"|diff| {diff:.3g} > {tol:.2g}"


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
        why = _same_number(x, y, tol, exact=None)
        if why:
            out.append(f"number {i}: {x} vs {y} ({why})")
            if len(out) >= limit:
                break
    return out


def csv_diff(a: str, b: str, *, tol: float = 1e-4, limit: int = 5) -> list[str]:
    """Cell by cell; a column whose committed cells are all integers must match exactly.

    >>> csv_diff("task,n,rho\\nx,256,0.5\\n", "task,n,rho\\nx,257,0.50002\\n")
    ["row 1 column 'n': 256 vs 257 (integers must match exactly)"]
    """
    rows_a, rows_b = list(csv.reader(io.StringIO(a))), list(csv.reader(io.StringIO(b)))
    if (not rows_a or len(rows_a) != len(rows_b) or rows_a[0] != rows_b[0]
            or any(len(x) != len(y) for x, y in zip(rows_a, rows_b))):
        return numeric_diff(a, b, tol=tol, limit=limit)   # the layout differs: say where, as text
    header, body_a = rows_a[0], rows_a[1:]
    int_cols = {j for j in range(len(header)) if any(r[j] for r in body_a)
                and all(_INT.fullmatch(r[j]) for r in body_a if r[j])}
    out = []
    for i, (ra, rb) in enumerate(zip(body_a, rows_b[1:]), start=1):
        for j, (x, y) in enumerate(zip(ra, rb)):
            if x == y:
                continue
            if _NUM.fullmatch(x) and _NUM.fullmatch(y):
                why = _same_number(x, y, tol, exact=j in int_cols)
                problems = [f"{x} vs {y} ({why})"] if why else []
            else:
                problems = numeric_diff(x, y, tol=tol, limit=1)
            out += [f"row {i} column {header[j]!r}: {p}" for p in problems]
            if len(out) >= limit:
                return out[:limit]
    return out


def _walk(value: Any, path: tuple, found: dict[tuple, list]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _walk(v, (*path, k), found)
    elif isinstance(value, list):
        for v in value:
            _walk(v, (*path, "*"), found)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        found.setdefault(path, []).append(value)


def json_diff(a: Any, b: Any, *, tol: float = 1e-4, limit: int = 5) -> list[str]:
    """Parsed JSON, compared by key; a key whose committed values are all whole numbers must
    match exactly (list positions count as one key).

    >>> json_diff({"n": 12.0, "rho": 0.5}, {"n": 12.1, "rho": 0.50003})
    ['n: 12.0 vs 12.1 (integer-valued key: must match exactly)']
    """
    numbers: dict[tuple, list] = {}
    _walk(a, (), numbers)
    exact = {p for p, vs in numbers.items() if all(math.isfinite(v) and float(v).is_integer() for v in vs)}
    out: list[str] = []

    def visit(x: Any, y: Any, path: tuple, key: tuple) -> None:
        if len(out) >= limit:
            return
        where = ".".join(str(p) for p in path) or "(top level)"
        number = (int, float)
        if isinstance(x, dict) and isinstance(y, dict):
            if set(x) != set(y):
                missing, extra = sorted(map(str, set(x) - set(y))), sorted(map(str, set(y) - set(x)))
                out.append(f"{where}: keys differ (missing {missing}, new {extra})")
                return
            for k in x:
                visit(x[k], y[k], (*path, k), (*key, k))
        elif isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                out.append(f"{where}: {len(x)} vs {len(y)} items")
                return
            for i, (u, v) in enumerate(zip(x, y)):
                visit(u, v, (*path, i), (*key, "*"))
        elif (isinstance(x, number) and isinstance(y, number) and not isinstance(x, bool)
              and not isinstance(y, bool)):
            if x == y or (math.isnan(x) and math.isnan(y)):
                return
            if key in exact:
                out.append(f"{where}: {x!r} vs {y!r} (integer-valued key: must match exactly)")
            elif not abs(x - y) <= tol:
                out.append(f"{where}: {x!r} vs {y!r} (|diff| {abs(x - y):.3g} > {tol:.2g})")
        elif isinstance(x, str) and isinstance(y, str):
            out.extend(f"{where}: {p}" for p in numeric_diff(x, y, tol=tol, limit=1))
        elif x != y or type(x) is not type(y):
            out.append(f"{where}: {x!r} vs {y!r}")

    visit(a, b, (), ())
    return out[:limit]


def file_diff(path: str, old: str, new: str, *, tol: float = 1e-4) -> list[str]:
    """The differences of one report file, read the way its format allows."""
    if path.endswith(".json"):
        try:
            return json_diff(json.loads(old), json.loads(new), tol=tol)
        except ValueError:
            pass   # not valid JSON on one side: compare as text
    if path.endswith(".csv"):
        return csv_diff(old, new, tol=tol)
    return numeric_diff(old, new, tol=tol)


def committed_text(path: str, rev: str = "HEAD") -> str | None:
    res = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True)
    return res.stdout.decode("utf-8") if res.returncode == 0 else None


def verify(paths: list[str], *, rev: str = "HEAD", tol: float = 1e-4) -> dict[str, list[str]]:
    """{path: differences} for every path whose working copy differs numerically from `rev`."""
    tol = check_tol(tol)
    problems = {}
    for path in paths:
        old = committed_text(path, rev)
        if old is None:
            problems[path] = [f"not committed at {rev}"]
        elif not Path(path).exists():
            problems[path] = ["missing in the working tree (run the pipeline first)"]
        else:
            diff = file_diff(path, old, Path(path).read_text(encoding="utf-8"), tol=tol)
            if diff:
                problems[path] = diff
    return problems
