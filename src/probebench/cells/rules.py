"""Flags, the held-out check and the scoring rule of each cell (docs/design.md §2)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from probebench.cells.schema import FLAGS
from probebench.params.schema import MatrixParams
from probebench.prompts import PromptSetError, check_no_leakage, train_hash
from probebench.stats import below


def apply_rules(cells: pd.DataFrame, rules: MatrixParams, *, normalization: str, null_alpha: float,
                heldout: dict[str, str], gate: dict[tuple[str, str], dict] | None = None) -> pd.DataFrame:
    """Flags and `scored` with the reason when not (docs/design.md §2).

    * `not_same_mechanism`: rho_CE < not_same_threshold (or undefined);
    * `label_driven`: rho_CE >= not_same_threshold but within class the agreement is not there:
      the within-class CCC does not beat its random-direction null (p > null_alpha), or the
      within-class CI reaches below within_threshold (the agreement is the label, not the
      per-prompt effect);
    * `cosine_confound`: geometry defined and above its null (p <= null_alpha), cosine >=
      cosine_confound_threshold, and rho_CE < not_same_threshold;
    * `transfer_at_null`: the transferred direction's causal agreement with the source
      (`ccc_transferred`, blind to the direction's sign) does not beat the target's random
      directions after Benjamini-Hochberg over the task (q > null_alpha); informative only,
      scoring follows the site's rules; the transfer AUROC stays a diagnostic;
    * `inert_direction`: mean |effect| below min_effect_sd clean-margin SDs on either side;
    * `inert_transfer`: the transferred direction's mean |effect| below min_effect_sd.
    `ccc_beats_null` (Q1): ccc_null_q <= null_alpha (BH over the task's unordered pairs).

    `heldout[task]` is "" when the held-out check passed, else the reason it failed.
    `gate[(task, model)]` says whether the model does the task: `heldout_auroc` (of the clean
    margin) and `calibrated_accuracy` (at a threshold calibrated on train); missing: not checked.
    """
    gate = gate or {}
    out = cells.copy()
    rho = out["pearson"]
    off = ~out["diagonal"]
    out["not_same_mechanism"] = (rho < rules.not_same_threshold) | rho.isna()
    out["label_driven"] = ((rho >= rules.not_same_threshold)
                           & ((out["rho_within_ci_low"] < rules.within_threshold)
                              | ~(out["ccc_within_null_p"] <= null_alpha)))
    out["geometry_defined"] = off & out["cosine"].notna() & (out["cosine_null_p"] <= null_alpha)
    out["cosine_confound"] = (out["geometry_defined"] & (out["cosine"] >= rules.cosine_confound_threshold)
                              & (rho < rules.not_same_threshold))
    has_transfer = off & out["ccc_transferred_null_p"].notna()
    out["transfer_at_null"] = has_transfer & ~(out["ccc_transferred_null_q"] <= null_alpha)
    out["inert_direction"] = (out[["mean_abs_effect_sd_source", "mean_abs_effect_sd_target"]].min(axis=1)
                              < rules.min_effect_sd)
    out["inert_transfer"] = has_transfer & (out["mean_abs_effect_sd_transferred"] < rules.min_effect_sd)
    out["ccc_beats_null"] = off & (out["ccc_null_q"] <= null_alpha)
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
        for m in dict.fromkeys((row["source_model"], row["target"])):
            why += gate_failures(gate.get((row["task"], m)), m, rules)
        reasons.append("; ".join(why))
    out["scored"] = [not r for r in reasons]
    out["unscored_reason"] = reasons
    return out


def gate_failures(figures: dict | None, model: str, rules: MatrixParams) -> list[str]:
    """Why `model` does not do the task (empty when it does): held-out AUROC of its clean margin
    below `min_margin_auroc`, or its accuracy at a train-calibrated threshold below
    `min_heldout_accuracy`. Values print with the digits that keep them below the threshold.

    >>> gate_failures({"heldout_auroc": 0.505, "calibrated_accuracy": 0.5977}, "m", MatrixParams())
    ['m does not do the task: clean-margin AUROC 0.51 < 0.6', 'm does not do the task: accuracy 0.598 < 0.6 at a threshold calibrated on train']
    """
    if figures is None:
        return []
    why = []
    auroc_ = figures.get("heldout_auroc")
    if auroc_ is not None and auroc_ < rules.min_margin_auroc:
        why.append(f"{model} does not do the task: clean-margin AUROC {below(auroc_, rules.min_margin_auroc)} "
                   f"< {rules.min_margin_auroc}")
    acc = figures.get("calibrated_accuracy", figures.get("heldout_accuracy"))
    if acc is not None and acc < rules.min_heldout_accuracy:
        why.append(f"{model} does not do the task: accuracy {below(acc, rules.min_heldout_accuracy)} "
                   f"< {rules.min_heldout_accuracy} at a threshold calibrated on train")
    return why


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
