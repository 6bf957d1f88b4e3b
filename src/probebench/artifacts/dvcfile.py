"""`dvc.yaml` and `dvc.lock` read as plain data, without importing DVC (a second to import): the
stage names (`foreach` expanded from params.yaml), each stage's outputs, and which stage owns a
path. The CLI and the stage shells use it to refuse, before anything is removed, a target that is
no stage, an output that cannot be written, and a file put where `dvc repro` will delete it.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "params.yaml").write_text("models: {a: {}, b: {}}\\n")
    >>> _ = (root / "dvc.yaml").write_text(
    ...     "stages:\\n  extract:\\n    foreach: ${models}\\n    do:\\n      cmd: python x.py ${key}\\n"
    ...     "      outs:\\n        - data/extract/${key}\\n        - reports/${key}.json:\\n            cache: false\\n")
    >>> [(o.stage, o.path, o.cached) for o in stage_outs(root)["extract@b"]]
    [('extract@b', 'data/extract/b', True), ('extract@b', 'reports/b.json', False)]
    >>> owner("data/extract/a/x", root).stage
    'extract@a'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)   # dvc.lock runs to thousands of lines
_VAR = re.compile(r"\$\{\s*([^}]+?)\s*\}")
_OUT_SECTIONS = ("outs", "metrics", "plots")


@dataclass(frozen=True)
class StageOut:
    stage: str      # DVC's address: "matrix", "extract@llama-s"
    path: str       # POSIX, relative to the project root
    cached: bool    # False for `cache: false` outputs (committed to git, not linked from the cache)


def _load(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER) if path.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None   # DVC itself reports a broken file; these checks only add to what it says


def _lookup(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            raise KeyError(dotted)
        tree = tree[part]
    return tree


def _interpolate(text: str, scope: dict) -> str | None:
    """`text` with every ${...} filled from scope (key, item, params); None if one is unknown."""
    try:
        return _VAR.sub(lambda m: str(_lookup(scope, m.group(1))), text)
    except KeyError:
        return None


def _foreach_items(spec: Any, params: dict) -> list[tuple[str, Any]]:
    if isinstance(spec, str):
        whole = _VAR.fullmatch(spec.strip())
        try:
            spec = _lookup(params, whole.group(1)) if whole else None
        except KeyError:
            spec = None
    if isinstance(spec, dict):
        return [(str(k), v) for k, v in spec.items()]
    if isinstance(spec, list):   # DVC names a list's stages by the item itself when it is a scalar
        return [(str(v) if isinstance(v, (str, int, float)) else str(i), v) for i, v in enumerate(spec)]
    return []


def _outs(name: str, body: dict, scope: dict) -> list[StageOut]:
    found = []
    for section in _OUT_SECTIONS:
        for entry in body.get(section) or []:
            raw, opts = (next(iter(entry.items())) if isinstance(entry, dict) and entry else (entry, None))
            if not isinstance(raw, str):
                continue
            path = _interpolate(raw, scope)
            if path is None:
                continue
            cached = not (isinstance(opts, dict) and opts.get("cache") is False)
            found.append(StageOut(name, PurePosixPath(path).as_posix(), cached))
    return found


def stage_groups(root: str | Path = ".") -> list[str]:
    """The stage names written in root/dvc.yaml (a `foreach` stage once, by its group name)."""
    data = _load(Path(root) / "dvc.yaml")
    stages = data.get("stages") if isinstance(data, dict) else None
    return [str(k) for k in stages] if isinstance(stages, dict) else []


def stage_outs(root: str | Path = ".") -> dict[str, list[StageOut]]:
    """{stage address: its outputs (outs, metrics, plots)} from root/dvc.yaml, `foreach` expanded
    with params.yaml, completed by the resolved paths dvc.lock recorded (a stage whose paths
    could not be resolved here keeps the ones of its last run)."""
    root = Path(root)
    data = _load(root / "dvc.yaml")
    params = _load(root / "params.yaml")
    params = params if isinstance(params, dict) else {}
    stages = data.get("stages") if isinstance(data, dict) else None
    result: dict[str, list[StageOut]] = {}
    for name, spec in (stages.items() if isinstance(stages, dict) else ()):
        if not isinstance(spec, dict):
            continue
        if "foreach" in spec and isinstance(spec.get("do"), dict):
            for key, item in _foreach_items(spec["foreach"], params):
                address = f"{name}@{key}"
                result[address] = _outs(address, spec["do"], {**params, "key": key, "item": item})
        else:
            result[str(name)] = _outs(str(name), spec, params)
    lock = _load(root / "dvc.lock")
    locked = lock.get("stages") if isinstance(lock, dict) else None
    for name, entry in (locked.items() if isinstance(locked, dict) else ()):
        known = {o.path for o in result.get(name, [])}
        for out in (entry.get("outs") or []) if isinstance(entry, dict) else []:
            path = out.get("path") if isinstance(out, dict) else None
            if isinstance(path, str) and PurePosixPath(path).as_posix() not in known:
                result.setdefault(str(name), []).append(StageOut(str(name), PurePosixPath(path).as_posix(), True))
    return result


def owner(path: str | Path, root: str | Path = ".") -> StageOut | None:
    """The stage output that `path` (relative to root, or absolute) is, or lies inside."""
    root = Path(root).resolve()
    target = Path(path)
    target = (target if target.is_absolute() else root / target).resolve()
    try:
        rel = PurePosixPath(target.relative_to(root).as_posix())
    except ValueError:
        return None
    for outs in stage_outs(root).values():
        for out in outs:
            if rel == PurePosixPath(out.path) or PurePosixPath(out.path) in rel.parents:
                return out
    return None
