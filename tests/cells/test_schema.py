"""The cell contract (probebench.cells.schema): the matrix stage writes exactly the declared columns,
and every reader works from a table holding only those, so a reader that needs an undeclared
column fails here, naming it, instead of at report time."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from probebench.cells.schema import COLUMNS, FLAGS, CellSchemaError, read_cells, validate_cells
from probebench.cli.main import app
from probebench.leaderboard.entries import build_entries
from probebench.report.page import FLAG_CODES, ReportInputs, build_report
from tests.support.cells import MODELS, cells_for, ruled, synthetic_effects


@pytest.fixture(scope="module")
def contract_cells() -> pd.DataFrame:
    """A table as the matrix stage writes it (apply_rules, then the two per-task columns)."""
    effects, transfers = synthetic_effects(n=64, models=MODELS, tasks=("t",))
    cells = ruled(cells_for(effects, transfers, n_resamples=60), min_n=10, min_resamples=50)
    return cells.assign(test_set_hash="ab" * 32, normalization="token_margin")


def test_the_writer_produces_exactly_the_declared_columns(contract_cells):
    assert list(validate_cells(contract_cells).columns) == [c.name for c in COLUMNS]
    assert set(contract_cells.columns) == {c.name for c in COLUMNS}


def test_an_undeclared_or_missing_column_is_refused_by_name(contract_cells):
    with pytest.raises(CellSchemaError, match=r"undeclared column\(s\) \['surprise'\]"):
        validate_cells(contract_cells.assign(surprise=1.0))
    with pytest.raises(CellSchemaError, match=r"missing column\(s\) \['rho_within'\]"):
        validate_cells(contract_cells.drop(columns="rho_within"))
    with pytest.raises(CellSchemaError, match="pearson"):
        validate_cells(contract_cells.assign(pearson="high"))


def test_csv_and_parquet_read_back_to_the_contract(contract_cells, tmp_path):
    cells = validate_cells(contract_cells)
    cells.to_parquet(tmp_path / "cells.parquet")
    cells.to_csv(tmp_path / "cells.csv", index=False, float_format="%.6g")
    for name in ("cells.parquet", "cells.csv"):
        assert list(read_cells(tmp_path / name).columns) == [c.name for c in COLUMNS]
    with pytest.raises(CellSchemaError, match="not found"):
        read_cells(tmp_path / "absent.parquet")


def test_every_reader_works_from_the_declared_columns_alone(contract_cells, tmp_path):
    """emit, the report and `probebench show` on a table with exactly the contract's columns: a
    reader that reads any other column raises KeyError here."""
    cells = validate_cells(contract_cells)
    entries, provenance = build_entries(cells, {m: f"org/{m}" for m in MODELS},
                                        {("t", m): f"probebench/t-{m}" for m in MODELS})
    assert len(entries) == len(provenance) == int((~cells["diagonal"]).sum())
    page = build_report(ReportInputs(cells=cells, tasks=("t",), thresholds={"null_alpha": 0.05}))
    assert "<html" in page.html
    cells.to_parquet(tmp_path / "cells.parquet")
    res = CliRunner().invoke(app, ["show", "--cells", str(tmp_path / "cells.parquet")])
    assert res.exit_code == 0, res.output


def test_flags_are_defined_once_and_the_report_draws_those():
    assert set(FLAG_CODES) == set(FLAGS)
    assert len({f.code for f in FLAGS.values()}) == len(FLAGS)
