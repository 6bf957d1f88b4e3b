"""`probebench run --executor ray|slurm`: fan the pipeline's stages out, then join through DVC.

1. Check params, read the stage graph from DVC (`stage_plan`), snapshot the working tree.
2. Hand every stage to Ray or SLURM; each runs in its own scratch checkout that shares this
   project's DVC cache and cell store (`worker.run_job`), and records itself in the run-cache.
3. Write the finished stages' lock entries into dvc.lock in `dvc repro`'s order, then run
   `dvc repro` here: every stage is restored from the cache ("is cached - skipping run"), so
   dvc.lock, metrics and reports are exactly what a local `dvc repro` writes. The summary says
   how many stage commands that final repro ran (0 unless something changed meanwhile).

A failed stage stops nothing that does not depend on it; its log path is reported and a rerun
resumes from the run-cache (finished stages restore instead of recomputing).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from probebench.executor.plan import ExecutorError, StageSpec, command_env, in_repo, stage_plan
from probebench.executor.worker import STORE, Job, StageOutcome, merge_lock, safe_name

RUNS = Path(".probebench")   # scratch checkouts, logs and status of distributed runs (git- and dvc-ignored)
STATE_STYLE = {"pending": "dim", "running": "yellow", "done": "green", "failed": "bold red"}


@dataclass
class RunSummary:
    outcomes: dict[str, StageOutcome]
    failed: dict[str, str]
    final_ran: list[str]        # stage commands the coordinator's final dvc repro executed
    run_dir: Path
    wall_s: float


class Board:
    """The live view: every stage pending / running / done / failed, with its node."""

    def __init__(self, plan: list[StageSpec], run_dir: Path, console: Console):
        self.plan, self.run_dir, self.console = plan, run_dir, console
        self.state = {s.name: "pending" for s in plan}
        self.node: dict[str, str] = {}
        self.note: dict[str, str] = {}
        self.outcomes: dict[str, StageOutcome] = {}
        self.failed: dict[str, str] = {}
        self.live: Live | None = None

    def poll(self) -> None:
        """Stages whose worker has started (status files the workers write)."""
        from probebench.artifacts.io import read_json

        for spec in self.plan:
            path = self.run_dir / "status" / f"{safe_name(spec.name)}.json"
            if self.state[spec.name] == "pending" and path.exists():
                with_status = read_json(path)
                if with_status.get("state") == "running":
                    self.state[spec.name] = "running"
                    self.node[spec.name] = with_status.get("node", "?")
        self.refresh()

    def update(self, name: str, state: str, outcome: StageOutcome | None = None, error: str = "no message") -> None:
        self.state[name] = state
        if outcome is not None:
            self.outcomes[name] = outcome
            self.node[name] = outcome.node
        error = error.strip() or "no message"
        if state == "failed":
            started = (self.run_dir / "status" / f"{safe_name(name)}.json").exists()
            self.failed[name] = error if started else f"not run: an upstream stage failed ({error.splitlines()[0][:120]})"
        if error != "no message":
            self.note[name] = error.splitlines()[0][:100]
        self.refresh()

    def table(self) -> Table:
        counts = {k: sum(v == k for v in self.state.values()) for k in STATE_STYLE}
        table = Table(title=" · ".join(f"{k} {n}" for k, n in counts.items()), title_justify="left", expand=False)
        for col in ("stage", "state", "node", "note"):
            table.add_column(col)
        for spec in self.plan:
            state = self.state[spec.name]
            table.add_row(spec.name, f"[{STATE_STYLE[state]}]{state}[/]", self.node.get(spec.name, ""),
                          self.note.get(spec.name, ""))
        return table

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.table())


def summary_table(plan: list[StageSpec], outcomes: dict[str, StageOutcome]) -> Table:
    table = Table(title="stages", title_justify="left")
    for col, just in (("stage", "left"), ("node", "left"), ("attempts", "right"), ("wall s", "right"),
                      ("result", "left"), ("cells computed / cached", "right")):
        table.add_column(col, justify=just)
    for spec in plan:
        o = outcomes.get(spec.name)
        if o is None:
            table.add_row(spec.name, "", "", "", "[bold red]failed[/]", "")
            continue
        cells = f"{o.cells['cells_computed']} / {o.cells['cells_cached']}" if o.cells else ""
        table.add_row(spec.name, o.node, str(o.attempt), f"{o.wall_s:.1f}", "ran" if o.ran else "from run-cache", cells)
    return table


def snapshot_tree(root: Path, dest: Path, outs: set[str]) -> None:
    """Copy the working tree a worker needs: git's tracked and untracked-not-ignored files (or,
    without git, every file but DVC's cache and outputs), minus what DVC outputs (restored from
    the cache) and the cell store (linked)."""
    if (root / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=root, check=True,
                                capture_output=True).stdout.decode().split("\0")
        files = [f for f in listed if f]
    else:
        skip = {".git", ".venv", str(RUNS), ".dvc/cache", ".dvc/tmp", str(STORE)}
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            rel = Path(dirpath).relative_to(root)
            dirnames[:] = [d for d in dirnames if str(rel / d) not in skip and d != "__pycache__"]
            files += [str(rel / f) for f in filenames]
    for rel in sorted(files):
        path = Path(rel)
        if str(path) == ".dvc/config.local" or any(str(path) == o or str(path).startswith(o + "/")
                                                   for o in (*outs, str(STORE))):
            continue
        if not (root / path).is_file():
            continue   # deleted in the worktree but still tracked
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / path, dest / path)


def _outs_and_cache(root: Path) -> tuple[set[str], str]:
    with in_repo(root) as repo:
        outs = {str(Path(o.fs_path).relative_to(root)) for o in repo.index.outs}
        return outs, repo.cache.legacy.path


def check_options(*, workers: int | None = None, retries: int = 2, cpus_per_stage: float | None = None,
                  slurm_timeout_min: int = 240, address: str | None = None, executor: str = "ray") -> None:
    """Refuse a value no run can use, before any stage is placed: `--workers 0` would start a Ray
    cluster without CPUs (every stage pending forever), a negative `--retries` or a NaN CPU count
    would reach Ray as is. With `executor="ray"`, `address` must answer (`check_ray_address`).

    >>> check_options(workers=0)
    Traceback (most recent call last):
    ...
    probebench.executor.plan.ExecutorError: --workers 0: must be a whole number >= 1 (CPUs of the local Ray cluster), or left out to use all of this machine's
    """
    def bad(value) -> bool:
        return isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)

    if workers is not None and (bad(workers) or workers != int(workers) or workers < 1):
        raise ExecutorError(f"--workers {workers}: must be a whole number >= 1 (CPUs of the local Ray cluster), or "
                            "left out to use all of this machine's")
    if bad(retries) or retries != int(retries) or retries < 0:
        raise ExecutorError(f"--retries {retries}: must be a whole number >= 0 (times a stage whose worker died is "
                            "retried; 0: never)")
    if cpus_per_stage is not None and (bad(cpus_per_stage) or cpus_per_stage <= 0):
        raise ExecutorError(f"--cpus-per-stage {cpus_per_stage}: must be a finite number > 0 (CPUs each stage asks "
                            "for, e.g. 1 or 0.5), or left out to use zoo.threads")
    if bad(slurm_timeout_min) or slurm_timeout_min < 1:
        raise ExecutorError(f"--time-min {slurm_timeout_min}: must be >= 1 (minutes a SLURM stage job may run)")
    if executor == "ray" and address is not None:
        from probebench.executor.backends import check_ray_address

        check_ray_address(address)


def run_distributed(root: str | Path = ".", *, executor: str = "ray", address: str | None = None,
                    workers: int | None = None, retries: int = 2, cpus_per_stage: float | None = None,
                    scratch: str | Path | None = None, slurm_cluster: str | None = None,
                    slurm_partition: str | None = None, slurm_timeout_min: int = 240, max_running: int = 64,
                    targets: list[str] | None = None, fault: str | None = None,
                    console: Console | None = None) -> RunSummary:
    """Run the pipeline of `root` with its stages on Ray or SLURM workers; returns the outcomes
    and what the final `dvc repro` executed. `fault` (tests only): kill that stage's first worker."""
    check_options(workers=workers, retries=retries, cpus_per_stage=cpus_per_stage,
                  slurm_timeout_min=slurm_timeout_min, address=address, executor=executor)
    root = Path(root).resolve()
    console = console or Console(stderr=True)
    start = time.monotonic()
    plan = stage_plan(root, cpus_per_stage, targets)
    outs, cache_dir = _outs_and_cache(root)
    from probebench.executor.backends import connect_ray, run_ray, run_slurm

    if executor == "ray":
        connect_ray(address, workers)   # before the run directory: a cluster not joined leaves nothing behind
    run_dir = root / RUNS / "runs" / time.strftime("%Y%m%d-%H%M%S")
    while run_dir.exists():
        run_dir = run_dir.with_name(run_dir.name + "+")
    scratch_root = Path(scratch).resolve() if scratch else root / RUNS / "scratch"
    tree = run_dir / "tree"
    tree.mkdir(parents=True)
    snapshot_tree(root, tree, outs)
    bin_dir = str(Path(sys.executable).parent)

    def make_job(spec: StageSpec) -> Job:
        return Job(spec.name, str(tree), cache_dir, str(root / STORE), str(run_dir), str(scratch_root), bin_dir, fault)

    board = Board(plan, run_dir, console)
    console.print(f"{len(plan)} stages on {executor}; logs in {run_dir / 'logs'}", highlight=False)

    with Live(board.table(), console=console, refresh_per_second=2, transient=False) as live:
        board.live = live
        if executor == "ray":
            outcomes = run_ray(plan, make_job, board, address=address, workers=workers, retries=retries)
        elif executor == "slurm":
            outcomes = run_slurm(plan, make_job, board, folder=str(run_dir / "slurm"), cluster=slurm_cluster,
                                 retries=retries, partition=slurm_partition, timeout_min=slurm_timeout_min,
                                 max_running=max_running)
        else:
            raise ExecutorError(f"executor {executor!r} unknown; use ray or slurm (or no --executor: local dvc repro)")
        board.live = None
    console.print(summary_table(plan, outcomes))
    if board.failed:
        return RunSummary(outcomes, dict(board.failed), [], run_dir, time.monotonic() - start)
    locks = {name: outcomes[name].lock for name in outcomes}
    merge_lock(root / "dvc.lock", locks, order=[s.name for s in plan])
    final_ran = final_repro(root, bin_dir, run_dir / "logs" / "final_repro.log", targets or [])
    shutil.rmtree(scratch_root, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)
    return RunSummary(outcomes, {}, final_ran, run_dir, time.monotonic() - start)


def final_repro(root: Path, bin_dir: str, log: Path, targets: list[str]) -> list[str]:
    """`dvc repro` in the project itself: restores every stage from the cache; returns the stage
    commands it had to run (none when the workers' results are all in the cache)."""
    proc = subprocess.run([str(Path(bin_dir) / "dvc"), "repro", *targets], cwd=root, env=command_env(root, bin_dir),
                          text=True, capture_output=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise ExecutorError(f"the final dvc repro failed (exit {proc.returncode}); log: {log}\n"
                            + "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:]))
    return re.findall(r"Running stage '([^']+)'", proc.stdout)
