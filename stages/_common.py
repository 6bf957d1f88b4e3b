"""Shared shell of the DVC stage scripts: params at the edge, one-line errors, progress bars."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from probebench.directions import ModelActs
from probebench.io import read_json, read_tensors
from probebench.params import Params, load_params
from probebench.probes import load_probe, probe_direction
from probebench.tasks import map_mask

console = Console(stderr=True)


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)


def run(main: Callable[[Params, list[str]], None]) -> None:
    """Run a stage: load params.yaml, call main(params, argv); a ValueError from our validation
    becomes one `error:` line on stderr and exit status 2 (nothing was written: outputs are
    written atomically at the end)."""
    # one line per warning (the default format adds the source line)
    warnings.formatwarning = lambda message, category, *a, **k: f"warning: {message}\n"
    try:
        params = load_params("params.yaml")
        torch.set_num_threads(params.zoo.threads)  # fixed thread count: same params, same bytes
        main(params, sys.argv[1:])
    except ValueError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


@dataclass(frozen=True)
class TaskInputs:
    """What the ablate stage reads for one task: test prompts, split masks, every model's probe
    direction and activations (readout + label-free map rows)."""

    test_prompts: pd.DataFrame
    test_set_hash: str
    test_N: np.ndarray
    y_N: np.ndarray
    probe_rows_N: np.ndarray
    directions: dict[str, np.ndarray]
    acts: dict[str, ModelActs]
    imported: dict[str, tuple[str, np.ndarray]]


def load_task_inputs(params: Params, task: str) -> TaskInputs:
    prompts = pd.read_parquet(Path("data/prompts") / f"{task}.parquet")
    test_N = (prompts["split"] == "test").to_numpy()
    map_N = map_mask(prompts, params.split.salt, params.transfer.map_fraction)
    probe_rows_N = ~test_N & ~map_N
    directions, acts = {}, {}
    for m in params.models:
        t = read_tensors(Path("data/extract") / m / f"{task}.safetensors")
        probe = load_probe(Path("data/probes") / m / task / params.probe.method)
        directions[m] = probe_direction(probe, params.probe.direction, t["acts_ND"][probe_rows_N].astype(np.float64))
        if params.transfer.map_rows == "word_ends":
            key_W = t["wordend_row_W"] * 1_000_000 + t["wordend_char_W"]
            acts[m] = ModelActs(t["acts_ND"], t["wordend_acts_WD"], key_W)
        else:
            acts[m] = ModelActs(t["acts_ND"], t["acts_ND"][map_N], np.flatnonzero(map_N))
    imported = {}
    for key, pr in params.probes.items():
        if pr.task == task:
            probe = load_probe(pr.path)
            if probe.direction.shape[0] != acts[pr.model].acts_ND.shape[1]:
                raise ValueError(f"params.yaml: probes.{key}: {pr.path} has d_model {probe.direction.shape[0]} but "
                                 f"model {pr.model} has {acts[pr.model].acts_ND.shape[1]}; import it for that model")
            imported[key] = (pr.model, probe_direction(probe, params.probe.direction,
                                                       acts[pr.model].acts_ND[probe_rows_N].astype(np.float64)))
    return TaskInputs(prompts.loc[test_N].reset_index(drop=True),
                      read_json(Path("data/prompts") / f"{task}.json")["test_set_hash"],
                      test_N, prompts["label"].to_numpy(), probe_rows_N, directions, acts, imported)
