"""The `probebench` command line: run the pipeline, check params, import external probes, show
the matrices, and apply entries to the ProbeBench site.

    probebench run                       # dvc repro of the whole pipeline
    probebench run --executor ray        # every stage a Ray task, joined through DVC's cache
    probebench check                     # validate params.yaml
    probebench show                      # the rho_CE matrices of the last run
    probebench exp                       # experiments: changed params and metrics/headline.json
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

from probebench.errors import ProbebenchError

from probebench.cli import exp as cli_exp
from probebench.cli import leaderboard as cli_leaderboard
from probebench.cli import model as cli_model
from probebench.cli import zoo as cli_zoo

app = typer.Typer(help="probebench: is this probe the same causal mechanism in another model?",
                  no_args_is_help=True, pretty_exceptions_enable=False)
probe_app = typer.Typer(help="Probe artifacts.", no_args_is_help=True)
app.add_typer(probe_app, name="probe")
app.add_typer(cli_leaderboard.app, name="leaderboard")
app.add_typer(cli_zoo.app, name="zoo")
app.add_typer(cli_model.app, name="model")
app.command(name="exp")(cli_exp.exp)
err = Console(stderr=True)
out = Console()


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def check(params: Annotated[Path, typer.Argument(help="params file to validate")] = Path("params.yaml")) -> None:
    """Validate params.yaml (unknown keys, types, slugs, families) and everything a run would
    otherwise find out late (scoring-rule N, devices, prompt files, layers and class strings of
    model directories that exist) without computing anything."""
    from rich.markup import escape

    from probebench.params.schema import load_params
    from probebench.cli.preflight import preflight

    try:
        p = load_params(params)
        notes = preflight(p, root=params.parent, source=str(params))
    except ProbebenchError as exc:  # ParamsError, PromptSetError, ModelError, CheckpointError: one line each
        _fail(escape(str(exc)))
    for note in notes:
        err.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
    out.print(f"{params}: ok ({len(p.tasks)} tasks, {len(p.models)} models, "
              f"{len(p.zoo.models) + len(p.zoo.finetunes)} zoo models)")
    from probebench.artifacts.environment import lock_differences

    for line in lock_differences(params.parent / "requirements.lock"):
        err.print(f"[yellow]warning:[/] {line}; reported numbers may differ in the last digits", highlight=False)


@app.command(name="run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run_pipeline(
    ctx: typer.Context,
    executor: Annotated[str, typer.Option(help="local: dvc repro here | ray: stages as Ray tasks | slurm: one "
                                               "SLURM job per stage (submitit)")] = "local",
    address: Annotated[Optional[str], typer.Option(help="ray: the cluster to join (ray start --head prints it); "
                                                        "default: start one on this machine")] = None,
    workers: Annotated[Optional[int], typer.Option(help="ray without --address: CPUs of the local cluster")] = None,
    retries: Annotated[int, typer.Option(help="times a stage whose worker died is retried")] = 2,
    cpus_per_stage: Annotated[Optional[float], typer.Option(help="CPUs each stage asks for (default: zoo.threads)")] = None,
    scratch: Annotated[Optional[Path], typer.Option(help="where workers make scratch checkouts (shared storage on a "
                                                         "cluster; default .probebench/scratch)")] = None,
    partition: Annotated[Optional[str], typer.Option(help="slurm: the partition to submit to")] = None,
    time_min: Annotated[int, typer.Option(help="slurm: time limit per stage job, minutes")] = 240,
    slurm_cluster: Annotated[Optional[str], typer.Option(help="slurm: submitit cluster (default: slurm when sbatch "
                                                              "is on PATH; local runs jobs as local processes)")] = None,
) -> None:
    """Run the whole pipeline after checking params: `dvc repro` here (extra arguments are passed
    on), or with `--executor ray|slurm` every stage on its own worker, joined through DVC's cache."""
    from rich.markup import escape

    from probebench.executor.coordinator import check_options
    from probebench.executor.plan import ExecutorError

    try:  # before anything runs: `--workers 0` would leave every stage pending forever
        check_options(workers=workers, retries=retries, cpus_per_stage=cpus_per_stage, slurm_timeout_min=time_min,
                      address=address, executor=executor)
    except ExecutorError as exc:
        _fail(escape(str(exc)))
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
    _check_targets(ctx.args)
    _check_lock()
    before = _check_outputs()
    if executor != "local":
        _run_distributed(executor, ctx.args, address=address, workers=workers, retries=retries,
                         cpus_per_stage=cpus_per_stage, scratch=scratch, slurm_partition=partition,
                         slurm_timeout_min=time_min, slurm_cluster=slurm_cluster)
        return
    rc = subprocess.call([dvc, "repro", *ctx.args], env=env)
    if rc != 0:
        _check_lock()  # the run that took the lock meanwhile, not a failed stage
        removed = [p for p in before if not Path(p).exists()]
        if before and not removed:
            _fail(f"dvc repro failed (exit {rc}) before any stage removed its outputs, so there is nothing to "
                  "restore; fix the cause above and rerun")
        # DVC removed the failed stage's outputs before running it; dvc.lock still describes the
        # last good run. Cached outputs come back from the DVC cache, the uncached reports and
        # metrics (cache: false) from git.
        lost = f" ({len(removed)} output(s) removed, e.g. {removed[0]})" if removed else ""
        err.print(f"[bold red]error:[/] dvc repro failed (exit {rc}){escape(lost)}; fix the cause above, then restore "
                  "the last good outputs with `dvc checkout` and the reports and metrics with `git checkout -- "
                  "reports metrics`", highlight=False, soft_wrap=True)
    raise typer.Exit(rc)


def _check_targets(args: list[str]) -> None:
    """Refuse a target that is no stage of dvc.yaml, naming the stages (DVC's own error would be
    followed by the advice for a failed stage)."""
    from rich.markup import escape

    from probebench.artifacts.dvcfile import stage_groups, stage_outs

    if any(a in ("--glob", "-R", "--recursive") for a in args):
        return   # patterns and directories: DVC resolves them
    groups = stage_groups(".")
    if not groups:
        return   # no readable dvc.yaml here: DVC says so
    known = set(groups) | set(stage_outs("."))
    for target in (a for a in args if not a.startswith("-")):
        file, sep, name = target.rpartition(":")
        if sep and Path(file or "dvc.yaml").resolve() != Path("dvc.yaml").resolve():
            continue   # a stage of another dvc.yaml
        if (name if sep else target) in known or (not sep and Path(target).exists()):
            continue
        example = next((s for s in stage_outs(".") if "@" in s), "extract@<model>")
        _fail(escape(f"{target!r} is not a stage of dvc.yaml; stages: {', '.join(groups)} (a foreach stage runs "
                     f"all its items, or one as NAME@KEY, e.g. {example})"))


def _lock_holder(root: Path = Path(".")) -> str | None:
    """Who holds DVC's repository lock (.dvc/tmp/lock, a flock while `dvc repro` runs), or None."""
    try:
        import fcntl
    except ImportError:   # Windows: DVC says it itself
        return None
    try:
        fh = open(root / ".dvc" / "tmp" / "lock", "rb")
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = fh.read(64).decode("ascii", "replace").strip()
            return f"pid {pid}" if pid.isdigit() else "another process"
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    return None


def _check_lock() -> None:
    holder = _lock_holder()
    if holder is not None:
        _fail(f"another run holds DVC's lock on this checkout (.dvc/tmp/lock, {holder}); wait for it to finish "
              "(`probebench run` again then resumes from its results), or run in a separate clone")


def _check_outputs() -> list[str]:
    """Refuse before `dvc repro` removes anything when a stage output cannot be written (DVC
    deletes a stage's outputs before running it: a read-only reports/cells.csv would fail the
    stage after reports/cells.parquet was gone). Returns the outputs that exist now."""
    from rich.markup import escape

    from probebench.artifacts.dvcfile import stage_outs
    from probebench.artifacts.io import OutputNotWritableError, check_outputs_writable

    existing = []
    try:
        for stage, outs in stage_outs(".").items():
            check_outputs_writable([(o.path, not o.cached) for o in outs], owner=f"stage {stage} (dvc.yaml)")
            existing += [o.path for o in outs if Path(o.path).exists()]
    except OutputNotWritableError as exc:
        _fail(escape(str(exc)))
    return existing


def _run_distributed(executor: str, extra: list[str], **options) -> None:
    from rich.markup import escape

    from probebench.executor import ExecutorError, run_distributed

    if any(a.startswith("-") for a in extra):
        _fail(f"--executor {executor} takes stage names as targets, not dvc repro options ({' '.join(extra)})")
    if executor not in ("ray", "slurm"):
        _fail(f"--executor {executor!r} unknown; use local, ray or slurm")
    if executor == "slurm" and options["slurm_cluster"] is None and shutil.which("sbatch") is None:
        _fail("--executor slurm: sbatch is not on PATH; run from a SLURM login node (or --slurm-cluster local "
              "to run the jobs as local processes)")
    try:
        summary = run_distributed(".", executor=executor, targets=extra or None, console=err, **options)
    except ExecutorError as exc:
        _fail(escape(str(exc)))
    if summary.failed:
        for stage, reason in summary.failed.items():
            err.print(f"[bold red]failed:[/] {stage}: {escape(reason)}", highlight=False, soft_wrap=True)
        _fail(f"{len(summary.failed)} stage(s) failed; finished stages are in the run-cache, so the same command "
              "resumes from them once the cause is fixed")
    restored = "every stage restored from the run-cache" if not summary.final_ran else \
        f"it had to run {', '.join(summary.final_ran)} (changed during the run?)"
    out.print(f"{len(summary.outcomes)} stages done in {summary.wall_s:.0f} s; final dvc repro: {restored}",
              highlight=False)


@app.command()
def show(cells: Annotated[Path, typer.Option(help="cells table written by the matrix stage")] = Path("reports/cells.parquet"),
         stat: Annotated[str, typer.Option(help="pearson (pooled rho_CE) | rho_within | rho_transferred | ccc | "
                                                "ccc_within | ccc_transferred | any numeric column, e.g. cosine, "
                                                "transfer_auroc")] = "pearson") -> None:
    """Print each task's source x target matrix: estimate [95% CI] and flag letters per cell
    (flagged cells in red, unscored cells dimmed)."""
    import pandas as pd

    from probebench.report.page import FLAG_CODES, cell_flags, format_ci

    from probebench.cells.schema import CellSchemaError, read_cells

    try:
        df = read_cells(cells)
    except CellSchemaError as exc:
        _fail(str(exc))
    except Exception as exc:  # pyarrow raises several types for a damaged file
        _fail(f"{cells}: cannot be read ({str(exc).splitlines()[0]}); restore it with `dvc checkout` "
              "or rerun the pipeline (probebench run)")
    if stat not in df.columns:
        _fail(f"--stat {stat!r} is not a column of {cells}; columns: {', '.join(sorted(df.columns))}")
    if not pd.api.types.is_numeric_dtype(df[stat]):
        _fail(f"--stat {stat!r} is not numeric; pick a statistic column such as pearson or rho_within")
    lo, hi = ("ci_low", "ci_high") if stat == "pearson" else (f"{stat}_ci_low", f"{stat}_ci_high")
    df = df.assign(flag_list=cell_flags(df), diagonal=df["source"] == df["target"])
    scored = df["scored"].astype(bool) if "scored" in df.columns else pd.Series(True, index=df.index)
    for task, sub in df.groupby("task", sort=True):
        targets = sorted(sub["target"].unique())
        ci = " [95% CI]" if lo in sub.columns else ""
        if ci and "n_resamples" in sub.columns:  # a CI from few resamples is not one: say B
            ci = f" [{sub['ci_level'].iloc[0] * 100:.0f}% CI, B = {int(sub['n_resamples'].iloc[0])}]" \
                if "ci_level" in sub.columns else f" [95% CI, B = {int(sub['n_resamples'].iloc[0])}]"
        name = "pooled rho_CE (pearson)" if stat == "pearson" else stat
        table = Table(title=f"{task}: {name}{ci} (rows: source, columns: target)", show_lines=True)
        table.add_column("source")
        for t in targets:
            table.add_column(t, justify="right")
        for source, rows in sub.groupby("source", sort=True):
            texts = []
            for t in targets:
                pick = rows[rows["target"] == t]
                if pick.empty:
                    texts.append("")
                    continue
                r = pick.iloc[0]
                if r["diagonal"] and stat in ("pearson", "rho_within", "rho_transferred", "ccc", "ccc_within",
                                              "ccc_transferred"):
                    texts.append("[dim]1 (diagonal)[/]")
                    continue
                txt = format_ci(r[stat], r.get(lo, float("nan")), r.get(hi, float("nan")))
                if r["flag_list"]:
                    txt = f"[red]{txt} {''.join(FLAG_CODES.get(f, '?') for f in r['flag_list'])}[/]"
                texts.append(txt if scored[r.name] else f"[dim]{txt}[/]")
            table.add_row(source, *texts)
        out.print(table)
        if {"ccc", "ccc_beats_null", "imported"} <= set(sub.columns):
            from probebench.cells.summary import pair_summary

            q = pair_summary(df, task)
            if q["n_pairs"]:
                out.print(f"{task}, Q1 over {q['n_pairs']} unordered pairs ({q['n_pairs_scored']} scored): median "
                          f"rho_CE {q['median_pair_pearson']:.2f}, median CCC {q['median_pair_ccc']:.2f}; "
                          f"{q['n_pairs_ccc_beats_null']} beat the random-direction null (CCC, BH), "
                          f"{q['n_pairs_not_same_mechanism']} not the same mechanism, "
                          f"{q['n_pairs_label_driven']} label-driven", highlight=False)
    used = {f for fl in df["flag_list"] for f in fl}
    if used:
        out.print("flags: " + ", ".join(f"{FLAG_CODES.get(f, '?')} = {f}" for f in FLAG_CODES if f in used)
                  + "; dimmed: reported, not scored", highlight=False)


@app.command()
def report(open_page: Annotated[bool, typer.Option("--open", help="open the page in the web browser afterwards")] = False
           ) -> None:
    """Build reports/index.html (`dvc repro report`: reruns whatever it depends on that is out of date)."""
    check(Path("params.yaml"))
    # Same environment rule as `run`: stage commands say `python ...`, so this interpreter's bin first.
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    dvc = shutil.which("dvc", path=env["PATH"])
    if dvc is None:
        _fail("dvc not found; install probebench with pip (dvc is a dependency)")
    code = subprocess.call([dvc, "repro", "report"], env=env)
    if code != 0:
        raise typer.Exit(code)
    page = Path("reports/index.html").resolve()
    if not page.exists():
        _fail(f"{page} was not written; check the output of `dvc repro report` above")
    out.print(f"report: {page.as_uri()}", highlight=False)
    if open_page:
        import webbrowser

        if not webbrowser.open(page.as_uri()):
            err.print("no web browser found here; open the address above in one")


@probe_app.command("import")
def probe_import(path: Annotated[Path, typer.Argument(help=".npy, .safetensors, or a ProbeBench bundle (dir or .joblib)")],
                 out_dir: Annotated[Path, typer.Option("--out", help="new (or empty) directory for the probe artifact")],
                 model: Annotated[str, typer.Option(help="key of models: in --params; the probe is checked against it "
                                                         "(d_model from its config.json, layer, hf_id)")] = "",
                 params_path: Annotated[Path, typer.Option("--params", help="params file that holds --model")] = Path("params.yaml"),
                 d_model: Annotated[Optional[int], typer.Option("--d-model", help="without a params model: d_model of "
                                                                "the model the probe reads (--model is then only a label)")] = None,
                 task: Annotated[str, typer.Option(help="task the probe reads (goes on the card)")] = "",
                 trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="allow unpickling joblib files (after "
                                                            "every declared or pinned sha256 is verified)")] = False,
                 sha256: Annotated[Optional[list[str]], typer.Option("--sha256", help="FILE=HEX pins a bundle file's "
                                                                     "sha256 (repeatable); a bare HEX pins a single-file probe")] = None,
                 force: Annotated[bool, typer.Option("--force", help="replace a probe imported into --out before")] = False) -> None:
    """Import an external probe into a probebench probe artifact (direction + card), checked against a model entry."""
    from rich.markup import escape

    from probebench.artifacts.io import atomic_dir
    from probebench.params.schema import ParamsError, load_params
    from probebench.probes.foreign import TargetModel, import_probe, parse_sha256_pins, target_model
    from probebench.probes.fit import CARD_FILE, DIRECTION_FILE, Probe, ProbeError, save_probe

    try:
        _refuse_pipeline_output(out_dir, params_path)
        if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
            raise ProbeError(f"--out {out_dir}: is an existing file; choose a new directory")
        existing = sorted(f.name for f in out_dir.iterdir()) if out_dir.is_dir() else []
        if existing and not force:
            raise ProbeError(f"--out {out_dir}: directory is not empty; choose a new directory "
                             "(or --force to replace a probe imported there before)")
        if existing and existing != sorted([CARD_FILE, DIRECTION_FILE]):
            raise ProbeError(f"--out {out_dir}: --force replaces only a probe directory ({CARD_FILE} + {DIRECTION_FILE}), "
                             f"this one holds {existing}")
        pins, bare_sha256 = parse_sha256_pins(sha256 or [])
        # --d-model keeps the old unchecked import (e.g. for a model that is not in params yet):
        # --model is then a label unless it names a params model, which is always checked.
        params = load_params(params_path) if model and (d_model is None or params_path.exists()) else None
        if params is not None and (d_model is None or model in params.models):
            target = target_model(params, model, root=params_path.parent, source=str(params_path))
            if d_model is not None and d_model != target.d_model:
                raise ProbeError(f"--d-model {d_model} but {target.where} has d_model {target.d_model} "
                                 "(config.json); drop --d-model")
        elif d_model is not None:
            target = TargetModel(d_model=d_model, where=f"--d-model {d_model}")
            if model:
                out.print(f"note: --model {model!r} is not a key of models: in {params_path}; it goes on the card "
                          "as a label and the probe's layer and model id are not checked", highlight=False, soft_wrap=True)
        else:
            raise ProbeError(f"give --model KEY (a key of models: in {params_path}) or --d-model N")
        probe = import_probe(path, target=target, trust_pickle=trust_pickle, expected_sha256=bare_sha256,
                             sha256_pins=pins)
        card = {**probe.card, "imported_from": str(path), "model": model or probe.card.get("model"),
                "task": task or probe.card.get("task")}
        if target.layer is not None:
            card["checkpoint"] = {"layer": target.layer, "site": "resid_post"}
            card["checked_against"] = target.where
        try:
            with atomic_dir(out_dir) as tmp:
                tmp.chmod(0o755)  # mkdtemp makes it 0700; the probe directory is ordinary output
                save_probe(Probe(direction=probe.direction, bias=probe.bias, method=probe.method, card=card), tmp)
        except OSError as exc:
            raise ProbeError(f"--out {out_dir}: cannot write ({exc.strerror or exc}); choose a writable directory") from None
    except (ProbeError, ParamsError) as exc:
        _fail(escape(str(exc)))
    for name, origins in card.get("sha256_verified_by", {}).items():
        if not origins:
            digest = card["sha256"][name]
            out.print(f"{name}: no sha256 declared, loaded under --trust-pickle; sha256 {digest} (recorded in "
                      f"{out_dir / CARD_FILE}); pin it next time: --sha256 {name}={digest}", highlight=False, soft_wrap=True)
    where = f"{model}: d_model {target.d_model}, block {target.layer}" if target.layer is not None else target.where
    out.print(f"imported {path} -> {out_dir} (id {card.get('id', '-')}, {where}, method {probe.method})",
              highlight=False, soft_wrap=True)
    out.print(json.dumps({"method": probe.method, "norm": float((probe.direction ** 2).sum() ** 0.5)}))



def _refuse_pipeline_output(out_dir: Path, params_path: Path) -> None:
    """An import inside a DVC stage's output (reports/matrix/x, data/extract/m/...) is deleted by
    the next `dvc repro` of that stage: refuse it and name the place that survives."""
    from probebench.artifacts.dvcfile import owner
    from probebench.probes.fit import ProbeError

    for root in dict.fromkeys([Path.cwd(), params_path.resolve().parent]):
        if not (root / "dvc.yaml").is_file():
            continue
        found = owner(out_dir.resolve(), root)
        if found is not None:
            raise ProbeError(f"--out {out_dir}: inside {found.path}, an output of DVC stage {found.stage} (dvc.yaml), "
                             f"which the next dvc repro deletes; import to data/imported/{out_dir.name} instead "
                             "(the stages read imported probes from there; point probes.<key>.path at it)")


@app.command()
def verify(rev: Annotated[str, typer.Option(help="git revision holding the reference reports")] = "HEAD",
           tol: Annotated[float, typer.Option(help="absolute tolerance per float (>= 0); integers must match "
                                                   "exactly")] = 1e-4) -> None:
    """Check that the reports and metrics this checkout produced equal the committed ones: floats
    to `tol`, integers (and integer-valued CSV columns and JSON keys) and everything else exactly.
    Run after `probebench run` on a fresh clone; metrics/ablate (cells computed vs cached)
    legitimately differ and are skipped."""
    from probebench.artifacts.verify import VerifyError, check_tol, verify as verify_files

    try:
        check_tol(tol)
    except VerifyError as exc:
        _fail(str(exc))
    listing = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "--", "reports", "metrics"],
                             capture_output=True, text=True)
    if listing.returncode != 0:
        _fail(f"git ls-tree {rev} failed: {listing.stderr.strip()}")
    paths = [p for p in listing.stdout.split() if p.endswith((".csv", ".json", ".yaml"))
             and not p.startswith("metrics/ablate/")]
    problems = verify_files(paths, rev=rev, tol=tol)
    for path, diffs in problems.items():
        err.print(f"[red]differs:[/] {path}: {'; '.join(diffs)}", highlight=False, soft_wrap=True)
    if problems:
        _fail(f"{len(problems)} of {len(paths)} report files differ from {rev} beyond {tol}")
    out.print(f"verify: {len(paths)} report files equal {rev} to {tol}")


if __name__ == "__main__":
    app()
