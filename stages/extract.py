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
from probebench.prompts import row_roles


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
            job = bar.add_task(f"extract@{slug} {task}", total=len(prompts))
            out = extract(model, tokenizer, prompts, layer=layer, batch_size=params.extract.batch_size,
                          where=f"extract@{slug} task {task}", progress=lambda n: bar.update(job, completed=n),
                          word_end_rows=roles.map_N)
            write_tensors(out_dir / f"{task}.safetensors", out)
            test = roles.test_N
            acc = float(((out["margin_N"][test] > 0) == (prompts["label"].to_numpy()[test] == 1)).mean())
            accuracy[task] = round(acc, 4)
            meta["tasks"][task] = {"n": len(prompts), "heldout_accuracy": accuracy[task]}
    write_json(out_dir / "meta.json", meta)
    write_json(Path("metrics/extract") / f"{slug}.json", {"heldout_accuracy": accuracy, "layer": layer})
    console.print(f"extract@{slug}: layer {layer}/{meta['n_layers']}, held-out accuracy {accuracy}")


if __name__ == "__main__":
    run(main)
