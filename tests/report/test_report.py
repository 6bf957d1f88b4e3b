"""The report page: built from synthetic stage outputs, self-contained, deterministic, driven by the
data (change a cell, the figure changes), and rendered by a real browser with every image loaded."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from probebench.report.page import ReportInputs, build_report, text_colour
from tests.support.cells import complete

MODELS = ["alpha", "beta", "gamma"]
TASKS = ["sentiment", "consistency"]
N = 40
NEW_FLAGS = "not_same_mechanism;label_driven"


def make_effects(seed: int = 0) -> pd.DataFrame:
    """Per-prompt deltas in the ablate stage's layout: `matched` rows (each model ablating its own
    probe, source == target), `transferred` rows (t ablating s's carried direction) and `random`
    rows (the null). Each model's delta = a shared per-prompt effect + a label effect + noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for task in TASKS:
        label_N = np.arange(N) % 2
        shared_N = rng.normal(size=N) - 1.5 * label_N
        for target in MODELS:
            delta_N = shared_N + rng.normal(size=N)
            for kind, source, d_N in [("matched", target, delta_N), ("random", "r0", rng.normal(size=N) * 50),
                                      *[("transferred", s, 0.5 * delta_N + rng.normal(size=N))
                                        for s in MODELS if s != target]]:
                rows.append(pd.DataFrame({"kind": kind, "task": task, "source": source, "target": target,
                                          "prompt_id": [f"p{i:03d}" for i in range(N)], "label": label_N,
                                          "delta": d_N, "effect_sd": d_N / 2.0,
                                          "delta_logit_pos": d_N + rng.normal(size=N)}))
    return pd.concat(rows, ignore_index=True)


def make_cells(effects: pd.DataFrame, *, new_columns: bool = True) -> pd.DataFrame:
    """The matrix stage's table for those effects; `new_columns` adds the within-class, null and
    transferred columns and the ';'-separated flags (as the honest-contrasts work writes them)."""
    rows = []
    matched = effects[effects.kind == "matched"].set_index(["task", "target"])
    for task, source, target in [(k, s, t) for k in TASKS for s in MODELS for t in MODELS]:
        r = float(np.corrcoef(matched.loc[(task, source), "delta"], matched.loc[(task, target), "delta"])[0, 1])
        row = {"task": task, "source": source, "target": target, "diagonal": source == target, "n": N,
               "pearson": r, "ci_low": r - 0.15, "ci_high": min(r + 0.1, 1.0), "naive_logit_rho": min(r + 0.05, 1.0),
               "transfer_auroc": 0.8, "native_auroc": 0.9, "cosine": 0.95 if {source, target} == {"alpha", "beta"} else np.nan,
               "scored": target != "gamma", "unscored_reason": "" if target != "gamma" else "N=40 < 200",
               "not_same_mechanism": r < 0.4}
        if new_columns:
            row.update({"rho_within": r / 3, "rho_within_ci_low": r / 3 - 0.3, "rho_within_ci_high": r / 3 + 0.3,
                        "rho_transferred": r / 2, "rho_transferred_ci_low": r / 2 - 0.2,
                        "rho_transferred_ci_high": r / 2 + 0.2, "rho_null_low": -0.2, "rho_null_high": 0.25,
                        "ccc": 0.9 * r, "ccc_ci_low": 0.9 * r - 0.1, "ccc_ci_high": min(0.9 * r + 0.1, 1.0),
                        "ccc_null_high": 0.05, "ccc_null_p": 0.01 if r > 0.25 else 0.5,
                        "ccc_null_q": 0.01 if r > 0.25 else 0.5, "ccc_beats_null": r > 0.25,
                        "ccc_transferred": r / 2, "ccc_transferred_null_p": 0.01 if source == "alpha" else 0.4,
                        "imported": False, "geometry": "shared_basis" if source < target else "transfer",
                        "transfer_auroc_null_p": 0.01 if source == "alpha" else 0.4,
                        "transfer_auroc_null_low": 0.3, "transfer_auroc_null_high": 0.7, "cosine_null_p": 0.01,
                        "transfer_at_null": source != target and source != "alpha",
                        "flags": NEW_FLAGS if (source, target) == ("alpha", "beta") else ""})
        rows.append(row)
    cells = pd.DataFrame(rows)
    if new_columns:
        cells = cells.drop(columns="not_same_mechanism")
    return cells


def inputs(cells: pd.DataFrame, effects: pd.DataFrame | None) -> ReportInputs:
    latents = pd.DataFrame({"latent": range(5), "decoder_cosine": np.linspace(0.2, 0.9, 5),
                            "ce_kl": np.linspace(0.1, 0.6, 5), "ce_kl_low": 0.0, "ce_kl_high": 0.8,
                            "ce_margin": np.linspace(0.3, 0.5, 5)})
    return ReportInputs(
        cells=cells, effects=effects,
        zoo=pd.DataFrame({"model": MODELS, "architecture": ["llama", "qwen2", "gpt2"], "parameters": [1, 2, 3]}),
        # two audits (keys of params crosscoders): one figure each, thresholds read from each one's metrics
        crosscoder_metrics={f"metrics/crosscoder/{key}.json": {"ce_kl": {"median_cos": 0.4, "cos_threshold": cos,
                                                                         "ce_threshold": 0.5}, "n_inputs": 256}
                            for key, cos in (("zoo-pair", 0.7), ("real-pair", 0.6))},
        crosscoder_latents={"zoo-pair": latents, "real-pair": latents.iloc[:3]},
        cosine_summary={"sentiment": {"n": 2, "one_minus_median_ratio": 0.362, "formulae": {
                            "one_minus_median_ratio": "1 - median(rho_CE) / median(cos)"}},
                        "consistency": {"n": 0, "note": "no off-diagonal cell has geometry defined"}},
        provenance={"params_sha256": "ab" * 32, "tasks": {t: {"test_set_hash": f"{t}-hash"} for t in TASKS}},
        thresholds={"not_same_threshold": 0.4, "cosine_confound_threshold": 0.7}, versions={"python": "3"},
        tasks=tuple(TASKS))


@pytest.fixture(scope="module")
def effects() -> pd.DataFrame:
    return make_effects()


@pytest.fixture(scope="module")
def report(effects):
    return build_report(inputs(make_cells(effects), effects))


def write(report, root: Path) -> Path:
    for fig in report.figures.values():
        (root / "figures" / "png").mkdir(parents=True, exist_ok=True)
        (root / "figures" / f"{fig.name}.svg").write_bytes(fig.svg)
        (root / "figures" / "png" / f"{fig.name}.png").write_bytes(fig.png)
    (root / "index.html").write_text(report.html, encoding="utf-8")
    return root / "index.html"


URL = re.compile(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/|cdn|@import|url\(", re.IGNORECASE)


def test_page_and_figures_have_no_external_urls(report):
    assert not URL.findall(report.html), URL.findall(report.html)[:5]
    for fig in report.figures.values():
        svg = fig.svg.decode()
        # namespace and DTD identifiers name a spec, nothing is fetched; a link or image reference would be
        refs = re.findall(r"(?:href|src)=\"([^\"#][^\"]*)\"", svg)
        assert all(r.startswith("data:") for r in refs), (fig.name, refs[:3])
        assert "matplotlib.org" not in svg and "<dc:date>" not in svg


def test_every_section_is_present_and_references_existing_figures(report):
    srcs = re.findall(r"<img src=\"([^\"]+)\"", report.html)
    assert sorted(srcs) == sorted(f"figures/{name}.svg" for name in report.figures)
    for task in TASKS:
        for kind in ("rho", "within", "transferred", "auroc", "geometry", "naive", "deltas"):
            assert f"{kind}_{task}" in report.figures
    assert {"headline", "crosscoder-zoo-pair", "crosscoder-real-pair"} <= set(report.figures)
    assert "One point per selected latent (5)" in report.html and "One point per selected latent (3)" in report.html
    for text in ("Models", "Crosscoder audit", "Provenance", "sentiment-hash", "ab" * 32, "label_driven",
                 "1 - median(rho_CE) / median(cos)", "absent (n = 0): no off-diagonal cell has geometry defined"):
        assert text in report.html
    assert "not computed in this run" not in report.html


def test_headline_counts_cells_that_beat_their_nulls(report, effects):
    cells = make_cells(effects)
    off = cells[(cells.task == "sentiment") & ~cells.diagonal]
    # planted: pairs with rho > 0.25 beat the CCC null; the transfer lands only from source alpha (2 of 6 cells)
    pairs = off[off.source < off.target]
    above = int((pairs.pearson > 0.25).sum())
    assert f"<b>{above}/3</b> pairs beat it" in report.html and "over the 3 unordered pairs" in report.html
    assert f"median <b>{(0.9 * pairs.pearson).median():.2f}</b> against a random-direction null" in report.html
    assert "random directions in 2/6 ordered cells" in report.html
    assert f"median <b>{off.pearson.median():.2f}</b>" in report.html
    assert f"the median is <b>{(off.pearson / 3).median():.2f}</b>" in report.html


def test_old_columns_render_with_missing_sections_said_plainly(effects):
    """A cells table from before the within-class/null columns: boolean flag columns, no rho_within."""
    page = build_report(inputs(make_cells(effects, new_columns=False), None)).html
    assert "Within-class rho_CE (rho_within): not computed in this run" in page
    assert "Per-prompt effects (data/effects.parquet): not computed in this run" in page
    assert ("Not computed in this run: the random-direction null of the causal agreement, the random-direction "
            "test of the transferred direction, within-class rho_CE.") in page


def test_geometry_is_drawn_only_where_cosine_is_defined(report, effects):
    cells = make_cells(effects)
    off = cells[(cells.task == "sentiment") & ~cells.diagonal]
    n_defined = int(off.cosine.notna().sum())
    assert 0 < n_defined < len(off)
    assert f"n={n_defined} of {len(off)} cells" in report.figures["geometry_sentiment"].alt or \
           f"Only the {n_defined} cells where the cosine is defined" in report.html
    nan_cosine = cells.assign(cosine=np.nan)
    page = build_report(inputs(nan_cosine, None))
    assert "geometry_sentiment" not in page.figures and "Cosine is undefined for every cell" in page.html


def test_figures_change_with_the_data_and_only_with_it(report, effects):
    cells = make_cells(effects)
    again = build_report(inputs(cells, effects))
    for name in ("headline", "rho_sentiment", "deltas_sentiment"):  # same inputs, same bytes
        assert again.figures[name].svg == report.figures[name].svg, name
        assert again.figures[name].png == report.figures[name].png, name
    changed = cells.copy()
    pick = (changed.task == "sentiment") & (changed.source == "beta") & (changed.target == "alpha")
    changed.loc[pick, "pearson"] = -0.61
    second = build_report(inputs(changed, effects))
    assert second.figures["rho_sentiment"].svg != report.figures["rho_sentiment"].svg
    assert second.figures["rho_sentiment"].png != report.figures["rho_sentiment"].png
    assert second.figures["headline"].svg != report.figures["headline"].svg
    assert second.figures["rho_consistency"].svg == report.figures["rho_consistency"].svg
    assert "-0.61" in second.html and "-0.61" not in report.html
    moved = effects.copy()
    moved.loc[(moved.task == "consistency") & (moved.target == "gamma"), "effect_sd"] *= -1
    third = build_report(inputs(cells, moved))
    assert third.figures["deltas_consistency"].svg != report.figures["deltas_consistency"].svg
    assert third.figures["deltas_sentiment"].svg == report.figures["deltas_sentiment"].svg
    # rho_CE pairs the two matched sides: random-direction (null) and transferred rows never reach the scatter
    noise = effects.copy()
    noise.loc[noise.kind != "matched", "effect_sd"] += 3.0
    assert build_report(inputs(cells, noise)).figures["deltas_sentiment"].svg == report.figures["deltas_sentiment"].svg


def test_cell_text_colour_contrasts_with_its_background():
    import matplotlib as mpl

    cmap = mpl.colormaps["RdBu_r"]
    assert text_colour(cmap(1.0)) == "white" and text_colour(cmap(0.0)) == "white"  # dark red, dark blue
    assert text_colour(cmap(0.5)) == "black"  # near white at rho = 0


def test_bad_cells_table_is_one_clear_error():
    with pytest.raises(ValueError, match=r"missing column\(s\) \['pearson'\].*dvc repro matrix"):
        build_report(ReportInputs(cells=pd.DataFrame({"task": [], "source": [], "target": []})))


def test_dvc_plots_are_offline_image_plots():
    """`dvc plots` renders images without Vega (which its HTML would load from a CDN)."""
    import yaml

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "dvc.yaml").read_text())
    plots = spec.get("plots") or []
    paths = [next(iter(p)) if isinstance(p, dict) else p for p in plots]
    assert "reports/figures/png" in paths
    for p in paths:
        assert p.endswith((".png", ".svg", "/png")), f"{p}: a data-series plot would pull Vega from a CDN"


def chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


CHECK_IMAGES = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  document.body.setAttribute('data-images', imgs.map(i => i.getAttribute('src') + '=' +
    (i.complete && i.naturalWidth > 0 ? 'ok' : 'broken')).join(' '));
});
</script>"""


def test_headless_chromium_renders_the_page_with_every_image(report, tmp_path):
    import warnings

    from PIL import Image

    if chromium() is None:
        why = ("headless Chromium not installed (apt-get install -y chromium): the page was NOT rendered in a "
               "browser; .ci/run installs it so CI runs this check")
        warnings.warn(why)  # shown in pytest's warnings summary even without -rs
        pytest.skip(why)

    page = write(report, tmp_path)
    browser = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--force-device-scale-factor=1", "--allow-file-access-from-files"]
    shot = tmp_path / "shot.png"
    subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1400,2200", page.as_uri()],
                   check=True, capture_output=True, timeout=60)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2200, 1400)
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01, "screenshot is blank"
    # A copy of the page with a script that records, after load, whether each image decoded.
    probe = tmp_path / "probe.html"
    probe.write_text(report.html.replace("</body>", CHECK_IMAGES + "</body>"), encoding="utf-8")
    dom = subprocess.run([*browser, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    found = re.search(r'data-images="([^"]*)"', dom)
    assert found, "the page's load event never fired"
    status = dict(item.rsplit("=", 1) for item in found.group(1).split())
    assert set(status) == {f"figures/{n}.svg" for n in report.figures}
    assert all(v == "ok" for v in status.values()), status


def test_show_prints_estimates_with_cis_and_flags(effects, tmp_path):
    from typer.testing import CliRunner

    from probebench.cli.main import app

    cells = complete(make_cells(effects))
    path = tmp_path / "cells.parquet"
    cells.to_parquet(path)
    result = CliRunner().invoke(app, ["show", "--cells", str(path)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    r = cells[(cells.task == "sentiment") & (cells.source == "alpha") & (cells.target == "beta")].iloc[0]
    assert f"{r.pearson:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}] NL" in result.output
    assert "N = not_same_mechanism, L = label_driven" in result.output
    within = CliRunner().invoke(app, ["show", "--cells", str(path), "--stat", "rho_within"], env={"COLUMNS": "250"})
    assert f"{r.rho_within:.2f} [{r.rho_within_ci_low:.2f}, {r.rho_within_ci_high:.2f}]" in within.output
    pairs = cells[(cells.task == "sentiment") & (cells.source < cells.target)]
    assert (f"sentiment, Q1 over 3 unordered pairs (1 scored): median rho_CE {pairs.pearson.median():.2f}, median "
            f"CCC {pairs.ccc.median():.2f}; {int((pairs.pearson > 0.25).sum())} beat the random-direction null") \
        in " ".join(result.output.split())
    bad = CliRunner().invoke(app, ["show", "--cells", str(path), "--stat", "nope"])
    assert bad.exit_code == 2 and "'nope' is not a column" in bad.output


def test_report_command_runs_the_stage_then_opens_the_page(tmp_path, monkeypatch):
    import subprocess as sp
    import webbrowser

    from typer.testing import CliRunner

    from probebench.cli.main import app

    calls, opened = [], []
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(STAGE_PARAMS)

    def fake_repro(cmd, env):
        calls.append(cmd[1:])
        (tmp_path / "reports").mkdir()
        (tmp_path / "reports" / "index.html").write_text("<html></html>")
        return 0

    monkeypatch.setattr(sp, "call", fake_repro)
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    result = CliRunner().invoke(app, ["report", "--open"])
    assert result.exit_code == 0, result.output
    assert calls == [["repro", "report"]]
    assert opened == [(tmp_path / "reports" / "index.html").resolve().as_uri()]


STAGE_PARAMS = """\
tasks: {sentiment: {kind: sentiment}, consistency: {kind: consistency}}
zoo:
  models: {alpha: {family: llama, d_model: 16, n_layers: 1, vocab_size: 140},
           gamma: {family: qwen2, d_model: 16, n_layers: 1, vocab_size: 140}}
  finetunes: {beta: {base: alpha}}
models: {alpha: {path: data/zoo/alpha}, beta: {path: data/zoo/beta, basis: alpha}, gamma: {path: data/zoo/gamma}}
"""


def test_stage_writes_page_svg_and_png_and_drops_stale_figures(effects, tmp_path, monkeypatch):
    """The `report` stage shell on a project holding only what the matrix/normalize/zoo stages write."""
    import importlib
    import json
    import sys

    from probebench.params.schema import load_params

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(STAGE_PARAMS)
    (tmp_path / "reports" / "figures").mkdir(parents=True)
    (tmp_path / "reports" / "figures" / "matrix_old_task_rho.png").write_bytes(b"stale")
    complete(make_cells(effects)).to_parquet(tmp_path / "reports" / "cells.parquet")
    (tmp_path / "data").mkdir()
    effects.to_parquet(tmp_path / "data" / "effects.parquet")
    (tmp_path / "metrics" / "zoo").mkdir(parents=True)
    (tmp_path / "metrics" / "zoo" / "alpha.json").write_text(json.dumps({"n_params": 108096,
                                                                          "accuracy": {"sentiment": 0.97}}))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "stages"))
    try:
        stage = importlib.import_module("report")
        assert Path(stage.__file__).parent.name == "stages"
        stage.main(load_params("params.yaml"), [])
    finally:
        sys.modules.pop("report", None)  # a stage script is not a package module: leave no trace
    page = (tmp_path / "reports" / "index.html").read_text()
    figures = tmp_path / "reports" / "figures"
    assert not (figures / "matrix_old_task_rho.png").exists()
    names = sorted(p.stem for p in figures.glob("*.svg"))
    assert names == sorted(p.stem for p in (figures / "png").glob("*.png")) and "rho_sentiment" in names
    assert (figures / "png" / "rho_sentiment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert oct(figures.stat().st_mode & 0o777) == "0o755"
    # the model table: architecture from the zoo params (a fine-tune named as such), size from metrics/zoo
    assert "llama (fine-tune of alpha)" in page and "108,096" in page and "0.970" in page
    assert "Crosscoder audit (metrics/crosscoder/&lt;key&gt;.json): not computed in this run" in page


def test_crosscoder_headline_puts_the_sign_aware_ce_beside_the_published_one(effects):
    inp = inputs(make_cells(effects), effects)
    metrics = {"metrics/crosscoder/zoo-pair.json": {
        "n_latents": 80, "sign": {"median_ce_kl": 0.45, "median_ce_margin": 0.31, "n_ce_kl_equivalent_ce_margin_negative": 10},
        "controls": {"sign_reversal": {"n_planted": 8, "n_equivalent_by_ce_kl": 8, "n_caught_by_ce_margin": 8}}}}
    html = build_report(dataclasses.replace(inp, crosscoder_metrics=metrics)).html
    assert "median CE <b>0.450</b> under the published, sign-blind statistic (ce_kl)" in html
    assert "<b>0.310</b> under the sign-aware one (ce_margin); 10 latents" in html
    assert "ce_kl calls 8 equivalent and ce_margin catches 8" in html
