"""The layout's contracts: every stage depends (in dvc.yaml) on every probebench module it imports,
the package has no import cycles, the layers hold (import-linter), the cell store key follows the
measuring code."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_file(mod: str) -> Path | None:
    p = SRC.joinpath(*mod.split("."))
    if (p / "__init__.py").exists():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").exists() else None


def imports_of(path: Path) -> set[str]:
    """probebench modules `path` imports, at module level or inside functions (a function-local
    import is still an import: it is what keeps a hidden cycle alive)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("probebench")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("probebench"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    return {m for m in out if module_file(m) is not None}


def closure(path: Path) -> set[str]:
    """Every probebench module that importing `path` runs (parents' __init__ included)."""
    seen: set[str] = set()
    todo = list(imports_of(path))
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            sub = ".".join(parts[:i])
            if sub not in seen and module_file(sub) is not None:
                seen.add(sub)
                todo.extend(imports_of(module_file(sub)))
    return seen


def dep_path(mod: str) -> str:
    """The dvc.yaml dependency that covers a module: its subpackage directory, or its file."""
    parts = mod.split(".")
    if len(parts) >= 2 and (SRC / "probebench" / parts[1]).is_dir():
        return f"src/probebench/{parts[1]}"
    return str(module_file(mod).relative_to(ROOT))


def stage_scripts() -> dict[str, tuple[Path, list[str]]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        script = body["cmd"].split()[1]
        out[name] = (ROOT / script, [d if isinstance(d, str) else next(iter(d)) for d in body["deps"]])
    return out


@pytest.mark.parametrize("stage", sorted(stage_scripts()))
def test_every_stage_depends_on_every_module_it_imports(stage):
    script, deps = stage_scripts()[stage]
    needed = {dep_path(m) for m in closure(script) | closure(ROOT / "stages" / "_common.py")}
    assert "stages/_common.py" in deps and str(script.relative_to(ROOT)) in deps
    missing = sorted(needed - set(deps))
    assert not missing, f"dvc.yaml stage {stage}: add {missing} to its deps (it imports them)"


def test_the_closure_sees_function_local_imports(tmp_path):
    """The checker itself must be able to fail: a module imported only inside a function counts."""
    script = tmp_path / "stage.py"
    script.write_text("def main():\n    from probebench.report.page import build_report\n")
    assert "src/probebench/report" in {dep_path(m) for m in closure(script)}


def module_graph() -> dict[str, set[str]]:
    mods = {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
            for p in (SRC / "probebench").rglob("*.py")}
    return {m: {i for i in imports_of(module_file(m)) if i != m} for m in mods}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            # a package face imported by its own submodule is the package being initialised, not a cycle
            if n.startswith(m + "."):
                continue
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if state.get(m) is None and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if state.get(n) is None and (found := visit(n)):
            return found
    return None


def test_no_import_cycles():
    assert find_cycle(module_graph()) is None, f"import cycle: {' -> '.join(find_cycle(module_graph()))}"


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = module_graph()
    graph["probebench.params.zoo"] = graph["probebench.params.zoo"] | {"probebench.zoo.train"}
    assert find_cycle(graph) is not None


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter not installed (pip install -e '.[dev]')")
def test_import_contract_holds():
    res = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_cell_store_key_follows_the_measuring_code(tmp_path):
    from probebench.models import ablate

    for name in ablate.MEASURING_MODULES:
        shutil.copy(SRC / "probebench" / "models" / name, tmp_path / name)
    assert ablate.measuring_code_hash(tmp_path) == ablate.EFFECT_CODE_HASH
    extract = tmp_path / "extract.py"
    extract.write_text(extract.read_text() + "\n# an edit\n")
    assert ablate.measuring_code_hash(tmp_path) != ablate.EFFECT_CODE_HASH
    extract.write_bytes(extract.read_bytes().replace(b"\n# an edit\n", b"").replace(b"\n", b"\r\n"))
    assert ablate.measuring_code_hash(tmp_path) == ablate.EFFECT_CODE_HASH  # line endings do not count


def test_measuring_modules_cover_what_the_ablation_imports():
    used = {m.rsplit(".", 1)[1] + ".py" for m in closure(SRC / "probebench" / "models" / "ablate.py")
            if m.startswith("probebench.models.")}
    assert used | {"ablate.py"} <= set(__import__("probebench.models.ablate", fromlist=["x"]).MEASURING_MODULES)


def test_old_module_paths_import_with_a_deprecation_warning():
    from probebench._compat import MOVED

    code = ("import importlib, warnings, sys\n"
            "for old in sys.argv[1:]:\n"
            "    with warnings.catch_warnings(record=True) as w:\n"
            "        warnings.simplefilter('always')\n"
            "        importlib.import_module(old)\n"
            "    assert any(x.category is DeprecationWarning and old in str(x.message) for x in w), old\n")
    res = subprocess.run([sys.executable, "-c", code, *MOVED], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_no_test_module_imports_another():
    for p in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1].startswith("test_"):
                pytest.fail(f"{p.relative_to(ROOT)} imports {node.module}; move what it shares into a helper module")
