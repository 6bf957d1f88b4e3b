"""DVC stage crosscoder_train: a BatchTopK crosscoder on paired base/IT activations at the
checkpoint layer (every token of the train prompts), or a published checkpoint loaded instead."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from _common import console, progress_bar, run

from probebench.audit import check_same_tokenizer, paired_activations
from probebench.crosscoder import load_crosscoder, train_crosscoder
from probebench.io import read_json, write_json
from probebench.models import load_model
from probebench.params import Params


def load_pair(params: Params):
    cc = params.crosscoder
    if cc is None:
        raise ValueError("params.yaml: no crosscoder section; add one (see README) to run the audit")
    loaded, layers = [], []
    for key in (cc.base, cc.chat):
        mp = params.model(key)
        loaded.append(load_model(mp.path, device=mp.device, dtype=mp.dtype, device_map=mp.device_map))
        layers.append(read_json(Path("data/extract") / key / "meta.json")["layer"])
    check_same_tokenizer([tok for _, tok in loaded], [cc.base, cc.chat])
    return [m for m, _ in loaded], loaded[0][1], layers


def main(params: Params, argv: list[str]) -> None:
    cc_params = params.crosscoder
    models, tokenizer, layers = load_pair(params)
    d_model = read_json(Path("data/extract") / cc_params.base / "meta.json")["d_model"]
    if cc_params.checkpoint is not None:
        cc = load_crosscoder(cc_params.checkpoint, d_model=d_model, n_models=2)
        metrics = {"source": "checkpoint", "checkpoint": cc_params.checkpoint}
    else:
        texts = [t for task in cc_params.train_tasks
                 for t in pd.read_parquet(Path("data/prompts") / f"{task}.parquet").query("split == 'train'")["text"]]
        with progress_bar() as bar:
            job = bar.add_task("crosscoder activations", total=len(texts))
            acts_NMD = paired_activations(models, tokenizer, texts, layers=layers,
                                          progress=lambda n: bar.update(job, completed=n))
        cc, metrics = train_crosscoder(torch.from_numpy(acts_NMD), n_latents=cc_params.n_latents, k=cc_params.k,
                                       steps=cc_params.steps, batch_size=cc_params.batch_size, lr=cc_params.lr,
                                       seed=cc_params.seed, progress=True)
        metrics = {"source": "trained", "n_tokens": int(acts_NMD.shape[0]), **metrics}
    cc.save(Path("data/crosscoder/crosscoder.safetensors"))
    write_json(Path("metrics/crosscoder_train.json"), metrics)
    console.print(f"crosscoder_train: {metrics.get('source')}, variance explained {metrics.get('variance_explained')}, "
                  f"L0 {metrics.get('mean_l0')}, dead {metrics.get('dead_fraction')}")


if __name__ == "__main__":
    run(main)
