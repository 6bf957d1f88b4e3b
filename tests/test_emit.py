import pytest

from probebench.emit import build_entries, notes_line, probe_id
from probebench.leaderboard import LeaderboardError, load_schema
from tests.test_matrix import cells_for, synthetic_effects
from probebench.matrix import RuleConfig, apply_rules


def ruled_cells(**kw):
    effects, transfers = synthetic_effects(rho=0.7, seed=4)
    cells = apply_rules(cells_for(effects, transfers), RuleConfig(**kw), heldout_ok={"t": True})
    cells["test_set_hash"] = "ab" * 32
    cells["normalization"] = "token_margin"
    return cells


def test_entries_have_exactly_the_schema_keys_and_carry_the_cell():
    cells = ruled_cells()
    names = {"a": "org/model-a", "b": "org/model-b", "c": "org/model-c"}
    ids = {("t", s): probe_id("pb", "t", s, 3, "logreg") for s in names}
    entries, prov = build_entries(cells, names, ids)
    assert len(entries) == 6  # off-diagonal only
    allowed = set(load_schema()["properties"])
    for e in entries:
        assert set(e) <= allowed and {"probeId", "sourceModel", "targetModel", "pearson_ce"} <= set(e)
    e = next(e for e in entries if e["sourceModel"] == "org/model-a" and e["targetModel"] == "org/model-b")
    row = cells[(cells.source == "a") & (cells.target == "b")].iloc[0]
    assert e["pearson_ce"] == round(row.pearson, 4) and e["probeId"] == "pb-t-a-l3-logreg"
    assert f"[{row.ci_low:.3f}, {row.ci_high:.3f}]" in e["notes"] and "N=256, B=300" in e["notes"]
    assert "; scored;" in e["notes"] and "sha256:" + "ab" * 32 in e["notes"]
    assert prov[0]["cell"]["n"] == 256


def test_unscored_reason_is_in_the_notes():
    cells = ruled_cells(min_sources=5)
    assert "reported, not scored (3 source model(s) < 5)" in notes_line(cells[~cells.diagonal].iloc[0])


def test_invalid_entries_are_refused():
    cells = ruled_cells()
    cells.loc[~cells.diagonal, "transfer_auroc"] = 1.5
    with pytest.raises(LeaderboardError, match="transfer_auroc"):
        build_entries(cells, {m: m for m in "abc"}, {("t", s): s for s in "abc"})
