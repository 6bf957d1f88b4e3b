"""Known-answer controls of the crosscoder audit (DESIGN §8), on a tiny random-init model.

(a) identical pair: a crosscoder trained on (model, model) until its decoder halves forget their
    independent inits gives cosine and CE >= 0.99; an under-trained one does not, and the
    control says so.
(b) planted change: a copy that reads a known subspace differently downstream of the layer
    keeps every decoder cosine at 1, yet latents whose decoder lies in that subspace lose CE
    and the others keep it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probebench.crosscoder.audit import AuditError, ce_statistics, latent_effects, paired_activations, readout_activations
from probebench.crosscoder.controls import (
    clean_pass_change,
    identical_pair_control,
    planted_change_control,
    planted_subspace_copy,
    subspace_mean_ablated_copy,
)
from probebench.crosscoder import ReLUCrossCoder, train_crosscoder
from probebench.prompts import SyntheticTaskSpec, build_synthetic

PROMPTS = build_synthetic(SyntheticTaskSpec("sentiment", "sentiment", n_train=120, n_test=40))
TEST = PROMPTS.query("split == 'test'").reset_index(drop=True)
LAYER = 1


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def base(tiny_models):
    return tiny_models["gemma2"]


@pytest.fixture(scope="module")
def identical_acts(base):
    model, tok = base
    texts = PROMPTS.query("split == 'train'")["text"].tolist()
    return torch.from_numpy(paired_activations([model, model], tok, texts, layers=[LAYER, LAYER]))


def test_identical_pair_passes_when_converged_and_fails_when_not(base, identical_acts):
    model, tok = base
    assert torch.equal(identical_acts[:, 0], identical_acts[:, 1])
    kw = dict(n_latents=64, k=4, batch_size=128, lr=1e-2, seed=0)
    short, _ = train_crosscoder(identical_acts, steps=60, refit_decoder=False, **kw)
    record = identical_pair_control(short, model, tok, TEST, layer=LAYER, n_latents=8, n_resamples=50)
    # 60 Adam steps do not erase the independent decoder inits: the cosine reflects training
    assert not record["passed"] and record["min_decoder_cosine"] < 0.9
    # the same 60 steps with the least-squares decoder refit: the decoder is at its optimum
    refit, _ = train_crosscoder(identical_acts, steps=60, **kw)
    assert identical_pair_control(refit, model, tok, TEST, layer=LAYER, n_latents=8, n_resamples=50)["passed"]
    trained, _ = train_crosscoder(identical_acts, steps=400, refit_decoder=False, **kw)
    record = identical_pair_control(trained, model, tok, TEST, layer=LAYER, n_latents=8, n_resamples=50)
    assert record["passed"], record
    assert record["n_latents"] == 8 and record["min_decoder_cosine"] >= 0.99
    assert record["min_ce_kl"] >= 0.99 and record["min_ce_margin"] >= 0.99


def test_shared_init_hides_under_training_that_independent_init_shows(identical_acts):
    kw = dict(n_latents=64, k=4, batch_size=128, lr=1e-2, seed=0, steps=0)
    shared, m_shared = train_crosscoder(identical_acts, decoder_init="shared", **kw)
    independent, m_ind = train_crosscoder(identical_acts, decoder_init="independent", **kw)
    # at step 0 a shared init reports perfect agreement about nothing; independent reports ~0
    assert torch.allclose(shared.decoder_cosine(), torch.ones(64))
    assert independent.decoder_cosine().abs().median() < 0.3
    assert m_shared["rel_norm_spread_init"] < 1e-6 and m_ind["rel_norm_spread_init"] < 1e-6  # unit-norm rows
    # identical inputs and a shared init: the halves stay identical through training
    trained, _ = train_crosscoder(identical_acts, decoder_init="shared", **{**kw, "steps": 30})
    assert torch.equal(trained.W_dec_FMD[:, 0], trained.W_dec_FMD[:, 1])


def test_planted_subspace_change_costs_ce_only_for_latents_reading_it(base):
    model, tok = base
    acts_ND = readout_activations([model], tok, TEST, layers=[LAYER])[:, 0]
    D = acts_ND.shape[1]
    # the planted subspaces: the readout activations' least-varying directions, so swapping
    # them barely changes the clean forward pass and every other latent keeps its mechanism
    _, _, Vt = np.linalg.svd(acts_ND - acts_ND.mean(0), full_matrices=True)
    S_KD, U_KD, others_KD = Vt[-2:], Vt[-4:-2], Vt[:-4]
    twin = planted_subspace_copy(model, layer=LAYER, from_KD=S_KD, to_KD=U_KD)
    with torch.no_grad():  # upstream of the swap the two models are the same function
        np.testing.assert_allclose(readout_activations([twin], tok, TEST, layers=[LAYER])[:, 0], acts_ND, atol=1e-5)

    g = np.random.default_rng(0)
    dirs_LD = np.concatenate([S_KD, g.normal(size=(4, D - 4)) @ others_KD])   # 2 read S, 4 avoid S and U
    dirs_LD /= np.linalg.norm(dirs_LD, axis=1, keepdims=True)
    reads_S = np.array([True, True, False, False, False, False])
    cc = ReLUCrossCoder(d_model=D, n_latents=len(dirs_LD))
    scale = float(np.sqrt((acts_ND**2).sum(1).mean()))
    with torch.no_grad():
        cc.b_enc_F.fill_(1.0)  # W_enc = 0: every latent fires with f = 1 on every input
        W_LD = torch.tensor(dirs_LD * 0.5 * scale, dtype=torch.float32)
        cc.W_dec_FMD.copy_(torch.stack([W_LD, W_LD], dim=1))
    assert torch.equal(cc.decoder_cosine(), torch.ones(len(dirs_LD)))  # geometry says "identical"

    acts_NMD = np.stack([acts_ND, acts_ND], axis=1)
    effects = latent_effects(cc, [model, twin], tok, TEST, layers=[LAYER, LAYER], latents=list(range(len(dirs_LD))),
                             readout_acts_NMD=acts_NMD)
    ce = ce_statistics(effects, n_resamples=50)
    for name, (lost_below, kept_above) in {"ce_kl": (0.9, 0.95), "ce_margin": (0.5, 0.9)}.items():
        ce_L = ce[name]["point_L"]
        assert (ce_L[reads_S] < lost_below).all() and (ce_L[~reads_S] > kept_above).all(), (name, ce_L)
    # control of the control: the unmodified model on both sides gives CE exactly 1
    same = latent_effects(cc, [model, model], tok, TEST, layers=[LAYER, LAYER], latents=[0, 2], readout_acts_NMD=acts_NMD)
    assert (ce_statistics(same, n_resamples=10)["ce_margin"]["point_L"] == 1.0).all()


def test_planted_copy_rejects_bad_subspaces(base):
    model, _ = base
    eye = np.eye(32)
    with pytest.raises(AuditError, match="orthonormal"):
        planted_subspace_copy(model, layer=LAYER, from_KD=eye[:2], to_KD=eye[1:3])
    with pytest.raises(AuditError, match="block after"):
        planted_subspace_copy(model, layer=2, from_KD=eye[:2], to_KD=eye[2:4])


def test_mean_ablated_copy_removes_edits_inside_S_and_keeps_the_layer(base):
    model, tok = base
    acts_ND = readout_activations([model], tok, TEST, layers=[LAYER])[:, 0]
    D = acts_ND.shape[1]
    S_KD = np.linalg.qr(np.random.default_rng(1).normal(size=(D, 2)))[0].T
    # the mean of the readout activations themselves: projected onto S, every readout sits at it
    twin = subspace_mean_ablated_copy(model, layer=LAYER, S_KD=S_KD, mean_D=acts_ND.mean(0))
    np.testing.assert_allclose(readout_activations([twin], tok, TEST, layers=[LAYER])[:, 0], acts_ND, atol=1e-5)
    cc = ReLUCrossCoder(d_model=D, n_latents=2)
    other = np.random.default_rng(2).normal(size=D)
    other -= S_KD.T @ (S_KD @ other)
    scale = float(np.sqrt((acts_ND**2).sum(1).mean()))
    with torch.no_grad():
        cc.b_enc_F.fill_(1.0)  # every latent fires with f = 1
        W = torch.tensor(np.stack([S_KD[0], other / np.linalg.norm(other)]) * 0.5 * scale, dtype=torch.float32)
        cc.W_dec_FMD.copy_(torch.stack([W, W], dim=1))
    eff = latent_effects(cc, [model, twin], tok, TEST, layers=[LAYER, LAYER], latents=[0, 1],
                         readout_acts_NMD=np.stack([acts_ND, acts_ND], axis=1))
    # inside S: no effect left in the copy (rounding only); outside: an effect of the same size
    assert np.abs(eff["delta_MLN"][1, 0]).max() < 1e-3 * np.abs(eff["delta_MLN"][0, 0]).mean()
    ratio = np.abs(eff["delta_MLN"][1, 1]).mean() / np.abs(eff["delta_MLN"][0, 1]).mean()
    assert 0.5 < ratio < 2.0
    change = clean_pass_change(model, twin, tok, TEST)
    assert change["kl_mean"] > 0 and change["kl_max"] >= change["kl_median"] >= 0
    same = clean_pass_change(model, model, tok, TEST)
    assert same["kl_max"] == 0.0 and same["margin_pearson"] == pytest.approx(1.0) and same["margin_abs_change_sd"] == 0.0
    with pytest.raises(AuditError, match="orthonormal"):
        subspace_mean_ablated_copy(model, layer=LAYER, S_KD=2 * S_KD, mean_D=acts_ND.mean(0))
    with pytest.raises(AuditError, match="block after"):
        subspace_mean_ablated_copy(model, layer=2, S_KD=S_KD, mean_D=acts_ND.mean(0))


def test_planted_change_control_readers_lose_and_avoiders_keep(base, identical_acts):
    model, tok = base
    cc, _ = train_crosscoder(identical_acts, n_latents=64, k=4, batch_size=128, lr=1e-2, seed=0, steps=60)
    train_texts = PROMPTS.query("split == 'train'")["text"].tolist()
    kw = dict(layer=LAYER, n_planted=1, min_planted_inputs=5, max_frequency=0.5, avoid_max_share=0.05,
              n_resamples=20)
    rec = planted_change_control(cc, model, tok, TEST, train_texts, threshold=0.5, **kw)
    assert rec["n_readers"] >= 1 and rec["n_avoiders"] >= 1
    assert rec["planted_latents"][0] in rec["readers"]["latents"]
    # the planted latent lies in S: the copy has no effect left for it, so it loses CE under every definition
    i = rec["readers"]["latents"].index(rec["planted_latents"][0])
    assert rec["readers"]["effect_retained"][i] < 1e-3
    for name in ("ce_kl", "ce_kl_firing", "ce_margin", "ce_margin_firing"):
        assert rec["readers"][name]["values"][i] is None and rec["readers"][name]["n_lost"] >= 1
        assert rec["avoiders"][name]["passed"] == (rec["avoiders"][name]["median"] >= 0.5)
    assert rec["clean_pass"]["kl_mean"] >= 0
    assert rec["passed"] == all(rec[g][n]["passed"] for g in ("readers", "avoiders")
                                for n in ("ce_kl", "ce_kl_firing", "ce_margin", "ce_margin_firing"))
    # deterministic: the same call gives the same record
    assert planted_change_control(cc, model, tok, TEST, train_texts, threshold=0.5, **kw) == rec
    # a threshold no avoider can reach fails the control
    assert not planted_change_control(cc, model, tok, TEST, train_texts, threshold=1.01, **kw)["passed"]
    # no latent in the frequency window: a record that fails and says why
    none = planted_change_control(cc, model, tok, TEST, train_texts, **{**kw, "min_planted_inputs": 10**6})
    assert not none["passed"] and "need 1" in none["reason"]


def test_sign_reversal_is_missed_by_ce_kl_and_caught_by_ce_margin(base, identical_acts):
    from probebench.crosscoder.audit import sign_disagreements
    from probebench.crosscoder.controls import sign_reversal_control

    model, tok = base
    cc, _ = train_crosscoder(identical_acts, n_latents=64, k=4, batch_size=128, lr=1e-2, seed=0, steps=60)
    rec = sign_reversal_control(cc, model, tok, TEST, layer=LAYER, n_planted=4, n_resamples=20)
    assert rec["passed"] and rec["n_caught_by_ce_margin"] == 4 and max(rec["ce_margin"]) < -0.5
    # the published, sign-blind statistic calls the reversed latents equivalent
    assert rec["n_equivalent_by_ce_kl"] >= 3 and rec["median_ce_kl"] > 0.8
    table = __import__("pandas").DataFrame({"latent": rec["planted_latents"], "ce_kl": rec["ce_kl"],
                                            "ce_margin": rec["ce_margin"]})
    assert sign_disagreements(table)["n_ce_kl_equivalent_ce_margin_negative"] == rec["n_equivalent_by_ce_kl"]
    # too few latents firing: a record that fails and says why
    none = sign_reversal_control(cc, model, tok, TEST, layer=LAYER, n_planted=10**6, n_resamples=20)
    assert not none["passed"] and "need 1000000" in none["reason"]
