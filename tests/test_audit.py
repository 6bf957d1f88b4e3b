import copy

import numpy as np
import pytest
import torch

from probebench.audit import AuditError, audit_summary, audit_table, check_same_tokenizer, latent_effects, paired_activations
from probebench.crosscoder import firing_frequency, latent_table, select_shared_latents, train_crosscoder
from probebench.stats import pearson
from probebench.tasks import SyntheticTaskSpec, build_synthetic

PROMPTS = build_synthetic(SyntheticTaskSpec("sentiment", "sentiment", n_train=40, n_test=30))


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
    assert summary["ce_kl"]["one_minus_median_ratio"] == pytest.approx(1 - ok["ce_kl"].median() / ok["decoder_cosine"].median())
    share = ((ok["decoder_cosine"] > 0.7) & (ok["ce_kl"] < 0.5)).mean()
    assert summary["ce_kl"]["share_high_cos_low_ce"] == pytest.approx(share)


def test_pair_with_different_tokenizers_is_refused(tiny_models):
    with pytest.raises(AuditError, match="tokenizers differ"):
        check_same_tokenizer([tiny_models["gemma2"][1], tiny_models["llama"][1]], ["a", "b"])
