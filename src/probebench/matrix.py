"""From per-prompt effects to cells, matrices, flags, the scoring rule and ProbeScore.

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

from probebench.params import MatrixParams
from probebench.stats import bootstrap_indices, cell_statistics, cosine_overstatement, pearson, within_class_pearson
from probebench.tasks import PromptSetError, check_no_leakage, train_hash

EFFECT_COLUMNS = {"token_margin": "delta", "logit_pos": "delta_logit_pos", "logprob_pos": "delta_logprob_pos"}


class MatrixError(ValueError):
    """Inputs that cannot form a matrix (unpaired prompts, too few prompts for a scored run)."""


def normalize_effects(effects: pd.DataFrame, effect: str) -> tuple[pd.DataFrame, dict]:
    """Add `effect` (the chosen per-prompt delta) and `effect_sd` = effect / sd(clean margin) of
    the model the row was measured in ("effect in clean-margin SDs"). Pearson does not depend on
    this scaling; the effect ratio does."""
    if effect not in EFFECT_COLUMNS:
        raise MatrixError(f"normalize.effect {effect!r}: use one of {sorted(EFFECT_COLUMNS)}")
    sd = effects.groupby(["task", "target", "source"])["clean_margin"].std(ddof=1).groupby(["task", "target"]).first()
    out = effects.copy()
    out["effect"] = out[EFFECT_COLUMNS[effect]]
    out["clean_margin_sd"] = [sd[(task, target)] for task, target in zip(out["task"], out["target"])]
    out["effect_sd"] = out["effect"] / out["clean_margin_sd"]
    sds = {f"{task}/{target}": float(v) for (task, target), v in sd.items()}
    return out, {"effect": effect, "column": EFFECT_COLUMNS[effect], "clean_margin_sd": sds}


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
                    # geometry where defined (DESIGN §2): native cosine on a shared basis, else the
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


FLAGS = ("not_same_mechanism", "label_driven", "cosine_confound", "transfer_at_null", "inert_direction")


def apply_rules(cells: pd.DataFrame, rules: MatrixParams, *, normalization: str, null_alpha: float,
                heldout: dict[str, str], accuracy: dict[tuple[str, str], float] | None = None) -> pd.DataFrame:
    """Flags and `scored` with the reason when not (DESIGN §2).

    * `not_same_mechanism`: rho_CE < not_same_threshold (or undefined);
    * `label_driven`: rho_CE >= not_same_threshold but the within-class CI reaches below
      within_threshold (the agreement is the label, not the per-prompt effect);
    * `cosine_confound`: geometry defined and above its null (p <= null_alpha), cosine >=
      cosine_confound_threshold, and rho_CE < not_same_threshold;
    * `transfer_at_null`: the transferred direction's AUROC does not beat its null (p > null_alpha);
      informative only, scoring follows the site's rules;
    * `inert_direction`: mean |effect| below min_effect_sd clean-margin SDs on either side.

    `heldout[task]` is "" when the held-out check passed, else the reason it failed.
    `accuracy[(task, model)]` is the model's held-out verdict accuracy (missing: not checked).
    """
    accuracy = accuracy or {}
    out = cells.copy()
    rho = out["pearson"]
    off = ~out["diagonal"]
    out["not_same_mechanism"] = (rho < rules.not_same_threshold) | rho.isna()
    out["label_driven"] = (rho >= rules.not_same_threshold) & (out["rho_within_ci_low"] < rules.within_threshold)
    out["geometry_defined"] = off & out["cosine"].notna() & (out["cosine_null_p"] <= null_alpha)
    out["cosine_confound"] = (out["geometry_defined"] & (out["cosine"] >= rules.cosine_confound_threshold)
                              & (rho < rules.not_same_threshold))
    out["transfer_at_null"] = off & ~(out["transfer_auroc_null_p"] <= null_alpha)
    out["inert_direction"] = (out[["mean_abs_effect_sd_source", "mean_abs_effect_sd_target"]].min(axis=1)
                              < rules.min_effect_sd)
    out["rho_beats_null"] = rho > out["rho_null_high"]
    for flag in FLAGS:
        out.loc[~off, flag] = False
    out["flags"] = [";".join(f for f in FLAGS if r[f]) for _, r in out.iterrows()]
    n_sources = out.groupby("task")["source_model"].transform("nunique")
    reasons = []
    for (_, row), k in zip(out.iterrows(), n_sources):
        why = []
        if heldout.get(row["task"], "held-out check not run"):
            why.append(heldout.get(row["task"], "held-out check not run"))
        if row.get("imported", False):
            why.append("imported probe: its training prompts cannot be checked against this test set")
        if row["n"] < rules.min_n:
            why.append(f"N={row['n']} < {rules.min_n}")
        if normalization != "token_margin":
            why.append(f"normalization {normalization} (token_margin required)")
        if k < rules.min_sources:
            why.append(f"{k} source model(s) < {rules.min_sources}")
        if row["degenerate"]:
            why.append("constant effect (ablation changed nothing)")
        if row["n_resamples"] < rules.min_resamples:
            why.append(f"B={row['n_resamples']} bootstrap resamples < {rules.min_resamples}")
        for m in dict.fromkeys((row["source"], row["target"])):
            acc = accuracy.get((row["task"], m))
            if acc is not None and acc < rules.min_heldout_accuracy:
                why.append(f"{m} held-out verdict accuracy {acc:.2f} < {rules.min_heldout_accuracy} (near chance)")
        reasons.append("; ".join(why))
    out["scored"] = [not r for r in reasons]
    out["unscored_reason"] = reasons
    return out


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


def heldout_check(prompts: pd.DataFrame, probe_rows_N: np.ndarray, train_hashes: dict[str, str]) -> str:
    """"" when every probe card's train hash equals the hash of the rows it should have been
    fitted on and no test prompt's normalized text is in train; else the reason.

    >>> df = pd.DataFrame({"id": ["a", "b"], "text": ["x y", "x z"], "label": [0, 1], "split": ["train", "test"],
    ...                    "anchor": [3, 3], "positive": " yes", "negative": " no", "strength": [0.0, 1.0]})
    >>> ok = train_hash(df); heldout_check(df, np.array([True, False]), {"m": ok})
    ''
    >>> heldout_check(df, np.array([True, False]), {"m": "0" * 64})[:40]
    'probe m: card train_hash 000000000000 is'
    """
    expected = train_hash(prompts[probe_rows_N | (prompts["split"] == "test").to_numpy()])
    for model, got in sorted(train_hashes.items()):
        if got != expected:
            return (f"probe {model}: card train_hash {str(got)[:12]} is not the hash of the train rows scored "
                    f"against ({expected[:12]}); rerun probe@{model}")
    try:
        check_no_leakage(prompts, source="prompts")
    except PromptSetError as exc:
        return str(exc)
    return ""


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
