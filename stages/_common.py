"""Shared shell of the DVC stage scripts: params at the edge, one-line errors, progress bars."""

from __future__ import annotations

import sys
from typing import Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from probebench.params import Params, load_params

console = Console(stderr=True)


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def run(main: Callable[[Params, list[str]], None]) -> None:
    """Run a stage: load params.yaml, call main(params, argv); a ValueError from our validation
    becomes one `error:` line on stderr and exit status 2 (nothing was written: outputs are
    written atomically at the end)."""
    try:
        params = load_params("params.yaml")
        torch.set_num_threads(params.zoo.threads)  # fixed thread count: same params, same bytes
        main(params, sys.argv[1:])
    except ValueError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
