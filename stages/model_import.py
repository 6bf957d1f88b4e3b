"""DVC stage model_import@<key>: build `data/models/<key>` (a plain Hugging Face directory: config,
safetensors, fast tokenizer, probebench_model_card.json) from the source in `imports.<key>`, and
commit a copy of the model card to `reports/models/<key>.json`."""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import console, run

from probebench.artifacts.io import write_json
from probebench.weights.convert import card_report, import_model
from probebench.params.schema import Params, ParamsError


def main(params: Params, argv: list[str]) -> None:
    (key,) = argv
    if key not in params.imports:
        raise ParamsError(f"params.yaml: imports has no key {key!r}; known: {sorted(params.imports)}")
    spec = params.imports[key]
    out = Path("data/models") / key
    console.print(f"model_import@{key}: building {out} (one-time; about 1.5 min and 3.2 GB for Gemma-3-270M)")
    source = f"package:{spec.gguf_package}" if spec.gguf_package else spec.hf_dir or spec.gguf_file
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=Path("data")) as work:
        card = import_model(source, out, work_dir=Path(work), sha256=spec.sha256, dtype=spec.dtype, overwrite=True,
                            require_sha256=bool(spec.gguf_package))
    write_json(Path("reports/models") / f"{key}.json", card_report(card))
    console.print(f"model_import@{key}: {card['architecture']}, d_model {card['d_model']}, {card['n_layers']} blocks, "
                  f"vocab {card['vocab_size']}; weights: {card['weights']}")


if __name__ == "__main__":
    run(main)
