import copy

import numpy as np
import pandas as pd
import pytest
import torch

from probebench.crosscoder.audit import (
    AuditError,
    audit_summary,
    audit_table,
    ce_statistics,
    check_same_tokenizer,
    latent_effects,
    numeric_metrics,
    paired_activations,
)
from probebench.crosscoder import firing_frequency, latent_table, select_shared_latents, train_crosscoder
from probebench.stats import pearson
from probebench.prompts import SyntheticTaskSpec, build_synthetic

PROMPTS = build_synthetic(SyntheticTaskSpec("sentiment", "sentiment", n_train=40, n_test=30))


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pair(tiny_models):
    base, tok = tiny_models["gemma2"]
    it = copy.deepcopy(base)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an "IT" model: the base with perturbed MLPs
        for p in it.model.layers[0].mlp.parameters():
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=g))
    return [base, it], tok


def test_audit_end_to_end_on_a_base_it_pair(pair):
    models, tok = pair
    texts = PROMPTS.query("split == 'train'")["text"].tolist()
    acts = paired_activations(models, tok, texts, layers=[1, 1])
    n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert acts.shape == (n_tokens, 2, 32)
    cc, metrics = train_crosscoder(torch.from_numpy(acts), n_latents=64, k=4, steps=150, batch_size=64, lr=3e-3, seed=0)
    assert metrics["final_loss"] < metrics["initial_loss"]
    test = PROMPTS.query("split == 'test'").reset_index(drop=True)
    stats = latent_table(cc, firing_frequency_F=firing_frequency(cc, torch.from_numpy(acts)))
    latents = select_shared_latents(stats, rel_norm_band=(0.2, 0.8), top_k=10)
    assert 0 < len(latents) <= 10
    effects = latent_effects(cc, models, tok, test, layers=[1, 1], latents=latents)
    assert (effects["kl_MLN"] >= 0).all()
    # a latent that does not fire on an input has exactly no effect there
    silent = effects["f_LN"] == 0
    assert np.abs(effects["delta_MLN"][:, silent]).max(initial=0.0) <= 1e-4
    table = audit_table(stats, effects, latents, n_resamples=200)
    for i, row in table.iterrows():  # every statistic recomputed from the per-latent effects
        assert row["decoder_cosine"] == pytest.approx(float(cc.decoder_cosine()[int(row["latent"])]), abs=1e-6)
        kl0, kl1 = effects["kl_MLN"][0, i].astype(float), effects["kl_MLN"][1, i].astype(float)
        if np.isfinite(row["ce_kl"]):
            assert row["ce_kl"] == pytest.approx(pearson(kl0, kl1), abs=1e-12)
            assert row["ce_kl_low"] <= row["ce_kl"] + 1e-9 and row["ce_kl"] <= row["ce_kl_high"] + 1e-9
    summary = audit_summary(table)
    ok = table.dropna(subset=["ce_kl"])
    assert summary["ce_kl"]["median_cos"] == pytest.approx(ok["decoder_cosine"].median())
    assert summary["ce_kl"]["median_rho"] == pytest.approx(ok["ce_kl"].median())
    ratio = summary["ce_kl"]["one_minus_median_ratio"]
    if ok["decoder_cosine"].median() > max(ok["ce_kl"].median(), 0):
        assert ratio == pytest.approx(1 - ok["ce_kl"].median() / ok["decoder_cosine"].median())
    else:
        assert ratio is None and "not meaningful" in summary["ce_kl"]["one_minus_median_ratio_note"]
    share = ((ok["decoder_cosine"] > 0.7) & (ok["ce_kl"] < 0.5)).mean()
    assert summary["ce_kl"]["share_high_cos_low_ce"] == pytest.approx(share)


def test_pair_with_different_tokenizers_is_refused(tiny_models):
    with pytest.raises(AuditError, match="tokenizers differ"):
        check_same_tokenizer([tiny_models["gemma2"][1], tiny_models["llama"][1]], ["a", "b"])


# ---------------------------------------------------------------------- CE definitions, planted
def zero_inflated_effects(n: int = 400, seed: int = 0):
    """Latent 0 fires on 30% of inputs with KL/margin effects INDEPENDENT between the models (true
    CE over firing inputs = 0); latent 1 fires on 60% with identical effects (CE = 1 everywhere).
    Where a latent does not fire nothing is subtracted: KL = 0 and delta = 0 in both models."""
    g = np.random.default_rng(seed)
    f_LN = np.zeros((2, n))
    f_LN[0, g.random(n) < 0.3] = 1.0
    f_LN[1, g.random(n) < 0.6] = 1.0
    fire = f_LN > 0
    kl_MLN = np.zeros((2, 2, n))
    delta_MLN = np.zeros((2, 2, n))
    kl_MLN[0, 0][fire[0]] = g.exponential(1.0, fire[0].sum())
    kl_MLN[1, 0][fire[0]] = g.exponential(1.0, fire[0].sum())
    delta_MLN[0, 0][fire[0]] = g.normal(size=fire[0].sum())
    delta_MLN[1, 0][fire[0]] = g.normal(size=fire[0].sum())
    shared = g.exponential(1.0, fire[1].sum())
    kl_MLN[:, 1][:, fire[1]] = shared
    delta_MLN[:, 1][:, fire[1]] = -shared
    return {"f_LN": f_LN, "kl_MLN": kl_MLN, "delta_MLN": delta_MLN}


def test_ce_over_all_inputs_is_zero_inflated_and_firing_only_is_not():
    eff = zero_inflated_effects()
    ce = ce_statistics(eff, n_resamples=300, seed=0)
    fire0 = eff["f_LN"][0] > 0
    # reference values from numpy, independently of the code under test
    all_ref = np.corrcoef(eff["kl_MLN"][0, 0], eff["kl_MLN"][1, 0])[0, 1]
    fire_ref = np.corrcoef(eff["kl_MLN"][0, 0][fire0], eff["kl_MLN"][1, 0][fire0])[0, 1]
    assert ce["ce_kl"]["point_L"][0] == pytest.approx(all_ref, abs=1e-12)
    assert ce["ce_kl_firing"]["point_L"][0] == pytest.approx(fire_ref, abs=1e-12)
    # the planted answer: independent effects -> ~0 on firing inputs, but the shared zeros make
    # the all-inputs Pearson clearly positive (the zero inflation the issue measured)
    assert abs(ce["ce_kl_firing"]["point_L"][0]) < 0.2 and ce["ce_kl"]["point_L"][0] > 0.3
    assert abs(ce["ce_margin_firing"]["point_L"][0]) < 0.2
    assert ce["ce_kl_firing"]["n_inputs_L"][0] == fire0.sum() and ce["ce_kl"]["n_inputs_L"][0] == 400
    for name in ce:  # identical effects: exactly 1 under every definition, CI collapsed onto it
        assert ce[name]["point_L"][1] == 1.0 and ce[name]["low_L"][1] == 1.0 and ce[name]["high_L"][1] == 1.0
    lo, hi = ce["ce_kl_firing"]["low_L"][0], ce["ce_kl_firing"]["high_L"][0]
    assert lo < fire_ref < hi and hi - lo < 0.5


def test_firing_ce_needs_enough_firing_inputs():
    eff = zero_inflated_effects(n=60)
    eff["f_LN"][0] = 0.0
    eff["f_LN"][0, :3] = 1.0  # fires on 3 inputs only
    ce = ce_statistics(eff, n_resamples=50)
    assert np.isnan(ce["ce_kl_firing"]["point_L"][0]) and ce["ce_kl_firing"]["n_inputs_L"][0] == 3


def test_summary_reports_every_definition_with_median_ci_and_refuses_a_meaningless_ratio():
    eff = zero_inflated_effects()
    ce = ce_statistics(eff, n_resamples=300)
    stats = pd.DataFrame({"latent": [7, 9], "decoder_cosine": [0.9, 0.95], "relative_norm": [0.5, 0.5],
                          "firing_frequency": [0.3, 0.6]})
    table = audit_table(stats, eff, [7, 9], ce=ce)
    summary = audit_summary(table, ce=ce)
    assert summary["published_definition"] == "ce_kl"
    for name in ("ce_kl", "ce_kl_firing", "ce_margin", "ce_margin_firing"):
        s = summary[name]
        assert s["median_rho"] == pytest.approx(np.median(table[name]))
        lo, hi = s["median_rho_low"], s["median_rho_high"]
        assert lo <= s["median_rho"] + 1e-9 <= hi + 2e-9
    # firing-only median is pulled down by latent 0 (CE ~ 0): cos 0.925 > CE -> a real ratio
    s = summary["ce_kl_firing"]
    assert s["one_minus_median_ratio"] == pytest.approx(1 - s["median_rho"] / 0.925)
    # cos below CE: "not meaningful", null, with the reason; the metrics keep numbers only
    low_cos = audit_summary(table.assign(decoder_cosine=[0.2, 0.3]), ce=ce)
    assert low_cos["ce_margin"]["one_minus_median_ratio"] is None
    assert "not meaningful" in low_cos["ce_margin"]["one_minus_median_ratio_note"]
    neg = audit_summary(table.assign(decoder_cosine=[-0.5, -0.2]), ce=ce)
    assert neg["ce_kl"]["one_minus_median_ratio"] is None
    m = numeric_metrics(low_cos)
    assert "one_minus_median_ratio" not in m["ce_margin"] and "definitions" not in m
    assert all(isinstance(v, (int, float)) for v in m["ce_margin"].values() if not isinstance(v, dict))


def test_published_numbers_give_the_published_ratio():
    table = pd.DataFrame({"decoder_cosine": [0.965] * 3, "ce_kl": [0.5, 0.616, 0.7]})
    s = audit_summary(table)["ce_kl"]
    assert s["one_minus_median_ratio"] == pytest.approx(1 - 0.616 / 0.965)  # 36.2%


def test_latent_effects_run_only_firing_latents_and_match_the_dense_edits(pair):
    """Each input runs only the latents that fire on it, packed into edit slots: where a latent
    fires, KL and the margin change equal the dense computation (every latent x every input,
    `readout_edit_effects` directly); where it does not, both are exactly 0."""
    from probebench.models.ablate import readout_edit_effects

    models, tok = pair
    texts = PROMPTS.query("split == 'train'")["text"].tolist()
    cc, _ = train_crosscoder(torch.from_numpy(paired_activations(models, tok, texts, layers=[1, 1])), n_latents=64, k=4,
                             steps=150, batch_size=64, lr=3e-3, seed=0)
    test = PROMPTS.query("split == 'test'").reset_index(drop=True)
    latents = list(range(64))
    effects = latent_effects(cc, models, tok, test, layers=[1, 1], latents=latents)
    fires = effects["f_LN"] != 0
    assert fires.any() and (~fires).any() and fires.sum(0).max() < len(latents)  # packing saves slots here
    assert (effects["kl_MLN"][:, ~fires] == 0).all() and (effects["delta_MLN"][:, ~fires] == 0).all()
    dec_LMD = cc.decoder_vectors(torch.arange(64), raw=True)
    for m, model in enumerate(models):
        edits = (torch.as_tensor(effects["f_LN"])[:, :, None] * dec_LMD[:, m][:, None, :]).numpy()
        dense = readout_edit_effects(model, tok, test, layer=1, edits_KND=edits)
        np.testing.assert_allclose(effects["kl_MLN"][m][fires], dense["kl_KN"][fires], rtol=1e-4, atol=2e-6)  # float32 KL noise
        delta = dense["ablated_margin_KN"] - dense["clean_margin_N"][None]
        np.testing.assert_allclose(effects["delta_MLN"][m][fires], delta[fires], rtol=1e-4, atol=1e-6)
