"""The distributed executor (issue: per-model stages fanned out on Ray and SLURM, joined through
DVC's cache).

Known answers: a pipeline run on a real local Ray cluster (2 workers) must write the same bytes
(dvc.lock, reports/, metrics/) as the plain `dvc repro` of the pipeline test, and the
coordinator's final `dvc repro` must run no stage command; a worker killed mid-stage must be
retried without leaving anything in the cache; the SLURM path (submitit's local executor) must
give the same lock entries as the plain run.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from probebench.executor import ExecutorError, StageSpec, run_distributed, stage_plan
from probebench.executor.backends import ray_request
from probebench.executor.plan import stage_resources
from probebench.params.schema import load_params
from probebench.artifacts.store import CellStore
from tests.support.pipeline import ROOT, new_project

pytestmark = pytest.mark.pipeline
FAULT = "probe@llama-t"


def compared_files(project: Path) -> dict[str, bytes]:
    """Everything a run writes that git keeps: the lock, reports, metrics and uncached data files."""
    files = {"dvc.lock": (project / "dvc.lock").read_bytes()}
    for folder in ("reports", "metrics"):
        for path in sorted((project / folder).rglob("*")):
            if path.is_file():
                files[str(path.relative_to(project))] = path.read_bytes()
    for path in [project / "data" / "normalize.json", *sorted((project / "data" / "prompts").glob("*.json"))]:
        files[str(path.relative_to(project))] = path.read_bytes()
    return files


def unreferenced_objects(cache: Path) -> set[str]:
    """Objects in a DVC cache that no run-cache entry refers to (directly or through a .dir
    manifest): what a killed worker would leave behind if its partial outputs were committed."""
    import json

    stored = {p.parent.name + p.name for p in (cache / "files" / "md5").rglob("*") if p.is_file()}
    referenced: set[str] = set()
    for entry in (cache / "runs").rglob("*"):
        if entry.is_file():
            for out in yaml.safe_load(entry.read_text()).get("outs", []):
                referenced.add(out["md5"])
                if out["md5"].endswith(".dir"):
                    manifest = cache / "files" / "md5" / out["md5"][:2] / out["md5"][2:]
                    referenced |= {f["md5"] for f in json.loads(manifest.read_text())}
    return stored - referenced


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory):
    """The tiny pipeline on a local Ray cluster with 2 workers; the first worker to run
    probe@llama-t is killed once its stage command has started."""
    project = new_project(tmp_path_factory.mktemp("ray") / "project")
    cwd = os.getcwd()
    try:
        summary = run_distributed(project, executor="ray", workers=2, cpus_per_stage=1, fault=FAULT)
    finally:
        os.chdir(cwd)
    return project, summary


def test_ray_run_writes_the_bytes_of_a_plain_dvc_repro(ray_run, reference_run):
    project, summary = ray_run
    reference, ran = reference_run
    assert not summary.failed
    assert set(summary.outcomes) == set(ran) and all(o.ran for o in summary.outcomes.values())
    assert summary.final_ran == []   # the coordinator's dvc repro restored every stage, computed none
    assert "is cached - skipping run" in (summary.run_dir / "logs" / "final_repro.log").read_text()
    ours, theirs = compared_files(project), compared_files(reference)
    assert sorted(ours) == sorted(theirs)
    differing = [name for name in ours if ours[name] != theirs[name]]
    assert differing == []
    assert len(ours) > 20
    # the cell store is shared by the workers, and each ablate stage computed its cells once
    assert all(o.cells == {"cells_computed": 24, "cells_cached": 0, "cells_corrupt_recomputed": 0}
               for name, o in summary.outcomes.items() if name.startswith("ablate@"))


def test_a_killed_worker_is_retried_and_leaves_nothing_in_the_cache(ray_run):
    project, summary = ray_run
    outcome = summary.outcomes[FAULT]
    assert outcome.attempt == 2
    log = Path(outcome.log).read_text()
    assert f"=== {FAULT}: attempt 1" in log and f"=== {FAULT}: attempt 2" in log
    assert all(o.attempt == 1 for name, o in summary.outcomes.items() if name != FAULT)
    cache = project / ".dvc" / "cache"
    assert unreferenced_objects(cache) == set()
    # the check sees an object nothing refers to
    planted = cache / "files" / "md5" / "00" / ("f" * 30)
    planted.parent.mkdir(exist_ok=True)
    planted.write_bytes(b"partial")
    try:
        assert unreferenced_objects(cache) == {"00" + "f" * 30}
    finally:
        planted.unlink()


def test_slurm_path_with_submitit_local_executor_matches_the_plain_lock(reference_run, tmp_path):
    reference, _ = reference_run
    project = new_project(tmp_path / "project")
    summary = run_distributed(project, executor="slurm", slurm_cluster="local", targets=["probe@llama-t"],
                              cpus_per_stage=1)
    stages = {"prompts@sentiment", "prompts@consistency", "zoo@llama-t", "extract@llama-t", "probe@llama-t"}
    assert not summary.failed and set(summary.outcomes) == stages
    assert summary.final_ran == []
    ours = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    theirs = yaml.safe_load((reference / "dvc.lock").read_text())["stages"]
    assert set(ours) == stages
    assert all(ours[s] == theirs[s] for s in stages)
    # submitit wrote one job folder per stage, with its logs
    assert len(list((summary.run_dir / "slurm").glob("*_log.out"))) >= len(stages)


def test_stage_plan_is_dvc_repro_order_with_dvc_dependencies(reference_run):
    reference, ran = reference_run
    plan = stage_plan(reference)
    assert [s.name for s in plan] == ran   # the order the plain dvc repro ran them in
    by_name = {s.name: s for s in plan}
    assert set(by_name["probe@qwen2-t"].upstream) == {"extract@qwen2-t", "prompts@consistency", "prompts@sentiment"}
    assert "bootstrap" in by_name["matrix"].upstream and "extract@gpt2-t" in by_name["matrix"].upstream
    position = {s.name: i for i, s in enumerate(plan)}
    assert all(position[u] < position[s.name] for s in plan for u in s.upstream)


def test_resources_follow_the_model_device_and_size(reference_run, tmp_path):
    reference, _ = reference_run
    params = yaml.safe_load((reference / "params.yaml").read_text())
    params["models"]["gpt2-t"]["device"] = "cuda"
    params["zoo"]["threads"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    p = load_params(tmp_path / "params.yaml")
    assert stage_resources("ablate@gpt2-t", p, reference)["gpus"] == 1.0
    assert stage_resources("ablate@llama-t", p, reference)["gpus"] == 0.0
    assert stage_resources("matrix", p, reference) == {"cpus": 3.0, "gpus": 0.0, "mem_gb": 2.0, "models": ()}
    weights = {m: sum(f.stat().st_size for f in (reference / "data" / "zoo" / m).glob("*.safetensors")) / 2**30
               for m in ("gpt2-t", "llama-t")}
    assert stage_resources("extract@gpt2-t", p, reference)["mem_gb"] == round(2.0 + weights["gpt2-t"], 1)  # on the GPU
    assert stage_resources("extract@llama-t", p, reference)["mem_gb"] == round(2.0 + 3.0 * weights["llama-t"], 1)
    assert stage_resources("extract@gpt2-t", p, reference, cpus_per_stage=1)["cpus"] == 1.0
    # a request no Ray node can meet would wait forever: capped (CPU, memory) or refused (GPU)
    spec = StageSpec("ablate@gpt2-t", (), cpus=3, gpus=1, mem_gb=500)
    with pytest.raises(ExecutorError, match="needs 1 GPU .* has 0; start the workers with GPUs"):
        ray_request(spec, {"CPU": 2.0, "memory": 2**33})
    assert ray_request(spec, {"CPU": 2.0, "GPU": 1.0, "memory": 2**33}) == {"num_cpus": 2.0, "num_gpus": 1,
                                                                            "memory": 2**33}


def _hammer(root: str, payload: float, rounds: int, out) -> None:
    store = CellStore(root)
    seen = []
    for _ in range(rounds):
        store.put("k", {"x_N": np.full(64, payload)})
        got = store.get("k")
        seen.append(None if got is None else float(got["x_N"][0]) if len(set(got["x_N"])) == 1 else "mixed")
    out.put(seen)


def test_cell_store_is_safe_under_concurrent_writers(tmp_path):
    """Two workers computing the same key (identical results, or results that differ in the last
    bits on two CPUs): a reader gets one whole entry or a miss (recompute), never a mixture."""
    ctx = multiprocessing.get_context("fork")
    for payloads in ((1.0, 1.0), (1.0, 1.0 + 1e-12)):
        root = tmp_path / f"store{payloads[1]}"
        queue = ctx.Queue()
        procs = [ctx.Process(target=_hammer, args=(str(root), v, 200, queue)) for v in payloads]
        for p in procs:
            p.start()
        seen = [x for _ in procs for x in queue.get(timeout=60)]
        for p in procs:
            p.join(timeout=60)
        assert "mixed" not in seen
        assert set(seen) - {None} <= set(payloads)
        final = CellStore(root).get("k")
        assert final is None or float(final["x_N"][0]) in payloads
        leftovers = [p.name for p in root.iterdir() if re.search(r"\.tmp$", p.name)]
        assert leftovers == []
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_cli_refuses_an_unknown_executor_and_slurm_without_sbatch(monkeypatch):
    from typer.testing import CliRunner

    from probebench.cli.main import app

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PATH", str(Path(os.sys.executable).parent))   # no sbatch here
    result = CliRunner().invoke(app, ["run", "--executor", "dask"])
    assert result.exit_code == 2 and "use local, ray or slurm" in result.output
    result = CliRunner().invoke(app, ["run", "--executor", "slurm"])
    assert result.exit_code == 2 and "sbatch is not on PATH" in result.output
    result = CliRunner().invoke(app, ["run", "--executor", "ray", "--force"])
    assert result.exit_code == 2 and "takes stage names as targets" in result.output


def test_a_crosscoder_stage_loads_its_pair_even_when_its_key_names_a_model():
    """crosscoders.gemma3-270m audits gemma3-270m against gemma3-270m-it: its stages load both."""
    from probebench.executor.plan import _stage_models

    p = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    assert "gemma3-270m" in p.models and "gemma3-270m" in p.crosscoders
    assert _stage_models("crosscoder_audit@gemma3-270m", p) == ("gemma3-270m", "gemma3-270m-it")
    assert _stage_models("crosscoder_train@zoo-gemma2", p) == ("gemma2-base", "gemma2-it")
    assert _stage_models("extract@gemma3-270m", p) == ("gemma3-270m",)
