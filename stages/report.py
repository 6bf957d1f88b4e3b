"""DVC stage report: reports/index.html with the rho_CE and cosine matrices per task, the
cosine-vs-rho scatter, and the flagged cells (figures as PNG files next to it)."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from _common import console, run

from probebench.io import atomic_write_text, read_json, write_figure
from probebench.matrix import matrices
from probebench.params import Params

OUT = Path("reports")


def save_png(fig, name: str) -> str:
    """Write reports/figures/<name>; returns the path relative to reports/index.html."""
    write_figure(OUT / "figures" / name, fig)
    plt.close(fig)
    return f"figures/{name}"


def heatmap(mat: pd.DataFrame, title: str, name: str) -> str:
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * mat.shape[1], 1.0 + 0.6 * mat.shape[0]), dpi=110)
    im = ax.imshow(mat.to_numpy(dtype=float), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(mat.shape[1]), mat.columns, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(mat.shape[0]), mat.index, fontsize=7)
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            ax.text(j, i, f"{mat.iat[i, j]:.2f}", ha="center", va="center", fontsize=6)
    ax.set_xlabel("target")
    ax.set_ylabel("source")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return save_png(fig, name)


def main(params: Params, argv: list[str]) -> None:
    cells = pd.read_parquet(OUT / "cells.parquet")
    metrics = read_json(Path("metrics/matrix.json"))
    parts = ["<!doctype html><meta charset='utf-8'><title>probebench report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:2px 8px;font-size:13px}"
             "img{max-width:48%}</style>",
             "<h1>probebench: causal equivalence of transferred probes</h1>",
             "<p>rho_CE = Pearson over held-out prompts of the token-margin change when the probe direction is "
             "ablated in the source and its transferred counterpart in the target. Diagonal = 1 by construction. "
             f"Cells under {params.matrix.not_same_threshold} are flagged <b>not_same_mechanism</b>.</p>"]
    for task in params.tasks:
        t = metrics["tasks"][task]
        parts.append(f"<h2>{html.escape(task)}</h2><p>off-diagonal rho_CE {t['min_offdiag_rho']:.2f} to "
                     f"{t['max_offdiag_rho']:.2f} (mean {t['mean_offdiag_rho']:.2f}); median cosine "
                     f"{t['median_cosine']:.2f}</p>")
        a = heatmap(matrices(cells, task, "pearson"), f"{task}: rho_CE", f"matrix_{task}_rho.png")
        b = heatmap(matrices(cells, task, "cosine"), f"{task}: cosine with target's native probe", f"matrix_{task}_cos.png")
        parts.append(f"<img src='{a}'><img src='{b}'>")
    off = cells[~cells["diagonal"]]
    fig, ax = plt.subplots(figsize=(5, 4), dpi=110)
    for task, sub in off.groupby("task"):
        ax.scatter(sub["cosine"], sub["pearson"], s=16, label=task)
    ax.axhline(params.matrix.not_same_threshold, color="grey", lw=0.8, ls="--")
    ax.axvline(params.matrix.cosine_confound_threshold, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("cosine (transferred vs target's native probe)")
    ax.set_ylabel("rho_CE")
    ax.legend(fontsize=7)
    fig.tight_layout()
    parts.append(f"<h2>Geometry vs mechanism</h2><img src='{save_png(fig, 'cosine_vs_rho.png')}'>")
    s = read_json(OUT / "cosine_vs_rho.json")
    parts.append(f"<p>{html.escape(s['formulae']['one_minus_median_ratio'])}: {s['one_minus_median_ratio']:.3f}; "
                 f"{html.escape(s['formulae']['share_high_cos_low_ce'])}: {s['share_high_cos_low_ce']:.3f}</p>")
    flagged = off[off["not_same_mechanism"]].sort_values("pearson")
    cols = ["task", "source", "target", "pearson", "ci_low", "ci_high", "cosine", "cosine_confound", "scored"]
    parts.append(f"<h2>Flagged cells ({len(flagged)})</h2>" + flagged[cols].to_html(index=False, float_format="%.3f"))
    atomic_write_text(OUT / "index.html", "\n".join(parts) + "\n")
    console.print(f"report: {OUT / 'index.html'}")


if __name__ == "__main__":
    run(main)
