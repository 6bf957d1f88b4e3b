"""From per-prompt effects to the statistics of every cell.

A cell is (task, source s, target t). Source side: s ablating its own probe. Target side: t
ablating its matched probe (rho_CE, Q1) and s's label-free transferred direction
(rho_transferred, Q2). rho = Pearson over the test prompts. For s == t both sides are the same
rows of the same table, so the diagonal is exactly 1.0 by construction.

    >>> eff, info = normalize_effects(effects_df, "token_margin")     # doctest: +SKIP
    >>> cells = cell_table(eff, transfers, n_resamples=1000, seed=0)  # doctest: +SKIP
    >>> cells = apply_rules(cells, MatrixParams(), normalization="token_margin", null_alpha=0.05,
    ...                     heldout={"sentiment": ""})                # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from probebench.cells.schema import MatrixError
from probebench.stats import bootstrap_indices, cell_statistics, pearson, within_class_pearson

def _side(effects: pd.DataFrame, kind: str, source: str, target: str) -> pd.DataFrame:
    rows = effects[(effects["kind"] == kind) & (effects["source"] == source) & (effects["target"] == target)]
    return rows.set_index("prompt_id").sort_index()


_NAN_STATS = ("pearson", "ci_low", "ci_high", "spearman", "max_jackknife_influence", "effect_ratio")


def _stats_or_nan(x_N, y_N, idx_SN, ci_level, ci_method) -> tuple[dict, bool]:
    try:
        return cell_statistics(x_N, y_N, idx_SN, ci_level=ci_level, ci_method=ci_method).to_dict(), False
    except ValueError as exc:
        if "constant" not in str(exc):
            raise
        return {"n": len(x_N), **{k: np.nan for k in _NAN_STATS}, "ci_level": ci_level, "ci_method": ci_method,
                "n_resamples": int(idx_SN.shape[0])}, True


def cell_table(effects: pd.DataFrame, transfers: dict, *, n_resamples: int, seed: int, ci_level: float = 0.95,
               ci_method: str = "percentile") -> pd.DataFrame:
    """Statistics for every (task, source, target) cell, one shared resample-index matrix per task.

    Source side x: s ablating its own probe. rho_CE (`pearson`, Q1): against t ablating its
    matched probe; `rho_within`: the same pair centred within each label class;
    `rho_transferred` (Q2): against t ablating s's label-free transferred direction;
    `rho_null_low/high`: the range of Pearson(x, t ablating a random direction).
    `transfers[target][task][source]` carries the transfer diagnostics (R^2, cosine, AUROC, nulls).
    """
    rows = []
    for task in sorted(effects["task"].unique()):
        sub = effects[effects["task"] == task]
        models = sorted(sub.loc[sub["kind"] == "matched", "target"].unique())
        matched = {m: _side(sub, "matched", m, m) for m in models}
        ids = matched[models[0]].index
        idx_SN = bootstrap_indices(len(ids), n_resamples, seed)
        labels_N = matched[models[0]]["label"].to_numpy(np.float64)
        randoms = {t: [g.set_index("prompt_id").sort_index()["effect_sd"].to_numpy(np.float64)
                       for _, g in sub[(sub["kind"] == "random") & (sub["target"] == t)].groupby("source", sort=True)]
                   for t in models}
        # imported probes: the source side is their own model ablating them (kind "imported")
        src_model = {m: m for m in models}
        for (p, m), _ in sub[sub["kind"] == "imported"].groupby(["source", "target"], sort=True):
            src_model[p] = m
        for source in sorted(src_model):
            src = matched[source] if source in matched else _side(sub, "imported", source, src_model[source])
            x_N = src["effect_sd"].to_numpy(np.float64)
            for target in models:
                tgt = matched[target]
                same_model = src_model[source] == target and source != target
                trf = tgt if target == source or same_model else _side(sub, "transferred", source, target)
                for side in (src, tgt, trf):
                    if not side.index.equals(ids):
                        raise MatrixError(f"task {task}: cell {source}->{target} is not paired on the same test "
                                          "prompts; rerun ablate for both models")
                y_N = tgt["effect_sd"].to_numpy(np.float64)
                z_N = trf["effect_sd"].to_numpy(np.float64)
                row = {"task": task, "source": source, "source_model": src_model[source], "target": target,
                       "diagonal": source == target, "imported": source not in matched}
                stats, degenerate = _stats_or_nan(x_N, y_N, idx_SN, ci_level, ci_method)
                row.update(stats)
                row["degenerate"] = degenerate
                within = (np.nan,) * 3 if degenerate else within_class_pearson(x_N, y_N, labels_N, idx_SN,
                                                                               ci_level=ci_level)
                row.update(rho_within=within[0], rho_within_ci_low=within[1], rho_within_ci_high=within[2])
                # an imported probe in its own model has no transfer: the cell compares two probes
                t_stats = ({"pearson": np.nan, "ci_low": np.nan, "ci_high": np.nan} if same_model
                           else _stats_or_nan(x_N, z_N, idx_SN, ci_level, ci_method)[0])
                row.update(rho_transferred=t_stats["pearson"], rho_transferred_ci_low=t_stats["ci_low"],
                           rho_transferred_ci_high=t_stats["ci_high"])
                null_J = np.array([pearson(x_N, r_N) for r_N in randoms[target]])
                row.update(n_random=len(null_J),
                           rho_null_low=float(np.nanmin(null_J)) if len(null_J) else np.nan,
                           rho_null_high=float(np.nanmax(null_J)) if len(null_J) else np.nan)
                row["naive_logit_rho"] = pearson(src["delta_logit_pos"].to_numpy(np.float64),
                                                 tgt["delta_logit_pos"].to_numpy(np.float64))
                info = transfers[target][task][source]
                geometry = "shared_basis" if "cosine_native" in info else ("transfer" if source != target else "")
                row.update({
                    "transfer_method": info["method"], "transfer_r2": info.get("r2_test", np.nan),
                    "transfer_alpha": info.get("alpha", np.nan), "transfer_auroc": info["transfer_auroc"],
                    "transfer_auroc_null_p": info.get("transfer_auroc_null_p", np.nan),
                    "transfer_auroc_null_low": info.get("transfer_auroc_null_low", np.nan),
                    "transfer_auroc_null_high": info.get("transfer_auroc_null_high", np.nan),
                    "native_auroc": info["native_auroc"], "cosine_transfer": info["cosine_transfer"],
                    "cosine_transfer_null_p": info.get("cosine_transfer_null_p", np.nan),
                    "geometry": geometry,
                    # geometry where defined (docs/design.md §2): native cosine on a shared basis, else the
                    # label-free transfer's cosine; undefined (NaN) on the diagonal
                    "cosine": (info["cosine_native"] if geometry == "shared_basis" else
                               info["cosine_transfer"] if geometry == "transfer" else np.nan),
                    "cosine_null_p": (info.get("cosine_native_null_p", np.nan) if geometry == "shared_basis" else
                                      info.get("cosine_transfer_null_p", np.nan)),
                    "mean_abs_effect_sd_source": float(np.abs(x_N).mean()),
                    "mean_abs_effect_sd_target": float(np.abs(y_N).mean()),
                    "mean_abs_effect_sd_transferred": float(np.abs(z_N).mean())})
                rows.append(row)
    return pd.DataFrame(rows)
