"""DVC stage matrix: source x target matrices with CIs, flags, the scoring rule, the ProbeScore
transfer component and the cosine-vs-rho summary; headline numbers as DVC metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from _common import console, run

from probebench.io import atomic_write_text, read_json, write_json, write_parquet
from probebench.matrix import RuleConfig, apply_rules, cosine_summary, matrices, probe_scores
from probebench.params import Params


def main(params: Params, argv: list[str]) -> None:
    m = params.matrix
    cells = pd.read_parquet(Path("data/cells.parquet"))
    normalization = read_json(Path("data/normalize.json"))["effect"]
    prompt_info = {task: read_json(Path("data/prompts") / f"{task}.json") for task in params.tasks}
    if m.scored_run:
        for task, info in prompt_info.items():
            if info["n_test"] < m.min_n:
                raise ValueError(f"params.yaml: tasks.{task} has N={info['n_test']} test prompts, fewer than "
                                 f"matrix.min_n={m.min_n} for a scored run; raise tasks.{task}.n_test or set "
                                 "matrix.scored_run: false to report it unscored")
    # prompts@task refuses train/test overlap, so an existing prompt set passed the held-out check.
    heldout_ok = {task: True for task in prompt_info}
    rules = RuleConfig(not_same_threshold=m.not_same_threshold, cosine_confound_threshold=m.cosine_confound_threshold,
                       min_n=m.min_n, min_sources=m.min_sources, normalization=normalization,
                       min_effect_sd=m.min_effect_sd)
    cells = apply_rules(cells, rules, heldout_ok=heldout_ok)
    cells["test_set_hash"] = cells["task"].map({t: i["test_set_hash"] for t, i in prompt_info.items()})
    cells["normalization"] = normalization
    write_parquet(Path("reports/cells.parquet"), cells)
    atomic_write_text(Path("reports/cells.csv"), cells.to_csv(index=False, float_format="%.6g"))
    off = cells[~cells["diagonal"]]
    metrics: dict = {"n_cells": int(len(cells)), "n_scored": int(cells["scored"].sum()),
                     "n_not_same_mechanism": int(off["not_same_mechanism"].sum()),
                     "n_cosine_confound": int(off["cosine_confound"].sum()),
                     "n_inert_direction": int(off["inert_direction"].sum()),
                     "probe_score": probe_scores(cells), "tasks": {}}
    for task in params.tasks:
        for stat in ("pearson", "ci_low", "ci_high", "cosine"):
            atomic_write_text(Path("reports/matrix") / f"{task}_{stat}.csv",
                              matrices(cells, task, stat).to_csv(float_format="%.4f"))
        sub = off[off["task"] == task]
        diag = cells[(cells["task"] == task) & cells["diagonal"]]["pearson"]
        metrics["tasks"][task] = {
            "mean_offdiag_rho": round(float(sub["pearson"].mean()), 4),
            "min_offdiag_rho": round(float(sub["pearson"].min()), 4),
            "max_offdiag_rho": round(float(sub["pearson"].max()), 4),
            "median_cosine": round(float(sub["cosine"].median()), 4),
            "diagonal_all_exactly_one": bool((diag == 1.0).all()),
            "n_sources": int(cells.loc[cells["task"] == task, "source"].nunique()),
            "n_targets": int(cells.loc[cells["task"] == task, "target"].nunique()),
        }
    summary = cosine_summary(cells)
    # DVC metrics are numbers; the formulae go into the report next to the same values.
    write_json(Path("reports/cosine_vs_rho.json"), summary)
    metrics["cosine_vs_rho"] = {k: round(v, 4) for k, v in summary.items()
                                if isinstance(v, (int, float)) and np.isfinite(v)}
    write_json(Path("metrics/matrix.json"), metrics)
    for task, t in metrics["tasks"].items():
        console.print(f"matrix {task}: {t['n_sources']}x{t['n_targets']}, off-diagonal rho_CE "
                      f"{t['min_offdiag_rho']:.2f}..{t['max_offdiag_rho']:.2f} (mean {t['mean_offdiag_rho']:.2f}), "
                      f"median cosine {t['median_cosine']:.2f}")
    console.print(f"matrix: {metrics['n_scored']}/{metrics['n_cells']} cells scored, "
                  f"{metrics['n_not_same_mechanism']} off-diagonal cells flagged not_same_mechanism")


if __name__ == "__main__":
    run(main)
