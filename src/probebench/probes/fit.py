"""Linear probes: fit them, save and load them, and choose which direction a probe contributes.

A probe is a direction ``w`` and a bias ``b`` in a model's *raw* residual-stream space, so
``score = acts @ w + b``. Probes fitted on standardized activations (scikit-learn
``StandardScaler`` + ``LogisticRegression``) are folded back into raw space, because the
causal experiments ablate the direction in the model's own coordinates, not in z-scores.
Importing probes written by other tools (vectors, ProbeBench bundles, pickle trust) lives in
:mod:`probebench.probes.foreign`.

Example::

    >>> import numpy as np
    >>> from probebench.probes.fit import fit_probe
    >>> rng = np.random.default_rng(0)
    >>> y_N = rng.integers(0, 2, 200)
    >>> acts_ND = rng.normal(size=(200, 8)).astype(np.float32)
    >>> acts_ND[:, 0] += 3 * y_N
    >>> probe = fit_probe(acts_ND, y_N, method="mean_diff")
    >>> bool(abs(probe.unit()[0]) > 0.9)
    True

Which direction a probe contributes (``probe.direction: weights | pattern``): ``weights`` is
``w`` itself, the filter that *reads* the concept; ``pattern`` is the activation pattern
``a = Cov_train(h) w`` (Haufe et al. 2014, NeuroImage 87), the direction along which the
activations actually *carry* the class signal. They differ whenever the noise is correlated:
``w`` also cancels noise directions, and ablating those moves nothing (see
:func:`activation_pattern`).

Files written by :func:`save_probe` (a directory)::

    direction.safetensors  # tensors "direction" [D] float64 and "bias" [1] float64, no metadata
    card.json              # {"format", "method", "d_model", "direction_sha256", "card": {...}}
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from probebench.errors import ProbebenchError, require_finite
from probebench.artifacts.io import atomic_write_bytes

__all__ = [
    "Probe",
    "ProbeError",
    "ProbeFitError",
    "ProbeImportError",
    "fit_probe",
    "fold_standardized",
    "activation_pattern",
    "probe_direction",
    "save_probe",
    "load_probe",
    "PROBE_METHODS",
    "PROBE_DIRECTIONS",
]

PROBE_METHODS = ("logreg", "mean_diff")
# logreg is solved by Newton's method with a Cholesky solve of the Hessian (deterministic, no random
# state) until the largest gradient entry is below LOGREG_TOL: quadratic convergence lands on the
# optimum of the strictly convex objective to ~1e-12, so every machine's fit is the same probe
# whatever order its BLAS sums in. scikit-learn's default (lbfgs, tol 1e-4) stops ~1e-3 short of
# the optimum, at a point that depends on the last bits of every dot product: held-out AUROC
# 0.912242 on one CPU, 0.91218 on another.
LOGREG_TOL = 1e-10
PROBE_DIRECTIONS = ("weights", "pattern")
SAVED_FORMAT = "probebench-probe/1"
DIRECTION_FILE = "direction.safetensors"
CARD_FILE = "card.json"


class ProbeError(ProbebenchError):
    """Base class for probe errors (a ``ValueError``, so callers can catch either)."""


class ProbeFitError(ProbeError):
    """Bad inputs to :func:`fit_probe` or :meth:`Probe.score`."""


class ProbeImportError(ProbeError):
    """A probe file or bundle cannot be imported or loaded safely (also raised by
    :func:`load_probe`, hence defined here and re-exported by :mod:`probebench.probes.foreign`)."""


@dataclass(frozen=True, eq=False)
class Probe:
    """A binary linear probe in raw activation space: ``score = acts @ direction + bias``.

    ``eq=False`` because ndarray fields make ``==`` ambiguous; compare fields explicitly.
    The stored direction is a read-only float64 copy, so a frozen Probe really is frozen.

    Example::

        >>> import numpy as np
        >>> p = Probe(direction=np.array([3.0, 4.0]), bias=-1.0, method="raw")
        >>> p.score(np.array([[1.0, 1.0]])).tolist(), p.unit().tolist()
        ([6.0], [0.6, 0.8])
    """

    direction: np.ndarray
    bias: float
    method: str
    card: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        dir_D = np.array(self.direction, dtype=np.float64, copy=True)
        if dir_D.ndim != 1 or dir_D.size == 0:
            raise ProbeError(
                f"Probe.direction must be a non-empty 1-D vector [D], got shape {dir_D.shape}; "
                "pass coef.ravel() for a [1, D] coefficient"
            )
        require_finite("Probe.direction", dir_D, ProbeError)
        bias = float(self.bias)
        if not np.isfinite(bias):
            raise ProbeError(f"Probe.bias is {bias}; it must be a finite float")
        dir_D.setflags(write=False)
        object.__setattr__(self, "direction", dir_D)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "method", str(self.method))
        object.__setattr__(self, "card", dict(self.card))

    @property
    def d_model(self) -> int:
        return int(self.direction.shape[0])

    def score(self, acts_ND: np.ndarray) -> np.ndarray:
        """Probe logits ``acts_ND @ direction + bias`` as float64 [N]."""
        acts = _as_acts(acts_ND, "acts_ND", ProbeFitError)
        if acts.shape[1] != self.d_model:
            raise ProbeFitError(
                f"acts_ND has D={acts.shape[1]} columns but the probe has d_model={self.d_model}; "
                "score activations from the same model and layer the probe was fitted on"
            )
        return acts @ self.direction + self.bias

    def unit(self) -> np.ndarray:
        """The direction scaled to unit L2 norm, float64 [D]."""
        norm = float(np.linalg.norm(self.direction))
        if norm == 0.0:
            raise ProbeError("Probe.direction is all zeros, so it has no unit direction; refit the probe")
        return self.direction / norm


# --------------------------------------------------------------------------------------------
# fitting


def fit_probe(
    acts_ND: np.ndarray,
    y_N: np.ndarray,
    *,
    method: str,
    C: float = 1.0,
    seed: int = 0,
    max_iter: int = 100,
) -> Probe:
    """Fit a binary probe on activations ``acts_ND`` [N, D] and labels ``y_N`` in {0, 1}.

    ``method="logreg"``: StandardScaler + L2 LogisticRegression(C, newton-cholesky),
    folded into raw space so ``probe.score(acts)`` equals the pipeline's decision_function. It is
    fitted to be the same on every machine: float64 activations and standardization, Newton-
    Cholesky (no random state involved) run to a gradient of ``LOGREG_TOL`` (the objective's
    optimum to ~1e-12), one BLAS thread; a fit that does not get there in ``max_iter`` Newton
    steps is refused rather than reported. The direction holds ~10 significant digits across
    machines, so a held-out AUROC or accuracy of it can differ only where two test scores tie to
    that precision; such a swap moves AUROC by 1 / (n_pos n_neg) (6e-5 for 128 x 128 test
    prompts), so 4 decimals is the precision to report and compare it at.
    ``method="mean_diff"``: ``w = mean(acts[y==1]) - mean(acts[y==0])``, threshold at the
    midpoint of the two class means. ``C``, ``seed`` and ``max_iter`` only affect logreg.

    Example::

        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, 100); X = rng.normal(size=(100, 4)); X[:, 1] += 2 * y
        >>> p = fit_probe(X, y, method="logreg")
        >>> p.method, int(np.argmax(np.abs(p.direction)))
        ('logreg', 1)
    """
    acts = _as_acts(acts_ND, "acts_ND", ProbeFitError)
    y = _as_labels(y_N, acts.shape[0])
    card: dict[str, Any] = {
        "method": method,
        "n_train": int(y.size),
        "n_pos": int(y.sum()),
        "d_model": int(acts.shape[1]),
        "train_hash": _train_hash(acts_ND, y),
    }
    if method == "mean_diff":
        mu1_D = acts[y == 1].mean(axis=0)
        mu0_D = acts[y == 0].mean(axis=0)
        dir_D = mu1_D - mu0_D
        bias = -float(dir_D @ (mu1_D + mu0_D)) / 2.0
    elif method == "logreg":
        if not (np.isfinite(C) and C > 0):
            raise ProbeFitError(f"fit_probe: C={C!r} must be a positive finite float (inverse L2 strength)")
        if int(max_iter) < 1:
            raise ProbeFitError(f"fit_probe: max_iter={max_iter!r} must be a positive integer")
        # One BLAS thread: the order of every sum is then fixed by the data, not by the thread count.
        with threadpool_limits(limits=1), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            scaler = StandardScaler().fit(acts)  # acts is float64, so mean_ and scale_ are too
            # No `penalty=`: it is deprecated in scikit-learn >= 1.8; l1_ratio=0 is pure L2.
            clf = LogisticRegression(
                C=float(C), l1_ratio=0.0, solver="newton-cholesky", tol=LOGREG_TOL, max_iter=int(max_iter),
                random_state=seed,
            ).fit(scaler.transform(acts), y)
        n_iter = int(np.max(clf.n_iter_))
        stalled = [str(w.message).splitlines()[0] for w in caught if issubclass(w.category, ConvergenceWarning)]
        if stalled or n_iter >= int(max_iter):
            why = stalled[0] if stalled else f"it took all max_iter={max_iter} Newton steps"
            raise ProbeFitError(f"fit_probe: logreg did not reach gradient {LOGREG_TOL:g} ({why}), so its probe "
                                "would differ between machines; lower C (stronger L2) or check the activations")
        dir_D, bias = fold_standardized(clf.coef_[0], float(clf.intercept_[0]), scaler)
        card.update(C=float(C), seed=int(seed), max_iter=int(max_iter), n_iter=n_iter, tol=LOGREG_TOL)
    else:
        raise ProbeFitError(f"fit_probe: unknown method {method!r}; use one of {PROBE_METHODS}")
    return Probe(direction=dir_D, bias=bias, method=method, card=card)


def fold_standardized(coef_D: np.ndarray, intercept: float, scaler: Any) -> tuple[np.ndarray, float]:
    """Fold ``coef . (x - mean) / scale + intercept`` into raw-space ``w . x + b`` (a ``None``
    scaler is the identity). Shared by :func:`fit_probe` and the bundle importer.

    Example::

        >>> import numpy as np
        >>> from sklearn.preprocessing import StandardScaler
        >>> s = StandardScaler().fit(np.array([[0.0, 10.0], [2.0, 30.0]]))  # mean [1, 20], scale [1, 10]
        >>> w, b = fold_standardized(np.array([1.0, 10.0]), 0.5, s)
        >>> w.tolist(), b
        ([1.0, 1.0], -20.5)
    """
    coef_D = np.asarray(coef_D, dtype=np.float64).ravel()
    mean_D, scale_D = _scaler_mean_scale(scaler, coef_D.size)
    dir_D = coef_D / scale_D
    bias = float(intercept) - float(np.sum(coef_D * mean_D / scale_D))
    return dir_D, bias


def _scaler_mean_scale(scaler: Any, d: int) -> tuple[np.ndarray, np.ndarray]:
    """What a (possibly None) StandardScaler subtracts and divides by, as float64 [D]."""
    mean_D = np.zeros(d)
    scale_D = np.ones(d)
    if scaler is None:
        return mean_D, scale_D
    if getattr(scaler, "with_mean", True) and getattr(scaler, "mean_", None) is not None:
        mean_D = np.asarray(scaler.mean_, dtype=np.float64).ravel()
    if getattr(scaler, "with_std", True) and getattr(scaler, "scale_", None) is not None:
        scale_D = np.asarray(scaler.scale_, dtype=np.float64).ravel().copy()
        # StandardScaler maps zero-variance features to scale 1; mirror that for foreign scalers.
        scale_D[scale_D == 0.0] = 1.0
    if mean_D.size != d or scale_D.size != d:
        raise ProbeImportError(
            f"scaler has {max(mean_D.size, scale_D.size)} features but the probe has {d}; "
            "the scaler and probe must come from the same fit"
        )
    return mean_D, scale_D


def _train_hash(acts_ND: np.ndarray, y_N: np.ndarray) -> str:
    # Hash the caller's array as given (dtype and shape included) so the card identifies the
    # exact training set, not a float64 copy of it.
    a = np.ascontiguousarray(acts_ND)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    h.update(np.ascontiguousarray(y_N, dtype=np.int8).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# which direction a probe contributes


def activation_pattern(acts_ND: np.ndarray, w_D: np.ndarray) -> np.ndarray:
    """Haufe et al. (2014) activation pattern of a linear probe: ``a = Cov(acts) w``, unit L2 norm.

    ``acts_ND`` are the probe's *train* activations [N, D] (raw space, the space ``w_D`` [D]
    reads). For a generative model ``h = a s + noise`` a linear read-out ``w`` must also cancel
    correlated noise, so ``w`` points away from ``a``; ``Cov(h) w`` undoes that
    (``Cov(h) w = Var(s)(a.w) a + Cov(noise) w`` and the second term is ``a``-aligned for the
    optimal ``w``). The sign is that of ``w`` (``a . w = w' Cov w >= 0``).

    Computed as ``Xc' (Xc w) / (N - 1)`` without forming the [D, D] covariance: at d_model 8192
    that matrix alone would be 512 MiB.

    Example: the signal s lies along [1, 0], noise z along [1, 1]; ``w = [1, -1]`` reads s
    exactly (``h @ w = s``) by cancelling z, so it sits 45 degrees off the signal axis::

        >>> import numpy as np
        >>> s_N, z_N = np.array([1.0, -1.0, 1.0, -1.0]), np.array([3.0, 3.0, -3.0, -3.0])
        >>> h_ND = np.outer(s_N, [1.0, 0.0]) + np.outer(z_N, [1.0, 1.0])
        >>> activation_pattern(h_ND, np.array([1.0, -1.0])).tolist()
        [1.0, 0.0]
    """
    acts = _as_acts(acts_ND, "acts_ND", ProbeFitError)
    w = np.asarray(w_D, dtype=np.float64)
    if w.ndim != 1 or w.size != acts.shape[1]:
        raise ProbeFitError(
            f"activation_pattern: w_D has shape {w.shape} but acts_ND has D={acts.shape[1]} columns; "
            "pass the probe's raw-space direction for the same model and layer"
        )
    require_finite("w_D", w, ProbeFitError)
    if acts.shape[0] < 2:
        raise ProbeFitError("activation_pattern: acts_ND needs at least 2 rows to estimate a covariance")
    centred_ND = acts - acts.mean(axis=0)
    pattern_D = centred_ND.T @ (centred_ND @ w) / (acts.shape[0] - 1)
    norm = float(np.linalg.norm(pattern_D))
    if not norm > 0.0:
        raise ProbeFitError(
            "activation_pattern: Cov(acts) w is zero (the probe's score is constant on these activations); "
            "use direction 'weights' or check that acts_ND are the probe's train activations"
        )
    return pattern_D / norm


def probe_direction(probe: Probe, kind: str, train_acts_ND: np.ndarray | None = None) -> np.ndarray:
    """The unit direction a probe contributes: ``weights`` (``probe.unit()``, the default the
    leaderboard means by "the probe's direction") or ``pattern`` (:func:`activation_pattern` of
    the weights on ``train_acts_ND``, which ``pattern`` requires).

    Example::

        >>> import numpy as np
        >>> p = Probe(direction=np.array([3.0, 4.0]), bias=0.0, method="raw")
        >>> probe_direction(p, "weights").tolist()
        [0.6, 0.8]
    """
    if kind == "weights":
        return probe.unit()
    if kind == "pattern":
        if train_acts_ND is None:
            raise ProbeFitError("probe direction 'pattern' needs the probe's train activations (train_acts_ND)")
        return activation_pattern(train_acts_ND, probe.direction)
    raise ProbeFitError(f"probe direction {kind!r} unknown; use one of {PROBE_DIRECTIONS}")


# --------------------------------------------------------------------------------------------
# save / load


def save_probe(probe: Probe, dir_path: str | os.PathLike) -> Path:
    """Write ``probe`` to ``dir_path`` as ``direction.safetensors`` + ``card.json``.

    Bytes are deterministic (no safetensors metadata, sorted JSON keys), so re-saving the
    same probe produces identical files and DVC sees no change. Each file is written to a
    temp file in the same directory and ``os.replace``-d, so readers never see half a file.

    Example::

        >>> import numpy as np, tempfile
        >>> d = tempfile.mkdtemp()
        >>> p = Probe(direction=np.ones(3), bias=0.5, method="raw", card={"task": "demo"})
        >>> q = load_probe(save_probe(p, d))
        >>> q.bias, q.card
        (0.5, {'task': 'demo'})
    """
    d = Path(dir_path)
    d.mkdir(parents=True, exist_ok=True)
    st_bytes = safetensors.numpy.save(
        {"direction": np.ascontiguousarray(probe.direction, dtype=np.float64), "bias": np.array([probe.bias])}
    )
    doc = {
        "format": SAVED_FORMAT,
        "method": probe.method,
        "d_model": probe.d_model,
        # Ties the card to its direction file: a crash between the two replaces is detected on load.
        "direction_sha256": hashlib.sha256(st_bytes).hexdigest(),
        "card": probe.card,
    }
    try:
        card_text = json.dumps(doc, sort_keys=True, indent=2, allow_nan=False, default=_json_default) + "\n"
    except (TypeError, ValueError) as exc:
        raise ProbeError(
            f"{d / CARD_FILE}: probe.card is not JSON-serialisable ({exc}); use str/int/float/bool/None, "
            "lists and dicts (NaN must be None)"
        ) from exc
    atomic_write_bytes(d / DIRECTION_FILE, st_bytes)
    atomic_write_bytes(d / CARD_FILE, card_text.encode("utf-8"))
    return d


def load_probe(dir_path: str | os.PathLike) -> Probe:
    """Read a probe written by :func:`save_probe` (see its example)."""
    d = Path(dir_path)
    card_path, st_path = d / CARD_FILE, d / DIRECTION_FILE
    for f in (card_path, st_path):
        if not f.is_file():
            raise ProbeImportError(f"{f}: missing; a saved probe directory holds {DIRECTION_FILE} and {CARD_FILE}")
    try:
        doc = json.loads(card_path.read_text(encoding="utf-8"))
    except Exception as exc:  # noqa: BLE001
        raise ProbeImportError(f"{card_path}: cannot parse JSON ({exc}); re-save the probe") from exc
    if not isinstance(doc, dict) or doc.get("format") != SAVED_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ProbeImportError(f"{card_path}: key 'format' is {got!r}, expected {SAVED_FORMAT!r}; re-save the probe")
    st_bytes = st_path.read_bytes()
    actual = hashlib.sha256(st_bytes).hexdigest()
    if doc.get("direction_sha256") != actual:
        raise ProbeImportError(
            f"{st_path}: sha256 {actual} does not match {CARD_FILE} key 'direction_sha256' "
            f"{doc.get('direction_sha256')}; the pair is out of sync, re-save the probe"
        )
    tensors = safetensors.numpy.load(st_bytes)
    if "direction" not in tensors or "bias" not in tensors:
        raise ProbeImportError(f"{st_path}: needs tensors 'direction' and 'bias', has {sorted(tensors)}; re-save")
    probe = Probe(
        direction=tensors["direction"],
        bias=float(tensors["bias"].ravel()[0]),
        method=doc.get("method", ""),
        card=doc.get("card") or {},
    )
    _check_card(card_path, doc, probe)
    return probe


def _check_card(card_path: Path, doc: dict, probe: Probe) -> None:
    """What a card says about its probe must hold: ``direction_sha256`` ties the direction file
    to the card, but the rest of the card is text anyone can edit (a d_model, method or layer
    changed by hand would describe another probe)."""
    card = probe.card
    for key, value in (("d_model", doc.get("d_model")), ("card.d_model", card.get("d_model"))):
        if value is not None and (isinstance(value, bool) or value != probe.d_model):
            raise ProbeImportError(f"{card_path}: key {key!r} is {value!r} but {DIRECTION_FILE} holds a direction of "
                                   f"width {probe.d_model}; the card was edited after it was saved: re-save or "
                                   "re-import the probe")
    if card.get("method") is not None and card["method"] != probe.method:
        raise ProbeImportError(f"{card_path}: key 'card.method' is {card['method']!r} but key 'method' is "
                               f"{probe.method!r}; the card was edited after it was saved: re-save or re-import the probe")
    checkpoint = card.get("checkpoint")
    if isinstance(checkpoint, dict) and "layer" in checkpoint and "layer" in card and checkpoint["layer"] != card["layer"]:
        raise ProbeImportError(f"{card_path}: key 'card.layer' is {card['layer']!r} but 'card.checkpoint.layer' is "
                               f"{checkpoint['layer']!r}; the card was edited after it was saved: re-import the probe")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (_dt.date, _dt.datetime)):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"value of type {type(obj).__name__} is not JSON-serialisable")


# --------------------------------------------------------------------------------------------
# validation helpers


def _as_acts(acts_ND: Any, name: str, err: type[ProbeError]) -> np.ndarray:
    acts = np.asarray(acts_ND)
    if acts.ndim != 2 or acts.shape[0] == 0 or acts.shape[1] == 0:
        raise err(f"{name} must be a 2-D array [N prompts, D], got shape {acts.shape}")
    if not (np.issubdtype(acts.dtype, np.number) or acts.dtype == bool):
        raise err(f"{name} has dtype {acts.dtype}; pass float activations")
    acts = acts.astype(np.float64, copy=False)
    require_finite(name, acts, err)
    return acts


def _as_labels(y_N: Any, n: int) -> np.ndarray:
    y = np.asarray(y_N)
    if y.ndim != 1:
        raise ProbeFitError(f"y_N must be 1-D [N], got shape {y.shape}")
    if y.size != n:
        raise ProbeFitError(f"y_N has {y.size} labels but acts_ND has {n} rows; they must be the same prompts")
    if y.dtype.kind == "f":
        require_finite("y_N", y, ProbeFitError)
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise ProbeFitError(
            f"y_N must be 0/1 labels; found {np.unique(y[bad])[:5].tolist()}; map classes to 0 and 1 first"
        )
    y = y.astype(np.int64)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == n:
        raise ProbeFitError(
            f"y_N has only class {int(y[0])} ({n} labels); a probe needs both classes in the training set"
        )
    return y


