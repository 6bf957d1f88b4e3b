import pytest

from probebench.leaderboard.entries import build_entries, notes_line, probe_id
from probebench.leaderboard.schema import LeaderboardError, load_schema
from tests.support.cells import cells_for, ruled, synthetic_effects


def ruled_cells(**kw):
    effects, transfers = synthetic_effects(rho=0.7, seed=4)
    cells = ruled(cells_for(effects, transfers), **kw)
    cells["test_set_hash"] = "ab" * 32
    cells["normalization"] = "token_margin"
    return cells


def test_entries_have_exactly_the_schema_keys_and_carry_the_cell():
    cells = ruled_cells()
    names = {"a": "org/model-a", "b": "org/model-b", "c": "org/model-c"}
    ids = {("t", s): probe_id("pb", "t", s, 3, "logreg", "activation_ridge") for s in names}
    entries, prov = build_entries(cells, names, ids)
    assert len(entries) == 6  # off-diagonal only
    allowed = set(load_schema()["properties"])
    for e in entries:
        assert set(e) <= allowed and {"probeId", "sourceModel", "targetModel", "pearson_ce"} <= set(e)
    e = next(e for e in entries if e["sourceModel"] == "org/model-a" and e["targetModel"] == "org/model-b")
    row = cells[(cells.source == "a") & (cells.target == "b")].iloc[0]
    assert e["pearson_ce"] == round(row.pearson, 4) and e["probeId"] == "pb-t-a-resid_post.L3-logreg-activation_ridge"
    assert f"[{row.ci_low:.3f}, {row.ci_high:.3f}]" in e["notes"] and "N=256, B=300" in e["notes"]
    assert "; scored;" in e["notes"] and "sha256:" + "ab" * 32 in e["notes"]
    assert f"within-class {row.rho_within:.3f}" in e["notes"] and "transferred (Q2" in e["notes"]
    assert e["transfer_auroc"] == round(row.transfer_auroc, 4)
    assert prov[0]["cell"]["n"] == 256


def test_unscored_reason_is_in_the_notes():
    cells = ruled_cells(min_sources=5)
    assert "reported, not scored (3 source model(s) < 5)" in notes_line(cells[~cells.diagonal].iloc[0])


def test_invalid_entries_are_refused():
    cells = ruled_cells()
    cells.loc[~cells.diagonal, "transfer_auroc"] = 1.5
    with pytest.raises(LeaderboardError, match="transfer_auroc"):
        build_entries(cells, {m: m for m in "abc"}, {("t", s): s for s in "abc"})


def test_probe_ids_never_collide_across_settings():
    ids = {probe_id("pb", t, s, layer, pm, tm) for t in ("x", "y") for s in ("a", "b") for layer in (0, 1)
           for pm in ("logreg", "mean_diff") for tm in ("activation_ridge", "score_ridge")}
    assert len(ids) == 32
