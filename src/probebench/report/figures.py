"""The report's figures (matplotlib objects, no pyplot state): heatmaps with CIs and flags, the
headline, transfer AUROC against its nulls, scatter plots, per-prompt effects and the crosscoder
audit. A fixed style makes the same inputs give the same SVG and PNG bytes."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from functools import cached_property

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from probebench.report.format import _beats_auroc_null, _beats_rho_null, _finite, FLAG_CODES, _has, text_colour

# Fixed style: the same inputs give the same bytes (svg.hashsalt fixes the ids matplotlib would
# otherwise draw at random), and the glyphs are paths so the page looks the same without fonts.
RC = {"svg.hashsalt": "probebench-report", "svg.fonttype": "path", "font.family": "DejaVu Sans",
      "font.size": 8.5, "axes.titlesize": 9.5, "axes.labelsize": 8.5, "xtick.labelsize": 8, "ytick.labelsize": 8,
      "legend.fontsize": 7.5, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100,
      "savefig.dpi": 144, "image.interpolation": "nearest", "path.simplify": False, "hatch.linewidth": 0.6}
CMAP = "RdBu_r"  # diverging around 0: blue = negative, white = no correlation, red = positive
LABEL_COLOURS = {0: "#0072B2", 1: "#D55E00"}  # Okabe-Ito blue / vermillion: readable for colour-blind readers
GOOD, BAD, NULL_GREY = "#0072B2", "#D55E00", "#BBBBBB"


@dataclass(frozen=True)
class FigureFile:
    """One figure in both formats: the page shows `svg`; `png` is for `dvc plots` and slides.
    The bytes are rendered on first access (a page check that reads only the HTML draws nothing)."""

    name: str
    alt: str
    figure: Figure = field(repr=False, compare=False)

    @cached_property
    def svg(self) -> bytes:
        return _render_bytes(self.figure, "svg", self.alt)

    @cached_property
    def png(self) -> bytes:
        return _render_bytes(self.figure, "png", self.alt)





def _render_bytes(fig: Figure, fmt: str, alt: str) -> bytes:
    """SVG or PNG bytes without dates, tool names or URLs in the metadata, under the fixed style
    (same inputs, same bytes)."""
    buffer = io.BytesIO()
    with mpl.rc_context(RC):
        if fmt == "svg":
            fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Type": None, "Format": None,
                                                        "Title": alt})
        else:
            fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _models(sub: pd.DataFrame) -> tuple[list[str], list[str]]:
    return sorted(sub["source"].unique()), sorted(sub["target"].unique())


def heatmap_figure(sub: pd.DataFrame, value: str, title: str, *, ci: tuple[str, str] | None,
                   threshold: float | None) -> Figure:
    """source x target heatmap of `value`, each cell with its estimate and CI. Diagonal cells are
    grey (1 by construction), unscored cells hatched, flagged cells framed with their flag letters."""
    sources, targets = _models(sub)
    cell_w, cell_h = 0.95, 0.62
    fig = Figure(figsize=(1.5 + cell_w * len(targets) + 0.9, 1.35 + cell_h * len(sources)), layout="constrained")
    ax = fig.add_subplot()
    norm = TwoSlopeNorm(vmin=-1.0, vcenter=0.0, vmax=1.0)
    cmap = mpl.colormaps[CMAP]
    by = sub.set_index(["source", "target"])
    grid = np.full((len(sources), len(targets)), np.nan)
    for i, s in enumerate(sources):
        for j, t in enumerate(targets):
            if (s, t) in by.index and not bool(by.loc[(s, t), "diagonal"]):
                grid[i, j] = by.loc[(s, t), value]
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
    for i, s in enumerate(sources):
        for j, t in enumerate(targets):
            if (s, t) not in by.index:
                continue
            row = by.loc[(s, t)]
            if bool(row["diagonal"]):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, color="#E6E6E6", lw=0))
                ax.text(j, i, "1\n(by construction)", ha="center", va="center", fontsize=6.5, color="#555555")
                continue
            est = row[value]
            if not _finite(est):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, color="#F4F4F4", lw=0))
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=7.5, color="#555555")
                continue
            colour = text_colour(cmap(norm(est)))
            style = "normal" if bool(row["scored_"]) else "italic"
            ax.text(j, i - 0.1, f"{est:.2f}", ha="center", va="center", fontsize=10, fontweight="bold",
                    color=colour, fontstyle=style)
            if ci is not None and _finite(row.get(ci[0])) and _finite(row.get(ci[1])):
                ax.text(j, i + 0.24, f"[{row[ci[0]]:.2f}, {row[ci[1]]:.2f}]", ha="center", va="center",
                        fontsize=7, color=colour, fontstyle=style)
            if not bool(row["scored_"]):
                # light, sparse hatching: visibly "not scored" while the numbers on top stay legible
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor=(0, 0, 0, 0.22),
                                       lw=0))
            flags = row["flag_list"]
            if flags:
                ax.add_patch(Rectangle((j - 0.46, i - 0.44), 0.92, 0.88, fill=False, edgecolor="black", lw=1.8))
                code = "".join(FLAG_CODES.get(f, "?") for f in flags)
                ax.text(j + 0.43, i - 0.4, code, ha="right", va="top", fontsize=6.5, color=colour,
                        fontweight="bold")
    ax.set_xticks(range(len(targets)), targets, rotation=30, ha="right")
    ax.set_yticks(range(len(sources)), sources)
    ax.set_xlabel("target model (ablates its direction)")
    ax.set_ylabel("source model")
    ax.set_title(title, loc="left")
    ax.spines[:].set_visible(False)
    ax.set_xticks(np.arange(len(targets) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(sources) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", lw=2)
    ax.tick_params(which="both", length=0)
    bar = fig.colorbar(im, ax=ax, shrink=0.85, pad=0.02)
    if threshold is not None:  # the not_same_mechanism threshold as a line on the scale
        bar.ax.axhline(threshold, color="black", lw=1.2)
    return fig


def headline_figure(cells: pd.DataFrame, tasks: list[str], threshold: float | None) -> Figure:
    """Per task, one dot per off-diagonal cell on a rho axis: pooled rho_CE, within-class rho_CE and
    the transferred probe's rho (rows present only when computed), the median as a bar, and the
    random-direction null range shaded."""
    rows: list[tuple[str, str, pd.DataFrame, str]] = []
    kinds = [("pooled", "pearson"), ("within-class", "rho_within"), ("transferred (Q2)", "rho_transferred")]
    for task in tasks:
        off = cells[(cells["task"] == task) & ~cells["diagonal"]]
        for label, col in kinds:
            if _has(off, col):
                rows.append((task, label, off, col))
    fig = Figure(figsize=(9.5, 0.8 + 0.42 * max(len(rows), 1)), layout="constrained")
    ax = fig.add_subplot()
    if not rows:  # a single model per task: nothing off the diagonal to compare
        ax.text(0.5, 0.5, "no off-diagonal cell: one model per task", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    colours = {"pearson": "#B2182B", "rho_within": "#2166AC", "rho_transferred": "#5E3C99"}
    for y, (task, label, off, col) in enumerate(rows):
        vals = off[col].dropna().to_numpy(float)
        if col == "pearson" and _has(off, "rho_null_low", "rho_null_high"):
            lo, hi = off["rho_null_low"].median(), off["rho_null_high"].median()
            ax.add_patch(Rectangle((lo, y - 0.38), hi - lo, 0.76, color=NULL_GREY, alpha=0.55, lw=0))
        # deterministic spread so overlapping cells stay visible
        jitter = ((np.arange(len(vals)) * 0.618) % 1.0 - 0.5) * 0.5
        ax.scatter(vals, y + jitter, s=16, color=colours[col], alpha=0.75, lw=0)
        med = float(np.median(vals))
        ax.plot([med, med], [y - 0.36, y + 0.36], color="black", lw=2.2)
        note = f"median {med:+.2f}  (n={len(vals)})"
        beats = _beats_rho_null(off) if col == "pearson" else None
        if beats is not None:
            note += f", {int(beats.sum())} above null"
        ax.text(1.03, y, note, va="center", fontsize=7.5, transform=ax.get_yaxis_transform())
    ax.set_yticks(range(len(rows)), [f"{task}: {label}" for task, label, _, _ in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(-1.0, 1.0)
    ax.axvline(0, color="#888888", lw=0.7)
    if threshold is not None:
        ax.axvline(threshold, color="black", lw=0.8, ls="--")
        ax.text(threshold, -0.5, f" not_same_mechanism below {threshold:g}", va="bottom", fontsize=7)
    ax.set_xlabel("rho_CE (one dot per off-diagonal cell; bar = median; grey band = median random-direction null range)")
    for y in range(1, len(rows)):
        if rows[y][0] != rows[y - 1][0]:
            ax.axhline(y - 0.5, color="#DDDDDD", lw=0.8)
    return fig


def auroc_figure(off: pd.DataFrame, task: str, alpha: float | None) -> Figure:
    """One row per off-diagonal cell: the transferred probe's AUROC (dot) against its null range
    (grey bar); blue when it beats the null, vermillion when it does not."""
    off = off.sort_values(["transfer_auroc", "source", "target"]).reset_index(drop=True)
    beats = _beats_auroc_null(off)
    fig = Figure(figsize=(6.4, 0.9 + 0.17 * len(off)), layout="constrained")
    ax = fig.add_subplot()
    has_null = _has(off, "transfer_auroc_null_low", "transfer_auroc_null_high")
    for y, row in off.iterrows():
        if has_null and _finite(row["transfer_auroc_null_low"]):
            ax.plot([row["transfer_auroc_null_low"], row["transfer_auroc_null_high"]], [y, y], color=NULL_GREY,
                    lw=5, solid_capstyle="butt")
        colour = "#444444" if beats is None else (GOOD if bool(beats.iloc[y]) else BAD)
        ax.scatter([row["transfer_auroc"]], [y], color=colour, s=18, zorder=3)
        if _has(off, "native_auroc") and _finite(row.get("native_auroc")):
            ax.scatter([row["native_auroc"]], [y], marker="|", color="black", s=30, zorder=2)
    ax.set_yticks(range(len(off)), [f"{s} \u2192 {t}" for s, t in zip(off["source"], off["target"])], fontsize=6.5)
    ax.set_ylim(len(off) - 0.5, -0.5)
    ax.set_xlim(0, 1)
    ax.axvline(0.5, color="#888888", lw=0.7, ls=":")
    ax.set_xlabel("transfer AUROC on the target's test prompts (raw, not max(a, 1-a))")
    handles = [Patch(color=NULL_GREY, label="null maps (noise source, shuffled pairs)")] if has_null else []
    if beats is not None:
        handles += [Patch(color=GOOD, label="beats its null" + (f" (p <= {alpha:g})" if alpha is not None else "")),
                    Patch(color=BAD, label="at null")]
    if _has(off, "native_auroc"):
        handles.append(mpl.lines.Line2D([], [], marker="|", ls="", color="black", label="target's own probe"))
    if handles:  # below the axes: inside, it would hide cells
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
    ax.set_title(f"{task}: transfer AUROC of the carried probe vs its null maps", loc="left")
    return fig


def scatter_figure(off: pd.DataFrame, x: str, y: str, *, xlabel: str, ylabel: str, title: str,
                   identity: bool = False, hollow: pd.Series | None = None, by_geometry: bool = False,
                   lines: tuple[float | None, float | None] = (None, None)) -> Figure:
    """A labelled scatter of two cell statistics (one point per off-diagonal cell); `by_geometry`
    draws each kind of cosine (shared basis, label-free transfer) with its own marker."""
    fig = Figure(figsize=(4.6, 3.9), layout="constrained")
    ax = fig.add_subplot()
    hollow = pd.Series(False, index=off.index) if hollow is None else hollow.fillna(True).astype(bool)
    # the matrix stage says which geometry a cosine is: the two native probes on a shared basis,
    # or the label-free transfer against the target's probe
    kinds = (off["geometry"].fillna("") if by_geometry and "geometry" in off.columns
             else pd.Series("", index=off.index))
    markers = {"shared_basis": ("s", "native probes, shared basis"), "transfer": ("o", "label-free transfer")}
    for kind in sorted(kinds.unique()):
        marker, name = markers.get(kind, ("o", "cell"))
        for empty in (False, True):
            pick = (kinds == kind) & (hollow == empty)
            if pick.any():
                label = name + (" (not above its null)" if empty else "")
                ax.scatter(off.loc[pick, x], off.loc[pick, y], s=24, marker=marker, label=label,
                           facecolors="none" if empty else "#333333", edgecolors="#333333")
    if len(kinds.unique()) > 1 or hollow.any():
        ax.legend(loc="lower left")
    if identity:
        ax.plot([-1, 1], [-1, 1], color="#888888", lw=0.8, ls="--")
    # both axes are correlations or cosines: a fixed [-1, 1] frame keeps runs comparable by eye
    ax.set_aspect("equal")
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    if lines[0] is not None:
        ax.axvline(lines[0], color="#888888", lw=0.8, ls="--")
    if lines[1] is not None:
        ax.axhline(lines[1], color="#888888", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, loc="left")
    return fig


def deltas_figure(effects: pd.DataFrame, sub: pd.DataFrame, task: str, column: str) -> Figure:
    """Small multiples: for every off-diagonal cell, delta_source (x) vs delta_target (y) per test
    prompt, coloured by label: the data behind each correlation.

    With a `kind` column (matched | transferred | random rows) rho_CE pairs s ablating its own
    probe with t ablating its own matched probe, so the target side of cell (s, t) is the (t, t)
    matched rows; without one (older runs) it is the (s, t) rows."""
    sources, targets = _models(sub)
    eff = effects[effects["task"] == task]
    matched_only = "kind" in eff.columns
    if matched_only:
        eff = eff[eff["kind"] == "matched"]
    size = 1.25
    fig = Figure(figsize=(0.8 + size * len(targets), 0.9 + size * len(sources)), layout="constrained")
    axes = fig.subplots(len(sources), len(targets), squeeze=False)
    sides = {(s, t): g.set_index("prompt_id").sort_index() for (s, t), g in eff.groupby(["source", "target"])}
    rho = sub.set_index(["source", "target"])["pearson"]
    for i, s in enumerate(sources):
        for j, t in enumerate(targets):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if i == len(sources) - 1:
                ax.set_xlabel(t, fontsize=7, rotation=20)
            if j == 0:
                ax.set_ylabel(s, fontsize=7)
            if s == t:
                ax.set_facecolor("#F0F0F0")
                continue
            target_key = (t, t) if matched_only else (s, t)
            if (s, s) not in sides or target_key not in sides:
                ax.axis("off")
                continue
            src, tgt = sides[(s, s)], sides[target_key]
            ids = src.index.intersection(tgt.index)
            for label, colour in LABEL_COLOURS.items():
                keep = ids[src.loc[ids, "label"].to_numpy() == label]
                ax.scatter(src.loc[keep, column], tgt.loc[keep, column], s=3, color=colour, alpha=0.6, lw=0,
                           rasterized=True)
            if (s, t) in rho.index and _finite(rho[(s, t)]):
                ax.text(0.03, 0.97, f"{rho[(s, t)]:.2f}", transform=ax.transAxes, ha="left", va="top", fontsize=7)
    fig.supxlabel("target model (y of each panel: its delta)", fontsize=8)
    fig.supylabel("source model (x of each panel: its delta)", fontsize=8)
    fig.legend(handles=[Patch(color=c, label=f"label {k}") for k, c in LABEL_COLOURS.items()], loc="outside upper center",
               ncol=2, frameon=False, title=f"{task}: per-prompt effects", title_fontsize=9)
    return fig


def crosscoder_figure(latents: pd.DataFrame, lines: tuple[float | None, float | None]) -> Figure | None:
    """Decoder cosine vs every CE column of the latents table (one panel each, CIs as error bars)."""
    if "decoder_cosine" not in latents.columns:
        return None
    ce_cols = [c for c in latents.columns if c.startswith("ce") and not c.endswith(("_low", "_high"))
               and pd.api.types.is_numeric_dtype(latents[c])]
    if not ce_cols:
        return None
    ncols = min(2, len(ce_cols))  # two per row keeps each panel big enough to read on the page
    nrows = math.ceil(len(ce_cols) / ncols)
    fig = Figure(figsize=(3.6 * ncols + 0.4, 3.1 * nrows), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    axes = grid.ravel()
    for ax in axes[len(ce_cols):]:
        ax.set_visible(False)
    for ax, col in zip(axes, ce_cols):
        x, y = latents["decoder_cosine"], latents[col]
        if f"{col}_low" in latents.columns and f"{col}_high" in latents.columns:
            err = np.vstack([(y - latents[f"{col}_low"]).clip(lower=0), (latents[f"{col}_high"] - y).clip(lower=0)])
            ax.errorbar(x, y, yerr=err, fmt="none", ecolor="#BBBBBB", lw=0.7)
        ax.scatter(x, y, s=10, color="#333333")
        if lines[0] is not None:
            ax.axvline(lines[0], color="#888888", lw=0.8, ls="--")
        if lines[1] is not None:
            ax.axhline(lines[1], color="#888888", lw=0.8, ls="--")
        ax.set_title(col, loc="left")
    for ax in grid[-1]:
        ax.set_xlabel("decoder cosine (base vs chat)")
    for ax in grid[:, 0]:
        ax.set_ylabel("causal equivalence CE_j")
    return fig
