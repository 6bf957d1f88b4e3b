"""Known answers for the nulls (docs/design.md §2): the scale-aware agreement, symmetric
random-direction nulls with p-values, Benjamini-Hochberg over unordered pairs, the sign-blind
portability test, and the flags judged against their nulls."""

import numpy as np
import pandas as pd

from probebench.models.ablate import AblationSpec, ablation_effects
from probebench.prompts import SyntheticTaskSpec, build_synthetic
from probebench.stats import bh_adjust, null_test
from tests.support.cells import _frame, cells_for, ruled

MODELS = ("a", "b", "c")


def _effects(*, n=300, matched, transferred=None, random, n_random=99, seed=0):
    """Effects for three models built by callables of (rng, z, feature, labels, model) -> delta."""
    rng = np.random.default_rng(seed)
    z, feature = rng.normal(size=n), rng.normal(size=n)
    labels = (rng.random(n) < 0.5).astype(int)
    rows, transfers = [], {t: {"t": {}} for t in MODELS}
    for t in MODELS:
        clean = rng.normal(0.0, 1.0, size=n)
        rows.append(_frame("t", t, t, "matched", clean, matched(rng, z, feature, labels, t), 0.0, labels))
        for j in range(n_random):
            rows.append(_frame("t", t, f"random{j}", "random", clean, random(rng, z, feature, labels, t), 0.0, labels))
        for s in MODELS:
            info = {"method": "native", "transfer_auroc": 0.8, "native_auroc": 0.8, "cosine_transfer": 1.0}
            if s != t:
                moved = (transferred or matched)(rng, z, feature, labels, (s, t))
                rows.append(_frame("t", t, s, "transferred", clean, moved, 0.0, labels))
                info = {"method": "activation_ridge", "transfer_auroc": 0.5, "native_auroc": 0.8, "r2_test": 0.5,
                        "cosine_transfer": 0.1, "cosine_transfer_null_p": 0.5, "transfer_auroc_null_p": 0.9}
            transfers[t]["t"][s] = info
    return pd.concat(rows, ignore_index=True), transfers


def _inert_but_feature_driven(rng, z, feature, labels, model):
    # near-inert random directions (0.01 SD) whose tiny effects follow a prompt feature the probes
    # also follow: Pearson sees agreement, a scale-aware statistic must not
    return 0.01 * (feature + 0.3 * rng.normal(size=len(z)))


def test_low_potency_shared_mechanism_is_found_where_pearson_null_is_swamped():
    low = lambda rng, z, f, lab, m: 0.15 * (z + 0.8 * f + 0.4 * rng.normal(size=len(z)))  # noqa: E731
    r = ruled(cells_for(*_effects(matched=low, random=_inert_but_feature_driven), n_resamples=200))
    off = r[~r.diagonal]
    assert (off.rho_null_high > 0.5).all()  # the old null: random directions "agree" at Pearson > 0.5
    assert (off.ccc_null_high < 0.1).all()  # near-inert directions: CCC near 0
    assert (off.ccc > 0.8).all() and off.ccc_beats_null.all() and (off.ccc_null_q <= 0.0101).all()


def test_inert_random_directions_give_a_null_near_zero_and_do_not_beat_it():
    inert = lambda rng, z, f, lab, m: 0.01 * (f + 0.3 * rng.normal(size=len(z)))  # noqa: E731
    r = ruled(cells_for(*_effects(matched=inert, random=_inert_but_feature_driven), n_resamples=200))
    off = r[~r.diagonal]
    # the matched "probes" are as inert as the random directions: same scale, same feature
    assert (off.pearson > 0.8).all() and not off.ccc_beats_null.any() and (off.ccc_null_p > 0.05).all()
    assert off.inert_direction.all()


def test_pure_label_agreement_is_label_driven_against_the_within_class_null():
    label = lambda rng, z, f, lab, m: 2.0 * lab + 0.5 * rng.normal(size=len(z))  # noqa: E731
    noise = lambda rng, z, f, lab, m: 0.2 * rng.normal(size=len(z))  # noqa: E731
    r = ruled(cells_for(*_effects(matched=label, random=noise), n_resamples=200))
    off = r[~r.diagonal]
    assert (off.pearson > 0.7).all() and off.ccc_beats_null.all()  # pooled: the label agrees
    assert (off.ccc_within_null_p > 0.05).all() and off.label_driven.all()
    shared = lambda rng, z, f, lab, m: 2.0 * lab + z + 0.3 * rng.normal(size=len(z))  # noqa: E731
    r = ruled(cells_for(*_effects(matched=shared, random=noise), n_resamples=200))
    assert not r[~r.diagonal].label_driven.any()  # a per-prompt mechanism beyond the label is not


def test_null_and_decision_are_symmetric_over_the_pair():
    mixed = lambda rng, z, f, lab, m: (0.5 if m == "c" else 1.0) * (z + 0.7 * rng.normal(size=len(z)))  # noqa: E731
    # the random directions of model c move its margin 20x more than those of a and b
    rand = lambda rng, z, f, lab, m: (0.2 if m == "c" else 0.01) * rng.normal(size=len(z))  # noqa: E731
    r = ruled(cells_for(*_effects(matched=mixed, random=rand), n_resamples=200)).set_index(["source", "target"])
    for s, t in [("a", "b"), ("a", "c"), ("b", "c")]:
        for col in ("ccc", "ccc_null_p", "ccc_null_q", "rho_null_low", "rho_null_high", "ccc_beats_null"):
            assert r.loc[(s, t), col] == r.loc[(t, s), col], (s, t, col)


def test_q1_bh_family_is_the_unordered_pairs():
    mixed = lambda rng, z, f, lab, m: z + 0.5 * rng.normal(size=len(z))  # noqa: E731
    rand = lambda rng, z, f, lab, m: 0.05 * rng.normal(size=len(z))  # noqa: E731
    r = ruled(cells_for(*_effects(matched=mixed, random=rand, n_random=20), n_resamples=200))
    off = r[~r.diagonal].set_index(["source", "target"])
    pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    expected = bh_adjust([off.loc[p, "ccc_null_p"] for p in pairs])
    assert np.allclose([off.loc[p, "ccc_null_q"] for p in pairs], expected)
    assert np.allclose([off.loc[(t, s), "ccc_null_q"] for s, t in pairs], expected)
    # 20 draws per side: the p is the fitted one, and the fit's check is reported
    assert off["ccc_null_fit_p"].between(0.0, 1.0).all() and (off["ccc_null_p_empirical"] >= 1 / 21).all()
    many = ruled(cells_for(*_effects(matched=mixed, random=rand), n_resamples=200))
    assert many["ccc_null_fit_p"].isna().all()  # 99 draws a side: empirical p's only, no fit to check


def test_a_reversed_but_perfect_transfer_lands_and_a_random_one_does_not():
    shared = lambda rng, z, f, lab, m: z + 0.3 * rng.normal(size=len(z))  # noqa: E731
    rand = lambda rng, z, f, lab, m: 0.05 * rng.normal(size=len(z))  # noqa: E731
    # ablating -v_t projects out the same line as v_t: its effects are the target's own
    r = ruled(cells_for(*_effects(matched=shared, random=rand), n_resamples=200))
    off = r[~r.diagonal]
    assert (off.ccc_transferred > 0.8).all() and not off.transfer_at_null.any()
    assert (off.transfer_auroc_null_p > 0.05).all()  # the AUROC diagnostic alone would have missed it
    # a transferred direction that acts like the target's random directions (same scale) does not land
    lost = lambda rng, z, f, lab, m: 0.3 * rng.normal(size=len(z))  # noqa: E731
    r = ruled(cells_for(*_effects(matched=shared, transferred=lost, random=lost), n_resamples=200))
    off = r[~r.diagonal]
    assert off.transfer_at_null.all() and not off.inert_transfer.any()
    dead = lambda rng, z, f, lab, m: 1e-4 * rng.normal(size=len(z))  # noqa: E731
    r = ruled(cells_for(*_effects(matched=shared, transferred=dead, random=rand), n_resamples=200))
    assert r[~r.diagonal].inert_transfer.all() and not r[r.diagonal].inert_transfer.any()


def test_projection_ablation_does_not_see_a_directions_sign(tiny_models):
    prompts = build_synthetic(SyntheticTaskSpec("sentiment", "sentiment", n_train=4, n_test=16)).query("split == 'test'")
    model, tok = tiny_models["qwen2"]
    d = model.config.get_text_config().hidden_size
    v = np.random.default_rng(3).normal(size=(1, d))
    kw = dict(layer=1, spec=AblationSpec(), mus_K=np.zeros(2), batch_size=8)
    out = ablation_effects(model, tok, prompts, dirs_KD=np.concatenate([v, -v]), **kw)
    assert np.abs(out["ablated_margin_KN"][0] - out["ablated_margin_KN"][1]).max() < 1e-5
    assert np.abs(out["ablated_margin_KN"][0] - out["clean_margin_N"]).max() > 1e-4  # it did move something


def test_null_test_p_values_are_calibrated_fitted_and_empirical():
    rng = np.random.default_rng(0)
    for J in (12, 99):
        hits = 0
        for _ in range(400):
            draws = np.tanh(rng.normal(0.1, 0.05, size=J + 1))
            hits += null_test(draws[0], draws[1:]).p <= 0.05
        assert 0.02 < hits / 400 < 0.09, J  # a valid test: about 5% false positives
    t = null_test(0.9, np.tanh(rng.normal(0.1, 0.05, size=12)))
    assert t.p < 1e-6 and t.p_empirical == 1 / 13  # the fit resolves what 12 draws cannot
    heavy = np.concatenate([np.zeros(11) + rng.normal(0, 1e-3, 11), [0.5]])
    t = null_test(0.45, heavy)
    assert t.fit_p < 0.01 and t.p == t.p_empirical  # a null the normal fit does not describe is not fitted
