"""DVC stage bootstrap: per-cell rho_CE with a paired bootstrap CI (one shared resample-index
matrix per task), Spearman, jackknife influence, naive raw-logit rho, transfer diagnostics."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from _common import console, run

from probebench.artifacts.io import read_json, write_parquet
from probebench.cells import cell_table
from probebench.params.schema import Params


def main(params: Params, argv: list[str]) -> None:
    effects = pd.read_parquet(Path("data/effects.parquet"))
    transfers = {t: read_json(Path("data/ablate") / t / "transfers.json") for t in params.models}
    b = params.bootstrap
    cells = cell_table(effects, transfers, n_resamples=b.n_resamples, seed=b.seed, ci_level=b.ci_level,
                       ci_method=b.ci_method)
    write_parquet(Path("data/cells.parquet"), cells)
    console.print(f"bootstrap: {len(cells)} cells, B = {b.n_resamples} ({b.ci_method})")


if __name__ == "__main__":
    run(main)
