"""The report's text: numbers and CIs as strings, the flag letters and their meanings (from the
cell contract), and the small rules that decide what a section can show (which columns a run
computed, which cells beat their nulls).

    >>> format_ci(0.612, 0.5, 0.7)
    '0.61 [0.50, 0.70]'
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd

from probebench.cells.schema import FLAGS

# One letter per flag (the cell contract's), drawn in the heatmap cells, in the legend's order.
LEGEND_ORDER = ("not_same_mechanism", "label_driven", "transfer_at_null", "cosine_confound", "inert_direction",
                "inert_transfer")
FLAG_CODES = {name: FLAGS[name].code for name in LEGEND_ORDER}
FLAG_MEANING = {name: FLAGS[name].meaning for name in LEGEND_ORDER}




def text_colour(rgba) -> str:
    """'black' or 'white', whichever contrasts more with a background of this colour (WCAG relative
    luminance), so a number stays readable on any cell of the colour map.

    >>> text_colour((0.4, 0.0, 0.1, 1.0)), text_colour((1.0, 0.9, 0.85, 1.0)), text_colour((0.5, 0.5, 0.5))
    ('white', 'black', 'black')
    """
    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(float(c)) for c in tuple(rgba)[:3])
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "white" if (1.05 / (lum + 0.05)) > ((lum + 0.05) / 0.05) else "black"


def format_ci(estimate: float, low: float, high: float, digits: int = 2) -> str:
    """`0.83 [0.76, 0.89]`; `n/a` for a missing estimate, no bracket for a missing interval.

    >>> format_ci(0.8304, 0.7594, 0.8875), format_ci(float("nan"), 0, 1), format_ci(0.5, float("nan"), 0.6)
    ('0.83 [0.76, 0.89]', 'n/a', '0.50')
    """
    if not _finite(estimate):
        return "n/a"
    if not (_finite(low) and _finite(high)):
        return f"{estimate:.{digits}f}"
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def cell_flags(cells: pd.DataFrame) -> pd.Series:
    """Flags of each row as a tuple of names: from the ';'-separated `flags` column when present,
    else from the boolean flag columns of older runs.

    >>> df = pd.DataFrame({"flags": ["not_same_mechanism;label_driven", "", None]})
    >>> cell_flags(df).tolist()
    [('not_same_mechanism', 'label_driven'), (), ()]
    >>> cell_flags(pd.DataFrame({"not_same_mechanism": [True, False]})).tolist()
    [('not_same_mechanism',), ()]
    """
    if "flags" in cells.columns:
        def parse(v) -> tuple[str, ...]:
            if not isinstance(v, str):
                return ()
            return tuple(f.strip() for f in v.split(";") if f.strip())
        return cells["flags"].map(parse)
    present = [f for f in FLAG_CODES if f in cells.columns]
    return pd.Series([tuple(f for f in present if bool(row[f])) for _, row in cells.iterrows()], index=cells.index,
                     dtype=object)


def group_numeric(metrics: dict) -> dict[str, dict[str, float]]:
    """Numbers of a (nested) metrics dict grouped for display: a nested dict is a group of its
    own; flat keys group by the prefix before their first '_' when two or more share it.

    >>> group_numeric({"ce_kl": {"median_cos": 0.4, "n": 80}, "control_cos": 1.0, "control_ce": 0.99,
    ...                "n_inputs": 256, "note": "text"})
    {'ce_kl': {'median_cos': 0.4, 'n': 80}, 'control': {'control_ce': 0.99, 'control_cos': 1.0}, 'other': {'n_inputs': 256}}
    """
    flat: dict[str, float] = {}
    nested: dict[str, dict[str, float]] = {}

    def walk(d: dict, prefix: str, out: dict) -> None:
        for k in sorted(d):
            v = d[k]
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.", out)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{prefix}{k}"] = v

    for k in sorted(metrics):
        v = metrics[k]
        if isinstance(v, dict):
            inner: dict[str, float] = {}
            walk(v, "", inner)
            if inner:
                nested[k] = inner
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[k] = v
    prefixes = pd.Series([k.split("_", 1)[0] for k in flat], dtype=object)
    counts = prefixes.value_counts()
    grouped: dict[str, dict[str, float]] = dict(nested)
    for k in flat:
        p = k.split("_", 1)[0]
        group = p if "_" in k and counts[p] >= 2 and p not in nested else "other"
        grouped.setdefault(group, {})[k] = flat[k]
    return grouped


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _esc(v) -> str:
    return html.escape(str(v), quote=True)


def _num(v, digits: int = 2) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}f}" if _finite(v) else "n/a"


def _has(df: pd.DataFrame | None, *cols: str) -> bool:
    """All columns present and at least one value of each defined."""
    return df is not None and all(c in df.columns and df[c].notna().any() for c in cols)


def _prepare_cells(cells: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("task", "source", "target", "pearson") if c not in cells.columns]
    if missing:
        raise ValueError(f"cells table: missing column(s) {missing}; rerun the matrix stage (dvc repro matrix)")
    out = cells.copy()
    if "diagonal" not in out.columns:
        out["diagonal"] = out["source"] == out["target"]
    out["diagonal"] = out["diagonal"].astype(bool)
    out["flag_list"] = cell_flags(out)
    out["scored_"] = out["scored"].astype(bool) if "scored" in out.columns else True
    return out


def _beats_rho_null(off: pd.DataFrame) -> pd.Series | None:
    """Q1 beats the random-direction null: the matrix stage's `ccc_beats_null` (CCC against the
    symmetric null, BH over unordered pairs), so the page and metrics/matrix.json count the same
    cells; None for a table without it."""
    if "ccc_beats_null" in off.columns:
        return off["ccc_beats_null"].fillna(False).astype(bool)
    return None


def _beats_auroc_null(off: pd.DataFrame) -> pd.Series | None:
    """The transferred direction lands: the matrix stage's `transfer_at_null` flag, not raised
    (the rule lives in probebench.cells.rules, applied once)."""
    if "transfer_at_null" not in off.columns or not _has(off, "ccc_transferred_null_p"):
        return None
    return ~off["transfer_at_null"].astype(bool)
