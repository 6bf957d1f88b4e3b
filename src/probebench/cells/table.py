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
from probebench.stats import (EMPIRICAL_DRAWS, bh_adjust, bootstrap_indices, ccc, ccc_with_ci, cell_statistics,
                              center_within_class, null_test, pearson, within_class_pearson)

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
    `rho_null_low/high`: the range of Pearson against random directions (both sides);
    `ccc*`: the scale-aware agreement, its within-class and transferred versions, their symmetric
    random-direction nulls, p-values and Benjamini-Hochberg q-values (see `_agreement`).
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
        # the within-class nulls use every model's random effects centred within each class: once per task
        randoms_within = {t: [center_within_class(r_N, labels_N) for r_N in rs] for t, rs in randoms.items()}
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
                row.update(_agreement(x_N, y_N, z_N, labels_N, idx_SN, randoms[src_model[source]], randoms[target],
                                      randoms_within[src_model[source]], randoms_within[target],
                                      degenerate=degenerate, has_transfer=not same_model, ci_level=ci_level))
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
    return _bh_per_task(pd.DataFrame(rows))


def _agreement(x_N, y_N, z_N, labels_N, idx_SN, randoms_source, randoms_target, rw_s, rw_t, *, degenerate: bool,
               has_transfer: bool, ci_level: float) -> dict:
    """The scale-aware agreement of a cell and its random-direction nulls (docs/design.md §2).

    Q1 (`ccc`): Lin's CCC of the source and target matched effects in clean-margin SDs. Its null is
    symmetric: on the target side the source effect against the target ablating each random
    direction, on the source side each random direction of the source model against the target's
    matched effect; the cell's p is the larger of the two sides' p (it must beat both), so the
    cell (s, t) and its mirror (t, s) get the same p. The within-class CCC is tested the same way.
    Q2 (`ccc_transferred`): the source effect against the target ablating the transferred
    direction; its null is the target side (a random direction in place of the transferred one).
    Projection ablation does not see a direction's sign, so neither does this test.
    `rw_s` / `rw_t`: the random effects of each side centred within each class.
    """
    nan = np.nan
    xw_N, yw_N = center_within_class(x_N, labels_N), center_within_class(y_N, labels_N)
    rho_null = [pearson(x_N, r) for r in randoms_target] + [pearson(r, y_N) for r in randoms_source]
    out = {"n_random": len(randoms_target), "n_random_source": len(randoms_source),
           "rho_null_low": float(np.nanmin(rho_null)) if rho_null else nan,
           "rho_null_high": float(np.nanmax(rho_null)) if rho_null else nan}
    if degenerate:
        c = cw = (nan, nan, nan)
    else:
        c = ccc_with_ci(x_N, y_N, idx_SN, ci_level=ci_level)
        cw = ccc_with_ci(x_N, y_N, idx_SN, labels_N=labels_N, ci_level=ci_level)
    null_target = [ccc(x_N, r) for r in randoms_target]  # also Q2's null: a random direction in the transfer's place
    t_side = null_test(c[0], null_target)
    s_side = null_test(c[0], [ccc(r, y_N) for r in randoms_source])
    tw_side = null_test(cw[0], [ccc(xw_N, r) for r in rw_t])
    sw_side = null_test(cw[0], [ccc(r, yw_N) for r in rw_s])
    out.update(ccc=c[0], ccc_ci_low=c[1], ccc_ci_high=c[2], ccc_within=cw[0], ccc_within_ci_low=cw[1],
               ccc_within_ci_high=cw[2], ccc_null_high=float(np.nanmax([t_side.null_high, s_side.null_high])),
               ccc_null_p=_both(t_side.p, s_side.p),
               ccc_null_p_empirical=_both(t_side.p_empirical, s_side.p_empirical),
               ccc_null_fit_p=min((side.fit_p for side in (t_side, s_side) if side.n_draws < EMPIRICAL_DRAWS),
                                  default=nan),
               ccc_within_null_p=_both(tw_side.p, sw_side.p))
    if has_transfer and np.ptp(z_N) > 0 and np.ptp(x_N) > 0:
        ct = ccc_with_ci(x_N, z_N, idx_SN, ci_level=ci_level)
        tt = null_test(ct[0], null_target)
        out.update(ccc_transferred=ct[0], ccc_transferred_ci_low=ct[1], ccc_transferred_ci_high=ct[2],
                   ccc_transferred_null_p=tt.p)
    else:
        out.update(ccc_transferred=nan, ccc_transferred_ci_low=nan, ccc_transferred_ci_high=nan,
                   ccc_transferred_null_p=nan)
    return out


def _both(p_target: float, p_source: float) -> float:
    """The p of beating both sides: the larger one; NaN when either side has none (no draws, or an
    undefined statistic), whatever the order.

    >>> _both(0.01, 0.2), _both(np.nan, 0.2), _both(0.2, np.nan)
    (0.2, nan, nan)
    """
    return float("nan") if np.isnan(p_target) or np.isnan(p_source) else float(max(p_target, p_source))


def _bh_per_task(cells: pd.DataFrame) -> pd.DataFrame:
    """Benjamini-Hochberg q-values within each task, off the diagonal. Q1 is a question about an
    unordered pair (its CCC and p are the same both ways), so each pair is one member of the family;
    an imported probe's cell is its own member. Q2 is asked per ordered cell."""
    cells = cells.copy()
    cells["ccc_null_q"] = np.nan
    cells["ccc_transferred_null_q"] = np.nan
    if cells.empty:
        return cells
    for _, sub in cells[~cells["diagonal"]].groupby("task"):
        pair = [(r.source, r.target) if r.imported else tuple(sorted((r.source, r.target)))
                for r in sub.itertuples()]
        first = pd.Series(sub["ccc_null_p"].to_numpy(), index=pd.MultiIndex.from_tuples(pair))
        first = first[~first.index.duplicated()]
        q = pd.Series(bh_adjust(first.to_numpy()), index=first.index)
        cells.loc[sub.index, "ccc_null_q"] = [q[k] for k in pair]
        cells.loc[sub.index, "ccc_transferred_null_q"] = bh_adjust(sub["ccc_transferred_null_p"].to_numpy())
    return cells
