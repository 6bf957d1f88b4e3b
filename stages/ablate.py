"""DVC stage ablate@<target>: load the target once; for every task and every source model, fit
the source probe's transfer into the target (train prompts only), ablate all those directions
(batched) on the held-out prompts, and write per-prompt clean/ablated margins and deltas.

The direction for source == target is the target's own probe, with no transfer fitted, so the
source side of every cell whose source is this model comes from the same computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from _common import console, progress_bar, run

from probebench.ablate import EFFECT_CODE_VERSION, AblationSpec, ablation_effects, effects_frame, split_directions
from probebench.io import read_json, read_tensors, write_json, write_parquet
from probebench.models import load_model
from probebench.params import Params
from probebench.probes import load_probe
from probebench.stats import auroc
from probebench.store import CellStore, cell_key
from probebench.transfer import DirectionTransfer, cosine


def main(params: Params, argv: list[str]) -> None:
    (target,) = argv
    mp = params.model(target)
    spec = AblationSpec(**params.ablate.model_dump(exclude={"batch_size"}))
    t_meta = read_json(Path("data/extract") / target / "meta.json")
    store = CellStore(Path("data/store") / target)
    out_dir = Path("data/ablate") / target
    model = tokenizer = None
    transfers: dict[str, dict] = {}
    computed = cached = 0
    for task in params.tasks:
        prompts = pd.read_parquet(Path("data/prompts") / f"{task}.parquet")
        prompt_hash = read_json(Path("data/prompts") / f"{task}.json")["test_set_hash"]
        train = (prompts["split"] == "train").to_numpy()
        test_prompts = prompts.loc[~train].reset_index(drop=True)
        y_test = test_prompts["label"].to_numpy()
        tgt_ND = read_tensors(Path("data/extract") / target / f"{task}.safetensors")["acts_ND"].astype(np.float64)
        native = load_probe(Path("data/probes") / target / task / params.probe.method)
        dirs, labels, keys, mus, transfers[task] = [], [], [], [], {}
        for source in params.models:
            probe = load_probe(Path("data/probes") / source / task / params.probe.method)
            info = {"method": "native" if source == target else params.transfer.method}
            if source == target:
                direction = probe.direction
            else:
                src_ND = read_tensors(Path("data/extract") / source / f"{task}.safetensors")["acts_ND"].astype(np.float64)
                fit = DirectionTransfer(method=params.transfer.method, alpha=params.transfer.alpha).fit(
                    src_ND[train], tgt_ND[train], probe.direction)
                direction = fit.direction_
                info.update(alpha=fit.alpha_, r2_test=fit.score(src_ND[~train], tgt_ND[~train], probe.direction))
            unit = direction / np.linalg.norm(direction)
            info.update(cosine_native=cosine(unit, native.direction),
                        transfer_auroc=auroc(tgt_ND[~train] @ unit, y_test),
                        source_auroc=probe.card.get("auroc_test"))
            key = cell_key(direction=unit, target_fingerprint=t_meta["fingerprint"], prompt_set=prompt_hash,
                           checkpoint={"layer": t_meta["layer"], "site": t_meta["site"]}, ablation=spec.to_dict(),
                           dtype=mp.dtype, effect_code=EFFECT_CODE_VERSION)
            info["store_key"] = key
            transfers[task][source] = info
            dirs.append(unit)
            labels.append(source)
            keys.append(key)
            mus.append(float((tgt_ND[train] @ unit).mean()))
        results = {key: store.get(key) for key in keys}
        missing = [i for i, key in enumerate(keys) if results[key] is None]
        cached += len(keys) - len(missing)
        if missing:
            if model is None:
                model, tokenizer = load_model(mp.path, device=mp.device, dtype=mp.dtype, device_map=mp.device_map)
            with progress_bar() as bar:
                job = bar.add_task(f"ablate@{target} {task}: {len(missing)} directions", total=len(test_prompts))
                out = ablation_effects(model, tokenizer, test_prompts, layer=t_meta["layer"],
                                       dirs_KD=np.stack([dirs[i] for i in missing]), spec=spec,
                                       mus_K=np.array([mus[i] for i in missing]), batch_size=params.ablate.batch_size,
                                       where=f"ablate@{target} task {task}",
                                       progress=lambda n: bar.update(job, completed=n))
            for i, entry in zip(missing, split_directions(out)):
                store.put(keys[i], entry)
                results[keys[i]] = entry
            computed += len(missing)
        table = pd.concat([effects_frame(results[key], test_prompts, label) for label, key in zip(labels, keys)],
                          ignore_index=True)
        table.insert(0, "target", target)
        table.insert(0, "task", task)
        write_parquet(out_dir / f"{task}.parquet", table)
    write_json(out_dir / "transfers.json", transfers)
    write_json(Path("metrics/ablate") / f"{target}.json",
               {"cells_computed": computed, "cells_cached": cached, "cells_corrupt_recomputed": len(store.corrupt)})
    console.print(f"ablate@{target}: {computed} cells computed, {cached} from the store"
                  + (f", {len(store.corrupt)} corrupt entries recomputed" if store.corrupt else ""))


if __name__ == "__main__":
    run(main)
