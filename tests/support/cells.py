"""Synthetic per-prompt ablation effects with planted correlations, and the cell table built and
ruled from them (shared by the tests of tests/cells and tests/leaderboard)."""

import numpy as np
import pandas as pd

from probebench.cells import apply_rules, cell_table, normalize_effects
from probebench.params.schema import MatrixParams


def ruled(cells, heldout="", normalization="token_margin", gate=None, **kw):
    kw.setdefault("min_resamples", 50)
    return apply_rules(cells, MatrixParams(**kw), normalization=normalization, null_alpha=0.05, heldout={"t": heldout},
                       gate=gate)


MODELS = ["a", "b", "c"]


def _frame(task, target, source, kind, clean, delta, shift, labels):
    n = len(clean)
    return pd.DataFrame({
        "task": task, "target": target, "kind": kind, "source": source,
        "prompt_id": [f"p{i:04d}" for i in range(n)], "label": labels, "clean_margin": clean,
        "ablated_margin": clean + delta, "delta": delta, "delta_logit_pos": 0.5 * delta + shift,
        "delta_logprob_pos": 0.1 * delta})


def synthetic_effects(n=256, rho=0.6, shift_sd=0.0, seed=0, models=MODELS, tasks=("t",), label_effect=0.0,
                      transfer_rho=None, n_random=99):
    """Per-prompt effects with a planted correlation `rho` between every pair of models' matched
    deltas (a shared latent z), an optional label effect added to every matched delta, a
    transferred direction whose delta shares z with weight `transfer_rho` (default: rho), random
    null directions that share nothing, and optionally a large per-prompt shift added to every
    logit in every model (it cancels in the margin but not in logit(pos))."""
    rng = np.random.default_rng(seed)
    transfer_rho = rho if transfer_rho is None else transfer_rho
    rows, transfers = [], {t: {} for t in models}
    for task in tasks:
        z = rng.normal(size=n)
        labels = (rng.random(n) < 0.5).astype(int)
        shift = shift_sd * rng.normal(size=n)
        for target in models:
            transfers[target][task] = {}
            clean = rng.normal(2.0, 1.5, size=n)
            own = z * np.sqrt(rho) + np.sqrt(1 - rho) * rng.normal(size=n) + label_effect * labels
            rows.append(_frame(task, target, target, "matched", clean, own, shift, labels))
            for j in range(n_random):
                rows.append(_frame(task, target, f"random{j}", "random", clean, 0.05 * rng.normal(size=n), shift,
                                   labels))
            for source in models:
                info = {"method": "native", "transfer_auroc": 0.8, "native_auroc": 0.8, "cosine_transfer": 1.0}
                if source != target:
                    moved = (z * np.sqrt(transfer_rho) + np.sqrt(1 - transfer_rho) * rng.normal(size=n)
                             + label_effect * labels)
                    rows.append(_frame(task, target, source, "transferred", clean, moved, shift, labels))
                    info = {"method": "activation_ridge", "transfer_auroc": 0.8, "native_auroc": 0.8,
                            "r2_test": 0.9, "cosine_transfer": 0.9, "cosine_transfer_null_p": 0.04,
                            "transfer_auroc_null_p": 0.04, "transfer_auroc_null_low": 0.3,
                            "transfer_auroc_null_high": 0.7}
                transfers[target][task][source] = info
    return pd.concat(rows, ignore_index=True), transfers


def cells_for(effects, transfers, **kw):
    eff, _ = normalize_effects(effects, "token_margin")
    return cell_table(eff, transfers, n_resamples=kw.pop("n_resamples", 300), seed=0, **kw)


def complete(cells: pd.DataFrame) -> pd.DataFrame:
    """`cells` with every column of the cell contract (what a reader of the stage's file gets): the
    planted ones kept, the rest at a neutral value of their kind."""
    from probebench.cells.schema import COLUMNS, validate_cells

    neutral = {"str": "", "bool": False, "int": 0, "float": np.nan}
    return validate_cells(cells.assign(**{c.name: neutral[c.kind] for c in COLUMNS if c.name not in cells.columns}))
