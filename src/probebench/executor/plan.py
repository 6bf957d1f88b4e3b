"""The stage graph, read from DVC itself, and what each stage asks of a worker.

`stage_plan` returns every stage of `dvc.yaml` in the order `dvc repro` would run them (DVC's own
`plan_repro` over its own graph), each with its direct upstream stages and its resource request:
CPUs (the torch threads the stage uses, `zoo.threads`), GPUs (1 when a model it loads sits on a
CUDA device) and memory (from the size of the weights it loads).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from probebench.errors import ProbebenchError
from probebench.params.schema import Params, load_params


class ExecutorError(ProbebenchError):
    """A distributed run that cannot go on: names the stage, its log and the fix."""


@dataclass(frozen=True)
class StageSpec:
    name: str                          # DVC's address: "extract@llama-s", "matrix"
    upstream: tuple[str, ...]          # stages whose outputs it reads (direct only)
    cpus: float = 1.0
    gpus: float = 0.0
    mem_gb: float = 2.0
    models: tuple[str, ...] = field(default=())   # models.<key> it loads


@contextlib.contextmanager
def in_repo(root: str | Path):
    """DVC's Repo at `root`, with the working directory there: DVC resolves `dvc.yaml`, stage
    addresses and output paths against the working directory, not against the repo root."""
    from dvc.repo import Repo

    cwd = os.getcwd()
    os.chdir(root)
    try:
        with Repo(str(root)) as repo:
            yield repo
    finally:
        os.chdir(cwd)


def command_env(root: Path, bin_dir: str) -> dict:
    """The environment `dvc repro` runs stage commands with in `root`: this interpreter's bin
    directory first on PATH (stage commands say `python ...`) and, in a checkout of this
    project, its own src/ first on PYTHONPATH (the code DVC hashed, not an editable install's)."""
    own_src = {"PYTHONPATH": str(root / "src")} if (root / "src" / "probebench").is_dir() else {}
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), **own_src}


def _stage_models(name: str, params: Params) -> tuple[str, ...]:
    """The models a stage loads: the foreach key for model-granular stages, the audited pair for
    the crosscoder stages, none for the fan-in stages (they read tables, not weights)."""
    base, _, key = name.partition("@")
    if base.startswith("crosscoder") and key in params.crosscoders:  # an audit's key may also name a model
        return tuple(dict.fromkeys([params.crosscoders[key].base, params.crosscoders[key].chat]))
    if key and key in params.models:
        return (key,)
    return ()


def _weights_gb(root: Path, path: str) -> float:
    folder = root / path
    if not folder.is_dir():
        return 0.0
    return sum(f.stat().st_size for f in folder.rglob("*") if f.suffix in (".safetensors", ".bin", ".pt")) / 2**30


def stage_resources(name: str, params: Params, root: Path, cpus_per_stage: float | None = None) -> dict:
    """CPUs, GPUs and memory (GB) one stage asks its worker for.

    Host memory is 2 GB for the interpreter and tables plus the weights it loads: once (they pass
    through host memory on their way to the GPU) when the models sit on a GPU, three times
    (weights, activations, a second model in the crosscoder stages) when they run on the CPU. A
    model is on a GPU when its `device` is CUDA or it is spread with `device_map`."""
    models = _stage_models(name, params)
    on_gpu = any(params.models[m].device.startswith("cuda") or params.models[m].device_map for m in models)
    weights = sum(_weights_gb(root, params.models[m].path) for m in models)
    cpus = float(cpus_per_stage if cpus_per_stage is not None else params.zoo.threads)
    mem_gb = round(2.0 + (1.0 if on_gpu else 3.0) * weights, 1)
    return {"cpus": cpus, "gpus": 1.0 if on_gpu else 0.0, "mem_gb": mem_gb, "models": models}


def stage_plan(root: str | Path = ".", cpus_per_stage: float | None = None,
               targets: list[str] | None = None) -> list[StageSpec]:
    """Every stage of root/dvc.yaml (or the `targets` and what they depend on) in `dvc repro`'s
    own order, with its upstream stages and resources. The graph is DVC's (`Repo.index.graph`, edges from a stage to the stages whose
    outputs it depends on), so a dependency DVC sees is one the executor waits for."""
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    root = Path(root).resolve()
    params = load_params(root / "params.yaml")
    with in_repo(root) as repo:
        graph = get_active_graph(repo.index.graph)
        try:
            order = plan_repro(graph, collect_stages(repo, list(targets or ["dvc.yaml"])))
        except Exception as exc:   # an unknown target: DVC's own message names it
            raise ExecutorError(f"dvc.yaml: {exc}; targets are stage names as `dvc repro` takes them") from None
        specs = []
        for stage in order:
            upstream = tuple(sorted(s.addressing for s in graph.successors(stage)))
            specs.append(StageSpec(stage.addressing, upstream,
                                   **stage_resources(stage.addressing, params, root, cpus_per_stage)))
    return specs
