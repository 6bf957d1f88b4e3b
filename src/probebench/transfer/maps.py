"""Transfer a probe direction from a source model's residual stream (Ds) to a target's (Dt).

Fitted on *paired* activations: row i of ``src_ND`` and ``tgt_ND`` is the same piece of text
run through the source and the target model. No method reads labels; the rows must be ones the
probe never saw (docs/design.md §2): a map fitted on the probe's own labelled rows sends class means to
class means and returns the target's own probe for any source. Three methods:

* ``identity``: ``v_t = w_s``; only defined when Ds == Dt (e.g. two checkpoints of one model).
* ``score_ridge``: ``v_t = argmin ||Ht v - Hs w_s||^2 + alpha ||v||^2`` on centred
  activations, i.e. the target direction whose readout reproduces the source probe score.
* ``activation_ridge`` (default): ridge map ``Ht ~ Hs A`` (A is [Ds, Dt]) and ``v_t = A^T w_s``, i.e.
  how a step along ``w_s`` in the source moves the target's activation.

Example::

    >>> import numpy as np
    >>> from probebench.transfer.maps import DirectionTransfer, cosine
    >>> rng = np.random.default_rng(0)
    >>> hs = rng.normal(size=(300, 6)); A = rng.normal(size=(6, 9))
    >>> ht = hs @ A + 0.01 * rng.normal(size=(300, 9))
    >>> w = rng.normal(size=6)
    >>> tr = DirectionTransfer(method="activation_ridge").fit(hs, ht, w)
    >>> bool(cosine(tr.direction_, A.T @ w) > 0.99)
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.metrics import r2_score
from sklearn.utils.validation import check_is_fitted

from probebench.errors import ProbebenchError, require_finite

__all__ = ["DirectionTransfer", "TransferError", "cosine", "carry", "null_directions", "empirical_p", "TRANSFER_METHODS",
           "RELATIVE_ALPHAS"]

TRANSFER_METHODS = ("score_ridge", "activation_ridge", "identity")

# Default grid, in units of the mean eigenvalue of X^T X (||X||_F^2 / n_features) of the
# centred regressor, so the default search is scale-free: residual streams range from O(1)
# to O(1e3) per coordinate across model families.
RELATIVE_ALPHAS = tuple(float(a) for a in np.logspace(-6, 2, 33))


class TransferError(ProbebenchError):
    """Bad inputs to :class:`DirectionTransfer` or :func:`cosine`."""


class DirectionTransfer(BaseEstimator):
    """Map a source probe direction ``dir_D`` [Ds] to a target-space direction ``direction_`` [Dt].

    Parameters
    ----------
    method : {"score_ridge", "activation_ridge", "identity"}
    alpha : float or None
        Fixed absolute ridge strength. ``None`` picks it by closed-form leave-one-out
        (generalized cross-validation, ``RidgeCV``) over ``alphas``.
    alphas : sequence of float or None
        Absolute candidate strengths for the search. ``None`` uses :data:`RELATIVE_ALPHAS`
        times the mean eigenvalue of the centred regressor's Gram matrix.

    Fitted attributes
    -----------------
    direction_ : [Dt] float64 transferred direction.
    alpha_ : float ridge strength used (``None`` for identity).
    map_ : [Ds, Dt] activation map A for ``activation_ridge``, else ``None``.
    src_mean_, tgt_mean_ : [Ds], [Dt] TRAIN means used for centring.
    src_direction_ : [Ds] the source direction the transfer was fitted for.
    readout_scale_ : float multiplying the target readout in :meth:`score`; the least-squares
        scalar for ``identity`` (its scale is arbitrary), 1.0 otherwise.

    Example::

        >>> import numpy as np
        >>> rng = np.random.default_rng(1)
        >>> hs = rng.normal(size=(200, 5)); w = rng.normal(size=5)
        >>> tr = DirectionTransfer(method="identity").fit(hs, 2 * hs + 1, w)
        >>> round(tr.readout_scale_, 6), round(tr.score(hs, 2 * hs + 1, w), 6)
        (0.5, 1.0)
    """

    def __init__(self, method: str = "activation_ridge", alpha: float | None = None, alphas: Any = None):
        self.method = method
        self.alpha = alpha
        self.alphas = alphas

    def fit(self, src_ND: np.ndarray, tgt_ND: np.ndarray, dir_D: np.ndarray) -> "DirectionTransfer":
        """Fit on paired TRAIN activations; returns self."""
        if self.method not in TRANSFER_METHODS:
            raise TransferError(
                f"DirectionTransfer: unknown method {self.method!r}; use one of {TRANSFER_METHODS}"
            )
        hs, ht = _paired(src_ND, tgt_ND)
        w_D = _direction(dir_D, hs.shape[1])
        if hs.shape[0] < 2:
            raise TransferError(f"src_ND/tgt_ND have {hs.shape[0]} row(s); transfer needs at least 2 paired prompts")
        src_mean = hs.mean(axis=0)
        tgt_mean = ht.mean(axis=0)
        hs_c = hs - src_mean
        ht_c = ht - tgt_mean
        s_N = hs_c @ w_D  # the source probe score the target readout should reproduce

        map_ = None
        alpha_: float | None = None
        scale = 1.0
        if self.method == "identity":
            if hs.shape[1] != ht.shape[1]:
                raise TransferError(
                    f"method='identity' needs Ds == Dt, got Ds={hs.shape[1]} and Dt={ht.shape[1]}; "
                    "use method='score_ridge' or 'activation_ridge' across models of different width"
                )
            v_D = w_D.copy()
            t_N = ht_c @ v_D
            tt = float(t_N @ t_N)
            # A raw copied direction has an arbitrary scale in the target; fit it on TRAIN only.
            scale = float(t_N @ s_N) / tt if tt > 0 else 0.0
        elif self.method == "score_ridge":
            coef, alpha_ = self._ridge(ht_c, s_N[:, None])
            v_D = coef[:, 0]
        else:  # activation_ridge
            map_, alpha_ = self._ridge(hs_c, ht_c)
            v_D = map_.T @ w_D

        self.direction_ = v_D
        self.alpha_ = alpha_
        self.map_ = map_
        self.src_mean_ = src_mean
        self.tgt_mean_ = tgt_mean
        self.src_direction_ = w_D.copy()
        self.readout_scale_ = scale
        return self

    def score(self, src_test_ND: np.ndarray, tgt_test_ND: np.ndarray, dir_D: np.ndarray) -> float:
        """Held-out R^2 of the transfer (centred with the TRAIN means).

        ``score_ridge``/``identity``: R^2 of ``readout_scale_ * (tgt - tgt_mean_) @ direction_``
        against the source score ``(src - src_mean_) @ dir_D``. ``activation_ridge``: R^2 of
        predicting centred target activations from centred source ones through ``map_``
        (``multioutput="variance_weighted"``).
        """
        check_is_fitted(self, "direction_")
        hs, ht = _paired(src_test_ND, tgt_test_ND, names=("src_test_ND", "tgt_test_ND"))
        ds, dt = self.src_mean_.size, self.tgt_mean_.size
        if hs.shape[1] != ds or ht.shape[1] != dt:
            raise TransferError(
                f"test activations are [{hs.shape[1]}] -> [{ht.shape[1]}] but the transfer was fitted "
                f"on [{ds}] -> [{dt}]; score with the same models and layers"
            )
        if hs.shape[0] < 2:
            raise TransferError(f"src_test_ND has {hs.shape[0]} row(s); R^2 needs at least 2 held-out prompts")
        w_D = _direction(dir_D, ds)
        if not np.array_equal(w_D, self.src_direction_):
            raise TransferError(
                "dir_D differs from the direction passed to fit(); score with the same source direction "
                "or refit the transfer"
            )
        hs_c = hs - self.src_mean_
        ht_c = ht - self.tgt_mean_
        if self.method == "activation_ridge":
            return float(r2_score(ht_c, hs_c @ self.map_, multioutput="variance_weighted"))
        s_N = hs_c @ w_D
        return float(r2_score(s_N, self.readout_scale_ * (ht_c @ self.direction_)))

    def _ridge(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, float]:
        """Ridge coefficients [p, k] for Y ~ X B on already-centred data, and the alpha used."""
        if self.alpha is not None:
            alpha = float(self.alpha)
            if not (np.isfinite(alpha) and alpha >= 0):
                raise TransferError(f"DirectionTransfer: alpha={self.alpha!r} must be a finite float >= 0 or None")
            B = Ridge(alpha=alpha, fit_intercept=False).fit(X, Y).coef_
            return np.asarray(B, dtype=np.float64).reshape(Y.shape[1], X.shape[1]).T, alpha
        if self.alphas is None:
            gram_scale = float(np.einsum("ij,ij->", X, X)) / X.shape[1]
            if gram_scale == 0.0:
                raise TransferError(
                    "the regressor activations are constant across prompts (zero variance after centring); "
                    "check the activation extraction"
                )
            grid = gram_scale * np.asarray(RELATIVE_ALPHAS)
        else:
            grid = np.asarray(self.alphas, dtype=np.float64).ravel()
            if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
                raise TransferError(f"DirectionTransfer: alphas={self.alphas!r} must be non-empty, finite and > 0")
        # fit_intercept=False: data are centred with the TRAIN means we store and reuse in score().
        cv = RidgeCV(alphas=grid, fit_intercept=False).fit(X, Y)
        B = np.asarray(cv.coef_, dtype=np.float64).reshape(Y.shape[1], X.shape[1]).T
        return B, float(cv.alpha_)


def cosine(a_D: np.ndarray, b_D: np.ndarray) -> float:
    """Cosine similarity of two 1-D vectors of equal length.

    Example::

        >>> cosine([1.0, 0.0], [1.0, 1.0])  # doctest: +ELLIPSIS
        0.7071...
    """
    a = np.asarray(a_D, dtype=np.float64)
    b = np.asarray(b_D, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape:
        raise TransferError(f"cosine needs two 1-D vectors of equal length, got shapes {a.shape} and {b.shape}")
    require_finite("a_D", a, TransferError)
    require_finite("b_D", b, TransferError)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        raise TransferError("cosine is undefined for a zero vector; check the direction was fitted")
    return float(np.clip(a @ b / (na * nb), -1.0, 1.0))


def _paired(src: Any, tgt: Any, names: tuple[str, str] = ("src_ND", "tgt_ND")) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for name, arr in zip(names, (src, tgt)):
        a = np.asarray(arr)
        if a.ndim != 2 or a.shape[1] == 0:
            raise TransferError(f"{name} must be a 2-D array [N prompts, D], got shape {a.shape}")
        a = a.astype(np.float64, copy=False)
        require_finite(name, a, TransferError)
        out.append(a)
    hs, ht = out
    if hs.shape[0] != ht.shape[0]:
        raise TransferError(
            f"{names[0]} has N={hs.shape[0]} rows but {names[1]} has N={ht.shape[0]}; transfer needs paired "
            "activations (row i = the same prompt in both models)"
        )
    return hs, ht


def _direction(dir_D: Any, ds: int) -> np.ndarray:
    w = np.asarray(dir_D, dtype=np.float64)
    if w.ndim == 2 and w.shape[0] == 1:
        w = w[0]
    if w.ndim != 1 or w.size != ds:
        raise TransferError(
            f"dir_D has shape {w.shape} but the source activations have Ds={ds}; pass the source probe's "
            "[Ds] direction (probe.direction)"
        )
    require_finite("dir_D", w, TransferError)
    return w




def carry(src_c: np.ndarray, tgt_c: np.ndarray, dir_D: np.ndarray, *, method: str, alpha: float) -> np.ndarray:
    """The direction a fixed-strength ridge map fitted on centred rows carries `dir_D` to, in
    closed form (what :class:`DirectionTransfer` computes with a fixed `alpha`, without forming
    the [Ds, Dt] map): activation_ridge ``v = Yc^T Xc (Xc^T Xc + a I)^-1 w``, score_ridge
    ``v = (Yc^T Yc + a I)^-1 Yc^T Xc w``.

    >>> rng = np.random.default_rng(0)
    >>> hs = rng.normal(size=(50, 4)); ht = rng.normal(size=(50, 6)); w = rng.normal(size=4)
    >>> ref = DirectionTransfer(method="activation_ridge", alpha=3.0).fit(hs, ht, w).direction_
    >>> bool(np.allclose(carry(hs - hs.mean(0), ht - ht.mean(0), w, method="activation_ridge", alpha=3.0), ref))
    True
    """
    if method == "activation_ridge":
        gram = src_c.T @ src_c + alpha * np.eye(src_c.shape[1])
        return tgt_c.T @ (src_c @ np.linalg.solve(gram, dir_D))
    if method == "score_ridge":
        gram = tgt_c.T @ tgt_c + alpha * np.eye(tgt_c.shape[1])
        return np.linalg.solve(gram, tgt_c.T @ (src_c @ dir_D))
    raise TransferError(f"null maps: method {method!r} has no null; use activation_ridge or score_ridge")


def null_directions(src_WD: np.ndarray, tgt_WD: np.ndarray, dir_D: np.ndarray, *, method: str = "activation_ridge",
                    alpha: float, n_null: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Directions [R, Dt] carried by maps that cannot know the source's mechanism: ``noise``,
    fitted from a Gaussian source with the real source's mean and covariance, and ``shuffled``,
    fitted from the real source rows paired with the wrong target rows. Each has the ridge
    strength `alpha` of the real map (pass ``fit.alpha_``), so only the pairing differs. One
    draw is not a null (a one-dimensional readout makes single draws land anywhere); compare
    against all R.

    >>> rng = np.random.default_rng(0)
    >>> hs = rng.normal(size=(400, 5)); ht = hs @ rng.normal(size=(5, 7))
    >>> nulls = null_directions(hs, ht, np.ones(5), alpha=1.0, n_null=3)
    >>> nulls["noise"].shape, nulls["shuffled"].shape
    ((3, 7), (3, 7))
    """
    hs, ht = _paired(src_WD, tgt_WD, names=("src_WD", "tgt_WD"))
    w_D = _direction(dir_D, hs.shape[1])
    rng = np.random.default_rng(seed)
    hs_c, ht_c = hs - hs.mean(axis=0), ht - ht.mean(axis=0)
    cov_DD = np.cov(hs, rowvar=False).reshape(hs.shape[1], hs.shape[1])
    # eigh, not cholesky: residual covariances are often rank-deficient
    evals, evecs = np.linalg.eigh(cov_DD)
    root_DD = evecs * np.sqrt(np.clip(evals, 0.0, None))
    if method == "activation_ridge":
        # permuting rows leaves Xc^T Xc unchanged: one solve serves every shuffled draw
        z_D = np.linalg.solve(hs_c.T @ hs_c + alpha * np.eye(hs.shape[1]), w_D)

        def shuffled(perm):
            return ht_c.T @ (hs_c[perm] @ z_D)
    else:
        def shuffled(perm):
            return carry(hs_c[perm], ht_c, w_D, method=method, alpha=alpha)
    out: dict[str, list[np.ndarray]] = {"noise": [], "shuffled": []}
    for _ in range(n_null):
        noise_WD = rng.standard_normal(hs.shape) @ root_DD.T
        out["noise"].append(carry(noise_WD - noise_WD.mean(axis=0), ht_c, w_D, method=method, alpha=alpha))
        out["shuffled"].append(shuffled(rng.permutation(hs.shape[0])))
    dt = ht.shape[1]
    return {k: (np.stack(v) if v else np.zeros((0, dt))) for k, v in out.items()}


def empirical_p(value: float, null_R: np.ndarray) -> float:
    """One-sided empirical p of `value` against a null sample: (1 + #{null >= value}) / (1 + R).
    With R = 20 the smallest attainable p is 1/21 = 0.048.

    >>> empirical_p(0.9, np.array([0.1, 0.5, 0.95])), empirical_p(0.99, np.array([0.1, 0.5, 0.95]))
    (0.5, 0.25)
    """
    null_R = np.asarray(null_R, dtype=np.float64).ravel()
    null_R = null_R[np.isfinite(null_R)]
    if not np.isfinite(value) or null_R.size == 0:
        return float("nan")
    return float((1 + np.sum(null_R >= value)) / (1 + null_R.size))
