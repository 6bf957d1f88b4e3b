"""DVC stage ablate@<target>: load the target once; for every task ablate (batched) its matched
probe, every source's label-free transferred direction and the random null directions on the
held-out prompts (probebench.transfer.plan says which and why), and write per-prompt margins and
deltas plus the transfer diagnostics. Every direction's result is memoized in the cell store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from _common import console, progress_bar, run

from probebench.models.ablate import EFFECT_CODE_HASH, AblationSpec, ablation_effects, effects_frame, split_directions
from probebench.transfer.plan import ModelActs, PlanInputs, plan_target
from probebench.artifacts.io import read_json, read_tensors, write_json, write_parquet
from probebench.models.load import load_model
from probebench.params.schema import Params, ParamsError
from probebench.probes.fit import load_probe, probe_direction
from probebench.prompts import few_shot_prefix, row_roles
from probebench.artifacts.store import CellStore, cell_key


@dataclass(frozen=True)
class TaskInputs:
    """What the ablate stage reads for one task: test prompts, split masks, every model's probe
    direction and activations (readout + label-free map rows)."""

    test_prompts: pd.DataFrame
    test_set_hash: str
    test_N: np.ndarray
    y_N: np.ndarray
    probe_rows_N: np.ndarray
    directions: dict[str, np.ndarray]
    acts: dict[str, ModelActs]
    imported: dict[str, tuple[str, np.ndarray]]
    prompts: pd.DataFrame  # the whole prompt set (a model's few-shot framing draws from its probe rows)


def load_task_inputs(params: Params, task: str) -> TaskInputs:
    prompts = pd.read_parquet(Path("data/prompts") / f"{task}.parquet")
    roles = row_roles(prompts, salt=params.split.salt, map_fraction=params.transfer.map_fraction)
    test_N, map_N, probe_rows_N = roles.test_N, roles.map_N, roles.probe_N
    directions, acts = {}, {}
    for m in params.models:
        t = read_tensors(Path("data/extract") / m / f"{task}.safetensors")
        probe = load_probe(Path("data/probes") / m / task / params.probe.method)
        directions[m] = probe_direction(probe, params.probe.direction, t["acts_ND"][probe_rows_N].astype(np.float64))
        acts[m] = ModelActs.from_extract(t, map_rows=params.transfer.map_rows, map_N=map_N)
    imported = {}
    for key, pr in params.probes.items():
        if pr.task == task:
            probe = load_probe(pr.path)
            if probe.direction.shape[0] != acts[pr.model].acts_ND.shape[1]:
                raise ParamsError(f"params.yaml: probes.{key}: {pr.path} has d_model {probe.direction.shape[0]} but "
                                 f"model {pr.model} has {acts[pr.model].acts_ND.shape[1]}; import it for that model")
            imported[key] = (pr.model, probe_direction(probe, params.probe.direction,
                                                       acts[pr.model].acts_ND[probe_rows_N].astype(np.float64)))
    return TaskInputs(prompts.loc[test_N].reset_index(drop=True),
                      read_json(Path("data/prompts") / f"{task}.json")["test_set_hash"],
                      test_N, prompts["label"].to_numpy(), probe_rows_N, directions, acts, imported, prompts)


def main(params: Params, argv: list[str]) -> None:
    (target,) = argv
    mp = params.model(target)
    spec = AblationSpec(**params.ablate.model_dump(exclude={"batch_size", "n_random", "massive_factor"}))
    t_meta = read_json(Path("data/extract") / target / "meta.json")
    store = CellStore(Path("data/store") / target)
    out_dir = Path("data/ablate") / target
    model = tokenizer = None
    transfers: dict[str, dict] = {}
    computed = cached = 0
    massive: dict[str, list[int]] = {}
    tr = params.transfer
    for task in params.tasks:
        ti = load_task_inputs(params, task)
        plan = plan_target(target, task, PlanInputs(
            models=tuple(params.models), directions=ti.directions, acts=ti.acts, test_N=ti.test_N, y_N=ti.y_N,
            share_basis=params.share_basis, method=tr.method, alpha=tr.alpha, n_null=tr.n_null,
            n_random=params.ablate.n_random if mp.n_random is None else mp.n_random, seed=params.seed, mean_rows_N=ti.probe_rows_N, imported=ti.imported,
            massive_factor=params.ablate.massive_factor))
        massive[task] = plan.massive_dims
        transfers[task] = plan.transfers
        prefix = few_shot_prefix(ti.prompts, ti.probe_rows_N, k=mp.framing.few_shot)  # as extract framed it
        keys = [cell_key(direction=job.unit_D, target_fingerprint=t_meta["fingerprint"], prompt_set=ti.test_set_hash,
                         checkpoint={"layer": t_meta["layer"], "site": t_meta["site"]}, ablation=spec.to_dict(),
                         mu=job.mu if spec.mode == "mean" else None, dtype=mp.dtype, effect_code=EFFECT_CODE_HASH,
                         **({"framing": prefix} if prefix else {}))
                for job in plan.jobs]
        results = {key: store.get(key) for key in keys}
        missing = [i for i, key in enumerate(keys) if results[key] is None]
        cached += len(keys) - len(missing)
        if missing:
            store.check_writable()  # before the compute, not after it
            if model is None:
                model, tokenizer = load_model(mp.path, device=mp.device, dtype=mp.dtype, device_map=mp.device_map)
            with progress_bar() as bar:
                job = bar.add_task(f"ablate@{target} {task}: {len(missing)} directions", total=len(ti.test_prompts))
                out = ablation_effects(model, tokenizer, ti.test_prompts, layer=t_meta["layer"],
                                       dirs_KD=np.stack([plan.jobs[i].unit_D for i in missing]), spec=spec,
                                       mus_K=np.array([plan.jobs[i].mu for i in missing]),
                                       batch_size=params.ablate.batch_size, where=f"ablate@{target} task {task}",
                                       progress=lambda n: bar.update(job, completed=n), prefix=prefix)
            for i, entry in zip(missing, split_directions(out)):
                store.put(keys[i], entry)
                results[keys[i]] = entry
            computed += len(missing)
        table = pd.concat([effects_frame(results[key], ti.test_prompts, j.source, j.kind)
                           for j, key in zip(plan.jobs, keys)], ignore_index=True)
        table.insert(0, "target", target)
        table.insert(0, "task", task)
        write_parquet(out_dir / f"{task}.parquet", table)
    write_json(out_dir / "transfers.json", transfers)
    write_json(out_dir / "nulls.json", {task: {"massive_dims": dims, "massive_factor": params.ablate.massive_factor}
                                        for task, dims in massive.items()})
    write_json(Path("metrics/ablate") / f"{target}.json",
               {"cells_computed": computed, "cells_cached": cached, "cells_corrupt_recomputed": len(store.corrupt)})
    console.print(f"ablate@{target}: {computed} directions computed, {cached} from the store"
                  + (f", {len(store.corrupt)} corrupt entries recomputed" if store.corrupt else "")
                  + "".join(f"; {task}: random nulls orthogonal to massive dims {dims}" for task, dims in massive.items()
                            if dims))


if __name__ == "__main__":
    run(main)
