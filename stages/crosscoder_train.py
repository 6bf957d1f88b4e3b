"""DVC stage crosscoder_train: BatchTopK crosscoders on paired base/IT activations at the checkpoint
layer (every token of the train prompts), or a published checkpoint loaded instead.

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

from probebench.crosscoder.audit import load_pair, paired_activations, readout_activations, select_latents
from probebench.crosscoder import load_crosscoder, train_crosscoder
from probebench.artifacts.io import atomic_dir, atomic_write_bytes, read_json, write_json
from probebench.artifacts.pinned import read_manifest, verify
from probebench.params.schema import Params, ParamsError

PINNED = Path("zoo")
OUT = Path("data/crosscoder")
CONTROLS = Path("data/crosscoder_controls")  # a directory: it holds a control crosscoder only when one was trained


def fingerprints(params: Params) -> dict[str, str]:
    p = params.crosscoder
    return {m: read_json(Path("data/extract") / m / "meta.json")["fingerprint"] for m in dict.fromkeys((p.base, p.chat))}


def materialize_pinned(params: Params, meta: dict) -> None:
    """The committed crosscoders (zoo/crosscoder: the audited one and control (a)'s), verified
    against zoo/manifest.json and the current params, and the training metrics they came with."""
    entry = read_manifest(PINNED).get("crosscoder")
    verify(PINNED / "crosscoder", entry, params=params.crosscoder_training(fingerprints(params)),
           where="crosscoder_train (crosscoder.source: pinned)",
           retrain=("crosscoder.source: train", "probebench zoo pin --crosscoder"))
    atomic_write_bytes(OUT / "crosscoder.safetensors", (PINNED / "crosscoder" / "crosscoder.safetensors").read_bytes())
    with atomic_dir(CONTROLS) as tmp:
        shutil.copytree(PINNED / "crosscoder" / "controls", tmp, dirs_exist_ok=True)
    write_json(Path("metrics/crosscoder_train.json"), entry["metrics"])
    console.print("crosscoder_train: pinned crosscoders (sha256-checked); median cosine of selected latents: "
                  f"independent init {entry['metrics']['convergence']['median_cosine_independent_init']:.3f}, "
                  f"shared init {entry['metrics']['convergence']['median_cosine_shared_init']:.3f}")


def main(params: Params, argv: list[str]) -> None:
    p = params.crosscoder
    if p is None:
        raise ParamsError("params.yaml: no crosscoder section; add one (see docs/gemma-audit.md) to run the audit")
    meta = read_json(Path("data/extract") / p.base / "meta.json")
    layers = [meta["layer"], read_json(Path("data/extract") / p.chat / "meta.json")["layer"]]
    if p.checkpoint is None and p.source == "pinned":
        materialize_pinned(params, meta)
        return
    if p.checkpoint is not None:  # no model is needed to load a checkpoint (crosscoder_audit checks the pair)
        cc = load_crosscoder(p.checkpoint, d_model=meta["d_model"], n_models=2)
        cc.save(OUT / "crosscoder.safetensors")
        with atomic_dir(CONTROLS) as tmp:  # no control crosscoder: the checkpoint's recipe is not ours to rerun
            write_json(tmp / "not_run.json", {"reason": "crosscoder loaded from a checkpoint"})
        write_json(Path("metrics/crosscoder_train.json"),
                   {"source": "checkpoint", "checkpoint": p.checkpoint, "kind": cc.kind})
        console.print(f"crosscoder_train: loaded a {cc.kind} crosscoder from {p.checkpoint}")
        return

    models, tokenizer = load_pair([params.model(p.base), params.model(p.chat)], [p.base, p.chat])

    texts = [t for task in p.train_tasks
             for t in pd.read_parquet(Path("data/prompts") / f"{task}.parquet").query("split == 'train'")["text"]]
    with progress_bar() as bar:
        job = bar.add_task("crosscoder activations", total=len(texts))
        acts_NMD = torch.from_numpy(paired_activations(models, tokenizer, texts, layers=layers,
                                                       progress=lambda n: bar.update(job, completed=n)))
    kw = dict(n_latents=p.n_latents, k=p.k, steps=p.steps, batch_size=p.batch_size, lr=p.lr, seed=p.seed, progress=True)
    cc, m_main = train_crosscoder(acts_NMD, decoder_init="independent", **kw)
    cc_shared, m_shared = train_crosscoder(acts_NMD, decoder_init="shared", **kw)
    same_model = p.base == p.chat and layers[0] == layers[1]
    # control (a): identical inputs on both sides, trained exactly like the audited crosscoder
    cc_id, m_id = (cc, m_main) if same_model else train_crosscoder(acts_NMD[:, [0, 0]], decoder_init="independent", **kw)

    prompts = pd.read_parquet(Path("data/prompts") / f"{p.audit_task}.parquet").query("split == 'test'")
    readout_NMD = readout_activations(models, tokenizer, prompts.reset_index(drop=True), layers=layers)
    sel = dict(rel_norm_band=tuple(p.rel_norm_band), top_k=p.top_k, min_frequency=p.min_frequency,
               min_spread_gain=p.min_rel_norm_spread)
    _, _, rec_main = select_latents(cc, readout_NMD, spread_init=m_main["rel_norm_spread_init"], **sel)
    _, _, rec_shared = select_latents(cc_shared, readout_NMD, spread_init=m_shared["rel_norm_spread_init"], **sel)
    gap = abs(rec_main["median_decoder_cosine"] - rec_shared["median_decoder_cosine"])
    convergence = {"median_cosine_independent_init": rec_main["median_decoder_cosine"],
                   "median_cosine_shared_init": rec_shared["median_decoder_cosine"],
                   "abs_difference": gap, "tolerance": p.convergence_tolerance,
                   "passed": int(gap <= p.convergence_tolerance)}

    cc.save(OUT / "crosscoder.safetensors")
    with atomic_dir(CONTROLS) as tmp:
        cc_id.save(tmp / "control_identical.safetensors")
    write_json(Path("metrics/crosscoder_train.json"),
               {"source": "trained", "n_tokens": int(acts_NMD.shape[0]), **m_main, "convergence": convergence,
                "shared_init": m_shared, "identical_pair": m_id})
    console.print(f"crosscoder_train: variance explained {m_main['variance_explained']}, L0 {m_main['mean_l0']:.1f}, "
                  f"dead {m_main['dead_fraction']:.3f}; median cosine of selected latents: independent init "
                  f"{convergence['median_cosine_independent_init']:.3f}, shared init "
                  f"{convergence['median_cosine_shared_init']:.3f} (|diff| {gap:.3f}, tolerance {p.convergence_tolerance})")


if __name__ == "__main__":
    run(main)
