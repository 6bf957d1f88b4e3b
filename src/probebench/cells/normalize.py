"""Normalized effects: the chosen per-prompt delta (token margin, or a diagnostic) and the effect
in clean-margin SDs of the model it was measured in."""

from __future__ import annotations

import pandas as pd

from probebench.cells.schema import MatrixError

EFFECT_COLUMNS = {"token_margin": "delta", "logit_pos": "delta_logit_pos", "logprob_pos": "delta_logprob_pos"}


def normalize_effects(effects: pd.DataFrame, effect: str) -> tuple[pd.DataFrame, dict]:
    """Add `effect` (the chosen per-prompt delta) and `effect_sd` = effect / sd(clean margin) of
    the model the row was measured in ("effect in clean-margin SDs"). Pearson does not depend on
    this scaling; the effect ratio does."""
    if effect not in EFFECT_COLUMNS:
        raise MatrixError(f"normalize.effect {effect!r}: use one of {sorted(EFFECT_COLUMNS)}")
    sd = effects.groupby(["task", "target", "source"])["clean_margin"].std(ddof=1).groupby(["task", "target"]).first()
    out = effects.copy()
    out["effect"] = out[EFFECT_COLUMNS[effect]]
    out["clean_margin_sd"] = sd.reindex(pd.MultiIndex.from_arrays([out["task"], out["target"]])).to_numpy()
    out["effect_sd"] = out["effect"] / out["clean_margin_sd"]
    sds = {f"{task}/{target}": float(v) for (task, target), v in sd.items()}
    return out, {"effect": effect, "column": EFFECT_COLUMNS[effect], "clean_margin_sd": sds}
