"""Tests for probebench.leaderboard.sitefile (TS splicing with tree-sitter, apply_file) and the leaderboard CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from probebench.leaderboard import schema as lb
from probebench.leaderboard import sitefile as sf
from probebench.cli.leaderboard import app
from tests.support.leaderboard import GOOD  # one valid entry, shared with the schema tests

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "leaderboard"
TS_FIXTURE = FIXTURES / "probebench-data.ts"
YAML_FIXTURE = FIXTURES / "entries.yaml"


# The single-quoted, unquoted/quoted-key row of the fixture, as Python values.
SYCO = {
    "probeId": "sycophancy-gemma-2b-l10",
    "sourceModel": "google/gemma-2b",
    "targetModel": "google/gemma-7b",
    "pearson_ce": -0.15,
    "transfer_auroc": 0.71,
    "notes": "it's a \"weak\" transfer \u2014 see Appendix",
}


def ts_text() -> str:
    with open(TS_FIXTURE, encoding="utf-8", newline="") as fh:
        return fh.read()


def entry(**kw):
    e = {k: GOOD[k] for k in ("probeId", "sourceModel", "targetModel", "pearson_ce")}
    e.update(kw)
    return e


def row_fields(text: str) -> list[dict]:
    """Property -> value of every row of the crossModelTransfers array, in order, via the module's parser."""
    _, array = sf._find_array(text.encode("utf-8"), "t.ts")
    return [sf._fields(node) for node in array.named_children if node.type == "object"]


def row_keys(text: str) -> list[tuple]:
    """(probeId, sourceModel, targetModel) of every row, in order."""
    return [tuple(fields.get(k) for k in lb.KEY_FIELDS) for fields in row_fields(text)]


# ---------------------------------------------------------------------------- apply_entries


def test_parser_reads_hand_edited_rows():
    fields = row_fields(ts_text())
    assert len(fields) == 3
    assert fields[0]["notes"] == "rho_CE 0.61 [0.52, 0.69] } { // not a comment"
    assert fields[1] == SYCO  # quoted keys, single quotes, escapes, -1.5e-1, .71
    assert "transfer_auroc" not in fields[2]


def test_identical_row_is_left_byte_identical():
    old = ts_text()
    # Same values as the single-quoted row: nothing to rewrite.
    assert sf.apply_entries(old, [SYCO], source="data.ts") == old


def test_update_in_place_and_insert_keep_other_bytes():
    old = ts_text()
    updated = dict(SYCO, pearson_ce=-0.2, notes="re-run")
    del updated["transfer_auroc"]
    new_rows = [
        entry(targetModel="google/gemma-7b", pearson_ce=0.3),
        entry(probeId="truthfulness-mistral-7b-l14", sourceModel="mistralai/Mistral-7B-v0.1",
              targetModel="Qwen/Qwen2-7B", pearson_ce=-0.0512, transfer_auroc=0.5,
              notes='quote " and — unicode'),
    ]
    new = sf.apply_entries(old, [new_rows[0], updated, new_rows[1]], source="data.ts")

    # The single-quoted row was replaced at the same position with a canonical rendering.
    syco_start = old.index("  {\n    'probeId': 'sycophancy")
    syco_end = old.index("},", syco_start) + 1
    rendered = (
        "  {\n"
        '    probeId: "sycophancy-gemma-2b-l10",\n'
        '    sourceModel: "google/gemma-2b",\n'
        '    targetModel: "google/gemma-7b",\n'
        "    pearson_ce: -0.2,\n"
        '    notes: "re-run",\n'
        "  }"
    )
    assert new[:syco_start] == old[:syco_start]
    assert new[syco_start : syco_start + len(rendered)] == rendered
    rest_old = old[syco_end:]
    rest_new = new[syco_start + len(rendered) :]

    # New rows go right before the closing "]" of crossModelTransfers; all else identical.
    close_old = rest_old.index("];\n\nexport const lastUpdated")
    close_new = rest_new.index("];\n\nexport const lastUpdated")
    assert rest_new[:close_old] == rest_old[:close_old]
    assert rest_new[close_new:] == rest_old[close_old:]
    inserted = rest_new[close_old:close_new]
    assert inserted == (
        "  {\n"
        '    probeId: "deception-llama-3-8b-l16",\n'
        '    sourceModel: "meta-llama/Meta-Llama-3-8B",\n'
        '    targetModel: "google/gemma-7b",\n'
        "    pearson_ce: 0.3,\n"
        "  },\n"
        "  {\n"
        '    probeId: "truthfulness-mistral-7b-l14",\n'
        '    sourceModel: "mistralai/Mistral-7B-v0.1",\n'
        '    targetModel: "Qwen/Qwen2-7B",\n'
        "    pearson_ce: -0.0512,\n"
        "    transfer_auroc: 0.5,\n"
        '    notes: "quote \\" and — unicode",\n'
        "  },\n"
    )
    assert [k[0] for k in row_keys(new)] == [
        "deception-llama-3-8b-l16",
        "sycophancy-gemma-2b-l10",
        "refusal-qwen-7b-l20",
        "deception-llama-3-8b-l16",
        "truthfulness-mistral-7b-l14",
    ]
    assert row_fields(new)[4]["notes"] == 'quote " and — unicode'

    # Idempotent.
    assert sf.apply_entries(new, [new_rows[0], updated, new_rows[1]], source="data.ts") == new


def test_numbers_rendered_exactly():
    new = sf.apply_entries(
        "export const crossModelTransfers: CrossModelTransfer[] = [];\n",
        [entry(pearson_ce=1, transfer_auroc=1e-05), entry(targetModel="b", pearson_ce=-0.123456789)],
        source="d.ts",
    )
    assert "    pearson_ce: 1,\n    transfer_auroc: 1e-05,\n" in new
    assert "    pearson_ce: -0.123456789,\n" in new
    assert [f["pearson_ce"] for f in row_fields(new)] == [1.0, -0.123456789]


@pytest.mark.parametrize(
    "array, expected",
    [
        ("[]", '[\n  {\n    probeId: "p",\n    sourceModel: "s",\n    targetModel: "t",\n    pearson_ce: 0.5,\n  },\n]'),
        ("[\n]", '[\n  {\n    probeId: "p",\n    sourceModel: "s",\n    targetModel: "t",\n    pearson_ce: 0.5,\n  },\n]'),
        (
            "[\n  // none yet\n]",
            '[\n  // none yet\n  {\n    probeId: "p",\n    sourceModel: "s",\n    targetModel: "t",\n    pearson_ce: 0.5,\n  },\n]',
        ),
    ],
)
def test_empty_arrays(array, expected):
    head = 'import type { CrossModelTransfer } from "./types";\n\nexport const crossModelTransfers :CrossModelTransfer [ ]  =  '
    tail = ";\nexport const x = 1;\n"
    e = {"probeId": "p", "sourceModel": "s", "targetModel": "t", "pearson_ce": 0.5}
    once = sf.apply_entries(head + array + tail, [e], source="d.ts")
    assert once == head + expected + tail
    assert sf.apply_entries(once, [e], source="d.ts") == once


def test_no_trailing_comma_tabs_and_crlf_style_is_followed():
    e = {"probeId": "p", "sourceModel": "s", "targetModel": "t", "pearson_ce": 0.5}
    old = (
        "export const crossModelTransfers: CrossModelTransfer[] = [\r\n"
        '\t{\r\n\t\tprobeId: "a", sourceModel: "s", targetModel: "t", pearson_ce: 0.1\r\n\t}\r\n'
        "];\r\n"
    )
    new = sf.apply_entries(old, [e], source="d.ts")
    assert new == (
        "export const crossModelTransfers: CrossModelTransfer[] = [\r\n"
        '\t{\r\n\t\tprobeId: "a", sourceModel: "s", targetModel: "t", pearson_ce: 0.1\r\n\t},\r\n'
        '\t{\r\n\t\tprobeId: "p",\r\n\t\tsourceModel: "s",\r\n\t\ttargetModel: "t",\r\n\t\tpearson_ce: 0.5,\r\n\t}\r\n'
        "];\r\n"
    )
    assert sf.apply_entries(new, [e], source="d.ts") == new


def test_single_line_row_updated_in_place():
    old = (
        "export const crossModelTransfers: CrossModelTransfer[] = [\n"
        '  { probeId: "a", sourceModel: "s", targetModel: "t", pearson_ce: 0.1 }, // keep me\n'
        '  { probeId: "b", sourceModel: "s", targetModel: "t", pearson_ce: 0.2 },\n'
        "];\n"
    )
    new = sf.apply_entries(old, [{"probeId": "a", "sourceModel": "s", "targetModel": "t", "pearson_ce": 0.3}],
                           source="d.ts")
    assert new == (
        "export const crossModelTransfers: CrossModelTransfer[] = [\n"
        '  {\n    probeId: "a",\n    sourceModel: "s",\n    targetModel: "t",\n    pearson_ce: 0.3,\n  }, // keep me\n'
        '  { probeId: "b", sourceModel: "s", targetModel: "t", pearson_ce: 0.2 },\n'
        "];\n"
    )


def test_refuses_file_without_array():
    text = 'export const probes: Probe[] = [];\n// crossModelTransfers: TODO\nconst s = "crossModelTransfers";\n'
    with pytest.raises(lb.LeaderboardError) as ei:
        sf.apply_entries(text, [GOOD], source="lib/probebench-data.ts")
    msg = str(ei.value)
    assert msg.startswith("lib/probebench-data.ts: no 'crossModelTransfers' array found")
    assert "add 'export const crossModelTransfers: CrossModelTransfer[] = [];'" in msg


def test_refuses_array_of_unexpected_form():
    with pytest.raises(lb.LeaderboardError, match=r"d\.ts: 'crossModelTransfers' appears at line 2"):
        sf.apply_entries("\nexport const crossModelTransfers = [];\n", [GOOD], source="d.ts")


def test_refuses_duplicate_declaration_but_ignores_commented_one():
    decl = "export const crossModelTransfers: CrossModelTransfer[] = [];\n"
    with pytest.raises(lb.LeaderboardError, match=r"d\.ts: 'crossModelTransfers' is declared 2 times \(lines 1, 3\)"):
        sf.apply_entries(decl + "\n" + decl, [GOOD], source="d.ts")
    text = "/* old:\n" + decl + "*/\n" + decl
    new = sf.apply_entries(text, [GOOD], source="d.ts")
    assert new.startswith("/* old:\n" + decl + "*/\n")
    assert row_keys(new) == [tuple(GOOD[k] for k in lb.KEY_FIELDS)]


@pytest.mark.parametrize(
    "body, where",
    [
        ('  { probeId: "a", sourceModel: "s", targetModel: "t", pearson_ce: 0.1 }\n'
         '  { probeId: "b", sourceModel: "s", targetModel: "t", pearson_ce: 0.2 },\n];\n', "line 3, column 3"),
        ('  { probeId: "a", sourceModel: "s" targetModel: "t", pearson_ce: 0.1 },\n];\n', "line 2, column 36"),
        ('  { probeId: "a, sourceModel: "s", pearson_ce: 0.1 },\n];\n', "line 2"),
        ('  { probeId: "a", pearson_ce: 0.1 },\n', "never closed"),
        ('  { probeId: "a", pearson_ce: 0.1.2 },\n];\n', "line 2"),
    ],
)
def test_refuses_malformed_array(body, where):
    text = "export const crossModelTransfers: CrossModelTransfer[] = [\n" + body
    with pytest.raises(lb.LeaderboardError) as ei:
        sf.apply_entries(text, [GOOD], source="d.ts")
    msg = str(ei.value)
    assert msg.startswith("d.ts: malformed 'crossModelTransfers' array")
    assert where in msg
    assert "\n" not in msg


def test_refuses_ambiguous_existing_rows():
    row = '  { probeId: "p", sourceModel: "s", targetModel: "t", pearson_ce: 0.1 },\n'
    text = "export const crossModelTransfers: CrossModelTransfer[] = [\n" + row + row + "];\n"
    e = {"probeId": "p", "sourceModel": "s", "targetModel": "t", "pearson_ce": 0.2}
    with pytest.raises(lb.LeaderboardError, match=r"d\.ts: rows at lines 2, 3 share the key"):
        sf.apply_entries(text, [e], source="d.ts")


def test_unified_diff():
    assert sf.unified_diff("a\n", "a\n", "x.ts") == ""
    d = sf.unified_diff("a\nb\n", "a\nc", "lib/x.ts")
    assert d.startswith("--- a/lib/x.ts\n+++ b/lib/x.ts\n")
    assert "-b\n+c\n\\ No newline at end of file\n" in d


# ---------------------------------------------------------------------------- declaration forms and syntax errors

ROW_A = '  { probeId: "a", sourceModel: "s", targetModel: "t", pearson_ce: 0.1 }, // keep\n'
E_P = {"probeId": "p", "sourceModel": "s", "targetModel": "t", "pearson_ce": 0.5}
RENDERED_A = '  {\n    probeId: "a",\n    sourceModel: "s",\n    targetModel: "t",\n    pearson_ce: 0.2,\n  }, // keep\n'
RENDERED_P = '  {\n    probeId: "p",\n    sourceModel: "s",\n    targetModel: "t",\n    pearson_ce: 0.5,\n  },\n'


@pytest.mark.parametrize(
    "head, tail",
    [
        ("export const crossModelTransfers = [\n", "] satisfies CrossModelTransfer[];\n"),
        ("export const crossModelTransfers: Array<CrossModelTransfer> = [\n", "];\n"),
        ("export const crossModelTransfers: ReadonlyArray<CrossModelTransfer> = [\n", "];\n"),
        ("export const crossModelTransfers: readonly CrossModelTransfer[] = [\n", "] as const;\n"),
        ("export const crossModelTransfers = [\n", "] as const satisfies readonly CrossModelTransfer[];\n"),
        ("export const crossModelTransfers = [\n", "] as CrossModelTransfer[];\n"),
        ("const crossModelTransfers: Array < CrossModelTransfer > = [\n", "];\nexport { crossModelTransfers };\n"),
    ],
)
def test_accepted_declaration_forms_update_in_place_and_append(head, tail):
    old = "// data\n" + head + ROW_A + tail
    new = sf.apply_entries(old, [E_P, dict(E_P, probeId="a", pearson_ce=0.2)], source="d.ts")
    assert new == "// data\n" + head + RENDERED_A + RENDERED_P + tail
    assert row_keys(new) == [("a", "s", "t"), ("p", "s", "t")]  # row "a" updated, not duplicated
    assert sf.apply_entries(new, [E_P, dict(E_P, probeId="a", pearson_ce=0.2)], source="d.ts") == new


@pytest.mark.parametrize(
    "text",
    [
        "export const crossModelTransfers = [] as const;\n",  # untyped: no type check guards the rows
        "export const crossModelTransfers: Probe[] = [];\n",
        "export const crossModelTransfers = [] satisfies Probe[];\n",
        "export const crossModelTransfers: CrossModelTransfer[] = rows;\n",
    ],
)
def test_refuses_declaration_that_is_not_a_typed_array_literal(text):
    with pytest.raises(lb.LeaderboardError, match=r"^d\.ts: 'crossModelTransfers' appears at line 1 but not as"):
        sf.apply_entries(text, [E_P], source="d.ts")


def test_string_literals_decoded_as_typescript_does():
    # The same key written with a \u{...} escape, a surrogate pair, a line continuation and a
    # template literal is the same row: updated in place, never duplicated.
    old = ("export const crossModelTransfers: CrossModelTransfer[] = [\n"
           "  { probeId: 'p\\u{2014}\\uD83D\\uDE00', sourceModel: `s`, targetModel: \"t\\\n\", pearson_ce: 0x0 },\n"
           "];\n")
    e = {"probeId": "p\u2014\U0001F600", "sourceModel": "s", "targetModel": "t", "pearson_ce": 0}
    assert sf.apply_entries(old, [e], source="d.ts") == old
    new = sf.apply_entries(old, [dict(e, pearson_ce=-0.5)], source="d.ts")
    assert row_fields(new) == [dict(e, pearson_ce=-0.5)]


def test_appends_after_a_spread_without_trailing_comma():
    old = "export const crossModelTransfers: CrossModelTransfer[] = [\n  ...older\n];\n"
    new = sf.apply_entries(old, [E_P], source="d.ts")
    assert new == "export const crossModelTransfers: CrossModelTransfer[] = [\n  ...older,\n" + RENDERED_P[:-2] + "\n];\n"


@pytest.mark.parametrize(
    "text, message",
    [
        # The array is never closed before the next statement: tree-sitter inserts a MISSING "]".
        ("export const crossModelTransfers: CrossModelTransfer[] = [\n  { probeId: \"a\" },\n;\nexport const x = 1;\n",
         "d.ts: malformed 'crossModelTransfers' array at line 2, column 20: missing ']'"),
        # A syntax error elsewhere in the file is refused too; the column counts characters, not bytes.
        ("export const crossModelTransfers: CrossModelTransfer[] = [];\n// é\nconst é = \"ü\" +;\n",
         "d.ts: malformed TypeScript at line 3, column 15: unexpected '+;'"),
        # tree-sitter reads a raw line break inside quotes without an ERROR node; TypeScript refuses it.
        ("export const crossModelTransfers: CrossModelTransfer[] = [\n  { probeId: 'a\n', sourceModel: \"s\" },\n];\n",
         "d.ts: malformed 'crossModelTransfers' array at line 2, column 14: a line break inside a quoted string"),
    ],
)
def test_refuses_tree_with_syntax_error_naming_the_line(text, message):
    with pytest.raises(lb.LeaderboardError) as ei:
        sf.apply_entries(text, [E_P], source="d.ts")
    assert str(ei.value).startswith(message + "; fix: correct the TypeScript there")
    assert "\n" not in str(ei.value)


def test_leaderboard_module_does_not_load_the_ts_parser():
    # emit depends on leaderboard.py in dvc.yaml; the site-file code must stay out of it.
    code = "import sys, probebench.leaderboard.schema; print(sorted(m for m in sys.modules if 'sitefile' in m or 'tree_sitter' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------- apply_file


@pytest.fixture()
def site(tmp_path):
    ts = tmp_path / "lib" / "probebench-data.ts"
    ts.parent.mkdir()
    shutil.copyfile(TS_FIXTURE, ts)
    old_time = 1_600_000_000
    os.utime(ts, (old_time, old_time))
    ym = tmp_path / "reports" / "probebench.yaml"
    ym.parent.mkdir()
    shutil.copyfile(YAML_FIXTURE, ym)
    return ts, ym


def test_apply_file_writes_atomically_and_counts(site):
    ts, ym = site
    diff, n_ins, n_upd = sf.apply_file(ym, ts, dry_run=False)
    assert (n_ins, n_upd) == (2, 1)
    assert "+    pearson_ce: 0.64,\n" in diff and "-    pearson_ce: 0.61,\n" in diff
    text = ts.read_text(encoding="utf-8")
    assert "rho_CE 0.64 [0.55, 0.71], n=512 prompts" in text
    assert len(row_keys(text)) == 5
    assert sorted(p.name for p in ts.parent.iterdir()) == ["probebench-data.ts"]  # no temp left
    # Second run: nothing changes, nothing is written.
    mtime = ts.stat().st_mtime_ns
    before = ts.read_bytes()
    assert sf.apply_file(ym, ts, dry_run=False) == ("", 0, 0)
    assert ts.read_bytes() == before and ts.stat().st_mtime_ns == mtime


def test_apply_file_dry_run_writes_nothing(site):
    ts, ym = site
    before, mtime = ts.read_bytes(), ts.stat().st_mtime_ns
    diff, n_ins, n_upd = sf.apply_file(ym, ts, dry_run=True)
    assert (n_ins, n_upd) == (2, 1) and diff.startswith(f"--- a/{ts}\n")
    assert ts.read_bytes() == before and ts.stat().st_mtime_ns == mtime


def test_apply_file_invalid_entry_touches_nothing(site):
    ts, ym = site
    entries = yaml.safe_load(ym.read_text(encoding="utf-8"))
    entries.append(dict(entries[0], targetModel="x/y", pearson_ce=1.5))
    ym.write_text(yaml.safe_dump(entries, allow_unicode=True), encoding="utf-8")
    before, mtime = ts.read_bytes(), ts.stat().st_mtime_ns
    with pytest.raises(lb.LeaderboardError, match=r"probebench\.yaml: entry 3 .*'pearson_ce'"):
        sf.apply_file(ym, ts, dry_run=False)
    assert ts.read_bytes() == before and ts.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in ts.parent.iterdir()) == ["probebench-data.ts"]


def test_apply_file_writes_through_a_symlink(site, tmp_path):
    ts, ym = site
    link_dir = tmp_path / "checkout" / "lib"
    link_dir.mkdir(parents=True)
    link = link_dir / "probebench-data.ts"
    link.symlink_to(os.path.relpath(ts, link_dir))
    assert sf.apply_file(ym, link, dry_run=False)[1:] == (2, 1)
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(ts, link_dir)
    assert len(row_keys(ts.read_text(encoding="utf-8"))) == 5  # the target got the rows
    assert sorted(p.name for p in ts.parent.iterdir()) == ["probebench-data.ts"]  # no temp left
    assert sorted(p.name for p in link_dir.iterdir()) == ["probebench-data.ts"]
    assert sf.apply_file(ym, link, dry_run=False) == ("", 0, 0)


def test_apply_file_missing_ts(tmp_path):
    with pytest.raises(lb.LeaderboardError, match=r"nope\.ts: file not found; fix: pass .*--data"):
        sf.apply_file(YAML_FIXTURE, tmp_path / "nope.ts", dry_run=True)


# ---------------------------------------------------------------------------- CLI

runner = CliRunner()


def test_cli_happy_path(site):
    ts, ym = site
    res = runner.invoke(app, ["apply", str(ym), "--data", str(ts)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"inserted 2, updated 1 rows in {ts}"
    assert len(row_keys(ts.read_text(encoding="utf-8"))) == 5
    res = runner.invoke(app, ["apply", str(ym), "--data", str(ts)])
    assert res.exit_code == 0
    assert res.stdout.startswith(f"inserted 0, updated 0 rows in {ts}")


def test_cli_dry_run_prints_diff_without_writing(site):
    ts, ym = site
    before, mtime = ts.read_bytes(), ts.stat().st_mtime_ns
    res = runner.invoke(app, ["apply", str(ym), "--data", str(ts), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith(f"--- a/{ts}\n+++ b/{ts}\n")
    assert '+    probeId: "truthfulness-mistral-7b-l14",\n' in res.stdout
    assert "would insert 2, update 1" in res.stderr
    assert ts.read_bytes() == before and ts.stat().st_mtime_ns == mtime


def test_cli_malformed_yaml_exits_2(site):
    ts, ym = site
    ym.write_text("- probeId: a\n  pearson_ce: [0.1\n", encoding="utf-8")
    before, mtime = ts.read_bytes(), ts.stat().st_mtime_ns
    res = runner.invoke(app, ["apply", str(ym), "--data", str(ts)])
    assert res.exit_code == 2
    assert res.stderr.startswith(f"error: {ym}: malformed YAML at line")
    assert res.stdout == ""
    assert ts.read_bytes() == before and ts.stat().st_mtime_ns == mtime


def test_cli_invalid_entry_and_missing_array_exit_2(site, tmp_path):
    ts, ym = site
    ym.write_text(yaml.safe_dump([entry(extra=1)]), encoding="utf-8")
    res = runner.invoke(app, ["apply", str(ym), "--data", str(ts)])
    assert res.exit_code == 2
    assert res.stderr.startswith(f"error: {ym}: entry 0") and "'extra'" in res.stderr

    bare = tmp_path / "bare.ts"
    bare.write_text("export const x = 1;\n")
    res = runner.invoke(app, ["apply", str(YAML_FIXTURE), "--data", str(bare)])
    assert res.exit_code == 2
    assert f"error: {bare}: no 'crossModelTransfers' array found" in res.stderr
    assert bare.read_text() == "export const x = 1;\n"


def test_cli_requires_data_option():
    res = runner.invoke(app, ["apply", str(YAML_FIXTURE)])
    assert res.exit_code == 2
    assert "--data" in res.output


def test_cli_apply_through_symlink_keeps_the_link(site, tmp_path):
    ts, ym = site
    link = tmp_path / "link.ts"
    link.symlink_to(ts)
    res = runner.invoke(app, ["apply", str(ym), "--data", str(link)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == f"inserted 2, updated 1 rows in {link}"
    assert link.is_symlink() and len(row_keys(ts.read_text(encoding="utf-8"))) == 5
