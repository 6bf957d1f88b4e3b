"""ProbeBench `CrossModelTransfer` entries from scored cells.

An entry has exactly the site's keys: probeId, sourceModel, targetModel, pearson_ce,
transfer_auroc, notes. Everything else (CI, N, B, flags, scored status, test-set hash) goes into
`notes` as one readable line and, in full, into a provenance sidecar.

    >>> entries, provenance = build_entries(cells, names, probe_ids, run_info)  # doctest: +SKIP
"""

from __future__ import annotations

import math

import pandas as pd

from probebench.leaderboard import validate_entries


def probe_id(prefix: str, task: str, source: str, layer: int, method: str) -> str:
    return f"{prefix}-{task}-{source}-l{layer}-{method}"


def _flags(row) -> str:
    flags = [f for f in ("not_same_mechanism", "cosine_confound", "inert_direction") if bool(row.get(f, False))]
    return ", ".join(flags) if flags else "none"


def notes_line(row) -> str:
    """One readable line: the number, its CI, N, B, flags, scored status and the test-set hash."""
    scored = "scored" if row["scored"] else f"reported, not scored ({row['unscored_reason']})"
    r2 = row["transfer_r2"]
    r2_text = "" if r2 is None or (isinstance(r2, float) and math.isnan(r2)) else f" R2={r2:.2f}"
    return (f"rho_CE {row['pearson']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] "
            f"{row['ci_level'] * 100:.0f}% {row['ci_method']} CI, N={row['n']}, B={row['n_resamples']}; "
            f"{scored}; flags: {_flags(row)}; cosine {row['cosine']:.3f}; effect ratio {row['effect_ratio']:.2f}; "
            f"transfer {row['transfer_method']}{r2_text}; normalization {row['normalization']}; "
            f"testSetHash sha256:{row['test_set_hash']}")


def build_entries(cells: pd.DataFrame, names: dict[str, str], probe_ids: dict[tuple[str, str], str]
                  ) -> tuple[list[dict], list[dict]]:
    """Entries for every off-diagonal cell (the diagonal is 1.0 by construction, not a transfer),
    validated against the CrossModelTransfer schema, plus one provenance record per entry."""
    entries, provenance = [], []
    off = cells[~cells["diagonal"]].sort_values(["task", "source", "target"])
    for _, row in off.iterrows():
        if row["degenerate"] or math.isnan(row["pearson"]):
            continue  # no defined rho: nothing a leaderboard could show
        entry = {"probeId": probe_ids[(row["task"], row["source"])], "sourceModel": names[row["source"]],
                 "targetModel": names[row["target"]], "pearson_ce": round(float(row["pearson"]), 4),
                 "transfer_auroc": round(float(row["transfer_auroc"]), 4), "notes": notes_line(row)}
        entries.append(entry)
        record = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        provenance.append({"probeId": entry["probeId"], "sourceModel": entry["sourceModel"],
                           "targetModel": entry["targetModel"],
                           "cell": {k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()}})
    validate_entries(entries, source="emitted entries")
    return entries, provenance
