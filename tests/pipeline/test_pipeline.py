"""Acceptance: the DVC pipeline on a temporary copy of the project with a tiny zoo.

Runs `dvc repro` end to end, then checks that a no-op repro does nothing, that editing one
model's layer reruns only what depends on it (and the cell store recomputes only cells involving
that model), and that a bootstrap change reruns no ablation."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.support.pipeline import MODELS, repro, stage_env

pytestmark = pytest.mark.pipeline


def metrics(project: Path, name: str) -> dict:
    return json.loads((project / "metrics" / name).read_text())


@pytest.fixture(scope="module")
def project(reference_run, tmp_path_factory):
    reference, ran = reference_run
    project = tmp_path_factory.mktemp("edited") / "project"
    shutil.copytree(reference, project, symlinks=True)
    return project, ran


def test_full_pipeline_runs_and_produces_valid_entries(project):
    project, ran = project
    assert {"zoo@llama-t", "extract@gpt2-t", "probe@qwen2-t", "ablate@llama-t", "matrix", "emit", "report",
            "crosscoder_train@smoke", "crosscoder_audit@smoke"} <= set(ran)
    audit = metrics(project, "crosscoder/smoke.json")
    assert audit["n_latents"] >= 1 and all(isinstance(v, (int, float)) for v in audit["ce_kl"].values())
    named = json.loads((project / "reports" / "crosscoder" / "smoke" / "summary.json").read_text())
    assert named["ce_kl"]["formulae"]["one_minus_median_ratio"] == "1 - median(rho_CE) / median(cos)"
    assert named["controls"]["planted_change"] == {"run": 0, "reason": "crosscoders.smoke.planted_latents is 0"}
    assert (project / "reports" / "index.html").exists()
    cells = pd.read_parquet(project / "reports" / "cells.parquet")
    assert len(cells) == 2 * 4 * 4
    assert (cells.loc[cells.diagonal, "pearson"] == 1.0).all()
    for column in ("rho_transferred", "rho_within", "rho_within_ci_low", "rho_within_ci_high", "transfer_auroc",
                   "transfer_auroc_null_p", "rho_null_low", "rho_null_high", "cosine", "flags"):
        assert column in cells.columns
    csv_header = (project / "reports" / "cells.csv").read_text().splitlines()[0].split(",")
    assert {"rho_transferred", "rho_within", "transfer_auroc_null_p", "cosine", "flags"} <= set(csv_header)
    entries = yaml.safe_load((project / "reports" / "probebench.yaml").read_text())
    assert len(entries) == 2 * 4 * 3
    assert all(set(e) == {"probeId", "sourceModel", "targetModel", "pearson_ce", "transfer_auroc", "notes"} for e in entries)
    # per task: the matched probe, 3 transferred directions, 2 random directions
    for m in MODELS:
        # per task: the matched probe, 3 transferred directions, 8 random ones
        assert metrics(project, f"ablate/{m}.json") == {"cells_computed": 24, "cells_cached": 0,
                                                         "cells_corrupt_recomputed": 0}
    assert repro(project, "repro") == []  # a second repro does nothing


def test_one_model_change_reruns_only_what_depends_on_it(project):
    project, _ = project
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["models"]["gpt2-t"]["layer"] = 1.0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = set(repro(project, "repro"))
    assert ran == {"extract@gpt2-t", "probe@gpt2-t", *(f"ablate@{m}" for m in MODELS),
                   "normalize", "bootstrap", "matrix", "emit", "report"}
    assert metrics(project, "ablate/gpt2-t.json")["cells_computed"] == 24
    for other in ("llama-t", "qwen2-t", "gemma2-t"):  # only the direction transferred from gpt2-t (one per task)
        assert metrics(project, f"ablate/{other}.json") == {"cells_computed": 2, "cells_cached": 22,
                                                             "cells_corrupt_recomputed": 0}


def test_bootstrap_change_reruns_no_ablation(project):
    project, _ = project
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["bootstrap"]["n_resamples"] = 60
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # the crosscoder audit's CIs use the bootstrap settings too; no ablation stage reruns
    assert set(repro(project, "repro")) == {"bootstrap", "matrix", "emit", "report", "crosscoder_audit@smoke"}


def test_scored_run_with_too_few_prompts_is_a_clear_error(project):
    project, _ = project
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["matrix"]["min_n"] = 200
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = (project / "reports" / "probebench.yaml").read_bytes()
    env = stage_env(project)
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=project, env=env, text=True,
                          capture_output=True)
    assert proc.returncode != 0
    assert "tasks.sentiment has N=48 test prompts, fewer than matrix.min_n=200" in proc.stdout + proc.stderr
    assert (project / "reports" / "probebench.yaml").read_bytes() == before


def test_a_site_bundle_runs_through_the_harness_as_a_source(project):
    """The user flow: a bundle written as the openinterp tooling writes it, checked by the site's
    client, imported, made a source with `probes:`, and found on the leaderboard under its id."""
    from openinterp import probebench as site
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from probebench.artifacts.io import read_tensors
    from tests.support.bundles import site_bundle

    project, _ = project
    acts = read_tensors(project / "data" / "extract" / "llama-t" / "sentiment.safetensors")["acts_ND"]
    prompts = pd.read_parquet(project / "data" / "prompts" / "sentiment.parquet")
    train, y = (prompts.split == "train").to_numpy(), prompts.label.to_numpy()
    scaler = StandardScaler().fit(acts[train])
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(acts[train]), y[train])
    layer = json.loads((project / "data" / "extract" / "llama-t" / "meta.json").read_text())["layer"]
    bundle = site_bundle(project / "bundle", scaler, clf, id="alice/sentiment-llama-t", modelId="llama-t",
                         layer=layer)
    assert site.validate(str(bundle))["ok"]
    proc = subprocess.run([str(Path(sys.executable).parent / "probebench"), "probe", "import", str(bundle),
                           "--model", "llama-t", "--task", "sentiment", "--out", "data/imported/alice",
                           "--trust-pickle"], cwd=project, env=stage_env(project), text=True, capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["matrix"]["min_n"] = 40  # an earlier test raised it to provoke its error
    params["probes"] = {"alice": {"path": "data/imported/alice", "model": "llama-t", "task": "sentiment"}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = set(repro(project, "repro"))
    assert {f"ablate@{m}" for m in MODELS} <= ran and "extract@llama-t" not in ran
    entries = yaml.safe_load((project / "reports" / "probebench.yaml").read_text())
    rows = [e for e in entries if e["probeId"] == "alice/sentiment-llama-t"]
    assert sorted(e["targetModel"] for e in rows) == ["gemma2-t", "gpt2-t", "qwen2-t"]  # >= 3 targets
    assert all(e["sourceModel"] == "llama-t" for e in rows)
    cells = pd.read_parquet(project / "reports" / "cells.parquet")
    own = cells[(cells.source == "alice") & (cells.target == "llama-t")].iloc[0]
    test = ~train
    sklearn_auroc = roc_auc_score(y[test], clf.predict_proba(scaler.transform(acts[test]))[:, 1])
    assert abs(own.transfer_auroc - sklearn_auroc) < 1e-6  # the held-out AUROC of the imported probe
    assert not cells[cells.source == "alice"].scored.any()  # its training prompts cannot be checked
