"""Known-answer tests for probebench.transfer.maps on planted linear maps."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from probebench.transfer.maps import RELATIVE_ALPHAS, DirectionTransfer, TransferError, cosine

DS, DT = 24, 40


def planted_map(n_train: int = 800, n_test: int = 400, *, noise: float = 0.05, seed: int = 0):
    """Ht = Hs @ A_true + offset + small noise; returns train/test pairs, A_true and a source w."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(DS, DT)) / np.sqrt(DS)
    mu_s = rng.normal(scale=3.0, size=DS)
    mu_t = rng.normal(scale=3.0, size=DT)

    def draw(n):
        hs = rng.normal(size=(n, DS)) * rng.uniform(0.5, 2.0, size=DS) + mu_s
        ht = (hs - mu_s) @ A + mu_t + noise * rng.normal(size=(n, DT))
        return hs.astype(np.float32), ht.astype(np.float32)

    hs, ht = draw(n_train)
    hs_te, ht_te = draw(n_test)
    w = rng.normal(size=DS)
    return hs, ht, hs_te, ht_te, A, w


def test_activation_ridge_recovers_planted_map():
    hs, ht, hs_te, ht_te, A, w = planted_map()
    tr = DirectionTransfer(method="activation_ridge").fit(hs, ht, w)
    assert tr.map_.shape == (DS, DT) and tr.direction_.shape == (DT,)
    rel = np.linalg.norm(tr.map_ - A) / np.linalg.norm(A)
    assert rel < 0.05
    assert cosine(tr.direction_, A.T @ w) > 0.99
    assert tr.score(hs_te, ht_te, w) > 0.95
    assert tr.alpha_ > 0 and tr.src_mean_.shape == (DS,) and tr.tgt_mean_.shape == (DT,)


def test_activation_ridge_on_unrelated_target_scores_low():
    hs, ht, hs_te, ht_te, A, w = planted_map()
    rng = np.random.default_rng(9)
    tr = DirectionTransfer(method="activation_ridge").fit(hs, rng.normal(size=ht.shape), w)
    assert tr.score(hs_te, rng.normal(size=ht_te.shape), w) < 0.05


def test_score_ridge_reproduces_source_score_heldout():
    hs, ht, hs_te, ht_te, A, w = planted_map()
    tr = DirectionTransfer(method="score_ridge").fit(hs, ht, w)
    assert tr.method == "score_ridge" and tr.map_ is None and tr.readout_scale_ == 1.0
    assert tr.score(hs_te, ht_te, w) > 0.95
    # The transferred readout reproduces the source score in the target space: A v ~ w.
    assert cosine(A @ tr.direction_, w) > 0.99
    # Falsifiable: a target unrelated to the source cannot reproduce the score out of sample.
    rng = np.random.default_rng(3)
    bad = DirectionTransfer(method="score_ridge").fit(hs, rng.normal(size=ht.shape), w)
    assert bad.score(hs_te, rng.normal(size=ht_te.shape), w) < 0.2


def test_alpha_selection_and_fixed_alpha():
    hs, ht, hs_te, ht_te, A, w = planted_map()
    tr = DirectionTransfer(method="score_ridge").fit(hs, ht, w)
    hc = ht - ht.mean(0, dtype=np.float64)
    grid = np.einsum("ij,ij->", hc, hc) / DT * np.asarray(RELATIVE_ALPHAS)
    assert np.isclose(grid, tr.alpha_, rtol=1e-9).any()
    # An explicit absolute grid is searched as given.
    tr2 = DirectionTransfer(method="score_ridge", alphas=(1e-3, 5e5)).fit(hs, ht, w)
    assert tr2.alpha_ in (1e-3, 5e5)
    # Huge fixed alpha shrinks the direction towards zero and wrecks the held-out fit.
    big = DirectionTransfer(method="score_ridge", alpha=1e9).fit(hs, ht, w)
    assert big.alpha_ == 1e9
    assert np.linalg.norm(big.direction_) < 1e-3 * np.linalg.norm(tr.direction_)
    assert big.score(hs_te, ht_te, w) < 0.1


def test_identity():
    hs, ht, hs_te, ht_te, A, w = planted_map()
    with pytest.raises(TransferError, match="Ds == Dt, got Ds=24 and Dt=40"):
        DirectionTransfer(method="identity").fit(hs, ht, w)

    same = DirectionTransfer(method="identity").fit(hs, hs, w)
    np.testing.assert_array_equal(same.direction_, w)
    assert same.alpha_ is None and same.map_ is None
    assert same.score(hs_te, hs_te, w) == pytest.approx(1.0, abs=1e-9)

    # Scale and offset of the target are absorbed by the fitted scalar.
    scaled = DirectionTransfer(method="identity").fit(hs, 3.0 * hs + 7.0, w)
    assert scaled.readout_scale_ == pytest.approx(1 / 3, rel=1e-5)
    assert scaled.score(hs_te, 3.0 * hs_te + 7.0, w) == pytest.approx(1.0, abs=1e-6)

    # A rotated basis is a different coordinate system: identity must not look good there.
    Q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(DS, DS)))
    rot = DirectionTransfer(method="identity").fit(hs, hs @ Q, w)
    assert rot.score(hs_te, hs_te @ Q, w) < 0.5


def test_input_errors():
    hs, ht, hs_te, ht_te, A, w = planted_map(n_train=60, n_test=20)
    with pytest.raises(TransferError, match="paired"):
        DirectionTransfer().fit(hs, ht[:-1], w)
    bad = ht.copy()
    bad[2, 3] = np.nan
    with pytest.raises(TransferError, match=r"tgt_ND contains 1 NaN"):
        DirectionTransfer().fit(hs, bad, w)
    bad = hs.copy()
    bad[0, 0] = -np.inf
    with pytest.raises(TransferError, match=r"src_ND contains 1 inf"):
        DirectionTransfer().fit(bad, ht, w)
    with pytest.raises(TransferError, match="Ds=24"):
        DirectionTransfer().fit(hs, ht, w[:-1])
    with pytest.raises(TransferError, match="unknown method"):
        DirectionTransfer(method="procrustes").fit(hs, ht, w)
    with pytest.raises(NotFittedError):
        DirectionTransfer().score(hs_te, ht_te, w)
    tr = DirectionTransfer().fit(hs, ht, w)
    with pytest.raises(TransferError, match="same source direction"):
        tr.score(hs_te, ht_te, w + 1)
    with pytest.raises(TransferError, match="paired"):
        tr.score(hs_te, ht_te[:-1], w)
    assert issubclass(TransferError, ValueError)


def test_get_params_contract():
    tr = DirectionTransfer(method="activation_ridge", alpha=2.0)
    assert tr.get_params() == {"method": "activation_ridge", "alpha": 2.0, "alphas": None}
    assert not hasattr(tr, "direction_")


def test_cosine():
    assert cosine([1.0, 0.0], [0.0, 2.0]) == 0.0
    assert cosine([1.0, 2.0], [-2.0, -4.0]) == pytest.approx(-1.0)
    with pytest.raises(TransferError, match="equal length"):
        cosine([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(TransferError, match="zero vector"):
        cosine([0.0, 0.0], [1.0, 2.0])
