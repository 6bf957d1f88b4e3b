"""Scaled-down Gemma-2 rehearsal (benchmarks/gemma_rehearsal.py --tiny): the same architecture
(alternating sliding/global attention, soft-capping) and both public crosscoder layouts, through
the loaders and the audit's ablation code. The full DVC run of the preset's stages is slow
(minutes of DVC start-up): set PROBEBENCH_SLOW=1 to include it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from probebench.crosscoder.audit import ce_statistics, latent_effects, readout_activations
from probebench.crosscoder import BatchTopKCrossCoder, ReLUCrossCoder, load_crosscoder
from probebench.models.load import load_model
from probebench.prompts import SyntheticTaskSpec, build_synthetic

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gemma_rehearsal", ROOT / "benchmarks" / "gemma_rehearsal.py")
rehearsal = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rehearsal)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    work = tmp_path_factory.mktemp("rehearsal")
    facts = rehearsal.build_models(work / "models", tiny=True, seed=0)
    layouts = rehearsal.write_crosscoders(work / "crosscoders", facts["d_model"], n_latents=64, k=8, seed=0)
    return work, facts, layouts


def test_tiny_rehearsal_keeps_the_gemma2_architecture(built):
    _, facts, _ = built
    assert facts["layer_types"] == ["full_attention", "sliding_attention"]
    assert facts["final_logit_softcapping"] == 30.0 and facts["d_model"] == 64


def test_both_layouts_load_and_run_through_the_audit(built):
    work, facts, layouts = built
    base, tok = load_model(work / "models" / "gemma-2-2b", dtype="bfloat16")
    it, _ = load_model(work / "models" / "gemma-2-2b-it", dtype="bfloat16")
    prompts = build_synthetic(SyntheticTaskSpec("sentiment", "sentiment", n_train=8, n_test=4)).query("split == 'test'")
    prompts = prompts.reset_index(drop=True)
    acts_NMD = readout_activations([base, it], tok, prompts, layers=[1, 1])
    kinds = {}
    for layout, path in layouts.items():
        cc = load_crosscoder(path, d_model=facts["d_model"])
        kinds[layout] = type(cc)
        effects = latent_effects(cc, [base, it], tok, prompts, layers=[1, 1], latents=[0, 1], readout_acts_NMD=acts_NMD)
        assert effects["kl_MLN"].shape == (2, 2, len(prompts)) and np.isfinite(effects["kl_MLN"]).all()
        ce_statistics(effects, n_resamples=10)
    assert kinds == {"dictionary_learning": BatchTopKCrossCoder, "relu_l1": ReLUCrossCoder}
    # the IT copy differs from the base (perturbed MLPs), so the rehearsal ablates two models
    assert not torch.equal(next(iter(it.model.layers[0].mlp.parameters())), next(iter(base.model.layers[0].mlp.parameters())))


@pytest.mark.skipif(os.environ.get("PROBEBENCH_SLOW") != "1", reason="minutes of DVC runs; set PROBEBENCH_SLOW=1")
def test_tiny_rehearsal_runs_the_preset_stages(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gemma_rehearsal.py"), "--tiny", "--workdir",
                           str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {r["crosscoder_kind"] for r in out["runs"].values()} == {"batchtopk", "relu"}
    assert all(row["peak_rss_gb"] for r in out["runs"].values() for row in r["stages"])
