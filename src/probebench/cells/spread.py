"""Training-seed spread: how much each reported number moves when the zoo is retrained with
other seeds. The bootstrap CI covers prompt sampling, not which weights a training run happened
to produce; replicate zoos (`dvc exp run -S zoo.source=train -S zoo.seed_offset=k`) measure that.

    >>> runs = {"pinned": cells_a, "seed1": cells_b, "seed2": cells_c}  # doctest: +SKIP
    >>> per_cell, headline = seed_spread(runs)                          # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from probebench.errors import ProbebenchError

STATS = ("pearson", "rho_within", "rho_transferred", "transfer_auroc")
KEY = ["task", "source", "target"]


def headline(cells: pd.DataFrame) -> dict[str, float]:
    """The run-level numbers the README's conclusions rest on, per task, over the scored cells of
    the default sources (imported probes and unscored cells left out; a task with no scored cell
    has no headline). Q1 counts are over unordered pairs (`pairs_*`), Q2 over ordered cells."""
    out = {}
    imported = cells["imported"].astype(bool) if "imported" in cells.columns else False
    scored = cells["scored"].astype(bool) if "scored" in cells.columns else True
    off = cells[~cells["diagonal"] & ~imported & scored]
    for task, sub in off.groupby("task"):
        pairs = sub[sub["source"] < sub["target"]]
        out[f"{task}/n_pairs"] = float(len(pairs))
        out[f"{task}/mean_rho"] = float(pairs["pearson"].mean())
        out[f"{task}/mean_rho_within"] = float(pairs["rho_within"].mean())
        out[f"{task}/pairs_not_same_mechanism"] = float(pairs["not_same_mechanism"].sum())
        out[f"{task}/pairs_label_driven"] = float(pairs["label_driven"].sum())
        if "ccc" in pairs.columns:
            out[f"{task}/median_ccc"] = float(pairs["ccc"].median())
            out[f"{task}/pairs_ccc_beats_null"] = float(pairs["ccc_beats_null"].sum())
        out[f"{task}/mean_rho_transferred"] = float(sub["rho_transferred"].mean())
        out[f"{task}/n_transfer_beats_null"] = float((~sub["transfer_at_null"]).sum())
    return out


def seed_spread(runs: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per off-diagonal cell and statistic: the value in every run, their mean, SD and range;
    and the same for the headline numbers. Runs must cover the same cells.

    >>> a = pd.DataFrame({"task": "t", "source": ["x", "x"], "target": ["x", "y"], "diagonal": [True, False],
    ...                   "pearson": [1.0, 0.5], "rho_within": [1.0, 0.2], "rho_transferred": [1.0, 0.1],
    ...                   "transfer_auroc": [0.9, 0.6], "not_same_mechanism": [False, False],
    ...                   "label_driven": [False, True], "transfer_at_null": [False, True]})
    >>> b = a.assign(pearson=[1.0, 0.3])
    >>> per_cell, head = seed_spread({"r1": a, "r2": b})
    >>> per_cell.loc[per_cell.stat == "pearson", ["min", "max", "range"]].round(3).values.tolist()
    [[0.3, 0.5, 0.2]]
    """
    names = list(runs)
    frames = []
    for name in names:
        off = runs[name][~runs[name]["diagonal"]].set_index(KEY)[list(STATS)]
        frames.append(off.stack().rename(name))
    wide = pd.concat(frames, axis=1)
    if wide.isna().all(axis=1).any():
        raise ProbebenchError("runs cover different cells; compare runs of the same models and tasks")
    per_cell = wide.reset_index().rename(columns={"level_3": "stat"})
    values = wide.to_numpy(np.float64)
    per_cell["mean"], per_cell["sd"] = np.nanmean(values, axis=1), np.nanstd(values, axis=1, ddof=1)
    per_cell["min"], per_cell["max"] = np.nanmin(values, axis=1), np.nanmax(values, axis=1)
    per_cell["range"] = per_cell["max"] - per_cell["min"]
    head = pd.DataFrame({name: headline(runs[name]) for name in names})
    h = head.to_numpy(np.float64)
    head["mean"], head["sd"] = h.mean(axis=1), h.std(axis=1, ddof=1)
    head["min"], head["max"] = h.min(axis=1), h.max(axis=1)
    return per_cell, head.rename_axis("figure").reset_index()


def spread_figure(per_cell: pd.DataFrame, names: list[str], stat: str = "pearson"):
    """One panel per task: every off-diagonal cell's value in each run (dots) and its range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = per_cell[per_cell["stat"] == stat]
    tasks = sorted(sub["task"].unique())
    fig, axes = plt.subplots(len(tasks), 1, figsize=(10, 3.2 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        t = sub[sub["task"] == task].reset_index(drop=True)
        x = np.arange(len(t))
        ax.vlines(x, t["min"], t["max"], color="0.6", lw=3)
        for k, name in enumerate(names):
            ax.plot(x, t[name], "o", ms=4, label=name, color=f"C{k}")
        ax.axhline(0.4, color="crimson", lw=0.8, ls="--")
        ax.set_xticks(x, [f"{s}>{g}" for s, g in zip(t["source"], t["target"])], rotation=90, fontsize=7)
        ax.set_ylabel(stat)
        ax.set_title(f"{task}: {stat} per cell across training seeds (grey: range; dashed: 0.4 flag)")
    axes[0, 0].legend(fontsize=7, ncol=len(names))
    fig.tight_layout()
    return fig
