"""The pipeline tests' tiny project: params with a tiny zoo, a temporary copy of the project, and
`dvc repro` on it (shared by tests/pipeline, tests/executor, the root conftest's reference run and
benchmarks/executor.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("llama-t", "qwen2-t", "gpt2-t", "gemma2-t")

TINY_OVERRIDES = {
    "tasks": {"sentiment": {"kind": "sentiment", "n_train": 96, "n_test": 48},
              "consistency": {"kind": "consistency", "n_train": 96, "n_test": 48}},
    "zoo": {"source": "train", "threads": 1, "finetunes": {}, "models": {
        "llama-t": {"family": "llama", "d_model": 16, "n_layers": 2, "n_heads": 2, "vocab_size": 140, "steps": 15, "batch_size": 16},
        "qwen2-t": {"family": "qwen2", "d_model": 24, "n_layers": 2, "n_heads": 2, "vocab_size": 450, "steps": 15, "batch_size": 16},
        "gpt2-t": {"family": "gpt2", "d_model": 16, "n_layers": 3, "n_heads": 2, "vocab_size": 320, "steps": 15, "batch_size": 16},
        "gemma2-t": {"family": "gemma2", "d_model": 16, "n_layers": 2, "n_heads": 2, "vocab_size": 200, "steps": 15, "batch_size": 16}}},
    "models": {m: {"path": f"data/zoo/{m}", "layer": 0.5} for m in MODELS},
}


def tiny_params() -> dict:
    """The project's params.yaml with a tiny zoo and small prompt sets (every section present:
    DVC refuses a stage whose params keys are missing)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in TINY_OVERRIDES.items():
        params[key] = {**params[key], **value} if key == "zoo" else value
    params["bootstrap"]["n_resamples"] = 50
    params["matrix"]["min_n"] = 40
    params["transfer"]["n_null"] = 10  # the smallest that can reach null_alpha 0.05 (probebench check)
    params["ablate"]["n_random"] = 8  # the fewest a fitted null takes
    # the audit on a model paired with itself: a smoke run of both crosscoder stages
    params["crosscoders"] = {"smoke": {**params["crosscoders"]["zoo-gemma2"],
                                       "base": "llama-t", "chat": "llama-t", "n_latents": 32, "k": 8, "steps": 300,
                                       "batch_size": 64, "top_k": 5, "rel_norm_band": [0.0, 1.0], "source": "train",
                                       # 32 latents on 48 prompts: too few fire rarely for control (b), which
                                       # the default run (512 latents, 256 prompts) and
                                       # tests/crosscoder/test_crosscoder_controls.py run
                                       "planted_latents": 0}}
    params["imports"] = {}  # no pretrained model in the tiny pipeline (tests/weights covers it)
    params["adapters"] = {}  # nor its fine-tune (tests/zoo/test_lora.py covers it)
    return params


def stage_env(project: Path) -> dict:
    # The editable install points at this checkout's src/; the copy's stages must run the copy's
    # code (the files DVC hashes), so its src/ goes first on PYTHONPATH.
    return {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
            "PYTHONPATH": str(project / "src")}


def repro(project: Path, *args: str) -> list[str]:
    env = stage_env(project)
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=project, env=env, text=True,
                          capture_output=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return re.findall(r"Running stage '([^']+)'", proc.stdout)


def new_project(project: Path) -> Path:
    """A temporary copy of the project with the tiny params, before any stage has run."""
    project.mkdir(parents=True, exist_ok=True)
    for item in ("dvc.yaml", "stages", "src", ".dvcignore", "data/imported"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / item)
    shutil.rmtree(project / "src" / "probebench.egg-info", ignore_errors=True)
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    (project / "zoo").mkdir()
    (project / "zoo" / "manifest.json").write_text("{}")  # nothing pinned: the tiny zoo is trained
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "--no-scm", "-q"], cwd=project, check=True)
    (project / ".dvc" / "config").write_text("[core]\n    analytics = false\n    check_update = false\n    no_scm = True\n")
    return project
