"""Shared shell of the DVC stage scripts: params at the edge, one-line errors, progress bars."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from probebench.artifacts.dvcfile import stage_outs
from probebench.artifacts.io import check_outputs_writable
from probebench.errors import ProbebenchError
from probebench.params.schema import Params, load_params

console = Console(stderr=True)


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def this_stage(argv: list[str]) -> str:
    """DVC's address of the running stage: DVC_STAGE when `dvc repro` runs it ("extract@llama-s"),
    else the script's name and its key argument (`python stages/extract.py llama-s`)."""
    name = (os.environ.get("DVC_STAGE") or Path(sys.argv[0]).stem).rpartition(":")[2]
    return name if "@" in name or not argv else f"{name}@{argv[0]}"


def check_stage_outputs(stage: str, root: Path = Path(".")) -> None:
    """Refuse before `main` runs when an output this stage rewrites cannot be written (a read-only
    reports/cells.csv would otherwise fail the stage after it replaced reports/cells.parquet).
    Outputs come from dvc.yaml; files DVC links from its cache are only checked for their directory."""
    stages = stage_outs(root)
    outs = stages.get(stage) or stages.get(stage.partition("@")[0]) or []
    check_outputs_writable([(root / o.path, not o.cached) for o in outs], owner=f"stage {stage} (dvc.yaml)")


def run(main: Callable[[Params, list[str]], None]) -> None:
    """Run a stage: check that its outputs can be written, load params.yaml, call main(params,
    argv); a ProbebenchError (bad input, with the fix) becomes one `error:` line on stderr and exit
    status 2 (nothing was written: outputs are written atomically at the end). Any other exception
    is a bug and keeps its traceback."""
    # one line per warning (the default format adds the source line)
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
    try:
        check_stage_outputs(this_stage(sys.argv[1:]))
        params = load_params("params.yaml")
        torch.set_num_threads(params.zoo.threads)  # fixed thread count: same params, same bytes
        main(params, sys.argv[1:])
    except ProbebenchError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
