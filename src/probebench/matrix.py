"""From per-prompt effects to cells, matrices, flags, the scoring rule and ProbeScore.

A cell is (task, source s, target t). Source side: s ablating its own probe. Target side: t
ablating the transferred direction. rho_CE = Pearson over the test prompts. For s == t both
sides are the same rows of the same table, so the diagonal is exactly 1.0 by construction.

    >>> eff = normalize_effects(effects_df, "token_margin")         # doctest: +SKIP
    >>> cells = cell_table(eff, transfers, n_resamples=1000, seed=0)  # doctest: +SKIP
    >>> cells = apply_rules(cells, RuleConfig(), heldout_ok={"sentiment": True})  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from probebench.stats import bootstrap_indices, cell_statistics, cosine_overstatement, pearson

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


def _side(effects: pd.DataFrame, task: str, source: str, target: str) -> pd.DataFrame:
    rows = effects[(effects["task"] == task) & (effects["source"] == source) & (effects["target"] == target)]
    return rows.set_index("prompt_id").sort_index()


def cell_table(effects: pd.DataFrame, transfers: dict, *, n_resamples: int, seed: int, ci_level: float = 0.95,
               ci_method: str = "percentile") -> pd.DataFrame:
    """Statistics for every (task, source, target) cell, one shared resample-index matrix per task.

    `transfers[target][task][source]` carries the transfer diagnostics (R^2, cosine, AUROC).
    """
    rows = []
    for task in sorted(effects["task"].unique()):
        sub = effects[effects["task"] == task]
        models = sorted(sub["target"].unique())
        sources = sorted(sub["source"].unique())
        ids = None
        for source in sources:
            src = _side(sub, task, source, source)
            if ids is None:
                ids = src.index
                idx_BN = bootstrap_indices(len(ids), n_resamples, seed)
            for target in models:
                tgt = src if target == source else _side(sub, task, source, target)
                if not tgt.index.equals(ids) or not src.index.equals(ids):
                    raise MatrixError(f"task {task}: cell {source}->{target} is not paired on the same test prompts; "
                                      "rerun ablate for both models")
                x_N, y_N = src["effect_sd"].to_numpy(np.float64), tgt["effect_sd"].to_numpy(np.float64)
                row = {"task": task, "source": source, "target": target, "diagonal": source == target}
                try:
                    stats = cell_statistics(x_N, y_N, idx_BN, ci_level=ci_level, ci_method=ci_method).to_dict()
                    degenerate = False
                except ValueError as exc:
                    if "constant" not in str(exc):
                        raise
                    stats = {"n": len(x_N), "pearson": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                             "ci_level": ci_level, "ci_method": ci_method, "n_resamples": n_resamples,
                             "spearman": np.nan, "max_jackknife_influence": np.nan, "effect_ratio": np.nan}
                    degenerate = True
                row.update(stats)
                row["degenerate"] = degenerate
                row["naive_logit_rho"] = pearson(src["delta_logit_pos"].to_numpy(np.float64),
                                                 tgt["delta_logit_pos"].to_numpy(np.float64))
                info = transfers[target][task][source]
                row.update({"transfer_method": info["method"], "transfer_r2": info.get("r2_test", np.nan),
                            "transfer_alpha": info.get("alpha", np.nan), "cosine": info["cosine_native"],
                            "transfer_auroc": info["transfer_auroc"], "source_auroc": info.get("source_auroc", np.nan),
                            "mean_abs_effect_sd_source": float(np.abs(x_N).mean()),
                            "mean_abs_effect_sd_target": float(np.abs(y_N).mean())})
                rows.append(row)
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class RuleConfig:
    """Flag thresholds and the scoring rule (DESIGN §2)."""

    not_same_threshold: float = 0.4
    cosine_confound_threshold: float = 0.7
    min_n: int = 200
    min_sources: int = 3
    normalization: str = "token_margin"
    min_effect_sd: float = 0.05


def apply_rules(cells: pd.DataFrame, rules: RuleConfig, *, heldout_ok: dict[str, bool]) -> pd.DataFrame:
    """Flags (`not_same_mechanism`, `cosine_confound`, and the diagnostic `inert_direction`) and
    `scored` with the reason when not.

    `inert_direction`: ablating the direction moves the margin by less than `min_effect_sd`
    clean-margin SDs on average on one side, so rho correlates noise (a readout direction that
    the model does not use). It is reported, not a scoring condition (DESIGN §2 fixes those)."""
    out = cells.copy()
    rho = out["pearson"]
    out["not_same_mechanism"] = (rho < rules.not_same_threshold) | rho.isna()
    out["cosine_confound"] = (out["cosine"] >= rules.cosine_confound_threshold) & (rho < rules.not_same_threshold)
    out["inert_direction"] = (out[["mean_abs_effect_sd_source", "mean_abs_effect_sd_target"]].min(axis=1)
                              < rules.min_effect_sd)
    n_sources = out.groupby("task")["source"].transform("nunique")
    reasons = []
    for (_, row), k in zip(out.iterrows(), n_sources):
        why = []
        if not heldout_ok.get(row["task"], False):
            why.append("held-out check not passed")
        if row["n"] < rules.min_n:
            why.append(f"N={row['n']} < {rules.min_n}")
        if rules.normalization != "token_margin":
            why.append(f"normalization {rules.normalization} (token_margin required)")
        if k < rules.min_sources:
            why.append(f"{k} source model(s) < {rules.min_sources}")
        if row["degenerate"]:
            why.append("constant effect (ablation changed nothing)")
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


def cosine_summary(cells: pd.DataFrame) -> dict:
    """Cosine vs causal equivalence over off-diagonal cells, both named statistics."""
    off = cells[~cells["diagonal"]]
    return cosine_overstatement(off["pearson"].to_numpy(), off["cosine"].to_numpy())
