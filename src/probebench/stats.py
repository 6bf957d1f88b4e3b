"""Statistics for one rho_CE cell: Pearson, paired bootstrap CIs, jackknife, effect ratio, AUROC.

A *cell* is (task, source model, target model). For each held-out prompt ``i`` we have
``delta_source_i`` and ``delta_target_i``: the change in token margin when the probe
direction is ablated in the source model and its transferred counterpart in the target.

    rho_CE = Pearson(delta_source, delta_target)

with a paired bootstrap CI. Every cell is resampled with the SAME index matrix
(:func:`bootstrap_indices`), so intervals of different cells are directly comparable.

Shape suffixes: ``_N`` = one value per prompt, ``_S`` = one per bootstrap resample,
``_SN`` = resample x prompt (see CONTRIBUTING.md for every suffix).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> src_N = rng.normal(size=256)
>>> tgt_N = 0.8 * src_N + 0.6 * rng.normal(size=256)
>>> idx_SN = bootstrap_indices(256, n_resamples=1000, seed=0)
>>> cs = cell_statistics(src_N, tgt_N, idx_SN)
>>> cs.ci_low < cs.pearson < cs.ci_high
True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike

__all__ = [
    "CellStats",
    "auroc",
    "bca_ci",
    "bh_adjust",
    "bootstrap_indices",
    "ccc",
    "ccc_with_ci",
    "cell_statistics",
    "center_within_class",
    "cosine_overstatement",
    "jackknife_pearson",
    "max_jackknife_influence",
    "null_test",
    "pearson",
    "pearson_rows",
    "percentile_ci",
    "slope",
    "spearman",
]

CIMethod = Literal["percentile", "bca"]
_CI_METHODS = ("percentile", "bca")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _as_1d(a: ArrayLike, name: str) -> np.ndarray:
    a_N = np.asarray(a, dtype=np.float64)
    if a_N.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per prompt), got shape {a_N.shape}")
    return a_N


def _paired_1d(
    x: ArrayLike, y: ArrayLike, xname: str, yname: str, unit: str = "prompts"
) -> tuple[np.ndarray, np.ndarray]:
    x_N, y_N = _as_1d(x, xname), _as_1d(y, yname)
    if x_N.shape[0] != y_N.shape[0]:
        raise ValueError(
            f"{xname} has {x_N.shape[0]} {unit}, {yname} has {y_N.shape[0]}: they must be paired"
        )
    return x_N, y_N


def _require_finite(a_N: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(a_N)
    if bad.any():
        first = np.flatnonzero(bad)[:5].tolist()
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (NaN/inf), "
            f"first at index {first}: drop or fix those prompts before computing statistics"
        )


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return level


def _center_scale_rows(a_SN: np.ndarray) -> np.ndarray:
    """Center each row, then scale it by a power of two so its max |value| is in [0.5, 1).

    Multiplying by 2**k is exact in binary floating point, so the Pearson value is
    bit-for-bit unchanged; the scaling only keeps sums of squares away from overflow
    (|values| ~ 1e155) and underflow (|values| ~ 1e-160), which would otherwise turn a
    perfectly good correlation into inf/nan or fake a constant input.
    """
    c_SN = a_SN - a_SN.mean(axis=-1, keepdims=True)
    hi_S1 = c_SN.max(axis=-1, keepdims=True)
    lo_S1 = c_SN.min(axis=-1, keepdims=True)
    _, e_S1 = np.frexp(np.maximum(hi_S1, -lo_S1))  # max|c| = f * 2**e, f in [0.5, 1)
    # A constant row need not center to exactly 0 (mean([0.1] * 3) != 0.1 in floats); its
    # centered values are then a tiny common offset that would fake a nonzero variance.
    # Zero it so sxx == 0 and r is reported as nan. (nan rows: hi == lo is False, stays nan.)
    # Multiply by the per-row factor 2**-e rather than np.ldexp over the whole (B, N)
    # array: same exact result, ~8x faster (ldexp is not SIMD-vectorized).
    scale_S1 = np.where(hi_S1 == lo_S1, 0.0, np.ldexp(1.0, -e_S1))
    return c_SN * scale_S1


def _r_from_sums(sxy: np.ndarray, sxx: np.ndarray, syy: np.ndarray) -> np.ndarray:
    """r = sxy / sqrt(sxx * syy), nan where a variance is zero, clipped to [-1, 1].

    ``sqrt(sxx * syy)`` rather than ``sqrt(sxx) * sqrt(syy)``: when x == y we have
    sxx == syy == sxy bit-for-bit, and for IEEE binary floats sqrt(fl(a * a)) == a exactly,
    so r == 1.0 exactly. sqrt(a) * sqrt(a) is generally NOT a (e.g. a = 2).
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sxy / np.sqrt(sxx * syy)
    r = np.where((sxx > 0) & (syy > 0), r, np.nan)
    # |r| can exceed 1 by an ulp from rounding when x ~ +/- a * y.
    return np.clip(r, -1.0, 1.0)


# --------------------------------------------------------------------------------------
# Pearson
# --------------------------------------------------------------------------------------


def pearson_rows(x_SN: ArrayLike, y_SN: ArrayLike) -> np.ndarray:
    """Pearson r of each row pair: ``r_S[b] = pearson(x_SN[b], y_SN[b])``.

    Same formula as :func:`pearson` (centered float64, ``sxy / sqrt(sxx * syy)``), so a
    resample of identical arrays gives exactly 1.0. Rows with zero variance in x or y
    give nan. Non-finite input propagates to nan.

    >>> import numpy as np
    >>> x_SN = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    >>> y_SN = np.array([[2.0, 4.0, 6.0], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    >>> pearson_rows(x_SN, y_SN).tolist()
    [1.0, -1.0, nan]
    """
    x_SN = np.asarray(x_SN, dtype=np.float64)
    y_SN = np.asarray(y_SN, dtype=np.float64)
    if x_SN.ndim != 2 or x_SN.shape != y_SN.shape:
        raise ValueError(
            f"x_SN and y_SN must be 2-D with equal shapes (resamples, prompts), "
            f"got {x_SN.shape} and {y_SN.shape}"
        )
    B, N = x_SN.shape
    if N < 2:
        raise ValueError(f"Pearson needs at least 2 prompts per row, got {N}")
    # Work through blocks of rows whose temporaries stay cache-sized: full (B, N)
    # temporaries (B = 1000, N = 256 -> 2 MB each) make it ~2x slower. Rows are
    # independent, so blocking does not change any result bit.
    rows = max(1, _BLOCK_ELEMENTS // N)
    r_S = np.empty(B, dtype=np.float64)
    for start in range(0, B, rows):
        stop = start + rows
        r_S[start:stop] = _pearson_block(x_SN[start:stop], y_SN[start:stop])
    return r_S


_BLOCK_ELEMENTS = 1 << 15  # 256 KiB of float64 per temporary: fits in L2


def _pearson_block(x_SN: np.ndarray, y_SN: np.ndarray) -> np.ndarray:
    xc_SN = _center_scale_rows(x_SN)
    yc_SN = _center_scale_rows(y_SN)
    # All three sums use the identical expression (elementwise product, then the same
    # contiguous row reduction), so identical inputs give bit-identical sums.
    sxy_S = (xc_SN * yc_SN).sum(axis=1)
    sxx_S = (xc_SN * xc_SN).sum(axis=1)
    syy_S = (yc_SN * yc_SN).sum(axis=1)
    return _r_from_sums(sxy_S, sxx_S, syy_S)


def pearson(x_N: ArrayLike, y_N: ArrayLike) -> float:
    """Pearson correlation of two paired 1-D arrays.

    Computed as ``sxy / sqrt(sxx * syy)`` on centered float64 data, so ``pearson(x, x)``
    is exactly 1.0 (the diagonal of a rho matrix is 1.0 by construction). Clipped to
    [-1, 1]. Returns nan when x or y is constant (zero variance: r is undefined) or
    contains NaN/inf.

    >>> pearson([1.0, 2.0, 4.0], [1.0, 2.0, 4.0])
    1.0
    >>> round(pearson([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]), 6)
    0.5
    >>> pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    nan
    """
    x_N, y_N = _paired_1d(x_N, y_N, "x_N", "y_N")
    # Delegate to the row version so the point estimate and the bootstrap
    # distribution are computed by literally the same code.
    return float(pearson_rows(x_N[None, :], y_N[None, :])[0])


# --------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------


def bootstrap_indices(n: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """Paired-bootstrap index matrix ``idx_SN`` of shape (n_resamples, n), dtype int64.

    Row b lists the prompts drawn (with replacement) for resample b. Build it ONCE per
    prompt set and share it across every cell so their CIs are comparable (same
    resamples, correlated Monte-Carlo error). Drawn as
    ``np.random.default_rng(seed).integers(0, n, size=(B, n))``.

    >>> idx_SN = bootstrap_indices(5, n_resamples=3, seed=0)
    >>> idx_SN.shape, idx_SN.dtype.name
    ((3, 5), 'int64')
    >>> bool((bootstrap_indices(5, 3, seed=0) == idx_SN).all())
    True
    """
    n, n_resamples = int(n), int(n_resamples)
    if n < 2:
        raise ValueError(f"n (number of prompts) must be >= 2, got {n}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_resamples, n), dtype=np.int64)


def _finite_resamples(theta_S: ArrayLike) -> np.ndarray:
    theta_S = np.asarray(theta_S, dtype=np.float64)
    if theta_S.ndim != 1:
        raise ValueError(f"theta_S must be 1-D (one statistic per resample), got {theta_S.shape}")
    # nan arises when a resample is constant in x or y (r undefined); those resamples
    # carry no information about r and are dropped.
    ok_S = ~np.isnan(theta_S)
    if not ok_S.any():
        raise ValueError(
            f"all {theta_S.shape[0]} bootstrap statistics are nan (constant input?): no CI"
        )
    return theta_S[ok_S]


def percentile_ci(theta_S: ArrayLike, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI: the (1-level)/2 and (1+level)/2 quantiles of ``theta_S``.

    Uses ``np.percentile`` (default linear interpolation) on the non-nan resample
    statistics.

    >>> percentile_ci(np.arange(101.0), level=0.5)
    (25.0, 75.0)
    """
    level = _check_level(level)
    th_S = _finite_resamples(theta_S)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(th_S, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return float(lo), float(hi)


def bca_ci(
    x_N: ArrayLike,
    y_N: ArrayLike,
    theta_hat: float,
    theta_S: ArrayLike,
    level: float = 0.95,
) -> tuple[float, float]:
    """Bias-corrected and accelerated (BCa) bootstrap CI for Pearson r (Efron & Tibshirani 14.3).

    * bias correction ``z0 = Phi^-1(share of theta_S below theta_hat)``, ties counted half
      (same convention as ``scipy.stats.bootstrap``);
    * acceleration ``a = sum(d^3) / (6 * sum(d^2)^1.5)``, ``d = mean(r_(-i)) - r_(-i)``
      from the leave-one-out jackknife of Pearson on (x_N, y_N);
    * endpoints = ``np.percentile`` of the non-nan ``theta_S`` at
      ``Phi(z0 + (z0 + z) / (1 - a (z0 + z)))`` for z = Phi^-1((1 -/+ level) / 2).

    Returns (nan, nan) when BCa is undefined: every resample lies on one side of
    theta_hat (z0 = +/-inf). ``x_N``/``y_N`` must be the data ``theta_S`` was resampled from.

    >>> rng = np.random.default_rng(1)
    >>> x_N = rng.normal(size=300); y_N = x_N + rng.normal(size=300)
    >>> idx_SN = bootstrap_indices(300, 2000, seed=1)
    >>> lo, hi = bca_ci(x_N, y_N, pearson(x_N, y_N), pearson_rows(x_N[idx_SN], y_N[idx_SN]))
    >>> bool(lo < pearson(x_N, y_N) < hi)
    True
    """
    level = _check_level(level)
    x_N, y_N = _paired_1d(x_N, y_N, "x_N", "y_N")
    theta_hat = float(theta_hat)
    if np.isnan(theta_hat):
        raise ValueError("theta_hat is nan: BCa needs a defined point estimate")
    th_S = _finite_resamples(theta_S)
    B = th_S.shape[0]

    below = np.count_nonzero(th_S < theta_hat) + np.count_nonzero(th_S <= theta_hat)
    z0 = scipy.stats.norm.ppf(below / (2.0 * B))
    if not np.isfinite(z0):
        return float("nan"), float("nan")

    r_loo_N = jackknife_pearson(x_N, y_N)
    d_N = np.nanmean(r_loo_N) - r_loo_N
    d_N = d_N[~np.isnan(d_N)]
    den = np.sum(d_N**2)
    # All leave-one-out estimates equal (e.g. x == y gives r_(-i) == 1): no skewness, a = 0.
    a = float(np.sum(d_N**3) / (6.0 * den**1.5)) if den > 0 else 0.0

    alpha = (1.0 - level) / 2.0
    z_lo, z_hi = scipy.stats.norm.ppf([alpha, 1.0 - alpha])
    q = []
    for z in (z_lo, z_hi):
        num = z0 + z
        q.append(scipy.stats.norm.cdf(z0 + num / (1.0 - a * num)))
    lo, hi = np.percentile(th_S, [100.0 * q[0], 100.0 * q[1]])
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------
# jackknife
# --------------------------------------------------------------------------------------

# If leaving one prompt out removes more than this share of a sum of squares, the O(N)
# downdate loses too many digits to cancellation; such entries are recomputed directly.
_DOWNDATE_MIN_REMAINING = 1e-6


def jackknife_pearson(x_N: ArrayLike, y_N: ArrayLike) -> np.ndarray:
    """Leave-one-out Pearson: ``r_N[i] = pearson(delete(x, i), delete(y, i))``, in O(N).

    Uses running sums of the centered data, downdated by each prompt:
    ``S_(-i) = S - x_i y_i - (Sx - x_i)(Sy - y_i) / (N - 1)``. Entries where one prompt
    carries almost all of a variance (where the downdate would cancel catastrophically)
    are recomputed exactly. nan where dropping the prompt leaves x or y constant.

    >>> x_N, y_N = np.array([1.0, 2.0, 3.0, 10.0]), np.array([1.0, 2.0, 3.0, 4.0])
    >>> np.round(jackknife_pearson(x_N, y_N), 6).tolist()  # dropping the outlier: r -> 1
    [0.917663, 0.877338, 0.973223, 1.0]
    >>> bool(np.isclose(jackknife_pearson(x_N, y_N)[0], pearson(x_N[1:], y_N[1:])))
    True
    """
    x_N, y_N = _paired_1d(x_N, y_N, "x_N", "y_N")
    n = x_N.shape[0]
    if n < 3:
        raise ValueError(f"jackknife Pearson needs at least 3 prompts, got {n}")
    xc_N = _center_scale_rows(x_N[None, :])[0]
    yc_N = _center_scale_rows(y_N[None, :])[0]
    sx, sy = xc_N.sum(), yc_N.sum()  # ~0, kept so the downdate is exact algebra
    sxx, syy, sxy = (xc_N * xc_N).sum(), (yc_N * yc_N).sum(), (xc_N * yc_N).sum()
    rx_N, ry_N = sx - xc_N, sy - yc_N
    # Each loo sum uses the same expression, so x == y gives bit-identical sums and r == 1.
    sxx_N = (sxx - xc_N * xc_N) - rx_N * rx_N / (n - 1)
    syy_N = (syy - yc_N * yc_N) - ry_N * ry_N / (n - 1)
    sxy_N = (sxy - xc_N * yc_N) - rx_N * ry_N / (n - 1)
    r_N = _r_from_sums(sxy_N, sxx_N, syy_N)

    shaky_N = (sxx_N < _DOWNDATE_MIN_REMAINING * sxx) | (syy_N < _DOWNDATE_MIN_REMAINING * syy)
    for i in np.flatnonzero(shaky_N):  # rare: only prompts that dominate a variance
        keep_N = np.arange(n) != i
        r_N[i] = pearson(x_N[keep_N], y_N[keep_N])
    return r_N


def max_jackknife_influence(x_N: ArrayLike, y_N: ArrayLike) -> float:
    """Largest change in r from dropping one prompt: ``max_i |r - r_(-i)|``.

    A large value means rho_CE hinges on a few prompts. nan when r or any r_(-i) is
    undefined (some prompt is the only source of variance).

    >>> round(max_jackknife_influence([1.0, 2.0, 3.0, 10.0], [1.0, 2.0, 3.0, 4.0]), 6)
    0.114562
    """
    r = pearson(x_N, y_N)
    return float(np.max(np.abs(r - jackknife_pearson(x_N, y_N))))


# --------------------------------------------------------------------------------------
# companions of rho
# --------------------------------------------------------------------------------------


def spearman(x_N: ArrayLike, y_N: ArrayLike) -> float:
    """Spearman rank correlation = :func:`pearson` of average ranks (nan for constant input).

    >>> spearman([1.0, 2.0, 3.0, 4.0], [1.0, 4.0, 9.0, 100.0])
    1.0
    """
    x_N, y_N = _paired_1d(x_N, y_N, "x_N", "y_N")
    return pearson(scipy.stats.rankdata(x_N), scipy.stats.rankdata(y_N))


def slope(x_N: ArrayLike, y_N: ArrayLike) -> float:
    """OLS slope of y on x: ``sxy / sxx`` (nan when x is constant).

    As ``slope(delta_source, delta_target)`` this is the *effect ratio*: rho says the
    effects co-vary across prompts, the slope says whether they are equally strong
    (1.0 = ablating the direction moves the target's margin as much as the source's).

    >>> slope([0.0, 1.0, 2.0], [1.0, 3.5, 6.0])
    2.5
    """
    x_N, y_N = _paired_1d(x_N, y_N, "x_N", "y_N")
    if x_N.shape[0] < 2 or x_N.max() == x_N.min():
        # Checked on the raw data: a constant x need not center to exactly 0 (see
        # _center_scale_rows), and the tiny leftover would give a huge bogus slope.
        return float("nan")
    xc_N, yc_N = x_N - x_N.mean(), y_N - y_N.mean()
    return float((xc_N * yc_N).sum() / (xc_N * xc_N).sum())


def auroc(scores_N: ArrayLike, labels_N: ArrayLike) -> float:
    """Raw AUROC of ``scores_N`` for the positive class (label 1), via sklearn.

    Deliberately never ``max(a, 1 - a)``: a probe that ranks the classes backwards
    scores below 0.5, and that must stay visible.

    >>> auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]), auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1])
    (1.0, 0.0)
    """
    from sklearn.metrics import roc_auc_score  # sklearn import is slow; only pay for it here

    scores = _as_1d(scores_N, "scores_N")
    labels = np.asarray(labels_N)
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"scores_N has shape {scores.shape}, labels_N has shape {labels.shape}: "
            "they must be paired 1-D arrays"
        )
    _require_finite(scores, "scores_N")
    classes = np.unique(labels)
    if not np.isin(classes, [0, 1]).all():
        raise ValueError(f"labels_N must be 0/1 (or bool), got classes {classes.tolist()}")
    if classes.shape[0] < 2:
        raise ValueError(
            f"labels_N contains only class {classes.tolist()}: AUROC needs both 0 and 1"
        )
    return float(roc_auc_score(labels.astype(np.int64), scores))


def calibrated_accuracy(train_scores_N: ArrayLike, train_labels_N: ArrayLike, test_scores_N: ArrayLike,
                        test_labels_N: ArrayLike) -> tuple[float, float]:
    """Held-out accuracy of `score > t` with the threshold t that maximizes train accuracy (the
    midpoint of the best gap; the lowest such midpoint on ties), and t. Judges whether a model
    does a task without penalizing a constant bias: a base model that leans to " no" reads the
    class well (high AUROC) yet fails a threshold of 0.

    >>> calibrated_accuracy([-3.0, -2.5, -1.0, -0.5], [0, 0, 1, 1], [-2.8, -0.7], [0, 1])
    (1.0, -1.75)
    """
    s = _as_1d(train_scores_N, "train_scores_N")
    y = np.asarray(train_labels_N).astype(bool)
    if y.shape != s.shape:
        raise ValueError(f"train scores {s.shape} and labels {y.shape} must be paired 1-D arrays")
    _require_finite(s, "train_scores_N")
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # threshold below the i-th sorted score: the first i are predicted 0, the rest 1
    correct_i = np.concatenate([[0], np.cumsum(~y_sorted)]) + np.concatenate([np.cumsum(y_sorted[::-1])[::-1], [0]])
    distinct = np.concatenate([[True], s_sorted[1:] > s_sorted[:-1], [True]])  # cut only between distinct scores
    best = int(np.flatnonzero(distinct & (correct_i == correct_i[distinct].max()))[0])
    t = (-np.inf if best == 0 else np.inf if best == len(s) else float((s_sorted[best - 1] + s_sorted[best]) / 2))
    test = _as_1d(test_scores_N, "test_scores_N")
    return float(((test > t) == np.asarray(test_labels_N).astype(bool)).mean()), t


def below(value: float, threshold: float) -> str:
    """`value` with as many digits as it takes not to print it as the threshold it misses
    (0.5977 against 0.6 is '0.598', never '0.60').

    >>> below(0.5977, 0.6), below(0.59999, 0.6), below(0.41, 0.6)
    ('0.598', '0.59999', '0.41')
    """
    for digits in range(2, 10):
        text = f"{value:.{digits}f}".rstrip("0")
        if (float(text) < threshold) == (value < threshold) and float(text) != threshold:
            return text if not text.endswith(".") else text + "0"
    return repr(value)


# --------------------------------------------------------------------------------------
# one cell
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellStats:
    """Summary statistics of one (task, source, target) cell.

    ``effect_ratio`` is the OLS slope of delta_target on delta_source. ``n_resamples`` is
    the number of bootstrap resamples drawn (``idx_SN.shape[0]``).
    """

    n: int
    pearson: float
    ci_low: float
    ci_high: float
    ci_level: float
    ci_method: str
    n_resamples: int
    spearman: float
    max_jackknife_influence: float
    effect_ratio: float

    def to_dict(self) -> dict[str, Any]:
        """Plain-python dict (JSON-serializable apart from nan).

        >>> CellStats(3, 0.5, 0.1, 0.8, 0.95, "percentile", 10, 0.4, 0.2, 1.1).to_dict()["ci_high"]
        0.8
        """
        return dataclasses.asdict(self)


def cell_statistics(
    delta_source_N: ArrayLike,
    delta_target_N: ArrayLike,
    idx_SN: ArrayLike,
    *,
    ci_level: float = 0.95,
    ci_method: CIMethod = "percentile",
) -> CellStats:
    """All statistics of one cell, bootstrapped over the shared index matrix ``idx_SN``.

    Raises ValueError for unpaired lengths, NaN/inf in either delta (naming which), a
    constant delta (Pearson undefined), or an ``idx_SN`` that does not index N prompts.

    >>> rng = np.random.default_rng(0)
    >>> src_N = rng.normal(size=200); tgt_N = 2.0 * src_N + 0.1 * rng.normal(size=200)
    >>> cs = cell_statistics(src_N, tgt_N, bootstrap_indices(200, 500), ci_method="bca")
    >>> cs.n, cs.n_resamples, cs.ci_method, round(cs.effect_ratio, 1)
    (200, 500, 'bca', 2.0)
    """
    src_N, tgt_N = _paired_1d(delta_source_N, delta_target_N, "delta_source", "delta_target")
    _require_finite(src_N, "delta_source")
    _require_finite(tgt_N, "delta_target")
    n = src_N.shape[0]
    if n < 3:
        raise ValueError(f"a cell needs at least 3 prompts, got {n}")
    for name, a_N in (("delta_source", src_N), ("delta_target", tgt_N)):
        if np.all(a_N == a_N[0]):
            raise ValueError(
                f"{name} is constant ({a_N[0]!r} for all {n} prompts): Pearson is undefined "
                "(did the ablation change anything?)"
            )
    if ci_method not in _CI_METHODS:
        raise ValueError(f"ci_method must be one of {_CI_METHODS}, got {ci_method!r}")
    ci_level = _check_level(ci_level)

    idx_SN = np.asarray(idx_SN)
    if idx_SN.ndim != 2 or not np.issubdtype(idx_SN.dtype, np.integer):
        raise ValueError(
            f"idx_SN must be a 2-D integer array (resamples, prompts), "
            f"got shape {idx_SN.shape} dtype {idx_SN.dtype}"
        )
    if idx_SN.shape[1] != n:
        raise ValueError(
            f"idx_SN has {idx_SN.shape[1]} columns but the cell has {n} prompts: "
            "the index matrix was built for a different prompt set"
        )
    # Negative indices would silently wrap around in numpy instead of failing.
    if idx_SN.size and (idx_SN.min() < 0 or idx_SN.max() >= n):
        raise ValueError(
            f"idx_SN values span [{idx_SN.min()}, {idx_SN.max()}], must lie in [0, {n - 1}]"
        )

    r = pearson(src_N, tgt_N)
    # == pearson_rows(src_N[idx_SN], tgt_N[idx_SN]), gathered block by block so the
    # resampled (B, N) copies are never materialized in full.
    rows = max(1, _BLOCK_ELEMENTS // n)
    theta_S = np.empty(idx_SN.shape[0], dtype=np.float64)
    for start in range(0, idx_SN.shape[0], rows):
        i_sN = idx_SN[start : start + rows]  # b = one block of resamples
        theta_S[start : start + rows] = _pearson_block(src_N[i_sN], tgt_N[i_sN])
    if ci_method == "percentile":
        lo, hi = percentile_ci(theta_S, ci_level)
    else:
        lo, hi = bca_ci(src_N, tgt_N, r, theta_S, ci_level)

    return CellStats(
        n=int(n),
        pearson=r,
        ci_low=lo,
        ci_high=hi,
        ci_level=ci_level,
        ci_method=ci_method,
        n_resamples=int(idx_SN.shape[0]),
        spearman=spearman(src_N, tgt_N),
        max_jackknife_influence=max_jackknife_influence(src_N, tgt_N),
        effect_ratio=slope(src_N, tgt_N),
    )


def _center_within(a_SN: np.ndarray, lab_SN: np.ndarray) -> np.ndarray:
    """Subtract from each value the mean of its label class within the same row (resample)."""
    out_SN = a_SN.copy()
    for c in np.unique(lab_SN):
        m_SN = lab_SN == c
        n_S1 = m_SN.sum(axis=1, keepdims=True)
        mean_S1 = np.where(n_S1 > 0, (a_SN * m_SN).sum(axis=1, keepdims=True) / np.maximum(n_S1, 1), 0.0)
        out_SN -= mean_S1 * m_SN
    return out_SN


def center_within_class(a_N: ArrayLike, labels_N: ArrayLike) -> np.ndarray:
    """`a_N` minus the mean of its label class.

    >>> center_within_class([1.0, 3.0, 10.0, 20.0], [0, 0, 1, 1]).tolist()
    [-1.0, 1.0, -5.0, 5.0]
    """
    a_N = _as_1d(a_N, "a_N")
    return _center_within(a_N[None], _as_1d(labels_N, "labels_N")[None])[0]


def within_class_pearson(
    x_N: ArrayLike, y_N: ArrayLike, labels_N: ArrayLike, idx_SN: ArrayLike, *, ci_level: float = 0.95
) -> tuple[float, float, float]:
    """Pearson of x and y after centring each within its label class (the partial correlation
    on a binary label), with a percentile CI over the shared resamples ``idx_SN``; class means
    are recomputed inside every resample. Returns (r, ci_low, ci_high).

    Ablating a class-separating direction moves every delta with the label, so the pooled r is
    largely corr(x, label) * corr(y, label); this one says whether the per-prompt effects agree
    beyond the label. A pure label effect gives r near 0:

    >>> rng = np.random.default_rng(0)
    >>> lab = rng.integers(0, 2, 400).astype(float)
    >>> x = 3 * lab + rng.normal(size=400); y = 3 * lab + rng.normal(size=400)
    >>> round(pearson(x, y), 1), abs(within_class_pearson(x, y, lab, bootstrap_indices(400, 200))[0]) < 0.15
    (0.7, True)
    """
    x_N, y_N = _paired_1d(x_N, y_N, "x_N", "y_N")
    lab_N = _as_1d(labels_N, "labels_N")
    if lab_N.shape != x_N.shape:
        raise ValueError(f"labels_N has {lab_N.shape[0]} entries but the cell has {x_N.shape[0]} prompts")
    idx_SN = np.asarray(idx_SN)
    r = pearson(_center_within(x_N[None], lab_N[None])[0], _center_within(y_N[None], lab_N[None])[0])
    rows = max(1, _BLOCK_ELEMENTS // x_N.shape[0])
    theta_S = np.empty(idx_SN.shape[0], dtype=np.float64)
    for start in range(0, idx_SN.shape[0], rows):
        i_sN = idx_SN[start : start + rows]
        lab_sN = lab_N[i_sN]
        theta_S[start : start + rows] = _pearson_block(_center_within(x_N[i_sN], lab_sN),
                                                       _center_within(y_N[i_sN], lab_sN))
    lo, hi = percentile_ci(theta_S, _check_level(ci_level))
    return r, lo, hi


# --------------------------------------------------------------------------------------
# agreement that sees scale: Lin's concordance correlation
# --------------------------------------------------------------------------------------


def _ccc_block(x_SN: np.ndarray, y_SN: np.ndarray) -> np.ndarray:
    mx_S1, my_S1 = x_SN.mean(axis=1, keepdims=True), y_SN.mean(axis=1, keepdims=True)
    xc_SN, yc_SN = x_SN - mx_S1, y_SN - my_S1
    n = x_SN.shape[1]
    sxy_S = (xc_SN * yc_SN).sum(axis=1) / n
    sxx_S = (xc_SN * xc_SN).sum(axis=1) / n
    syy_S = (yc_SN * yc_SN).sum(axis=1) / n
    den_S = sxx_S + syy_S + (mx_S1[:, 0] - my_S1[:, 0]) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        c_S = 2.0 * sxy_S / den_S
    # x == y gives 2 sxx / 2 sxx: exactly 1.0 in floats
    return np.clip(np.where(den_S > 0, c_S, np.nan), -1.0, 1.0)


def ccc(x_N: ArrayLike, y_N: ArrayLike) -> float:
    """Lin's concordance correlation ``2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2)``
    (population moments): 1 only when y == x, and it shrinks with any difference of scale or
    offset, not only with scatter. On effects in clean-margin SDs it is the agreement a reader
    means by "the same mechanism": two near-inert directions whose tiny effects co-vary have a
    high Pearson but a CCC near 0. nan when both inputs are constant and equal.

    >>> ccc([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]), round(pearson([1.0, 2.0, 3.0], [0.01, 0.02, 0.03]), 6)
    (1.0, 1.0)
    >>> round(ccc([1.0, 2.0, 3.0], [0.01, 0.02, 0.03]), 3)  # same pattern, 1/100 of the size
    0.003
    """
    x_N, y_N = _paired_1d(x_N, y_N, "x_N", "y_N")
    return float(_ccc_block(x_N[None, :], y_N[None, :])[0])


def ccc_with_ci(x_N: ArrayLike, y_N: ArrayLike, idx_SN: ArrayLike, *, labels_N: ArrayLike | None = None,
                ci_level: float = 0.95) -> tuple[float, float, float]:
    """(CCC, percentile CI low, high) over the shared resamples ``idx_SN``. With ``labels_N``
    both effects are first centred within each label class (inside every resample), so the
    value says whether the per-prompt effects agree beyond the label (cf.
    :func:`within_class_pearson`); a pure label effect then gives a CCC near 0.

    >>> rng = np.random.default_rng(0); lab = rng.integers(0, 2, 400).astype(float)
    >>> x = 3 * lab + rng.normal(size=400); y = 3 * lab + rng.normal(size=400)
    >>> idx = bootstrap_indices(400, 200)
    >>> round(ccc_with_ci(x, y, idx)[0], 1), abs(ccc_with_ci(x, y, idx, labels_N=lab)[0]) < 0.15
    (0.7, True)
    """
    x_N, y_N = _paired_1d(x_N, y_N, "x_N", "y_N")
    idx_SN = np.asarray(idx_SN)
    lab_N = None if labels_N is None else _as_1d(labels_N, "labels_N")

    def _stat(i_sN: np.ndarray | None) -> np.ndarray:
        xs, ys = (x_N[None], y_N[None]) if i_sN is None else (x_N[i_sN], y_N[i_sN])
        if lab_N is not None:
            lab = lab_N[None] if i_sN is None else lab_N[i_sN]
            xs, ys = _center_within(xs, lab), _center_within(ys, lab)
        return _ccc_block(xs, ys)

    c = float(_stat(None)[0])
    rows = max(1, _BLOCK_ELEMENTS // x_N.shape[0])
    theta_S = np.concatenate([_stat(idx_SN[s:s + rows]) for s in range(0, idx_SN.shape[0], rows)])
    lo, hi = percentile_ci(theta_S, _check_level(ci_level))
    return c, lo, hi


@dataclass(frozen=True)
class NullTest:
    """An observed statistic against the draws of its null (one per random direction).

    ``p_empirical = (1 + #{null >= observed}) / (1 + J)`` (never 0; its resolution is 1/(J+1)).
    ``p_fitted``: the null's Fisher-z values taken as normal with unknown mean and variance; a
    new draw then follows Student's t with J-1 degrees of freedom around their mean, scaled by
    s * sqrt(1 + 1/J), and p is its upper tail at the observed z. ``fit_p``: Shapiro-Wilk's p
    for that normality (the check of the fit against the empirical draws). ``p``: the empirical
    p where the draws resolve 0.01 (J >= 99); with fewer, the fitted p where the fit holds
    (J >= 8 and fit_p >= 0.01); else the empirical one (which then cannot go below 1/(J+1)).
    """

    observed: float
    n_draws: int
    null_low: float
    null_high: float
    p_empirical: float
    p_fitted: float
    fit_p: float
    p: float


MIN_FIT_DRAWS = 8
FIT_ALPHA = 0.01
EMPIRICAL_DRAWS = 99  # p resolution 0.01


def null_test(observed: float, null_J: ArrayLike) -> NullTest:
    """One-sided test of ``observed`` against ``null_J`` (see :class:`NullTest`). nan draws
    (undefined statistics) are dropped; an undefined observation gives p = nan.

    >>> rng = np.random.default_rng(0); null = np.tanh(rng.normal(0.0, 0.05, size=16))
    >>> t = null_test(0.6, null)
    >>> t.p_empirical == 1 / 17, t.p < 1e-6, t.fit_p > 0.01
    (True, True, True)
    >>> 0.2 < null_test(float(np.median(null)), null).p < 0.8
    True
    """
    null_J = np.asarray(null_J, dtype=np.float64)
    null_J = null_J[~np.isnan(null_J)]
    J = int(null_J.shape[0])
    nan = float("nan")
    if J == 0:
        return NullTest(float(observed), 0, nan, nan, nan, nan, nan, nan)
    lo, hi = float(null_J.min()), float(null_J.max())
    if np.isnan(observed):
        return NullTest(nan, J, lo, hi, nan, nan, nan, nan)
    p_emp = float((1 + np.count_nonzero(null_J >= observed)) / (1 + J))
    p_fit = fit_p = nan
    if J >= 3:
        z_J = np.arctanh(np.clip(null_J, -0.999999, 0.999999))
        z_obs = float(np.arctanh(np.clip(observed, -0.999999, 0.999999)))
        m, s = float(z_J.mean()), float(z_J.std(ddof=1))
        if s > 0:
            p_fit = float(scipy.stats.t.sf((z_obs - m) / (s * np.sqrt(1.0 + 1.0 / J)), df=J - 1))
            fit_p = float(scipy.stats.shapiro(z_J).pvalue)
    use_fit = MIN_FIT_DRAWS <= J < EMPIRICAL_DRAWS and np.isfinite(fit_p) and fit_p >= FIT_ALPHA
    return NullTest(float(observed), J, lo, hi, p_emp, p_fit, fit_p, p_fit if use_fit else p_emp)


def bh_adjust(p_K: ArrayLike) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (scipy's ``false_discovery_control``); nan stays
    nan and is left out of the family.

    >>> bh_adjust([0.01, 0.04, np.nan, 0.03]).round(3).tolist()
    [0.03, 0.04, nan, 0.04]
    """
    p_K = np.asarray(p_K, dtype=np.float64)
    out_K = np.full(p_K.shape, np.nan)
    ok_K = ~np.isnan(p_K)
    if ok_K.any():
        out_K[ok_K] = scipy.stats.false_discovery_control(p_K[ok_K], method="bh")
    return out_K


# --------------------------------------------------------------------------------------
# cosine vs causal agreement
# --------------------------------------------------------------------------------------


def cosine_overstatement(
    rho: ArrayLike,
    cos: ArrayLike,
    *,
    cos_threshold: float = 0.7,
    ce_threshold: float = 0.5,
) -> dict[str, Any]:
    """How much probe-direction cosine similarity overstates causal agreement rho_CE.

    ``rho[k]`` and ``cos[k]`` belong to the same item k (e.g. a cell). Pairs where either
    is nan are ignored and counted in ``n_nan``. Returns two NAMED statistics, which
    answer different questions and must not be confused:

    * ``one_minus_median_ratio`` = 1 - median(rho) / median(cos): how far the typical rho
      falls short of the typical cosine (0.616 vs 0.965 -> 0.362, "36.2% lower");
    * ``share_high_cos_low_ce`` = share of items with cos > cos_threshold AND
      rho < ce_threshold: how often a high cosine hides a weak causal match;

    plus ``median_cos``, ``median_rho``, ``n``, ``n_nan``, the thresholds and a
    ``formulae`` dict stating each formula in words. Where median cos <= 0 or <= median rho
    the ratio is not meaningful: it is None, with ``one_minus_median_ratio_note`` saying why.

    >>> out = cosine_overstatement([0.616, 0.3, 0.9], [0.965, 0.95, 0.99])
    >>> round(out["one_minus_median_ratio"], 4), round(out["share_high_cos_low_ce"], 4)
    (0.3617, 0.3333)
    >>> cosine_overstatement([0.85, 0.9], [0.3, 0.2])["one_minus_median_ratio_note"][:15]
    'not meaningful:'
    """
    rho_I, cos_I = _paired_1d(rho, cos, "rho", "cos", unit="items")
    for name, a_I in (("rho", rho_I), ("cos", cos_I)):
        if np.isinf(a_I).any():
            raise ValueError(f"{name} contains inf: correlations/cosines must lie in [-1, 1]")
    ok_I = ~(np.isnan(rho_I) | np.isnan(cos_I))
    n_nan = int((~ok_I).sum())
    rho_I, cos_I = rho_I[ok_I], cos_I[ok_I]
    if rho_I.shape[0] == 0:
        raise ValueError(f"no item has both rho and cos defined ({n_nan} nan pairs)")

    med_rho, med_cos = float(np.median(rho_I)), float(np.median(cos_I))
    share = float(np.mean((cos_I > cos_threshold) & (rho_I < ce_threshold)))
    # The ratio measures how far rho falls short of the cosine: with median cos <= 0 or below
    # median rho there is no shortfall to measure (0.3 vs 0.85 would print as -1.82).
    meaningful = med_cos > 0 and med_cos > med_rho
    note = {} if meaningful else {"one_minus_median_ratio_note": (
        f"not meaningful: median cos {med_cos:.3f} is <= 0 or <= median rho {med_rho:.3f}")}
    return {
        "one_minus_median_ratio": 1.0 - med_rho / med_cos if meaningful else None,
        **note,
        "share_high_cos_low_ce": share,
        "median_cos": med_cos,
        "median_rho": med_rho,
        "n": int(rho_I.shape[0]),
        "n_nan": n_nan,
        "cos_threshold": float(cos_threshold),
        "ce_threshold": float(ce_threshold),
        "formulae": {
            "one_minus_median_ratio": "1 - median(rho_CE) / median(cos)",
            "share_high_cos_low_ce": (
                f"#{{items: cos > {cos_threshold} and rho_CE < {ce_threshold}}} / n"
            ),
            "median_cos": "median of cos over items with both values defined",
            "median_rho": "median of rho_CE over items with both values defined",
        },
    }
