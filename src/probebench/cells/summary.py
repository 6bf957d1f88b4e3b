"""What the cells add up to: source x target matrices, ProbeScore, cosine vs causal equivalence,
and the headline metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from probebench.cells.schema import FLAGS
from probebench.params.schema import MatrixParams
from probebench.stats import cosine_overstatement


def matrices(cells: pd.DataFrame, task: str, value: str = "pearson") -> pd.DataFrame:
    """source x target matrix of one statistic for one task (rows: source, columns: target)."""
    sub = cells[cells["task"] == task]
    return sub.pivot(index="source", columns="target", values=value)


def probe_scores(cells: pd.DataFrame) -> dict[str, float | None]:
    """ProbeScore transfer component per probe (task, source): mean off-diagonal pearson_ce over
    its scored rows, clamped to [0, 1]; None when it has no scored row."""
    out = {}
    for (task, source), sub in cells[~cells["diagonal"]].groupby(["task", "source"]):
        scored = sub.loc[sub["scored"], "pearson"].dropna()
        out[f"{task}/{source}"] = None if scored.empty else float(np.clip(scored.mean(), 0.0, 1.0))
    return out


def cosine_summary(cells: pd.DataFrame, rules: MatrixParams) -> dict:
    """Cosine vs causal equivalence per task, both named statistics, over the off-diagonal cells
    whose geometry is defined and beats its null; a task with none gets `n: 0` and no statistic
    (absent, not 0 or 1)."""
    out = {}
    for task, sub in cells[cells["geometry_defined"]].groupby("task"):
        out[task] = cosine_overstatement(sub["pearson"].to_numpy(), sub["cosine"].to_numpy(),
                                         cos_threshold=rules.cosine_confound_threshold,
                                         ce_threshold=rules.overstatement_ce_threshold)
    for task in cells["task"].unique():
        out.setdefault(task, {"n": 0, "note": "no off-diagonal cell has geometry defined and above its null"})
    return dict(sorted(out.items()))


def _r4(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def matrix_metrics(cells: pd.DataFrame, summary: dict, near_duplicates: dict[str, float | None]) -> dict:
    """Headline numbers (DVC metrics: numbers only). Counts are over off-diagonal cells; each
    statistic sits next to its control (random-direction null for rho_CE, noise/shuffle maps for
    the transfer, the within-class value for the label)."""
    off = cells[~cells["diagonal"]]
    metrics: dict = {"n_cells": int(len(cells)), "n_offdiag": int(len(off)), "n_scored": int(off["scored"].sum()),
                     **{f"n_{f}": int(off[f].sum()) for f in FLAGS},
                     "probe_score": probe_scores(cells), "tasks": {}}
    for task, sub in off.groupby("task"):
        diag = cells[(cells["task"] == task) & cells["diagonal"]]
        stats = {
            "mean_offdiag_rho": sub["pearson"].mean(), "min_offdiag_rho": sub["pearson"].min(),
            "max_offdiag_rho": sub["pearson"].max(), "mean_offdiag_rho_within": sub["rho_within"].mean(),
            "mean_offdiag_rho_transferred": sub["rho_transferred"].mean(),
            "median_rho_null_high": sub["rho_null_high"].median(),
            "n_rho_beats_null": int(sub["rho_beats_null"].sum()),
            "n_transfer_beats_null": int((~sub["transfer_at_null"]).sum()),
            "median_transfer_auroc": sub["transfer_auroc"].median(),
            "median_transfer_auroc_null_high": sub["transfer_auroc_null_high"].median(),
            "median_native_auroc": sub["native_auroc"].median(),
            "n_geometry_defined": int(sub["geometry_defined"].sum()),
            "median_cosine": sub.loc[sub["geometry_defined"], "cosine"].median() if sub["geometry_defined"].any()
            else None,
            "near_duplicate_test_share": near_duplicates.get(task),
            "diagonal_all_exactly_one": bool((diag["pearson"] == 1.0).all()),
            "n_sources": int(cells.loc[cells["task"] == task, "source"].nunique()),
        }
        metrics["tasks"][task] = {k: (_r4(v) if isinstance(v, float) or v is None else v) for k, v in stats.items()}
        s = summary.get(task, {})
        metrics["tasks"][task]["cosine_vs_rho_n"] = int(s.get("n", 0))
        for key in ("one_minus_median_ratio", "share_high_cos_low_ce"):
            if s.get(key) is not None and np.isfinite(s[key]):
                metrics["tasks"][task][key] = round(float(s[key]), 4)
    return metrics
