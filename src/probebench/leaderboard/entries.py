"""ProbeBench `CrossModelTransfer` entries from scored cells.

An entry has exactly the site's keys: probeId, sourceModel, targetModel, pearson_ce,
transfer_auroc, notes. Everything else (CI, N, B, flags, scored status, test-set hash) goes into
`notes` as one readable line and, in full, into a provenance sidecar.

    >>> entries, provenance = build_entries(cells, names, probe_ids)  # doctest: +SKIP
"""

from __future__ import annotations

import math

import pandas as pd

from probebench.leaderboard.schema import LeaderboardError, check_bundle_id, validate_entries


def probe_id(prefix: str, task: str, source: str, layer: int, probe_method: str, transfer_method: str) -> str:
    """Task, source model, checkpoint (`resid_post.L<block>`: output of decoder block <block>,
    0-based), probe method and transfer method: two different settings never share an id.

    >>> probe_id("probebench", "sentiment", "gemma2-it", 0, "mean_diff", "activation_ridge")
    'probebench-sentiment-gemma2-it-resid_post.L0-mean_diff-activation_ridge'
    """
    return f"{prefix}-{task}-{source}-resid_post.L{layer}-{probe_method}-{transfer_method}"


def check_probe_ids(ids: dict[tuple[str, str], str], *, origin: dict[tuple[str, str], str],
                    model: dict[str, str]) -> None:
    """Refuse, before any entry is built, ids that are invalid or that two sources share for the
    same source model (their entries would collide on the leaderboard key probeId, sourceModel,
    targetModel). `ids` and `origin` (the params key that set the id) are keyed by (task, source);
    `model` maps a source to its leaderboard model name.

    >>> ids = {("t", "a"): "x", ("t", "p1"): "alice/x", ("t", "p2"): "alice/x"}
    >>> check_probe_ids(ids, origin={k: f"probes.{k[1]}" for k in ids}, model={"a": "m", "p1": "m", "p2": "m"})
    Traceback (most recent call last):
    ...
    probebench.leaderboard.schema.LeaderboardError: params.yaml: probes.p1 and probes.p2 both give probeId 'alice/x' for source model 'm', so their leaderboard entries would collide; fix: give each bundle its own id (the `id` in its card) or drop one of probes.p1, probes.p2
    """
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    for key, pid in ids.items():
        check_bundle_id(pid, where=f"params.yaml: {origin[key]}")
        first = seen.setdefault((pid, model[key[1]]), key)
        if first != key:
            raise LeaderboardError(f"params.yaml: {origin[first]} and {origin[key]} both give probeId {pid!r} for "
                                   f"source model {model[key[1]]!r}, so their leaderboard entries would collide; fix: "
                                   "give each bundle its own id (the `id` in its card) or drop one of "
                                   f"{origin[first]}, {origin[key]}")


def _num(x, fmt: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def notes_line(row) -> str:
    """One readable line: which question each number answers, its CI and control, N, B, flags,
    scored status and the test-set hash."""
    scored = "scored" if row["scored"] else f"reported, not scored ({row['unscored_reason']})"
    geometry = ("cosine n/a (undefined)" if not row.get("geometry_defined", False) else
                f"cosine {_num(row['cosine'])} ({row['geometry']}, null p={_num(row['cosine_null_p'], '.2f')})")
    return (f"pearson_ce = matched rho_CE (target's own probe, Q1) {_num(row['pearson'])} "
            f"[{_num(row['ci_low'])}, {_num(row['ci_high'])}] {row['ci_level'] * 100:.0f}% {row['ci_method']} CI, "
            f"random-direction null {_num(row['rho_null_low'], '.2f')}..{_num(row['rho_null_high'], '.2f')}; "
            f"scale-aware agreement CCC {_num(row['ccc'])} [{_num(row['ccc_ci_low'])}, {_num(row['ccc_ci_high'])}] "
            f"against a random-direction null (both models) up to {_num(row['ccc_null_high'], '.2f')}, "
            f"p={_num(row['ccc_null_p'], '.2g')}, BH q={_num(row['ccc_null_q'], '.2g')} over the task's pairs; "
            f"within-class {_num(row['rho_within'])} [{_num(row['rho_within_ci_low'])}, "
            f"{_num(row['rho_within_ci_high'])}]; transferred (Q2, label-free {row['transfer_method']}) "
            f"{_num(row['rho_transferred'])} [{_num(row['rho_transferred_ci_low'])}, "
            f"{_num(row['rho_transferred_ci_high'])}], CCC {_num(row['ccc_transferred'])} against the target's "
            f"random directions q={_num(row['ccc_transferred_null_q'], '.2g')}; transfer_auroc is the transferred "
            "direction's "
            f"(null p={_num(row['transfer_auroc_null_p'], '.2f')}, native {_num(row['native_auroc'])}); "
            f"N={row['n']}, B={row['n_resamples']}; {scored}; flags: {row['flags'] or 'none'}; {geometry}; "
            f"effect ratio {_num(row['effect_ratio'], '.2f')}; normalization {row['normalization']}; "
            f"testSetHash sha256:{row['test_set_hash']}")


def build_entries(cells: pd.DataFrame, names: dict[str, str], probe_ids: dict[tuple[str, str], str]
                  ) -> tuple[list[dict], list[dict]]:
    """Entries for every off-diagonal cell (the diagonal is 1.0 by construction, not a transfer),
    validated against the CrossModelTransfer schema, plus one provenance record per entry."""
    entries, provenance = [], []
    # the diagonal is 1.0 by construction; an imported probe against its own model is no transfer
    off = cells[~cells["diagonal"] & (cells["source_model"] != cells["target"])].sort_values(["task", "source", "target"])
    for _, row in off.iterrows():
        if row["degenerate"] or math.isnan(row["pearson"]):
            continue  # no defined rho: nothing a leaderboard could show
        entry = {"probeId": probe_ids[(row["task"], row["source"])], "sourceModel": names[row["source_model"]],
                 "targetModel": names[row["target"]], "pearson_ce": round(float(row["pearson"]), 4),
                 "transfer_auroc": round(float(row["transfer_auroc"]), 4), "notes": notes_line(row)}
        entries.append(entry)
        record = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        provenance.append({"probeId": entry["probeId"], "sourceModel": entry["sourceModel"],
                           "targetModel": entry["targetModel"],
                           "cell": {k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()}})
    validate_entries(entries, source="emitted entries")
    return entries, provenance
