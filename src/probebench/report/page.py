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
import math
from dataclasses import dataclass, field

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from probebench.report.figures import (
    auroc_figure,
    crosscoder_figure,
    deltas_figure,
    FigureFile,
    headline_figure,
    heatmap_figure,
    RC,
    scatter_figure,
)
from probebench.report.format import (
    _beats_auroc_null,
    _beats_rho_null,
    _esc,
    _finite,
    FLAG_CODES,
    FLAG_MEANING,
    format_ci,
    group_numeric,
    _has,
    _prepare_cells,
)
from probebench.report.format import cell_flags, text_colour  # noqa: F401 (the page's public face)

__all__ = ["FLAG_CODES", "FigureFile", "Report", "ReportInputs", "build_report", "cell_flags", "format_ci",
           "group_numeric", "text_colour"]


@dataclass(frozen=True)
class ReportInputs:
    """What the page is built from. Only `cells` is required; every other part is optional and
    its section says "not computed in this run" when absent.

    cells: one row per (task, source, target), the matrix stage's table. effects: one row per
    (task, source, target, prompt) with `label` and `effect_sd` (or `delta`). zoo: one row per
    model (any columns; shown as a table). crosscoder_metrics: {file name: its metrics dict}, e.g.
    metrics/crosscoder/<key>.json and metrics/crosscoder_train/<key>.json, shown generically (every
    number). crosscoder_latents: {audit key: reports/crosscoder/<key>/latents.csv}. cosine_summary: reports/cosine_vs_rho.json
    (per task, the named overstatement statistics). provenance: probebench.provenance.json.
    thresholds: params numbers quoted on the page (`not_same_threshold`, ...). versions: library
    versions of the run. tasks: task order (default: sorted)."""

    cells: pd.DataFrame
    effects: pd.DataFrame | None = None
    zoo: pd.DataFrame | None = None
    crosscoder_metrics: dict[str, dict] | None = None
    crosscoder_latents: dict[str, pd.DataFrame] | None = None
    cosine_summary: dict | None = None
    provenance: dict | None = None
    thresholds: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    tasks: tuple[str, ...] | None = None



@dataclass(frozen=True)
class Report:
    """The page (`html`, referring to `figures/<name>.svg`) and its figures by name."""

    html: str
    figures: dict[str, FigureFile]




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
            pairs = off[(off["source"] < off["target"]) & ~off.get("imported", pd.Series(False, index=off.index))]
            s += (f"; over the {len(pairs)} unordered pairs (Q1 is symmetric) the scale-aware agreement (CCC) has "
                  f"median <b>{pairs['ccc'].median():.2f}</b> against a random-direction null reaching "
                  f"{pairs['ccc_null_high'].median():.2f} (median of the pairs' highest draw), and "
                  f"<b>{int(rho_null[pairs.index].sum())}/{len(pairs)}</b> pairs beat it (Benjamini-Hochberg)")
        else:
            absent.add("the random-direction null of the causal agreement")
        auroc_null = _beats_auroc_null(off)
        if auroc_null is not None:
            s += (f"; the transferred direction (Q2) agrees with the source beyond the target's random directions "
                  f"in {int(auroc_null.sum())}/{n} ordered cells")
        else:
            absent.add("the random-direction test of the transferred direction")
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
    alpha = inputs.thresholds.get("null_alpha")
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
        hollow = ~(geo["cosine_null_p"] <= alpha) if _has(geo, "cosine_null_p") and alpha is not None else None
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
                              ("transferred [CI]", "rho_transferred", "rho_transferred"), ("CCC [CI]", "ccc", "ccc"),
                              ("CCC within [CI]", "ccc_within", "ccc_within"),
                              ("CCC transferred [CI]", "ccc_transferred", "ccc_transferred")):
        s = ci(prefix, est)
        if s is not None:
            cols[name] = s
    if _has(off, "rho_null_low", "rho_null_high"):
        cols["random-dir null (rho)"] = [f"{a:.2f} to {b:.2f}" for a, b in zip(off["rho_null_low"], off["rho_null_high"])]
    for name, col in (("CCC null max", "ccc_null_high"), ("CCC p", "ccc_null_p"), ("CCC q (pairs)", "ccc_null_q"),
                      ("transferred CCC q", "ccc_transferred_null_q"), ("naive rho", "naive_logit_rho"), ("transfer AUROC", "transfer_auroc"),
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


def _crosscoder_section(page: _Page, metrics: dict[str, dict] | None, latents: dict[str, pd.DataFrame] | None) -> None:
    page.add("<h2 id='crosscoder'>Crosscoder audit</h2>")
    if not metrics:
        page.add(_missing("Crosscoder audit (metrics/crosscoder/<key>.json)"))
        return
    page.add("<p>Decoder cosine vs causal equivalence (CE) of shared crosscoder latents between the base and chat "
             "models, with the audit's controls. Every number the audit wrote is listed, grouped by name, so a new "
             "control or protocol appears here without a change to the page.</p>")
    for source in sorted(metrics):
        sign, rev = metrics[source].get("sign") or {}, (metrics[source].get("controls") or {}).get("sign_reversal") or {}
        if "median_ce_kl" in sign and "median_ce_margin" in sign:
            text = (f"<p><b>Headline</b> ({_esc(source)}): median CE <b>{sign['median_ce_kl']:.3f}</b> under the "
                    f"published, sign-blind statistic (ce_kl) and <b>{sign['median_ce_margin']:.3f}</b> under the "
                    f"sign-aware one (ce_margin); {sign.get('n_ce_kl_equivalent_ce_margin_negative', 0)} latents that "
                    "ce_kl counts as equivalent act with the opposite sign in the two models (ce_margin &lt; 0)")
            if "n_planted" in rev:
                text += (f". Sign-reversal control: of {rev['n_planted']} latents made to act with the opposite sign, "
                         f"ce_kl calls {rev.get('n_equivalent_by_ce_kl', 0)} equivalent and ce_margin catches "
                         f"{rev.get('n_caught_by_ce_margin', 0)}")
            drift = metrics[source].get("pair_drift") or {}
            if "identity_r2" in drift:
                text += (f". How far the chat model moved from its base at the audit layer: per-token cosine "
                         f"{drift['per_token_cosine_median']:.3f} (median), identity R<sup>2</sup> "
                         f"{drift['identity_r2']:.3f} (an identical pair: 1 and 1)")
            page.add(text + ".</p>")
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

    def first(key: str, suffix: str) -> float | None:
        hits = [v for k, v in sorted(flat.items()) if k.endswith(suffix) and f"/{key}.json:" in k]
        return hits[0] if hits else None

    if not latents:
        page.add(_missing("Per-latent scatter (reports/crosscoder/<key>/latents.csv)"))
    for key, table in sorted((latents or {}).items()):
        fig = crosscoder_figure(table, (first(key, "cos_threshold"), first(key, "ce_threshold")))
        if fig is None:
            page.add(_missing(f"Per-latent scatter (reports/crosscoder/{key}/latents.csv)"))
            continue
        page.add(page.figure(fig, f"crosscoder-{key}", f"crosscoder audit {key}: decoder cosine vs CE",
                             f"One point per selected latent ({len(table)}); bars: bootstrap CI of CE. Dashed "
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
