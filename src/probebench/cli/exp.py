"""`probebench exp`: the compact experiment view. One row per experiment (the workspace, its
baseline commit, the experiments run from it) with the params that differ between the rows and
the numbers of metrics/headline.json, in 80 to 120 columns.

`dvc exp show --only-changed --drop ...` cannot give that: it names metric columns without their
file, so a pattern cannot keep headline.json and drop the other 28 metrics files, and the table
runs to ~1000 columns. Here the rows come from `dvc exp show --json` (or a saved copy of it,
`--from-json`) and the columns are chosen and abbreviated, with a legend below.

    >>> flatten({"zoo": {"seed_offset": 1, "models": {"a": {"d_model": 64}}}})
    {'zoo.seed_offset': 1, 'zoo.models.a.d_model': 64}
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from probebench.errors import InputFileError

PARAMS_FILE = "params.yaml"
# Short names of the headline numbers (cells.spread.headline): "<task>/<stat>"
STAT_ABBREV = {"mean_rho": "rho", "mean_rho_within": "rho_w", "mean_rho_transferred": "rho_t",
               "median_ccc": "ccc", "n_pairs": "#pr", "pairs_ccc_beats_null": "#ccc",
               "pairs_not_same_mechanism": "#nsm", "pairs_label_driven": "#lbl", "n_transfer_beats_null": "#beat",
               # headlines of runs recorded before Q1 was counted per pair
               "n_not_same_mechanism": "#nsm", "n_label_driven": "#lbl"}


@dataclass
class ExpRow:
    name: str
    state: str = ""                                   # queued, running, failed; "" when it ran
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as {"a.b.c": leaf}."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _row(state: dict, name: str, metrics_file: str, run_state: str = "") -> ExpRow:
    data = state.get("data") or {}
    params: dict[str, Any] = {}
    for file, result in (data.get("params") or {}).items():
        flat = flatten((result or {}).get("data") or {})
        params.update(flat if file == PARAMS_FILE else {f"{file}:{k}": v for k, v in flat.items()})
    metrics = flatten(((data.get("metrics") or {}).get(metrics_file) or {}).get("data") or {})
    if state.get("error") and not run_state:
        run_state = "error"
    return ExpRow(name=name, state=run_state, params=params, metrics=metrics)


def exp_rows(shown: Any, metrics_file: str = "metrics/headline.json") -> list[ExpRow]:
    """The rows of `dvc exp show --json` (a list of baselines, each with its experiments)."""
    if not isinstance(shown, list):
        raise InputFileError("dvc exp show --json: expected a list of revisions; is this the output of "
                             "`dvc exp show --json`?")
    rows = []
    for base in shown:
        if not isinstance(base, dict):
            continue
        rev = str(base.get("rev") or "?")
        rows.append(_row(base, "workspace" if rev == "workspace" else str(base.get("name") or rev[:7]), metrics_file))
        for group in base.get("experiments") or []:
            executor = (group or {}).get("executor") or {}
            run_state = executor.get("state", "") if executor.get("state") != "success" else ""
            for state in (group or {}).get("revs") or []:
                name = state.get("name") or group.get("name") or str(state.get("rev", "?"))[:7]
                rows.append(_row(state, str(name), metrics_file, run_state))
    return rows


def changed_params(rows: list[ExpRow]) -> list[str]:
    """Params whose value is not the same in every row (absent counts as a value)."""
    keys = list(dict.fromkeys(k for r in rows for k in r.params))
    return [k for k in keys if len({json.dumps(r.params.get(k), sort_keys=True, default=str) for r in rows}) > 1]


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _param_headers(keys: list[str]) -> dict[str, str]:
    """The last part of each dotted key, or more parts where that is ambiguous."""
    headers = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            head = ".".join(parts[-n:])
            if sum(k.split(".")[-n:] == parts[-n:] for k in keys) == 1:
                break
        headers[key] = _short(head, 14)
    return headers


def _prefixes(names: list[str], minimum: int = 4) -> dict[str, str]:
    """The shortest prefix (at least `minimum` characters) that tells each name from the others."""
    out = {}
    for name in names:
        n = min(minimum, len(name))
        while n < len(name) and any(o != name and o.startswith(name[:n]) for o in names):
            n += 1
        out[name] = name[:n]
    return out


def _metric_headers(keys: list[str]) -> tuple[dict[str, str], list[str]]:
    """Two-line headers ("sent\\nrho") for "<group>/<stat>" keys, and the legend.

    >>> _metric_headers(["sentiment/mean_rho", "consistency/n_label_driven"])[0]
    {'sentiment/mean_rho': 'sent\\nrho', 'consistency/n_label_driven': 'cons\\n#lbl'}
    """
    groups = list(dict.fromkeys(k.rpartition("/")[0] for k in keys if "/" in k))
    short = _prefixes(groups)
    headers, legend = {}, [f"{short[g]} = {g}" for g in groups if short[g] != g]
    for key in keys:
        group, _, stat = key.rpartition("/")
        abbrev = STAT_ABBREV.get(stat, _short(stat, 6))
        if abbrev != stat and f"{abbrev} = {stat}" not in legend:
            legend.append(f"{abbrev} = {stat}")
        headers[key] = f"{short[group]}\n{abbrev}" if group else abbrev
    return headers, legend


def _value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e6 else f"{v:.3f}"
    return _short(str(v) if not isinstance(v, (dict, list)) else json.dumps(v), 14)


def _table(rows: list[ExpRow], params: list[str], metrics: list[str], headers: dict[str, str]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, show_edge=False, collapse_padding=True)
    table.add_column("experiment", no_wrap=True, overflow="ellipsis", max_width=16)
    for key in params:
        table.add_column(headers[key], style="cyan", no_wrap=True, overflow="ellipsis")
    for key in metrics:
        table.add_column(headers[key], justify="right", no_wrap=True, overflow="ellipsis")
    for r in rows:
        name = f"{r.name} ({r.state})" if r.state else r.name
        table.add_row(escape(name), *(escape(_value(r.params.get(k))) for k in params),
                      *(_value(r.metrics.get(k)) for k in metrics))
    return table


def render(rows: list[ExpRow], console: Console, metrics_file: str) -> None:
    """One table when it fits the console, else one per metric group (task), same rows."""
    params = changed_params(rows)
    metrics = list(dict.fromkeys(k for r in rows for k in r.metrics))
    headers = _param_headers(params)
    metric_headers, legend = _metric_headers(metrics)
    headers.update(metric_headers)
    whole = _table(rows, params, metrics, headers)
    groups = list(dict.fromkeys(k.rpartition("/")[0] for k in metrics))
    natural = console.measure(whole, options=console.options.update(max_width=10_000)).maximum
    if natural <= console.width or len(groups) < 2:
        console.print(whole)
    else:
        for group in groups:
            console.print(_table(rows, params, [k for k in metrics if k.rpartition("/")[0] == group], headers))
    renamed = [f"{headers[k]} = {k}" for k in params if headers[k] != k]
    notes = [f"params that differ: {', '.join(params) if params else 'none'}" + (f" ({'; '.join(renamed)})"
                                                                               if renamed else "")]
    if not metrics:
        notes.append(f"no row has {metrics_file} (queued or failed experiments have no metrics)")
    else:
        notes.append(f"numbers: {metrics_file}" + (f" ({', '.join(legend)})" if legend else ""))
    for note in notes:
        console.print(escape(note), highlight=False)


def _dvc_exp_show(all_commits: bool) -> Any:
    bin_dir = str(Path(sys.executable).parent)
    path = bin_dir + os.pathsep + os.environ.get("PATH", "")
    dvc = shutil.which("dvc", path=path)
    if dvc is None:
        raise InputFileError("dvc not found; install probebench with pip (dvc is a dependency)")
    proc = subprocess.run([dvc, "exp", "show", "--json", *(["--all-commits"] if all_commits else [])],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise InputFileError(f"dvc exp show failed (exit {proc.returncode}): {last}")
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise InputFileError("dvc exp show --json printed no JSON; run it to see why") from None


def exp(from_json: Annotated[Optional[Path], typer.Option("--from-json", help="a saved `dvc exp show --json` output "
                                                          "to read instead of running it")] = None,
        metrics_file: Annotated[str, typer.Option("--metrics", help="metrics file whose numbers are shown")]
        = "metrics/headline.json",
        all_commits: Annotated[bool, typer.Option("--all-commits", "-A", help="every commit's experiments, not only "
                                                  "HEAD's (dvc exp show -A)")] = False,
        width: Annotated[Optional[int], typer.Option(help="columns to fit, 80..120 (default: the terminal's, "
                                                     "within that range)")] = None) -> None:
    """The compact experiment view: one row per experiment with the params that differ between
    the rows and the numbers of metrics/headline.json, in 80..120 columns."""
    err = Console(stderr=True)
    if width is not None and not 80 <= width <= 120:
        err.print(f"[bold red]error:[/] --width {width}: must be in 80..120", highlight=False)
        raise typer.Exit(2)
    try:
        if from_json is not None:
            try:
                shown = json.loads(from_json.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise InputFileError(f"{from_json}: not readable JSON ({str(exc).splitlines()[0]}); save it with "
                                     "`dvc exp show --json > FILE`") from None
        else:
            shown = _dvc_exp_show(all_commits)
        rows = exp_rows(shown, metrics_file)
    except InputFileError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    columns = width or max(80, min(120, shutil.get_terminal_size((120, 24)).columns))
    render(rows, Console(width=columns), metrics_file)
