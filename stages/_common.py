"""Shared shell of the DVC stage scripts: params at the edge, one-line errors, progress bars."""

from __future__ import annotations

import sys
import warnings
from typing import Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from probebench.errors import ProbebenchError
from probebench.params.schema import Params, load_params

console = Console(stderr=True)


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def run(main: Callable[[Params, list[str]], None]) -> None:
    """Run a stage: load params.yaml, call main(params, argv); a ProbebenchError (bad input, with
    the fix) becomes one `error:` line on stderr and exit status 2 (nothing was written: outputs
    are written atomically at the end). Any other exception is a bug and keeps its traceback."""
    # one line per warning (the default format adds the source line)
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
    try:
        params = load_params("params.yaml")
        torch.set_num_threads(params.zoo.threads)  # fixed thread count: same params, same bytes
        main(params, sys.argv[1:])
    except ProbebenchError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
