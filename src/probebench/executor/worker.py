"""One stage on one worker: a scratch checkout that shares the DVC cache, `dvc repro <stage>`,
and the stage's run-cache entry and lock entry handed back.

The worker is the same function under Ray and SLURM. In its scratch checkout (a copy of the
coordinator's snapshot of the working tree, `cache.dir` pointing at the coordinator's DVC cache,
the cell store linked to the coordinator's) it checks out the outputs of the stages it depends
on (all its ancestors) from their lock entries, exactly as DVC's run-cache restore does, and runs
`dvc repro --single-item <stage>`. DVC commits outputs only after the command succeeds, so a
killed worker leaves nothing in the cache; its scratch is abandoned and the retry starts afresh.

Outputs marked `cache: false` (the reports and metrics committed to git) stop DVC from writing a
run-cache entry after a local run; the worker writes it explicitly (`StageCache.save`, which
commits those files to the cache by copy), so every stage restores from the cache everywhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from probebench.executor.plan import ExecutorError, command_env, in_repo

STORE = Path("data/store")   # the content-addressed cell store: shared by every worker, not a DVC output


@dataclass(frozen=True)
class Job:
    """What a worker needs to run one stage; every path absolute and on storage the workers share."""
    stage: str
    tree: str            # the coordinator's snapshot of the working tree
    cache_dir: str       # the coordinator's DVC cache (cache.dir)
    store: str           # the coordinator's cell store
    run_dir: str         # logs/, status/, attempts/ of this run
    scratch_root: str
    bin_dir: str         # the interpreter environment the stage commands run with
    fault: str | None = None   # tests: this stage's first attempt kills its worker mid-stage


@dataclass
class StageOutcome:
    stage: str
    node: str
    attempt: int
    wall_s: float
    ran: bool                          # False: restored from the run-cache, nothing computed
    log: str
    locks: dict = field(default_factory=dict)    # dvc.lock entries of this stage and all its ancestors
    cells: dict | None = None          # ablate stages: cells computed / cached by the store

    @property
    def lock(self) -> dict:
        return self.locks[self.stage]


class StageFailed(ExecutorError):
    """The stage command failed: retrying would fail the same way."""


class StageKilled(ExecutorError):
    """The stage's process died from a signal (OOM killer, preemption): retried."""


def safe_name(stage: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stage)


def _next_attempt(run_dir: Path, stage: str) -> int:
    """1 for the first attempt of `stage` in this run, 2 for its retry, ...: a file created
    exclusively per attempt, so two workers never take the same number."""
    folder = run_dir / "attempts"
    folder.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        try:
            with open(folder / f"{safe_name(stage)}.{n}", "x"):
                return n
        except FileExistsError:
            n += 1


def write_status(run_dir: Path, stage: str, **fields) -> None:
    from probebench.artifacts.io import write_json

    write_json(run_dir / "status" / f"{safe_name(stage)}.json", {"stage": stage, **fields})


def merge_lock(lock_path: Path, entries: Mapping[str, dict], order: list[str] | None = None) -> None:
    """Write lock entries into a dvc.lock the way DVC's own Lockfile.dump_stages does (same YAML
    writer, same schema header, an entry kept in place when it exists, appended when new)."""
    from dvc.utils.serialize import modify_yaml

    names = [n for n in (order or entries) if n in entries]
    with modify_yaml(str(lock_path)) as data:
        if not data:
            data.update({"schema": "2.0"})
        data["stages"] = data.get("stages", {})
        for name in names:
            data["stages"].update({name: entries[name]})


def lock_entry(lock_path: Path, stage: str) -> dict:
    from dvc.utils.serialize import load_yaml

    entry = load_yaml(str(lock_path)).get("stages", {}).get(stage)
    if entry is None:
        raise ExecutorError(f"{lock_path}: no lock entry for stage {stage!r} after it ran")
    return json.loads(json.dumps(entry))   # plain dicts and lists in DVC's key order, picklable


def _prepare_scratch(job: Job, attempt: int) -> Path:
    scratch = Path(job.scratch_root) / f"{safe_name(job.stage)}.{attempt}.{socket.gethostname()}.{os.getpid()}"
    if scratch.exists():
        shutil.rmtree(scratch)
    shutil.copytree(job.tree, scratch, symlinks=True)
    config = scratch / ".dvc" / "config.local"
    config.write_text("[core]\n    no_scm = true\n"
                      f"[cache]\n    dir = {job.cache_dir}\n    shared = group\n    type = \"reflink,copy\"\n")
    (scratch / STORE).parent.mkdir(parents=True, exist_ok=True)   # the snapshot never holds the store
    Path(job.store).mkdir(parents=True, exist_ok=True)
    (scratch / STORE).symlink_to(job.store, target_is_directory=True)
    return scratch


def checkout_upstream(scratch: Path, entries: Mapping[str, dict]) -> None:
    """Materialize the outputs of the given stages from the shared cache using their lock
    entries: what DVC's run-cache restore does (a stage built from the entry, then checkout),
    uncached outputs included (the upstream worker committed them)."""
    with in_repo(scratch) as repo, repo.lock:
        for name, entry in entries.items():
            stage = repo.stage_cache._create_stage(entry, wdir=repo.root_dir)
            missing = [str(o) for o in stage.outs if o.changed_cache()]
            if missing:
                raise ExecutorError(f"outputs of {name} are not in the DVC cache ({', '.join(missing)}); is "
                                    "cache.dir on storage every worker shares?")
            stage.checkout()


def _die_with_parent() -> None:
    """In the dvc child: die when the worker dies (Linux), so a killed worker's stage stops too."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


def _kill_when_running(proc: subprocess.Popen, log: Path, stage: str) -> None:
    """Tests' fault injection: once the stage command has started, kill it and this worker as a
    node failure would (SIGKILL, no cleanup)."""
    marker = f"Running stage '{stage}'"
    while proc.poll() is None:
        if marker in log.read_text(errors="replace"):
            time.sleep(0.5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.05)


def run_job(job: Job, *upstream: StageOutcome) -> StageOutcome:
    """Run `job.stage` in a fresh scratch checkout; `upstream` are the outcomes of the stages it
    depends on (Ray passes them in once those stages are done)."""
    run_dir = Path(job.run_dir)
    attempt = _next_attempt(run_dir, job.stage)
    node = socket.gethostname()
    log = run_dir / "logs" / f"{safe_name(job.stage)}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    write_status(run_dir, job.stage, state="running", node=node, attempt=attempt, pid=os.getpid(), log=str(log))
    scratch = _prepare_scratch(job, attempt)
    locks: dict = {}
    for outcome in upstream:   # every ancestor, not only the direct ones: a stage may read what its
        locks.update(outcome.locks)   # inputs were made from (the crosscoder stages load the models)
    checkout_upstream(scratch, locks)
    env = {**command_env(scratch, job.bin_dir), "PYTHONUNBUFFERED": "1"}
    with open(log, "a") as fh:
        fh.write(f"=== {job.stage}: attempt {attempt} on {node} (pid {os.getpid()}), scratch {scratch}\n")
        fh.flush()
        proc = subprocess.Popen([str(Path(job.bin_dir) / "dvc"), "repro", "--single-item", job.stage], cwd=scratch,
                                env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)
        marker = run_dir / "faults" / safe_name(job.stage)
        if job.fault == job.stage and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            _kill_when_running(proc, log, job.stage)
        rc = proc.wait()
    text = log.read_text(errors="replace").rsplit(f"=== {job.stage}: attempt {attempt} ", 1)[-1]
    if rc != 0:
        tail = "\n".join(text.strip().splitlines()[-15:])
        kind = StageKilled if rc < 0 or rc in (137, 143) else StageFailed
        write_status(run_dir, job.stage, state="failed", node=node, attempt=attempt, log=str(log))
        raise kind(f"stage {job.stage} failed on {node} (attempt {attempt}, exit {rc}); log: {log} "
                   f"(scratch kept: {scratch})\n{tail}")
    _save_run_cache(scratch, job.stage)
    locks[job.stage] = lock_entry(scratch / "dvc.lock", job.stage)
    cells = None
    if job.stage.startswith("ablate@"):
        cells = json.loads((scratch / "metrics" / "ablate" / f"{job.stage.split('@', 1)[1]}.json").read_text())
    shutil.rmtree(scratch, ignore_errors=True)
    ran = f"Running stage '{job.stage}'" in text
    outcome = StageOutcome(job.stage, node, attempt, round(time.monotonic() - start, 2), ran, str(log), locks, cells)
    write_status(run_dir, job.stage, state="done", node=node, attempt=attempt, ran=ran, wall_s=outcome.wall_s,
                 log=str(log))
    return outcome


def _save_run_cache(scratch: Path, stage: str) -> None:
    """Record the stage in DVC's run-cache, uncached outputs included (DVC skips stages with
    `cache: false` outputs that are not metrics or plots; its StageCache commits them by copy)."""
    with in_repo(scratch) as repo:
        matches = [s for s in repo.index.stages if s.addressing == stage]
        if not matches:
            raise ExecutorError(f"{scratch}/dvc.yaml: no stage {stage!r}")
        repo.stage_cache.save(matches[0])
