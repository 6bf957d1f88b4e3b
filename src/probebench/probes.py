"""Linear probes: fit them, import them from other tools, save and load them.

A probe is a direction ``w`` and a bias ``b`` in a model's *raw* residual-stream space, so
``score = acts @ w + b``. Probes fitted on standardized activations (scikit-learn
``StandardScaler`` + ``LogisticRegression``) are folded back into raw space, because the
causal experiments ablate the direction in the model's own coordinates, not in z-scores.

Example::

    >>> import numpy as np
    >>> from probebench.probes import fit_probe
    >>> rng = np.random.default_rng(0)
    >>> y_N = rng.integers(0, 2, 200)
    >>> acts_ND = rng.normal(size=(200, 8)).astype(np.float32)
    >>> acts_ND[:, 0] += 3 * y_N
    >>> probe = fit_probe(acts_ND, y_N, method="mean_diff")
    >>> bool(abs(probe.unit()[0]) > 0.9)
    True

Bundle layout read by :func:`import_probe` (a directory)::

    meta.json | meta.yaml        # one of them
    probe.joblib + scaler.joblib # two-file layout, or
    <any name>.joblib            # one file holding {"probe": LogisticRegression, "scaler": StandardScaler}

``meta`` is a mapping; ``sha256`` is required for every pickle (joblib) file::

    {"model": "pythia-70m", "layer": 3, "task": "sentiment", "d_model": 512,
     "sha256": {"probe.joblib": "<64 hex>", "scaler.joblib": "<64 hex>"}}

A single-joblib bundle may instead declare ``"sha256": "<64 hex>"``. Digests may carry a
``sha256:`` prefix. Every other meta key is copied into the probe's card.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import safetensors.numpy
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from probebench.checks import require_finite
from probebench.io import atomic_write_bytes

__all__ = [
    "Probe",
    "ProbeError",
    "ProbeFitError",
    "ProbeImportError",
    "fit_probe",
    "import_probe",
    "save_probe",
    "load_probe",
    "PROBE_METHODS",
]

PROBE_METHODS = ("logreg", "mean_diff")
SAVED_FORMAT = "probebench-probe/1"
DIRECTION_FILE = "direction.safetensors"
CARD_FILE = "card.json"

_RAW_KEYS = ("direction", "w", "weight", "coef")
_BIAS_KEYS = ("bias", "b", "intercept")
_META_NAMES = ("meta.json", "meta.yaml", "meta.yml")
_PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
_TWO_FILE = ("probe.joblib", "scaler.joblib")


class ProbeError(ValueError):
    """Base class for probe errors (a ``ValueError``, so callers can catch either)."""


class ProbeFitError(ProbeError):
    """Bad inputs to :func:`fit_probe` or :meth:`Probe.score`."""


class ProbeImportError(ProbeError):
    """A probe file or bundle cannot be imported or loaded safely."""


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
    max_iter: int = 2000,
) -> Probe:
    """Fit a binary probe on activations ``acts_ND`` [N, D] and labels ``y_N`` in {0, 1}.

    ``method="logreg"``: StandardScaler + L2 LogisticRegression(C, lbfgs, random_state=seed),
    folded into raw space so ``probe.score(acts)`` equals the pipeline's decision_function.
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
        scaler = StandardScaler().fit(acts)
        # No `penalty=`: it is deprecated in scikit-learn >= 1.8; l1_ratio=0 with lbfgs is pure L2.
        clf = LogisticRegression(
            C=float(C), l1_ratio=0.0, solver="lbfgs", max_iter=int(max_iter), random_state=seed
        ).fit(scaler.transform(acts), y)
        dir_D, bias = _fold_standardized(clf.coef_[0], float(clf.intercept_[0]), scaler)
        card.update(C=float(C), seed=int(seed), max_iter=int(max_iter), n_iter=int(np.max(clf.n_iter_)))
    else:
        raise ProbeFitError(f"fit_probe: unknown method {method!r}; use one of {PROBE_METHODS}")
    return Probe(direction=dir_D, bias=bias, method=method, card=card)


def _fold_standardized(coef_D: np.ndarray, intercept: float, scaler: Any) -> tuple[np.ndarray, float]:
    """Fold ``coef . (x - mean) / scale + intercept`` into raw-space ``w . x + b``."""
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
# import


def import_probe(
    path: str | os.PathLike,
    *,
    d_model: int,
    trust_pickle: bool = False,
    expected_sha256: str | None = None,
) -> Probe:
    """Import a probe from a raw vector, a ProbeBench bundle, or a :func:`save_probe` directory.

    Accepted inputs (see the module docstring for the bundle and meta layout):

    * ``.npy`` vector [D] or [1, D] (bias 0);
    * ``.safetensors`` with one tensor, or a tensor named ``direction``/``w``/``weight``/``coef``
      plus an optional ``bias``/``b``/``intercept``;
    * a bundle directory (``meta.json``/``meta.yaml`` + ``probe.joblib`` + ``scaler.joblib``, or
      one joblib holding ``{"probe": ..., "scaler": ...}``), or such a joblib file itself;
    * a directory written by :func:`save_probe`.

    joblib files are pickles, which run code on load: each is hashed and checked against the
    declared sha256 (meta or ``expected_sha256``) before anything is unpickled, a file without
    a declared digest is refused, and nothing is unpickled unless ``trust_pickle=True``.
    ``expected_sha256`` is also checked for single ``.npy``/``.safetensors`` files.

    Example::

        >>> import numpy as np, tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "w.npy"); np.save(f, np.ones(4))
        >>> import_probe(f, d_model=4).direction.tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    p = Path(path)
    if not p.exists():
        raise ProbeImportError(
            f"{p}: no such file or directory; pass a .npy/.safetensors vector or a bundle directory"
        )
    if p.is_dir():
        if (p / CARD_FILE).is_file() and (p / DIRECTION_FILE).is_file():
            if expected_sha256 is not None:
                _verify_digest(p / DIRECTION_FILE, [expected_sha256])
            probe = load_probe(p)
            _check_d_model(p, probe.d_model, d_model)
            return probe
        return _import_bundle_dir(p, d_model=d_model, trust_pickle=trust_pickle, expected_sha256=expected_sha256)
    suffix = p.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        return _import_single_joblib(
            p, p.parent, d_model=d_model, trust_pickle=trust_pickle, expected_sha256=expected_sha256
        )
    if suffix not in (".npy", ".safetensors"):
        raise ProbeImportError(
            f"{p}: unsupported probe file type {suffix!r}; use .npy, .safetensors, .joblib or a bundle directory"
        )
    digest = _verify_digest(p, [expected_sha256] if expected_sha256 is not None else [])
    if suffix == ".npy":
        vec, bias, key = _read_npy(p), 0.0, None
    else:
        vec, bias, key = _read_safetensors(p)
    dir_D = _as_vector(vec, p, key)
    _check_d_model(p, dir_D.size, d_model)
    card = {"method": "raw", "source": str(p), "source_format": suffix.lstrip("."), "sha256": {p.name: digest}}
    if key is not None:
        card["source_key"] = key
    return Probe(direction=dir_D, bias=bias, method="raw", card=card)


def _read_npy(p: Path) -> np.ndarray:
    try:
        # allow_pickle=False: an object .npy is a pickle in disguise.
        return np.load(p, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any read failure becomes one clear error
        raise ProbeImportError(f"{p}: cannot read as a numeric .npy array ({exc}); re-save it with np.save") from exc


def _read_safetensors(p: Path) -> tuple[np.ndarray, float, str]:
    try:
        tensors = safetensors.numpy.load_file(p)
    except Exception as exc:  # noqa: BLE001
        raise ProbeImportError(
            f"{p}: cannot read safetensors ({exc}); bfloat16 is not readable by numpy, save as float32"
        ) from exc
    if not tensors:
        raise ProbeImportError(f"{p}: safetensors file holds no tensors; save the direction under key 'direction'")
    if len(tensors) == 1:
        (key, vec), = tensors.items()
        return vec, 0.0, key
    found = [k for k in _RAW_KEYS if k in tensors]
    if len(found) != 1:
        what = "none of" if not found else "more than one of"
        raise ProbeImportError(
            f"{p}: holds {sorted(tensors)} and {what} the direction keys {list(_RAW_KEYS)}; "
            "keep exactly one direction tensor (e.g. 'direction')"
        )
    key = found[0]
    bias = 0.0
    bias_keys = [k for k in _BIAS_KEYS if k in tensors]
    if bias_keys:
        b = np.asarray(tensors[bias_keys[0]], dtype=np.float64)
        if b.size != 1:
            raise ProbeImportError(
                f"{p}: bias tensor {bias_keys[0]!r} has shape {b.shape}; a binary probe has one bias value"
            )
        bias = float(b.ravel()[0])
    return tensors[key], bias, key


def _as_vector(vec: Any, p: Path, key: str | None) -> np.ndarray:
    arr = np.asarray(vec)
    where = f"{p}" + (f" key {key!r}" if key else "")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ProbeImportError(f"{where}: dtype {arr.dtype} is not a real number type; save a float vector")
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise ProbeImportError(
            f"{where}: expected a direction of shape [D] or [1, D], got {arr.shape}; "
            "multi-class or stacked probes are not supported, save one binary direction"
        )
    arr = arr.astype(np.float64)
    require_finite(where, arr, ProbeImportError)
    if not np.any(arr):
        raise ProbeImportError(f"{where}: direction is all zeros; it cannot define a probe")
    return arr


def _import_bundle_dir(
    d: Path, *, d_model: int, trust_pickle: bool, expected_sha256: str | None
) -> Probe:
    pickles = sorted(f.name for f in d.iterdir() if f.is_file() and f.suffix.lower() in _PICKLE_SUFFIXES)
    if all(n in pickles for n in _TWO_FILE):
        if expected_sha256 is not None:
            raise ProbeImportError(
                f"{d}: expected_sha256 is for single-file imports; declare per-file digests in meta "
                '{"sha256": {"probe.joblib": ..., "scaler.joblib": ...}}'
            )
        meta, meta_path = _read_meta(d)
        _check_meta_d_model(meta, meta_path, d_model)
        declared = _declared_digests(meta, meta_path, list(_TWO_FILE), pickles)
        digests = {}
        for name in _TWO_FILE:
            digests[name] = _verify_pickle(d / name, declared.get(name, []), meta_path, trust_pickle)
        probe_obj = _unpickle(d / "probe.joblib")
        scaler_obj = _unpickle(d / "scaler.joblib")
        source = d / "probe.joblib"
        layout = "bundle-2file"
    elif len(pickles) == 1:
        return _import_single_joblib(
            d / pickles[0], d, d_model=d_model, trust_pickle=trust_pickle, expected_sha256=expected_sha256
        )
    else:
        found = pickles or "no pickle files"
        raise ProbeImportError(
            f"{d}: not a probe bundle (found {found}); expected probe.joblib + scaler.joblib, exactly one "
            "joblib holding {'probe', 'scaler'}, or direction.safetensors + card.json"
        )
    return _bundle_probe(probe_obj, scaler_obj, source, d_model, meta, digests, layout)


def _import_single_joblib(
    f: Path, meta_dir: Path, *, d_model: int, trust_pickle: bool, expected_sha256: str | None
) -> Probe:
    meta, meta_path = _read_meta(meta_dir)
    _check_meta_d_model(meta, meta_path, d_model)
    siblings = sorted(x.name for x in meta_dir.iterdir() if x.is_file() and x.suffix.lower() in _PICKLE_SUFFIXES)
    declared = _declared_digests(meta, meta_path, [f.name], siblings).get(f.name, [])
    if expected_sha256 is not None:
        declared = [*declared, expected_sha256]
    digest = _verify_pickle(f, declared, meta_path, trust_pickle)
    obj = _unpickle(f)
    if not isinstance(obj, dict) or "probe" not in obj:
        raise ProbeImportError(
            f"{f}: holds a {type(obj).__name__}, expected a dict {{'probe': LogisticRegression, "
            "'scaler': StandardScaler}; re-dump it in that form"
        )
    return _bundle_probe(obj["probe"], obj.get("scaler"), f, d_model, meta, {f.name: digest}, "bundle-1file")


def _bundle_probe(
    clf: Any, scaler: Any, source: Path, d_model: int, meta: dict, digests: dict, layout: str
) -> Probe:
    coef = getattr(clf, "coef_", None)
    if coef is None:
        raise ProbeImportError(
            f"{source}: probe is a {type(clf).__name__} without coef_; expected a fitted LogisticRegression"
        )
    classes = getattr(clf, "classes_", None)
    coef_KD = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    n_classes = len(classes) if classes is not None else coef_KD.shape[0] + (coef_KD.shape[0] == 1)
    if coef_KD.ndim != 2 or coef_KD.shape[0] != 1 or n_classes != 2:
        raise ProbeImportError(
            f"{source}: probe is multi-class ({n_classes} classes, coef_ shape {coef_KD.shape}); "
            "ProbeBench probes are binary, refit one-vs-rest and export one [1, D] probe"
        )
    _check_d_model(source, coef_KD.shape[1], d_model)
    if scaler is not None and not (hasattr(scaler, "scale_") or hasattr(scaler, "mean_")):
        raise ProbeImportError(
            f"{source}: scaler is a {type(scaler).__name__} without mean_/scale_; expected a fitted StandardScaler"
        )
    intercept = np.ravel(np.asarray(getattr(clf, "intercept_", 0.0), dtype=np.float64))
    try:
        dir_D, bias = _fold_standardized(coef_KD[0], float(intercept[0]) if intercept.size else 0.0, scaler)
    except ProbeImportError as exc:
        raise ProbeImportError(f"{source}: {exc}") from None
    require_finite(str(source), dir_D, ProbeImportError)
    method = "logreg" if isinstance(clf, LogisticRegression) else type(clf).__name__
    card = {k: v for k, v in meta.items() if k != "sha256"}
    card.update(method=method, source=str(source), source_format=layout, sha256=digests)
    if scaler is not None and not isinstance(scaler, StandardScaler):
        card["scaler_type"] = type(scaler).__name__
    return Probe(direction=dir_D, bias=bias, method=method, card=card)


def _read_meta(d: Path) -> tuple[dict, Path | None]:
    found = [d / n for n in _META_NAMES if (d / n).is_file()]
    if len(found) > 1:
        raise ProbeImportError(f"{d}: has both {found[0].name} and {found[1].name}; keep exactly one meta file")
    if not found:
        return {}, None
    mp = found[0]
    try:
        text = mp.read_text(encoding="utf-8")
        meta = json.loads(text) if mp.suffix == ".json" else yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001
        raise ProbeImportError(f"{mp}: cannot parse ({exc}); fix the file syntax") from exc
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise ProbeImportError(f"{mp}: top level is a {type(meta).__name__}; it must be a mapping of keys")
    return meta, mp


def _declared_digests(meta: dict, meta_path: Path | None, wanted: list[str], pickles: list[str]) -> dict:
    sha = meta.get("sha256")
    if sha is None:
        return {}
    if isinstance(sha, str):
        if len(pickles) != 1:
            raise ProbeImportError(
                f"{meta_path}: key 'sha256' is one string but the bundle has {len(pickles)} pickle files "
                f"{pickles}; use a mapping {{filename: digest}}"
            )
        return {pickles[0]: [sha]} if pickles[0] in wanted else {}
    if isinstance(sha, dict):
        return {name: [sha[name]] for name in wanted if name in sha}
    raise ProbeImportError(
        f"{meta_path}: key 'sha256' is a {type(sha).__name__}; use a hex string or {{filename: hex}}"
    )


def _check_meta_d_model(meta: dict, meta_path: Path | None, d_model: int) -> None:
    if "d_model" in meta and meta["d_model"] is not None and int(meta["d_model"]) != int(d_model):
        raise ProbeImportError(
            f"{meta_path}: declares d_model={meta['d_model']} but the model's d_model is {d_model}; "
            "this probe belongs to a different model"
        )


def _normalize_digest(digest: Any, where: str) -> str:
    s = str(digest).strip().lower()
    if s.startswith("sha256:"):
        s = s[len("sha256:"):]
    if len(s) != 64 or any(c not in "0123456789abcdef" for c in s):
        raise ProbeImportError(f"{where}: sha256 {digest!r} is not 64 hex digits; copy the full digest")
    return s


def _file_sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify_digest(p: Path, declared: list) -> str:
    actual = _file_sha256(p)
    for exp in declared:
        exp_hex = _normalize_digest(exp, str(p))
        if exp_hex != actual:
            raise ProbeImportError(
                f"{p}: sha256 mismatch: expected {exp_hex}, actual {actual}; the file changed since the "
                "digest was recorded, re-fetch it from a trusted source"
            )
    return actual


def _verify_pickle(p: Path, declared: list, meta_path: Path | None, trust_pickle: bool) -> str:
    # Order matters: digest first (a tampered file is reported as such), then trust; unpickling
    # happens only after both pass, in the caller.
    if not declared:
        where = meta_path if meta_path is not None else p.parent / "meta.json"
        raise ProbeImportError(
            f"{p}: no sha256 declared for this pickle; add {{\"sha256\": {{\"{p.name}\": \"<hex>\"}}}} to "
            f"{where} or pass expected_sha256 (refusing to unpickle an unverified file)"
        )
    digest = _verify_digest(p, declared)
    if not trust_pickle:
        raise ProbeImportError(
            f"{p}: is a pickle (sha256 {digest} matches) and unpickling runs code; "
            "pass --trust-pickle after verifying the source (trust_pickle=True)"
        )
    return digest


def _unpickle(p: Path) -> Any:
    try:
        return joblib.load(p)  # looked up at call time so tests can prove it is never reached
    except Exception as exc:  # noqa: BLE001
        raise ProbeImportError(f"{p}: joblib.load failed ({exc}); check scikit-learn versions match") from exc


def _check_d_model(p: Path, got: int, d_model: int) -> None:
    if int(got) != int(d_model):
        raise ProbeImportError(
            f"{p}: probe has D={got} but the model's d_model is {d_model}; "
            "import a probe trained on this model's residual stream"
        )


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
    return Probe(
        direction=tensors["direction"],
        bias=float(tensors["bias"].ravel()[0]),
        method=doc.get("method", ""),
        card=doc.get("card") or {},
    )


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


