"""Time the DVC pipeline on a copy of the project: full repro, no-op repro, one-model layer change.

    python benchmarks/pipeline.py [--tiny] [--project DIR] [--keep] [--targets STAGE ...]

Copies dvc.yaml, params.yaml, stages/, src/ and .dvcignore into a temporary directory (or uses
--project DIR, an existing copy), runs `dvc init --no-scm` with analytics off, then times
  (i)   `dvc repro` from clean (the default params.yaml, or a tiny zoo with --tiny),
  (ii)  a no-op `dvc repro` (nothing changed: nothing may run),
  (iii) `dvc repro` after models.<first model>.layer goes from 0.5 to 1.0,
counting the stages executed ("Running stage '...'" lines) and, for the ablate stages that ran,
the cells recomputed / served from the cell store (metrics/ablate/<model>.json).

dvc is the venv's own binary, run with the venv's bin dir first on PATH (stage commands say
`python ...`) and PYTHONPATH=<project>/src, so the stages import the copied probebench, not an
editable install's source tree. Prints a table, then as the LAST line one JSON object (null
times for steps that did not succeed; exit status 1 if a repro failed or the no-op ran anything).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("dvc.yaml", "params.yaml", "stages", "src", ".dvcignore")

# The tiny zoo of tests/pipeline/test_pipeline.py (seconds per stage instead of minutes).
TINY_OVERRIDES = {
    "tasks": {"sentiment": {"kind": "sentiment", "n_train": 96, "n_test": 48},
              "consistency": {"kind": "consistency", "n_train": 96, "n_test": 48}},
    "zoo": {"threads": 1, "models": {
        "llama-t": {"family": "llama", "d_model": 16, "n_layers": 2, "n_heads": 2, "vocab_size": 140, "steps": 15,
                    "batch_size": 16},
        "qwen2-t": {"family": "qwen2", "d_model": 24, "n_layers": 2, "n_heads": 2, "vocab_size": 450, "steps": 15,
                    "batch_size": 16},
        "gpt2-t": {"family": "gpt2", "d_model": 16, "n_layers": 3, "n_heads": 2, "vocab_size": 320, "steps": 15,
                   "batch_size": 16}}},
    "models": {m: {"path": f"data/zoo/{m}", "layer": 0.5} for m in ("llama-t", "qwen2-t", "gpt2-t")},
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--project", type=Path, default=None,
                    help="use this existing project copy (dvc.yaml, params.yaml, stages/, src/) instead of a fresh "
                         "temporary copy; `dvc init --no-scm` is run there if it has no .dvc/. Its outputs are not "
                         "removed first, so (i) is only 'from clean' on a clean copy")
    ap.add_argument("--source", type=Path, default=ROOT, help="project to copy into the temporary directory")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny zoo and prompt sets (tests/pipeline/test_pipeline.py's TINY_OVERRIDES): a quick check")
    ap.add_argument("--keep", action="store_true", help="keep the temporary project directory (path is printed)")
    ap.add_argument("--venv-bin", type=Path, default=Path(sys.executable).parent,
                    help="bin dir holding `dvc` and the `python` the stage commands run")
    ap.add_argument("--layer", type=float, default=1.0, help="new models.<first model>.layer for step (iii)")
    ap.add_argument("--targets", nargs="*", default=None,
                    help="stages to reproduce (with what they depend on), e.g. `emit`; default: the whole dvc.yaml")
    return ap.parse_args()


def copy_project(source: Path, dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for item in COPIED:
        src = source / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dest / item)
        elif item != ".dvcignore":
            raise SystemExit(f"{src} is missing: --source must be a probebench project root")


def tiny_params(params: dict) -> dict:
    """params.yaml with the tiny zoo. Unlike tests/pipeline/test_pipeline.py it merges into `zoo` (keeping
    zoo.corpus/positive/negative, params of the zoo stage), keeps a (tiny) `zoo.finetunes` entry
    (dvc.yaml's `finetune` stage loops over it; DVC refuses a missing foreach key) and points
    `crosscoders` (when present) to one audit of a tiny model paired with itself (trained here)."""
    params = copy.deepcopy(params)
    tiny = copy.deepcopy(TINY_OVERRIDES)
    # Merge into `zoo` (its corpus/positive/negative keys are stage params DVC requires).
    params.update(tiny, zoo={**params["zoo"], **tiny["zoo"]})
    first = next(iter(TINY_OVERRIDES["models"]))
    params["zoo"]["finetunes"] = {f"{first}-it": {"base": first, "steps": 10, "lr": 1.0e-3, "seed": 5}}
    params["bootstrap"] = {**params["bootstrap"], "n_resamples": 50}
    params["matrix"] = {**params["matrix"], "min_n": 40}
    # one audit, of a model paired with itself (the default run's audits need its models)
    params["crosscoders"] = {"smoke": {**next(iter(params["crosscoders"].values())), "base": first, "chat": first,
                                       "n_latents": 64, "k": 4, "steps": 40, "batch_size": 64, "top_k": 5,
                                       "rel_norm_band": [0.0, 1.0], "source": "train"}} if params.get("crosscoders") else {}
    return params


class DvcError(RuntimeError):
    def __init__(self, args, returncode, output, elapsed):
        super().__init__(f"`dvc {' '.join(args)}` failed with exit status {returncode}")
        self.output, self.elapsed = output, elapsed


class Dvc:
    def __init__(self, project: Path, venv_bin: Path):
        self.project = project
        self.exe = venv_bin / "dvc"
        if not self.exe.exists():
            raise SystemExit(f"no dvc at {self.exe}: pass --venv-bin")
        pythonpath = [str(project / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        self.env = {**os.environ, "PATH": str(venv_bin) + os.pathsep + os.environ.get("PATH", ""),
                    "PYTHONPATH": os.pathsep.join(pythonpath), "DVC_NO_ANALYTICS": "1"}

    def __call__(self, *args: str) -> tuple[float, str]:
        t0 = time.perf_counter()
        proc = subprocess.run([str(self.exe), *args], cwd=self.project, env=self.env, text=True,
                              capture_output=True, check=False)
        elapsed = time.perf_counter() - t0
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise DvcError(args, proc.returncode, out, elapsed)
        return elapsed, out


def ablate_cells(project: Path, models: list[str]) -> dict[str, dict]:
    out = {}
    for model in models:
        path = project / "metrics" / "ablate" / f"{model}.json"
        if path.exists():
            out[model] = json.loads(path.read_text())
    return out


def step(dvc: Dvc, name: str, targets: list[str]) -> dict:
    log(f"{name}: dvc repro {' '.join(targets)} ...")
    error = None
    try:
        elapsed, out = dvc("repro", *targets)
    except DvcError as exc:
        elapsed, out, error = exc.elapsed, exc.output, str(exc)
        lines = [ln for ln in out.splitlines() if ln.startswith(("ERROR", "error"))]
        error += ": " + (" | ".join(lines[-3:]) or out[-500:])
    ran = re.findall(r"Running stage '([^']+)'", out)
    ablated = [s.split("@", 1)[1] for s in ran if s.startswith("ablate@")]
    cells = ablate_cells(dvc.project, ablated)  # only the stages that ran this step wrote fresh metrics
    missing = sorted(set(ablated) - set(cells))
    result = {
        "step": name, "seconds": elapsed, "stages_run": len(ran), "stages": ran,
        "cells_computed": sum(c.get("cells_computed", 0) for c in cells.values()),
        "cells_cached": sum(c.get("cells_cached", 0) for c in cells.values()),
        "cells_corrupt_recomputed": sum(c.get("cells_corrupt_recomputed", 0) for c in cells.values()),
        "cells_by_model": cells, "error": error,
    }
    if missing:
        result["ablate_metrics_missing"] = missing
    if error:
        log(out[-4000:])
        log(f"{name}: FAILED after {elapsed:.1f}s ({len(ran)} stages started): {error}")
    else:
        log(f"{name}: {elapsed:.1f}s, {len(ran)} stages")
    return result


def main() -> None:
    args = parse_args()
    tmp = None
    if args.project is not None:
        project = args.project.resolve()
        if project == ROOT or (project / ".git").exists():
            raise SystemExit(f"--project {project} is a git working tree; benchmark a copy of it, not the tree itself")
        if not (project / "dvc.yaml").exists():
            raise SystemExit(f"--project {project} has no dvc.yaml")
    else:
        tmp = Path(tempfile.mkdtemp(prefix="probebench-pipeline-"))
        project = tmp / "project"
        project.mkdir()
        copy_project(args.source.resolve(), project)
    if args.tiny:
        params = yaml.safe_load((project / "params.yaml").read_text())
        (project / "params.yaml").write_text(yaml.safe_dump(tiny_params(params), sort_keys=False))

    dvc = Dvc(project, args.venv_bin)
    if not (project / ".dvc").exists():
        dvc("init", "--no-scm", "-q")
    (project / ".dvc" / "config").write_text(
        "[core]\n    analytics = false\n    check_update = false\n    no_scm = True\n")
    _, version = dvc("--version")
    targets = args.targets or []

    params = yaml.safe_load((project / "params.yaml").read_text())
    first = next(iter(params["models"]))
    old_layer = params["models"][first]["layer"]
    labels = {"full": "(i) full from clean", "noop": "(ii) no-op", "layer": f"(iii) {first} layer"}
    steps = []
    try:
        for name in ("full", "noop", "layer"):
            if name == "layer":
                params["models"][first]["layer"] = args.layer
                (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            steps.append(step(dvc, name, targets))
            if steps[-1]["error"]:
                break
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    models = list(params["models"])
    print(f"probebench DVC pipeline benchmark  dvc {version.strip()}  python {sys.version.split()[0]}  "
          f"{'tiny zoo' if args.tiny else 'default params.yaml'}  {len(models)} models x {len(params['tasks'])} tasks  "
          f"targets: {' '.join(targets) or '(all)'}")
    print(f"project {project}{' (removed)' if tmp is not None and not args.keep else ''}; "
          f"(iii) changes models.{first}.layer {old_layer} -> {args.layer}")
    print()
    print(f"{'step':<24}{'wall s':>9}{'stages run':>12}{'cells computed':>16}{'cells cached':>14}")
    for s in steps:
        print(f"{labels[s['step']]:<24}{s['seconds']:9.1f}{s['stages_run']:12d}{s['cells_computed']:16d}"
              f"{s['cells_cached']:14d}{'   FAILED' if s['error'] else ''}")
    print()
    for s in steps:
        print(f"{labels[s['step']]}: {', '.join(s['stages']) or '(nothing ran)'}")
        for model, cells in s["cells_by_model"].items():
            print(f"    ablate@{model}: {cells}")
    problems = [f"{s['step']}: {s['error']}" for s in steps if s["error"]]
    if len(steps) > 1 and steps[1]["stages_run"]:
        problems.append(f"no-op repro ran {steps[1]['stages_run']} stages")
    for s in steps:
        if s.get("ablate_metrics_missing"):
            problems.append(f"{s['step']}: no metrics/ablate json for {s['ablate_metrics_missing']}")
    for p in problems:
        print("PROBLEM: " + p)

    by = {s["step"]: s for s in steps}

    def get(name, key):
        return by[name][key] if name in by and not by[name]["error"] else None

    summary = {
        "full_s": get("full", "seconds"), "noop_s": get("noop", "seconds"), "layer_change_s": get("layer", "seconds"),
        "full_stages": get("full", "stages_run"), "noop_stages": get("noop", "stages_run"),
        "layer_change_stages": get("layer", "stages_run"),
        "full_cells_computed": get("full", "cells_computed"), "full_cells_cached": get("full", "cells_cached"),
        "layer_change_cells_computed": get("layer", "cells_computed"),
        "layer_change_cells_cached": get("layer", "cells_cached"),
        "changed": f"models.{first}.layer {old_layer} -> {args.layer}",
        "tiny": args.tiny, "targets": targets, "models": len(models), "tasks": len(params["tasks"]),
        "dvc": version.strip(), "ok": not problems, "problems": problems, "steps": steps,
    }
    print(json.dumps(summary))
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
