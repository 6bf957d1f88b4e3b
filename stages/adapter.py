"""DVC stage adapter@<key>: build `data/models/<key>`, a LoRA instruction fine-tune of an imported
model merged into a plain Hugging Face directory, from the pinned adapter under zoo/<key>
(`adapters.<key>.source: pinned`, sha256- and params-checked against zoo/manifest.json, and the
base's fingerprint) or by training it here (`source: train`; then `probebench zoo pin <key>`).
Writes the adapter to `data/adapters/<key>`, how far the fine-tune moved to
`metrics/adapter/<key>.json` and the merged model's card to `reports/models/<key>.json`."""

from __future__ import annotations

from pathlib import Path

import torch
from _common import console, progress_bar, run

from probebench.artifacts.io import write_json
from probebench.artifacts.pinned import read_manifest, verify
from probebench.models.load import fingerprint, load_model, resolve_layer, n_layers
from probebench.params.schema import Params, ParamsError
from probebench.zoo.instructions import chat_prompt, heldout_instructions, instruction_examples
from probebench.prompts.synthetic import GENERATORS, build_synthetic
from probebench.transfer.plan import massive_dimensions
from probebench.weights.convert import card_report
from probebench.zoo.lora import copy_adapter, merge_adapter, residual_drift, residuals, save_adapter, train_adapter

PINNED = Path("zoo")
N_DRIFT = 32  # test prompts per synthetic task, and held-out instructions, for the drift figures


def _drift_texts(params: Params, key: str) -> dict[str, list[str]]:
    spec = params.adapters[key].spec()
    train = {ex.instruction for ex in instruction_examples(spec.steps * spec.batch_size, seed=spec.seed)}
    texts = {"instructions": [chat_prompt(ex.instruction) + ex.response
                              for ex in heldout_instructions(N_DRIFT, seed=spec.seed, exclude=train)]}
    for task, t in params.tasks.items():
        if t.kind in GENERATORS:
            df = build_synthetic(params.synthetic_spec(task))
            texts[task] = list(df[df.split == "test"].text[:N_DRIFT])
    return texts


def main(params: Params, argv: list[str]) -> None:
    (key,) = argv
    if key not in params.adapters:
        raise ParamsError(f"params.yaml: adapters has no key {key!r}; known: {sorted(params.adapters)}")
    p = params.adapters[key]
    base_dir, adapter_dir, out = Path("data/models") / p.base, Path("data/adapters") / key, Path("data/models") / key
    base_fp = fingerprint(base_dir)
    training = params.adapter_training(key, base_fp)
    if p.source == "pinned":
        entry = read_manifest(PINNED).get(key)
        verify(PINNED / key, entry, params=training, where=f"adapter@{key}",
               retrain=(f"adapters.{key}.source: train", f"probebench zoo pin {key}"))
        copy_adapter(PINNED / key, adapter_dir)
        trained = entry["metrics"]
        console.print(f"adapter@{key}: pinned adapter (sha256-checked) on {p.base}")
    else:
        spec = p.spec()
        with progress_bar() as bar:
            job = bar.add_task(f"adapter@{key}: LoRA r={spec.rank} on {p.base}", total=spec.steps)
            model, _, trained = train_adapter(base_dir, spec, threads=p.threads,
                                              progress=lambda s: bar.update(job, completed=s))
        save_adapter(model, adapter_dir)
        del model
        console.print(f"adapter@{key}: trained, held-out instruction accuracy {trained['before']['heldout_accuracy']}"
                      f" -> {trained['after']['heldout_accuracy']}")
    card = merge_adapter(base_dir, adapter_dir, out, card={"training": training})
    write_json(Path("reports/models") / f"{key}.json", card_report(card))
    base, tokenizer = load_model(base_dir, dtype="float64")  # drift figures the same on every CPU
    tuned, _ = load_model(out, dtype="float64")
    layer = resolve_layer(0.5, n_layers(base))  # mid depth, where the default run reads every model
    drift = {}
    with console.status(f"adapter@{key}: residual drift at block {layer}"):
        for name, texts in _drift_texts(params, key).items():
            hb, ht = residuals(base, tokenizer, texts, layer=layer), residuals(tuned, tokenizer, texts, layer=layer)
            drift[name] = {"layer": layer, **residual_drift(hb, ht, massive_dims=massive_dimensions(
                hb, params.ablate.massive_factor))}
    write_json(Path("metrics/adapter") / f"{key}.json", {**trained, "drift": drift})
    shown = ", ".join(f"{k} {v['cosine_outside_massive']:.3f}/{v['r2_outside_massive']:.3f}" for k, v in drift.items())
    console.print(f"adapter@{key}: merged into {out}; per-token cosine / identity R^2 outside the massive dims "
                  f"at block {layer}: {shown}")


if __name__ == "__main__":
    torch.manual_seed(0)
    run(main)
