"""DVC stage probe@<model>: fit logreg and mean_diff probes for every task on the model's train
activations; held-out AUROC on test; a probe card next to each direction."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from _common import console, run

from probebench.artifacts.io import read_json, read_tensors, write_json
from probebench.params.schema import Params
from probebench.probes.fit import PROBE_METHODS, fit_probe, save_probe
from probebench.stats import auroc
from probebench.prompts import row_roles, train_hash


def main(params: Params, argv: list[str]) -> None:
    (slug,) = argv
    params.model(slug)
    meta = read_json(Path("data/extract") / slug / "meta.json")
    aurocs: dict[str, dict[str, float]] = {}
    for task in params.tasks:
        prompts = pd.read_parquet(Path("data/prompts") / f"{task}.parquet")
        acts_ND = read_tensors(Path("data/extract") / slug / f"{task}.safetensors")["acts_ND"]
        # the rows held aside for the label-free map are never shown to a probe
        roles = row_roles(prompts, salt=params.split.salt, map_fraction=params.transfer.map_fraction)
        test, train = roles.test_N, roles.probe_N
        y_N = prompts["label"].to_numpy()
        aurocs[task] = {}
        for method in PROBE_METHODS:
            probe = fit_probe(acts_ND[train], y_N[train], method=method, C=params.probe.C, seed=params.seed)
            # 4 decimals: what the fit holds across machines (a logreg optimum moves ~1e-12, an AUROC
            # over 256 prompts changes in steps of ~1.5e-5; verify's tolerance is 1e-4)
            score = round(auroc(probe.score(acts_ND[test]), y_N[test]), 4)
            card = {**probe.card, "model": slug, "model_name": meta["name"], "task": task,
                    "checkpoint": {"layer": meta["layer"], "site": meta["site"], "position": "anchor"},
                    "train_hash": train_hash(prompts[train | test]), "n_train": int(train.sum()),
                    "auroc_test": score, "n_test": int(test.sum())}
            save_probe(type(probe)(direction=probe.direction, bias=probe.bias, method=method, card=card),
                       Path("data/probes") / slug / task / method)
            aurocs[task][method] = score
    write_json(Path("metrics/probe") / f"{slug}.json", {"auroc_test": aurocs})
    console.print(f"probe@{slug}: held-out AUROC {aurocs}")


if __name__ == "__main__":
    run(main)
