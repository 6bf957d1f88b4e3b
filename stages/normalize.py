"""DVC stage normalize: gather every target's effect table, pick the per-prompt effect
(token margin by default) and express it in clean-margin SDs of the model it was measured in."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from _common import console, run

from probebench.artifacts.io import write_json, write_parquet
from probebench.cells import normalize_effects
from probebench.params.schema import Params


def main(params: Params, argv: list[str]) -> None:
    frames = [pd.read_parquet(Path("data/ablate") / target / f"{task}.parquet")
              for target in params.models for task in params.tasks]
    effects, info = normalize_effects(pd.concat(frames, ignore_index=True), params.normalize.effect)
    write_parquet(Path("data/effects.parquet"), effects)
    write_json(Path("data/normalize.json"), info)
    console.print(f"normalize: {len(effects)} rows, effect = {info['effect']} ({info['column']})")


if __name__ == "__main__":
    run(main)
