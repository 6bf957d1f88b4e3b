"""The report page: one self-contained HTML file and the figures it shows, built from the stage outputs.

Pure: dataframes and dicts in, a :class:`Report` (HTML text + SVG/PNG bytes per figure) out; the
`report` stage reads the files and writes the result. Nothing on the page is fetched from the
network: figures are files next to the page, styles are inline, there is no script.

Every section is drawn only from the columns it needs; a column the run did not compute (for
example `rho_within` before the within-class statistic exists) makes its section say "not
computed in this run" instead of failing or drawing zeros.

    >>> import pandas as pd
    >>> cells = pd.DataFrame({"task": "t", "source": ["a", "a", "b", "b"], "target": ["a", "b", "a", "b"],
    ...                       "pearson": [1.0, 0.7, 0.2, 1.0], "ci_low": [1.0, 0.6, 0.0, 1.0],
    ...                       "ci_high": [1.0, 0.8, 0.4, 1.0], "flags": ["", "", "not_same_mechanism", ""]})
    >>> report = build_report(ReportInputs(cells=cells))
    >>> sorted(report.figures)
    ['headline', 'rho_t']
    >>> "http" in report.html, 'src="figures/headline.svg"' in report.html
    (False, True)
"""

from __future__ import annotations

import html
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

__all__ = ["FLAG_CODES", "FigureFile", "Report", "ReportInputs", "build_report", "cell_flags", "format_ci",
           "group_numeric", "text_colour"]

# Fixed style: the same inputs give the same bytes (svg.hashsalt fixes the ids matplotlib would
# otherwise draw at random), and the glyphs are paths so the page looks the same without fonts.
RC = {"svg.hashsalt": "probebench-report", "svg.fonttype": "path", "font.family": "DejaVu Sans",
      "font.size": 8.5, "axes.titlesize": 9.5, "axes.labelsize": 8.5, "xtick.labelsize": 8, "ytick.labelsize": 8,
      "legend.fontsize": 7.5, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100,
      "savefig.dpi": 144, "image.interpolation": "nearest", "path.simplify": False, "hatch.linewidth": 0.6}
CMAP = "RdBu_r"  # diverging around 0: blue = negative, white = no correlation, red = positive
LABEL_COLOURS = {0: "#0072B2", 1: "#D55E00"}  # Okabe-Ito blue / vermillion: readable for colour-blind readers
GOOD, BAD, NULL_GREY = "#0072B2", "#D55E00", "#BBBBBB"
# One letter per flag, drawn in the heatmap cells; the order is the order of the legend.
FLAG_CODES = {"not_same_mechanism": "N", "label_driven": "L", "transfer_at_null": "T", "cosine_confound": "C",
              "inert_direction": "I"}
FLAG_MEANING = {
    "not_same_mechanism": "pooled rho_CE below the threshold",
    "label_driven": "pooled rho_CE above the threshold, but its within-class CI reaches below the within-class "
                    "threshold: the agreement is mostly the label",
    "transfer_at_null": "the transferred probe's AUROC does not beat its null maps",
    "cosine_confound": "high cosine (where defined and above its null) but low rho_CE",
    "inert_direction": "ablation moves the margin by almost nothing on one side: rho correlates noise",
}
P_NULL = 0.05  # default transfer.null_alpha: an empirical null p at or below it "beats its null"


@dataclass(frozen=True)
class ReportInputs:
    """What the page is built from. Only `cells` is required; every other part is optional and
    its section says "not computed in this run" when absent.

    cells: one row per (task, source, target), the matrix stage's table. effects: one row per
    (task, source, target, prompt) with `label` and `effect_sd` (or `delta`). zoo: one row per
    model (any columns; shown as a table). crosscoder_metrics: {file name: its metrics dict}, e.g.
    metrics/crosscoder.json and metrics/crosscoder_train.json, shown generically (every number).
    crosscoder_latents: reports/crosscoder/latents.csv. cosine_summary: reports/cosine_vs_rho.json
    (per task, the named overstatement statistics). provenance: probebench.provenance.json.
    thresholds: params numbers quoted on the page (`not_same_threshold`, ...). versions: library
    versions of the run. tasks: task order (default: sorted)."""

    cells: pd.DataFrame
    effects: pd.DataFrame | None = None
    zoo: pd.DataFrame | None = None
    crosscoder_metrics: dict[str, dict] | None = None
    crosscoder_latents: pd.DataFrame | None = None
    cosine_summary: dict | None = None
    provenance: dict | None = None
    thresholds: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    tasks: tuple[str, ...] | None = None


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


@dataclass(frozen=True)
class Report:
    """The page (`html`, referring to `figures/<name>.svg`) and its figures by name."""

    html: str
    figures: dict[str, FigureFile]


# ---------------------------------------------------------------------------------------------
# small pure helpers
# ---------------------------------------------------------------------------------------------


def text_colour(rgba) -> str:
    """'black' or 'white', whichever contrasts more with a background of this colour (WCAG relative
    luminance), so a number stays readable on any cell of the colour map.

    >>> text_colour((0.4, 0.0, 0.1, 1.0)), text_colour((1.0, 0.9, 0.85, 1.0)), text_colour((0.5, 0.5, 0.5))
    ('white', 'black', 'black')
    """
    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(float(c)) for c in tuple(rgba)[:3])
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "white" if (1.05 / (lum + 0.05)) > ((lum + 0.05) / 0.05) else "black"


def format_ci(estimate: float, low: float, high: float, digits: int = 2) -> str:
    """`0.83 [0.76, 0.89]`; `n/a` for a missing estimate, no bracket for a missing interval.

    >>> format_ci(0.8304, 0.7594, 0.8875), format_ci(float("nan"), 0, 1), format_ci(0.5, float("nan"), 0.6)
    ('0.83 [0.76, 0.89]', 'n/a', '0.50')
    """
    if not _finite(estimate):
        return "n/a"
    if not (_finite(low) and _finite(high)):
        return f"{estimate:.{digits}f}"
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def cell_flags(cells: pd.DataFrame) -> pd.Series:
    """Flags of each row as a tuple of names: from the ';'-separated `flags` column when present,
    else from the boolean flag columns of older runs.

    >>> df = pd.DataFrame({"flags": ["not_same_mechanism;label_driven", "", None]})
    >>> cell_flags(df).tolist()
    [('not_same_mechanism', 'label_driven'), (), ()]
    >>> cell_flags(pd.DataFrame({"not_same_mechanism": [True, False]})).tolist()
    [('not_same_mechanism',), ()]
    """
    if "flags" in cells.columns:
        def parse(v) -> tuple[str, ...]:
            if not isinstance(v, str):
                return ()
            return tuple(f.strip() for f in v.split(";") if f.strip())
        return cells["flags"].map(parse)
    present = [f for f in FLAG_CODES if f in cells.columns]
    return pd.Series([tuple(f for f in present if bool(row[f])) for _, row in cells.iterrows()], index=cells.index,
                     dtype=object)


def group_numeric(metrics: dict) -> dict[str, dict[str, float]]:
    """Numbers of a (nested) metrics dict grouped for display: a nested dict is a group of its
    own; flat keys group by the prefix before their first '_' when two or more share it.

    >>> group_numeric({"ce_kl": {"median_cos": 0.4, "n": 80}, "control_cos": 1.0, "control_ce": 0.99,
    ...                "n_inputs": 256, "note": "text"})
    {'ce_kl': {'median_cos': 0.4, 'n': 80}, 'control': {'control_ce': 0.99, 'control_cos': 1.0}, 'other': {'n_inputs': 256}}
    """
    flat: dict[str, float] = {}
    nested: dict[str, dict[str, float]] = {}

    def walk(d: dict, prefix: str, out: dict) -> None:
        for k in sorted(d):
            v = d[k]
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.", out)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"{prefix}{k}"] = v

    for k in sorted(metrics):
        v = metrics[k]
        if isinstance(v, dict):
            inner: dict[str, float] = {}
            walk(v, "", inner)
            if inner:
                nested[k] = inner
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            flat[k] = v
    prefixes = pd.Series([k.split("_", 1)[0] for k in flat], dtype=object)
    counts = prefixes.value_counts()
    grouped: dict[str, dict[str, float]] = dict(nested)
    for k in flat:
        p = k.split("_", 1)[0]
        group = p if "_" in k and counts[p] >= 2 and p not in nested else "other"
        grouped.setdefault(group, {})[k] = flat[k]
    return grouped


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _esc(v) -> str:
    return html.escape(str(v), quote=True)


def _num(v, digits: int = 2) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}f}" if _finite(v) else "n/a"


def _has(df: pd.DataFrame | None, *cols: str) -> bool:
    """All columns present and at least one value of each defined."""
    return df is not None and all(c in df.columns and df[c].notna().any() for c in cols)


def _prepare_cells(cells: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("task", "source", "target", "pearson") if c not in cells.columns]
    if missing:
        raise ValueError(f"cells table: missing column(s) {missing}; rerun the matrix stage (dvc repro matrix)")
    out = cells.copy()
    if "diagonal" not in out.columns:
        out["diagonal"] = out["source"] == out["target"]
    out["diagonal"] = out["diagonal"].astype(bool)
    out["flag_list"] = cell_flags(out)
    out["scored_"] = out["scored"].astype(bool) if "scored" in out.columns else True
    return out


def _beats_rho_null(off: pd.DataFrame) -> pd.Series | None:
    """rho_CE above the whole random-direction null range (the matrix stage's `rho_beats_null`
    when it wrote one, so the page and metrics/matrix.json count the same cells)."""
    if "rho_beats_null" in off.columns:
        return off["rho_beats_null"].fillna(False).astype(bool)
    if not _has(off, "rho_null_high"):
        return None
    return (off["pearson"] > off["rho_null_high"]) & off["rho_null_high"].notna()


def _beats_auroc_null(off: pd.DataFrame, alpha: float = P_NULL) -> pd.Series | None:
    """The transferred probe beats its null maps: empirical p <= alpha (the rule behind the
    `transfer_at_null` flag), else, without a p, above the null range."""
    if _has(off, "transfer_auroc_null_p"):
        return (off["transfer_auroc_null_p"] <= alpha) & off["transfer_auroc_null_p"].notna()
    if _has(off, "transfer_auroc", "transfer_auroc_null_high"):
        return off["transfer_auroc"] > off["transfer_auroc_null_high"]
    return None


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------


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


def auroc_figure(off: pd.DataFrame, task: str, alpha: float = P_NULL) -> Figure:
    """One row per off-diagonal cell: the transferred probe's AUROC (dot) against its null range
    (grey bar); blue when it beats the null, vermillion when it does not."""
    off = off.sort_values(["transfer_auroc", "source", "target"]).reset_index(drop=True)
    beats = _beats_auroc_null(off, alpha)
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
        handles += [Patch(color=GOOD, label=f"beats its null (p <= {alpha:g})"), Patch(color=BAD, label="at null")]
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


# ---------------------------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1a1a1a;
 max-width:1400px;margin:0 auto;padding:0 24px 60px;line-height:1.45;background:#fff}
h1{font-size:26px;margin:24px 0 6px}h2{font-size:20px;margin:36px 0 8px;border-bottom:2px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:22px 0 6px}
p,li{max-width:950px}.lead{font-size:16.5px;max-width:1050px}.muted{color:#666}
.missing{color:#8a6d00;background:#fff8e1;border-left:4px solid #f0c000;padding:6px 10px;max-width:950px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:14px;align-items:start}
figure{margin:8px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#444;max-width:900px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{padding:3px 9px;border-bottom:1px solid #e5e5e5;
 text-align:left;vertical-align:top}th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.unscored td{color:#777;font-style:italic}code,.mono{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px}
nav{font-size:14px;margin:10px 0 0}nav a{margin-right:14px}.flag{color:#b00020;font-weight:600}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}.scroll{overflow-x:auto}
.scroll td:last-child{min-width:340px}
"""


def _column_cells(col: pd.Series, digits: int) -> list[str]:
    """<td>s of one column. A numeric column whose values are all whole numbers (counts, layers,
    parameters with gaps) prints as integers with thousands separators, others with `digits`
    decimals; in a mixed column each value keeps its own type (an int stays an int)."""
    def number(v, whole: bool) -> str:
        if not _finite(v):
            return "<td class='num'>n/a</td>"
        if whole or isinstance(v, (int, np.integer)):
            return f"<td class='num'>{int(v):,}</td>"
        return f"<td class='num'>{float(v):.{digits}f}</td>"

    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        finite = col[col.notna()]
        whole = len(finite) > 0 and bool((finite == finite.round()).all())
        return [number(v, whole) for v in col]
    out = []
    for v in col:
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
            out.append(number(v, False))
        else:
            out.append(f"<td>{_esc('' if v is None or (isinstance(v, float) and math.isnan(v)) else v)}</td>")
    return out


def _table(df: pd.DataFrame, *, numeric_digits: int = 3, row_class: list[str] | None = None,
           nowrap: tuple[str, ...] = ()) -> str:
    """HTML table; `nowrap` columns keep each value on one line (an estimate and its CI)."""
    head = "".join(f"<th>{_esc(c)}</th>" for c in df.columns)
    columns = [[td.replace("<td", "<td style='white-space:nowrap'", 1) for td in _column_cells(df[c], numeric_digits)]
               if c in nowrap else _column_cells(df[c], numeric_digits) for c in df.columns]
    body = []
    for k in range(len(df)):
        cls = f" class='{row_class[k]}'" if row_class and row_class[k] else ""
        body.append(f"<tr{cls}>{''.join(col[k] for col in columns)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _missing(what: str) -> str:
    return f"<p class='missing'>{_esc(what)}: not computed in this run.</p>"


def _figure_html(fig: FigureFile, caption: str) -> str:
    return (f"<figure><a href='figures/{fig.name}.svg'><img src=\"figures/{fig.name}.svg\" alt=\"{_esc(fig.alt)}\">"
            f"</a><figcaption>{caption}</figcaption></figure>")


class _Page:
    """Collects HTML parts and figures (rendered under the fixed style)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.figures: dict[str, FigureFile] = {}

    def add(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, fig: Figure, name: str, alt: str, caption: str) -> str:
        self.figures[name] = FigureFile(name=name, alt=alt, figure=fig)
        return _figure_html(self.figures[name], caption)


def _headline_text(cells: pd.DataFrame, tasks: list[str], thresholds: dict) -> str:
    """One paragraph per run: pooled vs within-class rho_CE per task and how many cells beat nulls."""
    parts, absent = [], set()
    for task in tasks:
        off = cells[(cells["task"] == task) & ~cells["diagonal"]]
        n = len(off)
        if n == 0:
            parts.append(f"<b>{_esc(task)}</b>: no off-diagonal cell.")
            continue
        s = (f"<b>{_esc(task)}</b>: pooled rho_CE median <b>{off['pearson'].median():.2f}</b> over {n} "
             f"off-diagonal cells (range {off['pearson'].min():.2f} to {off['pearson'].max():.2f})")
        if _has(off, "rho_within"):
            s += f"; with class means removed (within-class) the median is <b>{off['rho_within'].median():.2f}</b>"
        else:
            absent.add("within-class rho_CE")
        rho_null = _beats_rho_null(off)
        if rho_null is not None:
            s += f"; in {int(rho_null.sum())}/{n} cells rho_CE lies above the random-direction null range"
        else:
            absent.add("the random-direction null of rho_CE")
        auroc_null = _beats_auroc_null(off, thresholds.get("null_alpha", P_NULL))
        if auroc_null is not None:
            s += f"; the transferred probe beats its null maps in {int(auroc_null.sum())}/{n}"
        else:
            absent.add("the null maps of the transfer AUROC")
        counts = pd.Series([f for fl in off["flag_list"] for f in fl], dtype=object).value_counts()
        if len(counts):
            s += ". Flags: " + ", ".join(f"{int(c)} {_esc(f)}" for f, c in counts.items())
        if "scored_" in off.columns:
            s += f". {int(off['scored_'].sum())}/{n} cells scored"
        parts.append(s + ".")
    if absent:
        parts.append(f"<span class='muted'>Not computed in this run: {', '.join(sorted(absent))}.</span>")
    return "<br>".join(parts)


def build_report(inputs: ReportInputs) -> Report:
    """Render the whole page. Raises ValueError (naming the column) when `cells` lacks the
    minimum columns (task, source, target, pearson)."""
    cells = _prepare_cells(inputs.cells)
    tasks = list(inputs.tasks) if inputs.tasks else sorted(cells["task"].unique())
    th = inputs.thresholds
    not_same = th.get("not_same_threshold")
    page = _Page()
    with mpl.rc_context(RC):
        _render(page, cells, tasks, inputs, not_same)
    n_models = cells["source"].nunique()
    head = ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>probebench report: {len(tasks)} task(s), {n_models} models</title><style>{CSS}</style></head><body>")
    return Report(html=head + "\n".join(page.parts) + "\n</body></html>\n", figures=page.figures)


def _render(page: _Page, cells: pd.DataFrame, tasks: list[str], inputs: ReportInputs, not_same: float | None) -> None:
    th = inputs.thresholds
    page.add("<h1>probebench: is the probe the same causal mechanism in the other model?</h1>")
    page.add("<p class='lead'>For each concept (task) every model's probe direction was ablated and the change in "
             "the answer margin (logit of the positive minus the negative answer) was recorded on each held-out "
             "prompt. <b>rho_CE</b> is the Pearson correlation of those changes between a source and a target model "
             "(95% bootstrap CI). <b>Pooled</b> rho_CE includes the label, because ablating a class-separating "
             "direction moves every prompt's margin with its class; <b>within-class</b> rho_CE removes the class "
             "means and asks whether the per-prompt effects agree beyond the label.</p>")
    page.add(f"<p class='lead'>{_headline_text(cells, tasks, th)}</p>")
    page.add(page.figure(headline_figure(cells, tasks, not_same), "headline",
                         "pooled vs within-class rho_CE per task",
                         "Each dot is one off-diagonal cell (source \u2260 target). Pooled rho far above within-class "
                         "rho means the agreement is mostly the label. Rows appear only for statistics this run "
                         "computed."))
    nav = [f"<a href='#task-{_esc(t)}'>{_esc(t)}</a>" for t in tasks]
    nav += ["<a href='#zoo'>models</a>", "<a href='#crosscoder'>crosscoder audit</a>",
            "<a href='#provenance'>provenance</a>", "<a href='#flags'>flags</a>"]
    page.add("<nav>" + "".join(nav) + "</nav>")
    for task in tasks:
        _task_section(page, cells, task, inputs, not_same)
    _zoo_section(page, inputs.zoo)
    _crosscoder_section(page, inputs.crosscoder_metrics, inputs.crosscoder_latents)
    _provenance_section(page, inputs.provenance, inputs.versions, th)
    page.add("<h2 id='flags'>Flags</h2><table><thead><tr><th>mark</th><th>flag</th><th>meaning</th></tr></thead><tbody>"
             + "".join(f"<tr><td class='flag'>{c}</td><td><code>{f}</code></td><td>{_esc(FLAG_MEANING[f])}</td></tr>"
                       for f, c in FLAG_CODES.items())
             + "</tbody></table><p class='muted'>Flags inform; whether a cell counts toward the leaderboard score "
               "follows the scoring rule (held-out check, N, token-margin effect, enough source models).</p>")


def _task_section(page: _Page, cells: pd.DataFrame, task: str, inputs: ReportInputs, not_same: float | None) -> None:
    sub = cells[cells["task"] == task]
    off = sub[~sub["diagonal"]]
    alpha = inputs.thresholds.get("null_alpha", P_NULL)
    page.add(f"<h2 id='task-{_esc(task)}'>Task: {_esc(task)}</h2>")
    n = int(sub["n"].iloc[0]) if _has(sub, "n") else None
    level = f"{100 * float(sub['ci_level'].iloc[0]):g}%" if _has(sub, "ci_level") else "95%"
    page.add(f"<p>{len(sub['source'].unique())} source x {len(sub['target'].unique())} target models"
             + (f", N = {n} held-out prompts per cell" if n else "") + f". Each cell: estimate (bold) and {level} CI. "
             "Framed cells carry flags (letters, see <a href='#flags'>flags</a>); hatched, italic cells are "
             "reported but not scored; the diagonal is 1 by construction.</p>")
    ci = ("ci_low", "ci_high") if _has(sub, "ci_low", "ci_high") else None
    # runs with a transferred column ablate the target's matched probe for rho_CE (Q1); older runs
    # ablated the transferred direction, so the title only names the side it knows
    kind = " (matched probes, Q1)" if "rho_transferred" in sub.columns else ""
    panels = [page.figure(heatmap_figure(sub, "pearson", f"{task}: pooled rho_CE{kind}", ci=ci,
                                         threshold=not_same), f"rho_{task}", f"{task} pooled rho_CE heatmap",
                          "Pooled rho_CE: the target ablates its own probe for the same concept (same recipe, "
                          "same train prompts).")]
    if _has(sub, "rho_within"):
        wci = ("rho_within_ci_low", "rho_within_ci_high") if _has(sub, "rho_within_ci_low") else None
        panels.append(page.figure(heatmap_figure(sub, "rho_within", f"{task}: within-class rho_CE", ci=wci,
                                                 threshold=not_same), f"within_{task}",
                                  f"{task} within-class rho_CE heatmap",
                                  "Within-class rho_CE: deltas centred within each label class (same bootstrap "
                                  "resamples). What is left once the label is taken out."))
    else:
        panels.append(_missing("Within-class rho_CE (rho_within)"))
    if _has(sub, "rho_transferred"):
        tci = (("rho_transferred_ci_low", "rho_transferred_ci_high") if _has(sub, "rho_transferred_ci_low")
               else None)
        panels.append(page.figure(heatmap_figure(sub, "rho_transferred", f"{task}: rho_CE of the transferred probe (Q2)",
                                                 ci=tci, threshold=not_same), f"transferred_{task}",
                                  f"{task} transferred rho_CE heatmap",
                                  "The source probe carried into the target by a label-free map, then ablated: "
                                  "does the carried direction land on the same mechanism?"))
    page.add("<div class='grid'>" + "".join(panels) + "</div>")

    page.add("<h3>Transfer AUROC against its nulls</h3>")
    if _has(off, "transfer_auroc"):
        note = "" if _has(off, "transfer_auroc_null_low") else _missing("Null distribution of the transfer AUROC")
        page.add(note + page.figure(auroc_figure(off, task, alpha), f"auroc_{task}", f"{task} transfer AUROC vs null",
                                    "Dot: AUROC of the transferred direction on the target's test prompts. Grey "
                                    "bar: range of the null maps (a noise source with the source's covariance, "
                                    "shuffled pairings). A dot inside the grey bar is a transfer a random map "
                                    "achieves too."))
    else:
        page.add(_missing("Transfer AUROC"))

    page.add("<h3>Geometry vs mechanism, and the naive effect</h3>")
    small = []
    geo = off[off["cosine"].map(_finite)] if "cosine" in off.columns else off.iloc[0:0]
    if len(geo):
        hollow = ~(geo["cosine_null_p"] <= alpha) if _has(geo, "cosine_null_p") else None
        th = inputs.thresholds
        small.append(page.figure(
            scatter_figure(geo, "cosine", "pearson", xlabel="cosine", ylabel="pooled rho_CE",
                           title=f"{task}: cosine vs rho_CE (n={len(geo)} of {len(off)} cells)", hollow=hollow,
                           by_geometry=True,
                           lines=(th.get("cosine_confound_threshold"), not_same)),
            f"geometry_{task}", f"{task} cosine vs rho_CE",
            f"Only the {len(geo)} cells where the cosine is defined (a shared residual basis, or a label-free "
            "transfer next to its null); elsewhere geometry is undefined and not drawn."))
    else:
        small.append("<p class='missing'>Cosine is undefined for every cell of this task (no shared residual "
                     "basis and no label-free transfer): no geometry-vs-rho plot.</p>")
    if _has(off, "naive_logit_rho"):
        inflated = int((off["naive_logit_rho"] > off["pearson"]).sum())
        small.append(page.figure(
            scatter_figure(off, "pearson", "naive_logit_rho", xlabel="rho_CE (token margin)",
                           ylabel="naive rho (raw logit of the positive answer)",
                           title=f"{task}: naive vs margin rho", identity=True),
            f"naive_{task}", f"{task} naive raw-logit rho vs margin rho",
            f"Above the dashed line the raw-logit correlation overstates the margin one ({inflated} of {len(off)} "
            "cells): a shift of all logits moves logit(pos) without changing the answer."))
    else:
        small.append(_missing("Naive raw-logit rho"))
    page.add("<div class='grid'>" + "".join(small) + "</div>")
    page.add(_overstatement_html(inputs.cosine_summary, task))

    page.add("<h3>The data behind each correlation</h3>")
    eff = inputs.effects
    if eff is not None and {"task", "source", "target", "prompt_id", "label"} <= set(eff.columns) \
            and (eff["task"] == task).any():
        column = "effect_sd" if "effect_sd" in eff.columns else "delta"
        page.add(page.figure(deltas_figure(eff, sub, task, column), f"deltas_{task}",
                             f"{task} per-prompt deltas, source vs target",
                             f"Per-prompt effect ({_esc(column)}) in the source (x) and target (y), coloured by "
                             "label. Two separated clouds with no slope inside each are a label-driven "
                             "correlation."))
    else:
        page.add(_missing("Per-prompt effects (data/effects.parquet)"))
    page.add(_cell_table(off, task))


def _overstatement_html(summary: dict | None, task: str) -> str:
    """The named cosine-overstatement statistics of one task (matrix stage), each with its formula
    and n; a task without defined geometry says so instead of showing a number."""
    entry = (summary or {}).get(task)
    if not isinstance(entry, dict):
        return ""
    if not entry.get("n"):
        return (f"<p class='muted'>Cosine overstatement statistics: absent (n = 0): "
                f"{_esc(entry.get('note', 'no cell with geometry defined'))}.</p>")
    formulae = entry.get("formulae") or {}
    rows = [{"statistic": k, "formula": formulae.get(k, ""), "value": v} for k, v in sorted(entry.items())
            if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ("<p>Cosine overstatement over the cells with geometry defined (matrix stage):</p>"
            + _table(pd.DataFrame(rows, columns=["statistic", "formula", "value"], dtype=object)))


def _cell_table(off: pd.DataFrame, task: str) -> str:
    def ci(prefix: str, est: str) -> pd.Series | None:
        if not _has(off, est):
            return None
        lo, hi = f"{prefix}_ci_low" if prefix else "ci_low", f"{prefix}_ci_high" if prefix else "ci_high"
        return pd.Series([format_ci(r[est], r.get(lo, np.nan), r.get(hi, np.nan)) for _, r in off.iterrows()],
                         index=off.index)

    cols: dict[str, pd.Series] = {"source": off["source"], "target": off["target"]}
    for name, prefix, est in (("pooled rho_CE [CI]", "", "pearson"), ("within-class [CI]", "rho_within", "rho_within"),
                              ("transferred [CI]", "rho_transferred", "rho_transferred")):
        s = ci(prefix, est)
        if s is not None:
            cols[name] = s
    if _has(off, "rho_null_low", "rho_null_high"):
        cols["random-dir null"] = [f"{a:.2f} to {b:.2f}" for a, b in zip(off["rho_null_low"], off["rho_null_high"])]
    for name, col in (("naive rho", "naive_logit_rho"), ("transfer AUROC", "transfer_auroc"),
                      ("AUROC null p", "transfer_auroc_null_p"), ("cosine", "cosine"),
                      ("cosine null p", "cosine_null_p"), ("effect ratio", "effect_ratio")):
        if col in off.columns:
            cols[name] = off[col]
    cols["flags"] = off["flag_list"].map(lambda fl: " ".join(fl))
    if "scored" in off.columns:
        reason = off["unscored_reason"] if "unscored_reason" in off.columns else ""
        cols["scored"] = ["yes" if s else f"no: {r}" for s, r in zip(off["scored_"], pd.Series(reason, index=off.index))]
    df = pd.DataFrame(cols).reset_index(drop=True)
    rows = ["" if s else "unscored" for s in off["scored_"]]
    return (f"<details><summary>All {len(off)} off-diagonal cells of {_esc(task)} as a table</summary>"
            f"<div class='scroll'>{_table(df, row_class=rows, nowrap=tuple(c for c in df.columns if c not in ('flags', 'scored')))}"
            "</div></details>")


def _zoo_section(page: _Page, zoo: pd.DataFrame | None) -> None:
    page.add("<h2 id='zoo'>Models</h2>")
    if zoo is None or zoo.empty:
        page.add(_missing("Model table (metrics/zoo, metrics/probe)"))
        return
    page.add("<p>Architecture, size and held-out accuracy of each model in the matrix, and the held-out AUROC of "
             "its probes. A model with low accuracy on a task has little concept to probe.</p>" + _table(zoo))


def _crosscoder_section(page: _Page, metrics: dict[str, dict] | None, latents: pd.DataFrame | None) -> None:
    page.add("<h2 id='crosscoder'>Crosscoder audit</h2>")
    if not metrics:
        page.add(_missing("Crosscoder audit (metrics/crosscoder.json)"))
        return
    page.add("<p>Decoder cosine vs causal equivalence (CE) of shared crosscoder latents between the base and chat "
             "models, with the audit's controls. Every number the audit wrote is listed, grouped by name, so a new "
             "control or protocol appears here without a change to the page.</p>")
    flat: dict[str, float] = {}
    tables = []
    for source in sorted(metrics):
        groups = group_numeric(metrics[source])
        rows = [{"group": g, "metric": k, "value": v} for g, kv in groups.items() for k, v in kv.items()]
        flat.update({f"{source}:{g}.{k}": v for g, kv in groups.items() for k, v in kv.items()})
        # object column: each value keeps its type, so a count reads 80 and a cosine 0.370
        tables.append(f"<div><h3><code>{_esc(source)}</code></h3>"
                      f"{_table(pd.DataFrame(rows, columns=['group', 'metric', 'value'], dtype=object))}</div>")
    page.add("<div class='grid'>" + "".join(tables) + "</div>")

    def first(suffix: str) -> float | None:
        hits = [v for k, v in sorted(flat.items()) if k.endswith(suffix)]
        return hits[0] if hits else None

    fig = crosscoder_figure(latents, (first("cos_threshold"), first("ce_threshold"))) if latents is not None else None
    if fig is None:
        page.add(_missing("Per-latent scatter (reports/crosscoder/latents.csv)"))
    else:
        page.add(page.figure(fig, "crosscoder", "crosscoder decoder cosine vs CE",
                             f"One point per selected latent ({len(latents)}); bars: bootstrap CI of CE. Dashed "
                             "lines: the cosine and CE thresholds of the published statistic."))


def _provenance_section(page: _Page, prov: dict | None, versions: dict, thresholds: dict) -> None:
    page.add("<h2 id='provenance'>Provenance</h2>")
    rows = []
    if prov:
        for key in ("params_sha256", "code_version"):
            if key in prov:
                rows.append({"what": key, "value": prov[key]})
        for task, info in sorted((prov.get("tasks") or {}).items()):
            for key in ("test_set_hash", "train_hash", "n_test", "n_train"):
                if key in info:
                    rows.append({"what": f"{task}: {key}", "value": info[key]})
        for model, info in sorted((prov.get("models") or {}).items()):
            if "fingerprint" in info:
                rows.append({"what": f"{model}: fingerprint", "value": info["fingerprint"]})
        for section in ("ablation", "transfer", "bootstrap"):
            if isinstance(prov.get(section), dict):
                rows.append({"what": section, "value": ", ".join(f"{k}={v}" for k, v in sorted(prov[section].items()))})
    else:
        page.add(_missing("Provenance (reports/probebench.provenance.json)"))
    if thresholds:
        rows.append({"what": "thresholds", "value": ", ".join(f"{k}={v}" for k, v in sorted(thresholds.items()))})
    for name, version in sorted(versions.items()):
        rows.append({"what": f"version: {name}", "value": version})
    if rows:
        page.add("<table><tbody>" + "".join(f"<tr><th>{_esc(r['what'])}</th><td class='mono'>{_esc(r['value'])}</td></tr>"
                                            for r in rows) + "</tbody></table>")
