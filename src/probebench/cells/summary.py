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


def pair_summary(cells: pd.DataFrame, task: str) -> dict:
    """Q1 over the task's unordered pairs of default sources (rho_CE, CCC and their nulls are the
    same for (s, t) and (t, s), so each pair counts once; imported probes are left out). Counts
    over every pair and over the scored ones; medians over every pair.

    >>> c = pd.DataFrame({"task": "t", "source": ["a", "b", "a"], "target": ["b", "a", "a"],
    ...                   "diagonal": [False, False, True], "imported": False, "scored": True,
    ...                   "pearson": [0.3, 0.3, 1.0], "ccc": [0.2, 0.2, 1.0], "ccc_beats_null": [True, True, False],
    ...                   "not_same_mechanism": [True, True, False], "label_driven": False})
    >>> pair_summary(c, "t")["n_pairs"], pair_summary(c, "t")["n_pairs_ccc_beats_null"]
    (1, 1)
    """
    off = cells[(cells["task"] == task) & ~cells["diagonal"] & ~cells["imported"].astype(bool)]
    pairs = off[off["source"] < off["target"]]
    scored = pairs[pairs["scored"].astype(bool)]
    out: dict = {"n_pairs": int(len(pairs)), "n_pairs_scored": int(len(scored))}
    for name, sub in (("", pairs), ("scored_", scored)):
        out[f"n_{name}pairs_not_same_mechanism"] = int(sub["not_same_mechanism"].sum())
        out[f"n_{name}pairs_ccc_beats_null"] = int(sub["ccc_beats_null"].sum())
        out[f"n_{name}pairs_label_driven"] = int(sub["label_driven"].sum())
    for col in ("pearson", "ccc"):
        out[f"median_pair_{col}"] = float(pairs[col].median()) if len(pairs) else None
    return out


def _r4(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def matrix_metrics(cells: pd.DataFrame, summary: dict, near_duplicates: dict[str, float | None]) -> dict:
    """Headline numbers (DVC metrics: numbers only). Counts are over off-diagonal cells (Q2, per
    ordered cell) and, prefixed `q1_`, over unordered pairs of default sources (Q1); each statistic
    sits next to its control (random-direction null for rho_CE and CCC, the target's random
    directions for the transferred CCC, the within-class value for the label)."""
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
            "median_ccc": sub["ccc"].median(), "median_ccc_within": sub["ccc_within"].median(),
            "median_ccc_null_high": sub["ccc_null_high"].median(),
            "median_ccc_transferred": sub["ccc_transferred"].median(),
            "n_transfer_beats_null": int((~sub["transfer_at_null"] & sub["ccc_transferred_null_p"].notna()).sum()),
            "n_inert_transfer": int(sub["inert_transfer"].sum()),
            "median_transfer_auroc": sub["transfer_auroc"].median(),
            "median_transfer_auroc_null_high": sub["transfer_auroc_null_high"].median(),
            "median_native_auroc": sub["native_auroc"].median(),
            "n_geometry_defined": int(sub["geometry_defined"].sum()),
            "median_cosine": sub.loc[sub["geometry_defined"], "cosine"].median() if sub["geometry_defined"].any()
            else None,
            "near_duplicate_test_share": near_duplicates.get(task),
            "diagonal_all_exactly_one": bool((diag["pearson"] == 1.0).all()),
            "n_sources": int(cells.loc[cells["task"] == task, "source"].nunique()),
            "n_offdiag": int(len(sub)),
        }
        stats.update({f"q1_{k}": v for k, v in pair_summary(cells, task).items()})
        metrics["tasks"][task] = {k: (_r4(v) if isinstance(v, float) or v is None else v) for k, v in stats.items()}
        s = summary.get(task, {})
        metrics["tasks"][task]["cosine_vs_rho_n"] = int(s.get("n", 0))
        for key in ("one_minus_median_ratio", "share_high_cos_low_ce"):
            if s.get(key) is not None and np.isfinite(s[key]):
                metrics["tasks"][task][key] = round(float(s[key]), 4)
    return metrics
