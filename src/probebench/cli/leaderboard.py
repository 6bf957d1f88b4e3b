"""``probebench leaderboard ...``: push CrossModelTransfer entries into the ProbeBench site data.

Mounted by the main CLI with ``app.add_typer(cli_leaderboard.app, name="leaderboard")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from probebench.leaderboard.schema import LeaderboardError
from probebench.leaderboard.sitefile import apply_file

app = typer.Typer(
    help="Merge ProbeBench CrossModelTransfer entries into the website's data file.",
    no_args_is_help=True,
)


@app.callback()
def _leaderboard() -> None:
    """Merge ProbeBench CrossModelTransfer entries into the website's data file."""


@app.command("apply")
def apply(
    entries: Annotated[
        Path,
        typer.Argument(
            help="YAML list of CrossModelTransfer entries written by probebench "
            "(e.g. reports/probebench.yaml).",
            show_default=False,
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="The website's TypeScript data file holding the crossModelTransfers array "
            "(e.g. lib/probebench-data.ts).",
            show_default=False,
        ),
    ],
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the unified diff instead of writing the file."),
    ] = False,
) -> None:
    """Insert new rows and update existing rows (keyed by probeId, sourceModel, targetModel)."""
    try:
        diff, n_inserted, n_updated = apply_file(entries, data, dry_run=dry_run)
    except LeaderboardError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
    if dry_run:
        if diff:
            typer.echo(diff, nl=False)
        typer.echo(
            f"dry run: would insert {n_inserted}, update {n_updated} rows in {data}",
            err=True,
        )
        return
    suffix = "" if (n_inserted or n_updated) else " (already up to date)"
    typer.echo(f"inserted {n_inserted}, updated {n_updated} rows in {data}{suffix}")
