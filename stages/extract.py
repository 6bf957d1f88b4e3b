"""DVC stage extract@<model>: one model load; activations at the matched checkpoint and clean
token margins for every prompt (train and test) of every prompt set, plus the residuals at the
word ends of the prompts held aside for the label-free transfer map."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from _common import console, progress_bar, run

from probebench.models.extract import extract
from probebench.artifacts.io import write_json, write_tensors
from probebench.models.load import d_model, fingerprint, load_model, n_layers, resolve_layer
from probebench.params.schema import Params, ParamsError
from probebench.prompts import few_shot_prefix, row_roles
from probebench.stats import auroc, calibrated_accuracy


def main(params: Params, argv: list[str]) -> None:
    (slug,) = argv
    mp = params.model(slug)
    if not Path(mp.path).exists():
        raise ParamsError(f"params.yaml: models.{slug}.path {mp.path!r} does not exist; build the zoo (dvc repro) "
                         "or download the model to that directory")
    model, tokenizer = load_model(mp.path, device=mp.device, dtype=mp.dtype, device_map=mp.device_map)
    layer = resolve_layer(mp.layer, n_layers(model), where=f"params.yaml: models.{slug}.layer")
    out_dir = Path("data/extract") / slug
    meta = {"model": slug, "name": params.display_name(slug), "fingerprint": fingerprint(mp.path), "layer": layer,
            "n_layers": n_layers(model), "d_model": d_model(model), "site": "resid_post", "tasks": {}}
    accuracy = {}
    with progress_bar() as bar:
        for task in params.tasks:
            prompts = pd.read_parquet(Path("data/prompts") / f"{task}.parquet")
            roles = row_roles(prompts, salt=params.split.salt, map_fraction=params.transfer.map_fraction)
            prefix = few_shot_prefix(prompts, roles.probe_N, k=mp.framing.few_shot)
            job = bar.add_task(f"extract@{slug} {task}", total=len(prompts))
            out = extract(model, tokenizer, prompts, layer=layer, batch_size=params.extract.batch_size,
                          where=f"extract@{slug} task {task}", progress=lambda n: bar.update(job, completed=n),
                          word_end_rows=roles.map_N, prefix=prefix)
            write_tensors(out_dir / f"{task}.safetensors", out)
            test, y_N, margin_N = roles.test_N, prompts["label"].to_numpy(), out["margin_N"]
            # does the model do the task? the clean margin's held-out AUROC, and its accuracy at 0 and at
            # a threshold calibrated on the probe rows (a base model's bias must not fail it)
            cal_acc, cal_t = calibrated_accuracy(margin_N[roles.probe_N], y_N[roles.probe_N], margin_N[test], y_N[test])
            gate = {"heldout_accuracy": round(float(((margin_N[test] > 0) == (y_N[test] == 1)).mean()), 4),
                    "heldout_auroc": round(auroc(margin_N[test], y_N[test]), 4),
                    "calibrated_accuracy": round(cal_acc, 4), "calibrated_threshold": round(cal_t, 4)}
            accuracy[task] = gate
            meta["tasks"][task] = {"n": len(prompts), **gate, "few_shot": mp.framing.few_shot,
                                   "framing_prefix": prefix}
    write_json(out_dir / "meta.json", meta)
    write_json(Path("metrics/extract") / f"{slug}.json", {"gate": accuracy, "layer": layer})
    console.print(f"extract@{slug}: layer {layer}/{meta['n_layers']}, "
                  + "; ".join(f"{t}: accuracy {g['heldout_accuracy']} at 0, {g['calibrated_accuracy']} calibrated, "
                              f"AUROC {g['heldout_auroc']}" for t, g in accuracy.items()))


if __name__ == "__main__":
    run(main)
