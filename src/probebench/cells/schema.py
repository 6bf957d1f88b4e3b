"""The cell table's contract: every column the matrix stage writes to `reports/cells.parquet` /
`cells.csv`, its dtype and meaning, and the flag set. The writer validates against it and every
reader (emit, report, `probebench show`, the seed spread) reads through `read_cells`, so a column
a reader needs and the writer does not declare fails at once, naming the column.

    >>> [c.name for c in COLUMNS][:4]
    ['task', 'source', 'source_model', 'target']
    >>> FLAGS["not_same_mechanism"].code
    'N'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from probebench.errors import ProbebenchError


class MatrixError(ProbebenchError):
    """Inputs that cannot form a matrix (unpaired prompts, too few prompts for a scored run)."""


class CellSchemaError(ProbebenchError):
    """A cell table that does not match the contract (missing, extra or mistyped columns)."""


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # str | bool | int | float
    meaning: str


@dataclass(frozen=True)
class Flag:
    name: str
    code: str  # one letter, drawn in the report's heatmap cells
    meaning: str


def _c(name: str, kind: str, meaning: str) -> Column:
    return Column(name, kind, meaning)


COLUMNS: tuple[Column, ...] = (
    _c("task", "str", "probe task (a params.yaml tasks key)"),
    _c("source", "str", "source: a model key, or an imported probe's key"),
    _c("source_model", "str", "the model the source probe lives in"),
    _c("target", "str", "target model key"),
    _c("diagonal", "bool", "source == target (rho is exactly 1 by construction)"),
    _c("imported", "bool", "the source is an imported probe"),
    _c("n", "int", "test prompts in the cell"),
    _c("pearson", "float", "rho_CE (Q1): Pearson of source and target matched-probe effects (leaderboard pearson_ce)"),
    _c("ci_low", "float", "rho_CE bootstrap CI, low end"),
    _c("ci_high", "float", "rho_CE bootstrap CI, high end"),
    _c("ci_level", "float", "CI level"),
    _c("ci_method", "str", "percentile | bca"),
    _c("n_resamples", "int", "bootstrap resamples B"),
    _c("spearman", "float", "Spearman of the same effects"),
    _c("max_jackknife_influence", "float", "largest |rho - rho without prompt i|"),
    _c("effect_ratio", "float", "slope of target on source effects in clean-margin SDs"),
    _c("degenerate", "bool", "an effect was constant (ablation changed nothing): statistics undefined"),
    _c("rho_within", "float", "rho_CE with effects centred within each label class"),
    _c("rho_within_ci_low", "float", "within-class CI, low end"),
    _c("rho_within_ci_high", "float", "within-class CI, high end"),
    _c("rho_transferred", "float", "Q2: Pearson of the source effect and the target ablating the transferred direction"),
    _c("rho_transferred_ci_low", "float", "rho_transferred CI, low end"),
    _c("rho_transferred_ci_high", "float", "rho_transferred CI, high end"),
    _c("n_random", "int", "random null directions ablated in the target"),
    _c("n_random_source", "int", "random null directions ablated in the source's model"),
    _c("rho_null_low", "float", "lowest Pearson against a random direction (either side; the old statistic's null)"),
    _c("rho_null_high", "float", "highest such Pearson"),
    _c("ccc", "float", "Q1, scale-aware: Lin's concordance of the matched effects in clean-margin SDs"),
    _c("ccc_ci_low", "float", "ccc bootstrap CI (same resamples), low end"),
    _c("ccc_ci_high", "float", "ccc CI, high end"),
    _c("ccc_within", "float", "ccc with effects centred within each label class"),
    _c("ccc_within_ci_low", "float", "ccc_within CI, low end"),
    _c("ccc_within_ci_high", "float", "ccc_within CI, high end"),
    _c("ccc_null_high", "float", "highest ccc of a random direction (either side)"),
    _c("ccc_null_p", "float", "p of ccc against the random-direction null: the larger of the two sides' p (symmetric)"),
    _c("ccc_null_p_empirical", "float", "the same with empirical p's only, (1 + #{null >= ccc}) / (1 + draws)"),
    _c("ccc_null_fit_p", "float", "Shapiro-Wilk p of the normal fit to the null's Fisher z on a side with < 99 draws "
                                  "(the lower of two); < 0.01: the fit is not used; NaN: both sides empirical"),
    _c("ccc_null_q", "float", "Benjamini-Hochberg q of ccc_null_p over the task's unordered pairs"),
    _c("ccc_within_null_p", "float", "p of ccc_within against the within-class random-direction null (both sides)"),
    _c("ccc_transferred", "float", "Q2, sign-invariant: ccc of the source effect and the target ablating the transferred direction"),
    _c("ccc_transferred_ci_low", "float", "ccc_transferred CI, low end"),
    _c("ccc_transferred_ci_high", "float", "ccc_transferred CI, high end"),
    _c("ccc_transferred_null_p", "float", "p of ccc_transferred against the target's random directions"),
    _c("ccc_transferred_null_q", "float", "Benjamini-Hochberg q of it over the task's ordered off-diagonal cells"),
    _c("naive_logit_rho", "float", "diagnostic: Pearson of raw delta logit(pos) (no margin normalization)"),
    _c("transfer_method", "str", "the label-free map (native on the diagonal)"),
    _c("transfer_r2", "float", "held-out R^2 of the map"),
    _c("transfer_alpha", "float", "the map's ridge strength"),
    _c("transfer_auroc", "float", "AUROC of the transferred direction on target test prompts (raw, never max(a, 1-a))"),
    _c("transfer_auroc_null_p", "float", "empirical p of transfer_auroc against the null maps"),
    _c("transfer_auroc_null_low", "float", "null maps' AUROC range, low end"),
    _c("transfer_auroc_null_high", "float", "null maps' AUROC range, high end"),
    _c("native_auroc", "float", "held-out AUROC of the target's own probe"),
    _c("cosine_transfer", "float", "cosine of the transferred direction with the target's own probe"),
    _c("cosine_transfer_null_p", "float", "its empirical p against the null maps"),
    _c("geometry", "str", "shared_basis | transfer | '' (undefined)"),
    _c("cosine", "float", "geometry: native cosine on a shared basis, else cosine_transfer; NaN where undefined"),
    _c("cosine_null_p", "float", "the geometry's empirical p against its null"),
    _c("mean_abs_effect_sd_source", "float", "mean |effect| of the source side, clean-margin SDs"),
    _c("mean_abs_effect_sd_target", "float", "mean |effect| of the target's matched probe"),
    _c("mean_abs_effect_sd_transferred", "float", "mean |effect| of the transferred direction"),
    _c("not_same_mechanism", "bool", "flag (see FLAGS)"),
    _c("label_driven", "bool", "flag (see FLAGS)"),
    _c("geometry_defined", "bool", "off-diagonal, cosine defined and above its null"),
    _c("cosine_confound", "bool", "flag (see FLAGS)"),
    _c("transfer_at_null", "bool", "flag (see FLAGS)"),
    _c("inert_direction", "bool", "flag (see FLAGS)"),
    _c("inert_transfer", "bool", "flag (see FLAGS)"),
    _c("ccc_beats_null", "bool", "Q1: ccc beats the random-direction null after BH (ccc_null_q <= transfer.null_alpha)"),
    _c("flags", "str", "the raised flags, ';'-separated, in FLAGS order"),
    _c("scored", "bool", "counts toward ProbeScore"),
    _c("unscored_reason", "str", "why not, '; '-separated ('' when scored)"),
    _c("test_set_hash", "str", "sha256 of the task's canonical test split (leaderboard testSetHash)"),
    _c("normalization", "str", "the effect used (token_margin to be scored)"),
)
COLUMN = {c.name: c for c in COLUMNS}

# The order is the order of the `flags` column and of the report's legend.
FLAGS: dict[str, Flag] = {f.name: f for f in (
    Flag("not_same_mechanism", "N", "pooled rho_CE below the threshold"),
    Flag("label_driven", "L", "pooled rho_CE above the threshold, but within class the agreement does not beat "
                              "the within-class random null, or its CI reaches below the within-class threshold: "
                              "the agreement is mostly the label"),
    Flag("cosine_confound", "C", "high cosine (where defined and above its null) but low rho_CE"),
    Flag("transfer_at_null", "T", "the transferred direction's causal agreement with the source (ccc_transferred) "
                                  "does not beat the target's random directions after BH"),
    Flag("inert_direction", "I", "ablation moves the margin by almost nothing on one side: rho correlates noise"),
    Flag("inert_transfer", "Z", "the transferred direction moves the target's margin by almost nothing"),
)}

_KIND_OK = {"str": lambda s: pd.api.types.is_string_dtype(s) or s.isna().all(),
            "bool": pd.api.types.is_bool_dtype,
            "int": pd.api.types.is_integer_dtype,
            "float": lambda s: pd.api.types.is_float_dtype(s) or pd.api.types.is_integer_dtype(s)}


def validate_cells(cells: pd.DataFrame, *, source: str = "cells table") -> pd.DataFrame:
    """`cells` with exactly the declared columns in the declared order, or CellSchemaError naming
    what differs and the fix."""
    names = [c.name for c in COLUMNS]
    missing = [n for n in names if n not in cells.columns]
    extra = [n for n in cells.columns if n not in COLUMN]
    if missing or extra:
        raise CellSchemaError(f"{source}: " + "; ".join(
            ([f"missing column(s) {missing}"] if missing else []) + ([f"undeclared column(s) {extra}"] if extra else []))
            + "; rerun the matrix stage (dvc repro matrix), or declare a new column in probebench.cells.schema")
    bad = [f"{c.name} ({cells[c.name].dtype}, declared {c.kind})" for c in COLUMNS if not _KIND_OK[c.kind](cells[c.name])]
    if bad:
        raise CellSchemaError(f"{source}: column(s) of the wrong type: {bad}; rerun the matrix stage (dvc repro matrix)")
    return cells[names]


def read_cells(path: str | Path) -> pd.DataFrame:
    """The cell table at `path` (.parquet or .csv), validated."""
    path = Path(path)
    if not path.exists():
        raise CellSchemaError(f"{path} not found; run the pipeline first (probebench run)")
    if path.suffix == ".csv":
        cells = pd.read_csv(path, keep_default_na=False, na_values={c.name: [""] for c in COLUMNS if c.kind == "float"})
    else:
        cells = pd.read_parquet(path)
    return validate_cells(cells, source=str(path))
