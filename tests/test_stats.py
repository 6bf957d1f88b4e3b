"""Known-answer tests for probebench.stats.

Reference values come from scipy/sklearn/numpy, brute-force loops, planted data, or
hand arithmetic -- never from the code under test.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.stats

from probebench import stats
from probebench.stats import (
    CellStats,
    auroc,
    bca_ci,
    bootstrap_indices,
    cell_statistics,
    cosine_overstatement,
    jackknife_pearson,
    max_jackknife_influence,
    pearson,
    pearson_rows,
    percentile_ci,
    slope,
    spearman,
)


def _correlated(n: int, rho: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bivariate standard normal with correlation rho."""
    rng = np.random.default_rng(seed)
    xy = rng.multivariate_normal([0.0, 0.0], [[1.0, rho], [rho, 1.0]], size=n)
    return xy[:, 0], xy[:, 1]


def _scipy_r(x, y) -> float:
    return float(scipy.stats.pearsonr(x, y).statistic)


# --------------------------------------------------------------------------------------
# pearson / pearson_rows
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [3, 17, 256, 1000])
def test_pearson_matches_scipy(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n) * 3.0 + 5.0
    y = 0.3 * x + rng.standard_t(3, size=n)
    assert pearson(x, y) == pytest.approx(_scipy_r(x, y), abs=1e-12)


def test_pearson_rows_matches_scipy_row_by_row():
    rng = np.random.default_rng(7)
    x_SN = rng.normal(size=(50, 64))
    y_SN = rng.normal(size=(50, 64)) + 0.5 * x_SN
    got_S = pearson_rows(x_SN, y_SN)
    want_S = np.array([_scipy_r(x, y) for x, y in zip(x_SN, y_SN)])
    np.testing.assert_allclose(got_S, want_S, rtol=0, atol=1e-12)


def test_bootstrap_distribution_and_percentile_ci_match_scipy_per_resample():
    x, y = _correlated(256, 0.5, seed=3)
    idx_SN = bootstrap_indices(256, n_resamples=300, seed=11)
    theta_S = pearson_rows(x[idx_SN], y[idx_SN])
    want_S = np.array([_scipy_r(x[i], y[i]) for i in idx_SN])
    np.testing.assert_allclose(theta_S, want_S, rtol=0, atol=1e-12)

    lo, hi = percentile_ci(theta_S, level=0.95)
    want_lo, want_hi = np.percentile(want_S, [2.5, 97.5])
    assert lo == pytest.approx(want_lo, abs=1e-12)
    assert hi == pytest.approx(want_hi, abs=1e-12)

    # ... and cell_statistics reports exactly that interval.
    cs = cell_statistics(x, y, idx_SN)
    assert (cs.ci_low, cs.ci_high) == pytest.approx((want_lo, want_hi), abs=1e-12)
    assert cs.pearson == pytest.approx(_scipy_r(x, y), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_self_correlation_is_exactly_one(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=256) * rng.uniform(0.01, 100.0) + rng.normal() * 10.0
    assert pearson(x, x) == 1.0
    assert pearson(x, -x) == -1.0
    idx_SN = bootstrap_indices(256, n_resamples=500, seed=seed)
    r_S = pearson_rows(x[idx_SN], x[idx_SN])
    assert (r_S == 1.0).all()
    assert (jackknife_pearson(x, x) == 1.0).all()
    assert max_jackknife_influence(x, x) == 0.0


@pytest.mark.parametrize("scale", [1e-170, 1e-100, 1e100, 1e170])
def test_extreme_scales_neither_overflow_nor_underflow(scale):
    # Naive sum of squares would overflow (inf -> r = 0) or underflow (0 -> nan).
    x, y = _correlated(200, 0.4, seed=5)
    want = _scipy_r(x, y)
    assert pearson(x * scale, y) == pytest.approx(want, abs=1e-12)
    assert pearson(x * scale, y * scale) == pytest.approx(want, abs=1e-12)
    assert pearson(x * scale, x * scale) == 1.0


@pytest.mark.parametrize("n", [3, 7, 10, 100, 256])
@pytest.mark.parametrize("value", [0.1, 1 / 3, 3.3e-7, 12345.678])
def test_constant_that_does_not_center_to_zero_gives_nan(n, value):
    # mean([0.1] * n) is not exactly 0.1 for many n: centering leaves a tiny common
    # offset which must not be mistaken for variance.
    const = np.full(n, value)
    y = np.random.default_rng(n).normal(size=n)
    assert np.isnan(pearson(const, y)) and np.isnan(pearson(y, const))
    assert np.isnan(pearson_rows(const[None, :], y[None, :])[0])
    assert np.isnan(slope(const, y))
    assert np.isnan(spearman(const, y))


def test_constant_input_gives_nan():
    assert np.isnan(pearson(np.full(10, 3.0), np.arange(10.0)))
    assert np.isnan(pearson(np.arange(10.0), np.zeros(10)))
    r_S = pearson_rows(np.array([[1.0, 1.0, 1.0], [1.0, 2.0, 4.0]]), np.array([[1.0, 2.0, 3.0]] * 2))
    assert np.isnan(r_S[0])
    assert r_S[1] == pytest.approx(_scipy_r([1.0, 2.0, 4.0], [1.0, 2.0, 3.0]), abs=1e-12)


def test_pearson_is_clipped_to_unit_interval():
    rng = np.random.default_rng(0)
    for _ in range(200):
        x = rng.normal(size=37)
        a = rng.uniform(-1e3, 1e3)
        r = pearson(x, a * x + rng.normal())
        assert -1.0 <= r <= 1.0
        assert abs(r) == pytest.approx(1.0, abs=1e-12)


# --------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------


def test_bootstrap_indices_contract():
    idx_SN = bootstrap_indices(200, n_resamples=1000, seed=42)
    assert idx_SN.shape == (1000, 200)
    assert idx_SN.dtype == np.int64
    assert idx_SN.min() >= 0 and idx_SN.max() <= 199
    # Seeded with default_rng(seed): reproducible, shared by every cell.
    np.testing.assert_array_equal(idx_SN, bootstrap_indices(200, 1000, seed=42))
    np.testing.assert_array_equal(
        idx_SN, np.random.default_rng(42).integers(0, 200, size=(1000, 200))
    )
    assert not np.array_equal(idx_SN, bootstrap_indices(200, 1000, seed=43))
    # With replacement: about 1 - 1/e of prompts appear in a resample.
    share_unique = np.mean([np.unique(row).size / 200 for row in idx_SN[:50]])
    assert share_unique == pytest.approx(1 - np.exp(-1), abs=0.03)


def test_planted_correlation_is_covered():
    rho, n, n_seeds = 0.6, 400, 20
    idx_SN = bootstrap_indices(n, n_resamples=1000, seed=2024)  # shared, as in production
    hits = {"percentile": 0, "bca": 0}
    for seed in range(n_seeds):
        x, y = _correlated(n, rho, seed=100 + seed)
        for method in hits:
            cs = cell_statistics(x, y, idx_SN, ci_method=method, ci_level=0.95)
            assert cs.ci_low < cs.pearson < cs.ci_high
            hits[method] += cs.ci_low <= rho <= cs.ci_high
    assert hits["percentile"] >= 17, hits
    assert hits["bca"] >= 17, hits


def test_percentile_ci_drops_nan_and_validates():
    theta_S = np.concatenate([np.arange(101.0), [np.nan, np.nan]])
    assert percentile_ci(theta_S, level=0.5) == pytest.approx((25.0, 75.0), abs=1e-12)
    with pytest.raises(ValueError, match="nan"):
        percentile_ci(np.full(5, np.nan))
    with pytest.raises(ValueError, match="level"):
        percentile_ci(np.arange(10.0), level=95)


def _textbook_bca(x, y, theta_hat, theta_S, level):
    """Efron & Tibshirani eq. 14.10-14.15, with a brute-force jackknife.

    Ties theta_b == theta_hat count half in z0 (scipy.stats.bootstrap's convention).
    """
    n = len(x)
    z0 = scipy.stats.norm.ppf((np.sum(theta_S < theta_hat) + np.sum(theta_S <= theta_hat)) / (2 * len(theta_S)))
    jk = np.array([_scipy_r(np.delete(x, i), np.delete(y, i)) for i in range(n)])
    d = jk.mean() - jk
    a = np.sum(d**3) / (6 * np.sum(d**2) ** 1.5)
    out = []
    for z in scipy.stats.norm.ppf([(1 - level) / 2, (1 + level) / 2]):
        q = scipy.stats.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
        out.append(np.percentile(theta_S, 100 * q))
    return tuple(out)


@pytest.mark.parametrize("level", [0.9, 0.95])
def test_bca_matches_textbook_formula(level):
    x, y = _correlated(220, -0.3, seed=9)
    y = y + 0.5 * x**2  # skewed bootstrap distribution so z0 and a are both nonzero
    idx_SN = bootstrap_indices(220, n_resamples=800, seed=1)
    theta_S = pearson_rows(x[idx_SN], y[idx_SN])
    r = _scipy_r(x, y)
    got = bca_ci(x, y, r, theta_S, level=level)
    want = _textbook_bca(x, y, r, theta_S, level)
    assert got == pytest.approx(want, abs=1e-12)
    assert got != pytest.approx(percentile_ci(theta_S, level), abs=1e-6)  # BCa actually shifts


def test_bca_counts_ties_half():
    # Coarsened statistics make many theta_b equal theta_hat, exercising the tie rule.
    x, y = _correlated(220, 0.3, seed=2)
    idx_SN = bootstrap_indices(220, n_resamples=500, seed=3)
    theta_S = np.round(pearson_rows(x[idx_SN], y[idx_SN]), 2)
    r = round(_scipy_r(x, y), 2)
    assert np.sum(theta_S == r) > 20
    got = bca_ci(x, y, r, theta_S)
    assert got == pytest.approx(_textbook_bca(x, y, r, theta_S, 0.95), abs=1e-12)


def test_bca_and_percentile_match_scipy_bootstrap():
    x, y = _correlated(256, 0.5, seed=4)
    stat = lambda a, b, axis: scipy.stats.pearsonr(a, b, axis=axis).statistic  # noqa: E731
    theta_S = pearson_rows(*(v[bootstrap_indices(256, 1000, seed=0)] for v in (x, y)))
    for method, ours in (
        ("BCa", bca_ci(x, y, pearson(x, y), theta_S)),
        ("percentile", percentile_ci(theta_S)),
    ):
        res = scipy.stats.bootstrap(
            (x, y), stat, paired=True, vectorized=True, n_resamples=1000,
            method=method, rng=np.random.default_rng(0),
        )
        if not np.allclose(res.bootstrap_distribution, theta_S, rtol=0, atol=1e-12):
            pytest.skip("this scipy draws its resample indices differently; textbook test covers BCa")
        want = (res.confidence_interval.low, res.confidence_interval.high)
        assert ours == pytest.approx(want, abs=1e-12), method


# --------------------------------------------------------------------------------------
# jackknife
# --------------------------------------------------------------------------------------


def _brute_jackknife(x, y):
    return np.array([_scipy_r(np.delete(x, i), np.delete(y, i)) for i in range(len(x))])


@pytest.mark.parametrize("seed", range(3))
def test_jackknife_matches_leave_one_out_loop(seed):
    x, y = _correlated(150, 0.5, seed=seed)
    x = x + 1e3  # offset: the downdate must not lose digits to a large mean
    want_N = _brute_jackknife(x, y)
    np.testing.assert_allclose(jackknife_pearson(x, y), want_N, rtol=0, atol=1e-12)
    r = _scipy_r(x, y)
    assert max_jackknife_influence(x, y) == pytest.approx(np.max(np.abs(r - want_N)), abs=1e-12)


def test_jackknife_with_dominant_outlier():
    # Prompt 5 carries ~all of x's variance: dropping it is where O(N) downdates cancel.
    x, y = _correlated(120, 0.2, seed=8)
    x[5] = 1e7
    want_N = _brute_jackknife(x, y)
    np.testing.assert_allclose(jackknife_pearson(x, y), want_N, rtol=0, atol=1e-12)
    assert max_jackknife_influence(x, y) > 0.05  # the outlier does dominate r


# --------------------------------------------------------------------------------------
# spearman, slope, auroc
# --------------------------------------------------------------------------------------


def test_spearman_matches_scipy_including_ties():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 10, size=300).astype(float)
    y = x**3 + rng.normal(size=300) * 50
    assert spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert spearman(x, np.exp(x)) == 1.0


def test_slope_recovers_planted_slope():
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    y = 2.5 * x - 1.0 + 0.01 * rng.normal(size=400)
    assert slope(x, y) == pytest.approx(2.5, abs=0.005)
    assert slope(x, y) == pytest.approx(scipy.stats.linregress(x, y).slope, abs=1e-12)
    assert np.isnan(slope(np.ones(5), np.arange(5.0)))


def test_auroc_is_raw_not_folded():
    labels = np.array([0] * 50 + [1] * 50)
    scores = np.arange(100.0)
    assert auroc(scores, labels) == 1.0
    assert auroc(-scores, labels) == 0.0  # reversed probe: 0.0, NOT max(a, 1-a) = 1.0
    # sklearn's documented example.
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75, abs=1e-12)
    assert auroc([0.1, 0.4, 0.35, 0.8], np.array([False, False, True, True])) == pytest.approx(0.75)


def test_auroc_errors():
    with pytest.raises(ValueError, match="only class"):
        auroc([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="0/1"):
        auroc([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match="paired"):
        auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="scores_N"):
        auroc([0.1, np.nan, 0.3], [0, 1, 1])


# --------------------------------------------------------------------------------------
# cell_statistics
# --------------------------------------------------------------------------------------


def test_cell_statistics_fields_and_to_dict():
    x, y = _correlated(250, 0.7, seed=21)
    y = 0.5 * y
    idx_SN = bootstrap_indices(250, n_resamples=400, seed=0)
    cs = cell_statistics(x, y, idx_SN, ci_level=0.9, ci_method="bca")
    assert isinstance(cs, CellStats)
    assert cs.n == 250 and cs.n_resamples == 400
    assert cs.ci_level == 0.9 and cs.ci_method == "bca"
    assert cs.pearson == pytest.approx(_scipy_r(x, y), abs=1e-12)
    assert cs.spearman == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert cs.effect_ratio == pytest.approx(scipy.stats.linregress(x, y).slope, abs=1e-12)
    want_infl = np.max(np.abs(_scipy_r(x, y) - _brute_jackknife(x, y)))
    assert cs.max_jackknife_influence == pytest.approx(want_infl, abs=1e-12)
    assert cs.ci_low < cs.pearson < cs.ci_high

    d = cs.to_dict()
    assert list(d) == [
        "n", "pearson", "ci_low", "ci_high", "ci_level", "ci_method", "n_resamples",
        "spearman", "max_jackknife_influence", "effect_ratio",
    ]
    assert d["ci_high"] == cs.ci_high
    with pytest.raises(dataclasses.FrozenInstanceError):
        cs.pearson = 0.0  # type: ignore[misc]


def test_cell_statistics_errors_name_the_argument():
    x, y = _correlated(200, 0.5, seed=0)
    idx_SN = bootstrap_indices(200, n_resamples=10)

    with pytest.raises(ValueError, match=r"delta_source has 200 prompts, delta_target has 199"):
        cell_statistics(x, y[:-1], idx_SN)

    y_nan = y.copy()
    y_nan[17] = np.nan
    with pytest.raises(ValueError, match=r"delta_target contains 1 non-finite.*\[17\]"):
        cell_statistics(x, y_nan, idx_SN)

    x_inf = x.copy()
    x_inf[3] = np.inf
    with pytest.raises(ValueError, match="delta_source contains 1 non-finite"):
        cell_statistics(x_inf, y, idx_SN)

    with pytest.raises(ValueError, match="delta_target is constant"):
        cell_statistics(x, np.zeros(200), idx_SN)

    with pytest.raises(ValueError, match="idx_SN has 150 columns but the cell has 200"):
        cell_statistics(x, y, bootstrap_indices(150, n_resamples=10))

    bad_idx = idx_SN.copy()
    bad_idx[0, 0] = -1  # would silently wrap around in numpy
    with pytest.raises(ValueError, match=r"must lie in \[0, 199\]"):
        cell_statistics(x, y, bad_idx)

    with pytest.raises(ValueError, match="ci_method"):
        cell_statistics(x, y, idx_SN, ci_method="basic")  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="x_N has 3 prompts, y_N has 2"):
        pearson([1.0, 2.0, 3.0], [1.0, 2.0])


# --------------------------------------------------------------------------------------
# cosine_overstatement
# --------------------------------------------------------------------------------------


def test_cosine_overstatement_median_ratio():
    # medians by construction: cos 0.965, rho 0.616; 1 - 0.616/0.965 = 0.36166
    cos = np.array([0.90, 0.95, 0.965, 0.97, 0.99])
    rho = np.array([0.20, 0.50, 0.616, 0.70, 0.90])
    out = cosine_overstatement(rho, cos)
    assert out["median_cos"] == pytest.approx(0.965, abs=1e-12)
    assert out["median_rho"] == pytest.approx(0.616, abs=1e-12)
    assert out["one_minus_median_ratio"] == pytest.approx(0.3617, abs=1e-4)
    assert out["n"] == 5 and out["n_nan"] == 0
    assert set(out["formulae"]) >= {"one_minus_median_ratio", "share_high_cos_low_ce"}


def test_cosine_overstatement_share_and_nan_pairs():
    #           high cos & low rho?   yes    no(cos) no(rho) yes   boundary(cos=0.7: no) nan  nan
    cos = np.array([0.80, 0.60, 0.90, 0.99, 0.70, np.nan, 0.9])
    rho = np.array([0.10, 0.10, 0.55, 0.49, 0.10, 0.3, np.nan])
    out = cosine_overstatement(rho, cos, cos_threshold=0.7, ce_threshold=0.5)
    assert out["n"] == 5 and out["n_nan"] == 2
    assert out["share_high_cos_low_ce"] == pytest.approx(2 / 5, abs=1e-12)
    # Thresholds are honoured: lowering cos_threshold below 0.6 adds items 2 and 5.
    out2 = cosine_overstatement(rho, cos, cos_threshold=0.5, ce_threshold=0.5)
    assert out2["share_high_cos_low_ce"] == pytest.approx(4 / 5, abs=1e-12)
    with pytest.raises(ValueError, match="rho has 2 items, cos has 3"):
        cosine_overstatement([0.1, 0.2], [0.1, 0.2, 0.3])


def test_public_api_is_exported():
    for name in stats.__all__:
        assert hasattr(stats, name)


def test_cosine_overstatement_ratio_is_not_meaningful_when_cosine_is_below_rho():
    out = cosine_overstatement([0.85, 0.9, 0.8], [0.3, 0.2, 0.4])
    assert out["one_minus_median_ratio"] is None and "not meaningful" in out["one_minus_median_ratio_note"]
    assert out["share_high_cos_low_ce"] == 0.0  # the other named statistic is still defined
    zero = cosine_overstatement([0.1, 0.2], [0.0, 0.0])
    assert zero["one_minus_median_ratio"] is None
