"""DVC stage model_import@<key>: build `data/models/<key>` (a plain Hugging Face directory: config,
safetensors, fast tokenizer, probebench_model_card.json) from the source in `imports.<key>`, and
commit a copy of the model card to `reports/models/<key>.json`."""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import console, run

from probebench.artifacts.io import write_json
from probebench.weights.convert import import_gguf, import_hf_snapshot, packaged_gguf
from probebench.params.schema import Params, ParamsError


def main(params: Params, argv: list[str]) -> None:
    (key,) = argv
    if key not in params.imports:
        raise ParamsError(f"params.yaml: imports has no key {key!r}; known: {sorted(params.imports)}")
    spec = params.imports[key]
    out = Path("data/models") / key
    console.print(f"model_import@{key}: building {out} (one-time; about 1.5 min and 3.2 GB for Gemma-3-270M)")
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=Path("data")) as work:
        if spec.hf_dir:
            card = import_hf_snapshot(Path(spec.hf_dir), out, dtype=spec.dtype, overwrite=True)
        else:
            if spec.gguf_package:
                gguf, declared = packaged_gguf(spec.gguf_package, Path(work))
                if spec.sha256 is None and declared is None:
                    raise ParamsError(f"params.yaml: imports.{key}: the package declares no sha256; pin one (sha256:)")
            else:
                gguf, declared = Path(spec.gguf_file), None
            card = import_gguf(gguf, out, spec.sha256 or declared, dtype=spec.dtype, overwrite=True)
    write_json(Path("reports/models") / f"{key}.json", {k: v for k, v in card.items() if k != "files"}
               | {"files": {name: f["sha256"] for name, f in card["files"].items()}})
    console.print(f"model_import@{key}: {card['architecture']}, d_model {card['d_model']}, {card['n_layers']} blocks, "
                  f"vocab {card['vocab_size']}; weights: {card['weights']}")


if __name__ == "__main__":
    run(main)
