"""DVC stage crosscoder_train@<key> (one per key of `crosscoders`): BatchTopK crosscoders on paired
base/IT activations at the checkpoint layer (every token of the train prompts), or a published
checkpoint loaded instead. Writes data/crosscoder/<key>/ and metrics/crosscoder_train/<key>.json.

Trained, it writes three crosscoders' worth of evidence: the audited one (independent decoder
init), one from a shared decoder init (convergence: both must agree on the median cosine of
the selected latents), and one trained the same way on (base, base) for control (a), which
crosscoder_audit runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import torch
from _common import console, progress_bar, run

from probebench.crosscoder.audit import audit_inputs, load_pair, paired_activations, readout_activations, select_latents
from probebench.crosscoder import load_crosscoder, train_crosscoder
from probebench.crosscoder.paths import crosscoder_dir, pinned_dir, pinned_key, train_metrics_path
from probebench.artifacts.io import atomic_dir, read_json, write_json
from probebench.artifacts.pinned import read_manifest, verify
from probebench.params.schema import Params
from probebench.transfer.plan import massive_dimensions

PINNED = Path("zoo")


def fingerprints(params: Params, key: str) -> dict[str, str]:
    p = params.crosscoders[key]
    return {m: read_json(Path("data/extract") / m / "meta.json")["fingerprint"] for m in dict.fromkeys((p.base, p.chat))}


def materialize_pinned(params: Params, key: str) -> None:
    """The committed crosscoders (zoo/crosscoder/<key>: the audited one and control (a)'s),
    verified against zoo/manifest.json and the current params, and the training metrics they came with."""
    entry = read_manifest(PINNED).get(pinned_key(key))
    verify(pinned_dir(key, PINNED), entry, params=params.crosscoder_training(key, fingerprints(params, key)),
           where=f"crosscoder_train@{key} (crosscoders.{key}.source: pinned)",
           retrain=(f"crosscoders.{key}.source: train", f"probebench zoo pin --crosscoder {key}"))
    with atomic_dir(crosscoder_dir(key)) as tmp:
        shutil.copytree(pinned_dir(key, PINNED), tmp, dirs_exist_ok=True)
    write_json(train_metrics_path(key), entry["metrics"])
    console.print(f"crosscoder_train@{key}: pinned crosscoders (sha256-checked); median cosine of selected latents: "
                  f"independent init {entry['metrics']['convergence']['median_cosine_independent_init']:.3f}, "
                  f"shared init {entry['metrics']['convergence']['median_cosine_shared_init']:.3f}")


def main(params: Params, argv: list[str]) -> None:
    (key,) = argv
    p = params.crosscoders[key]
    out = crosscoder_dir(key)
    meta = read_json(Path("data/extract") / p.base / "meta.json")
    layers = [meta["layer"], read_json(Path("data/extract") / p.chat / "meta.json")["layer"]]
    if p.checkpoint is None and p.source == "pinned":
        materialize_pinned(params, key)
        return
    if p.checkpoint is not None:  # no model is needed to load a checkpoint (crosscoder_audit checks the pair)
        cc = load_crosscoder(p.checkpoint, d_model=meta["d_model"], n_models=2)
        with atomic_dir(out) as tmp:  # no control crosscoder: the checkpoint's recipe is not ours to rerun
            cc.save(tmp / "crosscoder.safetensors")
            write_json(tmp / "controls" / "not_run.json", {"reason": "crosscoder loaded from a checkpoint"})
        write_json(train_metrics_path(key), {"source": "checkpoint", "checkpoint": p.checkpoint, "kind": cc.kind})
        console.print(f"crosscoder_train@{key}: loaded a {cc.kind} crosscoder from {p.checkpoint}")
        return

    models, tokenizer = load_pair([params.model(p.base), params.model(p.chat)], [p.base, p.chat])

    texts = [t for task in p.train_tasks
             for t in pd.read_parquet(Path("data/prompts") / f"{task}.parquet").query("split == 'train'")["text"]]
    with progress_bar() as bar:
        job = bar.add_task("crosscoder activations", total=len(texts))
        acts_NMD = torch.from_numpy(paired_activations(models, tokenizer, texts, layers=layers,
                                                       progress=lambda n: bar.update(job, completed=n)))
    # the rule every ablated direction follows (ablate.massive_factor): no latent reads or writes a
    # massive dimension of either model (Gemma-3-270M: three dims of ~5000 at mid depth)
    massive = sorted({d for m in range(acts_NMD.shape[1])
                      for d in massive_dimensions(acts_NMD[:, m].numpy(), params.ablate.massive_factor)})
    kw = dict(n_latents=p.n_latents, k=p.k, steps=p.steps, batch_size=p.batch_size, lr=p.lr, seed=p.seed,
              exclude_dims=massive, progress=True)
    cc, m_main = train_crosscoder(acts_NMD, decoder_init="independent", **kw)
    cc_shared, m_shared = train_crosscoder(acts_NMD, decoder_init="shared", **kw)
    same_model = p.base == p.chat and layers[0] == layers[1]
    # control (a): identical inputs on both sides, trained exactly like the audited crosscoder
    cc_id, m_id = (cc, m_main) if same_model else train_crosscoder(acts_NMD[:, [0, 0]], decoder_init="independent", **kw)

    prompts = audit_inputs(pd.read_parquet(Path("data/prompts") / f"{p.audit_task}.parquet").query("split == 'test'"),
                           p.audit_position)
    readout_NMD = readout_activations(models, tokenizer, prompts, layers=layers)
    sel = dict(rel_norm_band=tuple(p.rel_norm_band), top_k=p.top_k, min_frequency=p.min_frequency,
               min_spread_gain=p.min_rel_norm_spread)
    _, _, rec_main = select_latents(cc, readout_NMD, spread_init=m_main["rel_norm_spread_init"], **sel)
    _, _, rec_shared = select_latents(cc_shared, readout_NMD, spread_init=m_shared["rel_norm_spread_init"], **sel)
    gap = abs(rec_main["median_decoder_cosine"] - rec_shared["median_decoder_cosine"])
    convergence = {"median_cosine_independent_init": rec_main["median_decoder_cosine"],
                   "median_cosine_shared_init": rec_shared["median_decoder_cosine"],
                   "abs_difference": gap, "tolerance": p.convergence_tolerance,
                   "passed": int(gap <= p.convergence_tolerance)}

    with atomic_dir(out) as tmp:
        cc.save(tmp / "crosscoder.safetensors")
        cc_id.save(tmp / "controls" / "control_identical.safetensors")
    write_json(train_metrics_path(key),
               {"source": "trained", "n_tokens": int(acts_NMD.shape[0]), **m_main, "convergence": convergence,
                "shared_init": m_shared, "identical_pair": m_id})
    console.print(f"crosscoder_train@{key}: variance explained {m_main['variance_explained']}, L0 {m_main['mean_l0']:.1f}, "
                  f"dead {m_main['dead_fraction']:.3f}; median cosine of selected latents: independent init "
                  f"{convergence['median_cosine_independent_init']:.3f}, shared init "
                  f"{convergence['median_cosine_shared_init']:.3f} (|diff| {gap:.3f}, tolerance {p.convergence_tolerance})")


if __name__ == "__main__":
    run(main)
