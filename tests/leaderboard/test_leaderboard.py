"""Tests for probebench.leaderboard.schema: the CrossModelTransfer schema, validation and the YAML list.

The site-file editing (TS splicing, apply_file, the CLI) is tested in test_sitefile.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from probebench.leaderboard import schema as lb
from tests.support.leaderboard import GOOD

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "leaderboard"
YAML_FIXTURE = FIXTURES / "entries.yaml"


def entry(**kw):
    e = {k: GOOD[k] for k in ("probeId", "sourceModel", "targetModel", "pearson_ce")}
    e.update(kw)
    return e


# ---------------------------------------------------------------------------- schema


def test_schema_is_valid_draft_2020_12_and_strict():
    schema = lb.load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"probeId", "sourceModel", "targetModel", "pearson_ce"}
    assert set(schema["properties"]) == set(lb.FIELD_ORDER)


def test_schema_accepts_good_entries():
    lb.validate_entries(
        [GOOD, entry(targetModel="a/b"), entry(targetModel="x/y", pearson_ce=-1, transfer_auroc=0)],
        source="r.yaml",
    )


@pytest.mark.parametrize(
    "bad, key, words",
    [
        (entry(source="emit"), "source", "not allowed"),
        ({k: v for k, v in GOOD.items() if k != "pearson_ce"}, "pearson_ce", "missing"),
        (entry(pearson_ce="0.61"), "pearson_ce", "must be a number"),
        (entry(pearson_ce=1.5), "pearson_ce", "[-1, 1]"),
        (entry(pearson_ce=True), "pearson_ce", "must be a number"),
        (entry(transfer_auroc=1.2), "transfer_auroc", "[0, 1]"),
        (entry(probeId=""), "probeId", "non-empty"),
        (entry(sourceModel=123), "sourceModel", "quote it"),
        (entry(notes=5), "notes", "must be a string"),
        (entry(pearson_ce=float("nan")), "pearson_ce", "finite"),
    ],
)
def test_schema_rejects_bad_entry_naming_source_index_and_key(bad, key, words):
    with pytest.raises(lb.LeaderboardError) as ei:
        lb.validate_entries([GOOD, bad], source="reports/probebench.yaml")
    msg = str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert "\n" not in msg
    assert msg.startswith("reports/probebench.yaml: entry 1")
    assert f"'{key}'" in msg
    assert words in msg
    assert "fix:" in msg


def test_validate_rejects_non_mapping_and_duplicate_keys():
    with pytest.raises(lb.LeaderboardError, match=r"r\.yaml: entry 0: is list"):
        lb.validate_entries([["probeId"]], source="r.yaml")
    with pytest.raises(lb.LeaderboardError, match=r"entry 2 .*duplicates entry 0"):
        lb.validate_entries([GOOD, entry(targetModel="other"), entry(pearson_ce=0.1)], source="r.yaml")


# ---------------------------------------------------------------------------- YAML


def test_read_entries_yaml(tmp_path):
    assert lb.read_entries_yaml(YAML_FIXTURE)[2]["notes"] == "négatif — “curly” quotes"
    p = tmp_path / "r.yaml"
    p.write_text("[]\n")
    assert lb.read_entries_yaml(p) == []
    p.write_text("probeId: x\n")
    with pytest.raises(lb.LeaderboardError, match=r"r\.yaml: expected a YAML list .* got a dict"):
        lb.read_entries_yaml(p)
    p.write_text("")
    with pytest.raises(lb.LeaderboardError, match="empty document"):
        lb.read_entries_yaml(p)
    p.write_text("- probeId: [unclosed\n  pearson_ce: 0.1\n")
    with pytest.raises(lb.LeaderboardError, match=r"r\.yaml: malformed YAML at line \d+, column \d+"):
        lb.read_entries_yaml(p)
    with pytest.raises(lb.LeaderboardError, match=r"missing\.yaml: file not found"):
        lb.read_entries_yaml(tmp_path / "missing.yaml")
