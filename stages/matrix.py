"""DVC stage matrix: source x target matrices with CIs, flags, the held-out check, the scoring
rule, the ProbeScore transfer component and the cosine-vs-rho summary; headline numbers as DVC
metrics."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from _common import console, run

from probebench.artifacts.io import atomic_write_text, read_json, write_json, write_parquet
from probebench.cells import apply_rules, cosine_summary, heldout_check, matrices, matrix_metrics, validate_cells
from probebench.params.schema import Params, ParamsError
from probebench.probes.fit import load_probe
from probebench.cells.spread import headline
from probebench.prompts import row_roles


def main(params: Params, argv: list[str]) -> None:
    m = params.matrix
    cells = pd.read_parquet(Path("data/cells.parquet"))
    normalization = read_json(Path("data/normalize.json"))["effect"]
    prompt_info = {task: read_json(Path("data/prompts") / f"{task}.json") for task in params.tasks}
    if m.scored_run:
        for task, info in prompt_info.items():
            if info["n_test"] < m.min_n:
                raise ParamsError(f"params.yaml: tasks.{task} has N={info['n_test']} test prompts, fewer than "
                                 f"matrix.min_n={m.min_n} for a scored run; raise tasks.{task}.n_test or set "
                                 "matrix.scored_run: false to report it unscored")
    heldout = {}
    for task in params.tasks:
        prompts = pd.read_parquet(Path("data/prompts") / f"{task}.parquet")
        probe_rows = row_roles(prompts, salt=params.split.salt, map_fraction=params.transfer.map_fraction).probe_N
        cards = {s: load_probe(Path("data/probes") / s / task / params.probe.method).card.get("train_hash", "")
                 for s in params.models}
        heldout[task] = heldout_check(prompts, probe_rows, cards)
    gate = {(task, s): read_json(Path("data/extract") / s / "meta.json")["tasks"][task]
            for task in params.tasks for s in params.models}
    cells = apply_rules(cells, m, normalization=normalization, null_alpha=params.transfer.null_alpha, heldout=heldout,
                        gate=gate)
    cells["test_set_hash"] = cells["task"].map({t: i["test_set_hash"] for t, i in prompt_info.items()})
    cells["normalization"] = normalization
    cells = validate_cells(cells, source="matrix stage")  # the contract every reader relies on
    write_parquet(Path("reports/cells.parquet"), cells)
    atomic_write_text(Path("reports/cells.csv"), cells.to_csv(index=False, float_format="%.6g"))
    for task in params.tasks:
        for stat in ("pearson", "ci_low", "ci_high", "rho_within", "rho_transferred", "cosine"):
            atomic_write_text(Path("reports/matrix") / f"{task}_{stat}.csv",
                              matrices(cells, task, stat).to_csv(float_format="%.4f"))
    summary = cosine_summary(cells, m)
    write_json(Path("reports/cosine_vs_rho.json"), summary)
    metrics = matrix_metrics(cells, summary, {t: i.get("near_duplicate_share") for t, i in prompt_info.items()})
    write_json(Path("metrics/matrix.json"), metrics)
    # a handful of numbers that fit a terminal in `dvc exp show` (README: compact experiment view)
    write_json(Path("metrics/headline.json"), {k: round(v, 4) for k, v in headline(cells).items()})
    for task, t in metrics["tasks"].items():
        console.print(f"matrix {task}: off-diagonal rho_CE {t['min_offdiag_rho']:.2f}..{t['max_offdiag_rho']:.2f} "
                      f"(mean {t['mean_offdiag_rho']:.2f}), within-class mean {t['mean_offdiag_rho_within']:.2f}; "
                      f"Q1 over {t['q1_n_pairs']} pairs: median CCC {t['q1_median_pair_ccc']}, "
                      f"{t['q1_n_pairs_ccc_beats_null']} beat the random null (BH), "
                      f"{t['q1_n_pairs_not_same_mechanism']} not the same mechanism; Q2: "
                      f"{t['n_transfer_beats_null']}/{t['n_offdiag']} transfers beat the "
                      "random null (BH)")
    console.print(f"matrix: {metrics['n_scored']}/{metrics['n_offdiag']} off-diagonal cells scored, "
                  f"{metrics['n_not_same_mechanism']} flagged not_same_mechanism")


if __name__ == "__main__":
    run(main)
