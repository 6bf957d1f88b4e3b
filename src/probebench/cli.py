"""The `probebench` command line: run the pipeline, check params, import external probes, show
the matrices, and apply entries to the ProbeBench site.

    probebench run                       # dvc repro of the whole pipeline
    probebench check                     # validate params.yaml
    probebench show                      # the rho_CE matrices of the last run
    probebench probe import PATH --model M --task T --out DIR [--trust-pickle]
    probebench leaderboard apply reports/probebench.yaml --data lib/probebench-data.ts
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from probebench import cli_leaderboard

app = typer.Typer(help="probebench: is this probe the same causal mechanism in another model?",
                  no_args_is_help=True, pretty_exceptions_enable=False)
probe_app = typer.Typer(help="Probe artifacts.", no_args_is_help=True)
app.add_typer(probe_app, name="probe")
app.add_typer(cli_leaderboard.app, name="leaderboard")
err = Console(stderr=True)
out = Console()


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def check(params: Annotated[Path, typer.Argument(help="params file to validate")] = Path("params.yaml")) -> None:
    """Validate params.yaml (unknown keys, types, slugs, families) without running anything."""
    from probebench.params import ParamsError, load_params

    try:
        p = load_params(params)
    except ParamsError as exc:
        _fail(str(exc))
    out.print(f"{params}: ok ({len(p.tasks)} tasks, {len(p.models)} models, "
              f"{len(p.zoo.models) + len(p.zoo.finetunes)} zoo models)")


@app.command(name="run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run_pipeline(ctx: typer.Context) -> None:
    """Run the whole pipeline (`dvc repro`, extra arguments are passed on) after checking params."""
    check(Path("params.yaml"))
    # Stage commands say `python ...`: put this interpreter's environment first on PATH so they
    # run with the packages probebench was installed with, activated venv or not.
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    dvc = shutil.which("dvc", path=env["PATH"])
    if dvc is None:
        _fail("dvc not found; install probebench with pip (dvc is a dependency)")
    if not Path(".git").exists():
        _fail("not a git checkout: DVC experiments need a git repo with at least one commit (git init && git commit)")
    raise typer.Exit(subprocess.call([dvc, "repro", *ctx.args], env=env))


@app.command()
def show(cells: Annotated[Path, typer.Option(help="cells table written by the matrix stage")] = Path("reports/cells.parquet"),
         stat: Annotated[str, typer.Option(help="pearson | cosine | ci_low | ci_high | effect_ratio")] = "pearson") -> None:
    """Print each task's source x target matrix (flagged cells in red, unscored dimmed)."""
    import pandas as pd

    if not cells.exists():
        _fail(f"{cells} not found; run the pipeline first (probebench run)")
    df = pd.read_parquet(cells)
    if stat not in df.columns:
        _fail(f"--stat {stat!r} is not a column of {cells}")
    for task, sub in df.groupby("task"):
        targets = sorted(sub["target"].unique())
        table = Table(title=f"{task}: {stat} (rows: source, columns: target)")
        table.add_column("source")
        for t in targets:
            table.add_column(t, justify="right")
        for source, rows in sub.groupby("source"):
            by_t = rows.set_index("target")
            cells_txt = []
            for t in targets:
                r = by_t.loc[t]
                txt = f"{r[stat]:.2f}"
                if stat == "pearson" and not r["diagonal"]:
                    txt = f"[red]{txt}[/]" if r["not_same_mechanism"] else txt
                    txt = txt if r["scored"] else f"[dim]{txt}[/]"
                cells_txt.append(txt)
            table.add_row(source, *cells_txt)
        out.print(table)


@probe_app.command("import")
def probe_import(path: Annotated[Path, typer.Argument(help=".npy, .safetensors, or a ProbeBench bundle (dir or .joblib)")],
                 d_model: Annotated[int, typer.Option("--d-model", help="d_model of the model the probe reads")],
                 out_dir: Annotated[Path, typer.Option("--out", help="directory for the probe artifact")],
                 model: Annotated[str, typer.Option(help="model key or hub id (goes on the card)")] = "",
                 task: Annotated[str, typer.Option(help="task the probe reads (goes on the card)")] = "",
                 trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="allow loading joblib/pickle after its sha256 is verified")] = False,
                 sha256: Annotated[Optional[str], typer.Option(help="expected sha256 of a single-file probe")] = None) -> None:
    """Import an external probe into a probebench probe artifact (direction + card)."""
    from probebench.probes import Probe, ProbeError, import_probe, save_probe

    try:
        probe = import_probe(path, d_model=d_model, trust_pickle=trust_pickle, expected_sha256=sha256)
        card = {**probe.card, "imported_from": str(path), "model": model or probe.card.get("model"),
                "task": task or probe.card.get("task")}
        save_probe(Probe(direction=probe.direction, bias=probe.bias, method=probe.method, card=card), out_dir)
    except ProbeError as exc:
        _fail(str(exc))
    out.print(f"imported {path} -> {out_dir} (d_model {d_model}, method {probe.method})")
    out.print(json.dumps({"method": probe.method, "norm": float((probe.direction ** 2).sum() ** 0.5)}))


if __name__ == "__main__":
    app()
