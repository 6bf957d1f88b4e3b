"""DVC stages zoo@<model> and finetune@<model>: put one embedded model (a save_pretrained
directory) at data/zoo/<model> with its held-out verdict accuracy, either from the pinned,
hash-checked snapshot under zoo/ (`zoo.source: pinned`, the default) or by training it here
(`zoo.source: train`)."""

from __future__ import annotations

from pathlib import Path

from _common import console, progress_bar, run

from probebench.artifacts.io import atomic_dir, write_json
from probebench.params.schema import Params
from probebench.artifacts.pinned import materialize, read_manifest
from probebench.zoo.train import build_zoo_model

PINNED = Path("zoo")


def main(params: Params, argv: list[str]) -> None:
    (slug,) = argv
    out = Path("data/zoo") / slug
    if params.zoo.source == "pinned":
        entry = read_manifest(PINNED).get(slug)
        materialize(PINNED / slug, entry, out, params=params.zoo_training(slug), where=f"zoo@{slug}")
        write_json(Path("metrics/zoo") / f"{slug}.json", entry["metrics"])
        console.print(f"zoo@{slug}: pinned snapshot (sha256-checked), held-out verdict accuracy "
                      f"{entry['metrics']['accuracy']}")
        return
    spec = params.zoo_spec(slug)
    base_dir = Path("data/zoo") / spec.base if spec.base else None
    with progress_bar() as bar:
        job = bar.add_task(f"zoo@{slug} ({spec.family})", total=spec.steps)
        model, tokenizer, metrics = build_zoo_model(spec, params.zoo_corpus(), base_dir=base_dir,
                                                    progress=lambda s: bar.update(job, completed=s))
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    write_json(Path("metrics/zoo") / f"{slug}.json",
               {"accuracy": metrics["accuracy"], "n_params": metrics["n_params"], "vocab_size": metrics["vocab_size"],
                "final_loss": metrics["loss_curve"][-1]})
    console.print(f"zoo@{slug}: trained, held-out verdict accuracy {metrics['accuracy']}")


if __name__ == "__main__":
    run(main)
