"""`probebench zoo pin`: pin the trained zoo (data/zoo/<model>) as the committed snapshot under
zoo/ with its hashes, training params and metrics (zoo/manifest.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from probebench.errors import InputFileError, ProbebenchError

app = typer.Typer(help="The embedded zoo.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


@app.command()
def pin(models: Annotated[Optional[list[str]], typer.Argument(help="zoo models or adapters to pin (default: every "
                                                                "zoo model)")] = None,
        crosscoder: Annotated[Optional[str], typer.Option("--crosscoder", metavar="KEY", help="pin the crosscoders "
                                                          "crosscoder_train@KEY trained instead (data/crosscoder/KEY)")] = None,
        params_file: Annotated[Path, typer.Option("--params", help="params file")] = Path("params.yaml")) -> None:
    """Copy data/zoo/<model> (trained with zoo.source: train) to zoo/<model> and record its
    sha256, training params and metrics in zoo/manifest.json; with --crosscoder KEY, the same for
    the crosscoders crosscoder_train@KEY trained (crosscoders.KEY.source: train). A key of `adapters` pins that
    LoRA adapter (data/adapters/<key>, trained with adapters.<key>.source: train) with its base's
    fingerprint. Commit zoo/ afterwards."""

    from probebench.artifacts.io import read_json
    from probebench.params.schema import ParamsError, load_params
    from probebench.artifacts.pinned import PinnedError, pin_dir, read_manifest, write_manifest

    try:
        params = load_params(params_file)
        manifest = read_manifest("zoo")
        if crosscoder is not None:
            from probebench.crosscoder.paths import crosscoder_dir, pinned_dir, pinned_key, train_metrics_path

            if crosscoder not in params.crosscoders:
                raise PinnedError(f"--crosscoder {crosscoder!r} is not a key of crosscoders in {params_file}: "
                                  f"{sorted(params.crosscoders)}")
            p, metrics_path = params.crosscoders[crosscoder], train_metrics_path(crosscoder)
            train_metrics = read_json(metrics_path) if metrics_path.exists() else {}
            if train_metrics.get("source") != "trained":
                raise PinnedError(f"{metrics_path}: no trained crosscoder to pin; run dvc repro -S "
                                  f"crosscoders.{crosscoder}.source=train crosscoder_train@{crosscoder} first")
            fps = {m: read_json(Path("data/extract") / m / "meta.json")["fingerprint"] for m in dict.fromkeys((p.base, p.chat))}
            manifest[pinned_key(crosscoder)] = pin_dir(crosscoder_dir(crosscoder), pinned_dir(crosscoder),
                                                       params=params.crosscoder_training(crosscoder, fps),
                                                       metrics=train_metrics)
            write_manifest("zoo", manifest)
            out.print(f"pinned the crosscoders of {crosscoder} -> {pinned_dir(crosscoder)}")
            return
        slugs = models or [*params.zoo.models, *params.zoo.finetunes]
        for slug in slugs:
            if slug in params.adapters:  # a LoRA fine-tune of an imported model: pin the adapter only
                from probebench.models.load import fingerprint

                metrics_path = Path("metrics/adapter") / f"{slug}.json"
                if not metrics_path.exists() or not (Path("data/adapters") / slug).is_dir():
                    raise PinnedError(f"{metrics_path}: missing; train first: dvc repro -S adapters.{slug}.source=train "
                                      f"adapter@{slug}")
                base_fp = fingerprint(Path("data/models") / params.adapters[slug].base)
                manifest[slug] = pin_dir(Path("data/adapters") / slug, Path("zoo") / slug,
                                         params=params.adapter_training(slug, base_fp), metrics=read_json(metrics_path))
                out.print(f"pinned the adapter {slug} -> zoo/{slug}")
                continue
            params.zoo_spec(slug)  # unknown slug -> one-line error
            metrics_path = Path("metrics/zoo") / f"{slug}.json"
            if not metrics_path.exists():
                raise PinnedError(f"{metrics_path}: missing; train first: dvc repro -S zoo.source=train zoo finetune")
            manifest[slug] = pin_dir(Path("data/zoo") / slug, Path("zoo") / slug,
                                     params=params.zoo_training(slug), metrics=read_json(metrics_path))
            out.print(f"pinned {slug} -> zoo/{slug} ({len(manifest[slug]['files'])} files)")
        write_manifest("zoo", manifest)
    except (ParamsError, PinnedError) as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)


def _exp_cells(name: str):
    """reports/cells.csv of a DVC experiment (a git ref under refs/exps) or of the workspace (".")."""
    import io
    import subprocess

    import pandas as pd

    if name == ".":
        return pd.read_csv("reports/cells.csv")
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], capture_output=True,
                          text=True).stdout.split()
    matches = [r for r in refs if r.rsplit("/", 1)[-1] == name] or [name]
    shown = subprocess.run(["git", "show", f"{matches[0]}:reports/cells.csv"], capture_output=True, text=True)
    if shown.returncode != 0:
        raise InputFileError(f"experiment {name!r}: no reports/cells.csv ({shown.stderr.strip()}); "
                         "list experiments with `dvc exp show`")
    return pd.read_csv(io.StringIO(shown.stdout))


def _check_spread_runs(names: list[str], out_dir: Path, *, force: bool) -> None:
    """Refuse a spread of one run (it has none), and replacing a committed spread built from runs
    this one leaves out (`probebench zoo spread .` would overwrite the four-seed spread)."""
    import csv

    if len(names) < 2:
        raise InputFileError(f"zoo spread: got {len(names)} distinct run(s) ({' '.join(names) or 'none'}); a spread "
                             "needs at least 2, e.g. probebench zoo spread . seed1 seed2 seed3 (see --help)")
    head = out_dir / "headline.csv"
    if force or not head.is_file():
        return
    with open(head, newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), [])
    prior = header[1:header.index("mean")] if header[:1] == ["figure"] and "mean" in header else []
    left_out = [r for r in prior if r not in names]
    if left_out:
        raise InputFileError(f"{head}: holds a spread of {len(prior)} runs ({' '.join(prior)}); these {len(names)} "
                             f"runs leave out {' '.join(left_out)}, so it would be replaced by less; pass every run, "
                             "choose another --out, or --force to replace it")


@app.command()
def spread(experiments: Annotated[list[str], typer.Argument(help="DVC experiment names; '.' is the workspace run")],
           out_dir: Annotated[Path, typer.Option("--out", help="where the table and figure go")] = Path("reports/seed_spread"),
           force: Annotated[bool, typer.Option("--force", help="replace a spread in --out built from runs this "
                                                "command does not include")] = False) -> None:
    """Across-seed spread of every off-diagonal rho_CE (and within-class, transferred, AUROC) and
    of the headline numbers, from replicate zoos run as DVC experiments:

        dvc exp run --queue -S zoo.source=train -S zoo.seed_offset=1 -n seed1   (and 2, 3)
        dvc queue start -j 1 && dvc queue status
        probebench zoo spread . seed1 seed2 seed3
    """
    from probebench.artifacts.io import atomic_write_text, write_figure
    from probebench.cells.spread import seed_spread, spread_figure

    try:
        _check_spread_runs(list(dict.fromkeys(experiments)), out_dir, force=force)
        runs = {name: _exp_cells(name) for name in experiments}
        per_cell, head = seed_spread(runs)
    except ProbebenchError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    atomic_write_text(out_dir / "cells.csv", per_cell.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(out_dir / "headline.csv", head.to_csv(index=False, float_format="%.4f"))
    write_figure(out_dir / "rho.png", spread_figure(per_cell, list(runs)))
    out.print(head.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    rho = per_cell[per_cell["stat"] == "pearson"]
    out.print(f"rho_CE across {len(runs)} runs: median per-cell range {rho['range'].median():.3f}, "
              f"max {rho['range'].max():.3f}; written to {out_dir}/")
