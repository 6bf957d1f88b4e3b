"""Importing probes written by other tools: raw vectors, ProbeBench bundles and saved probebench
probes, checked against the model they are meant for, with the pickle trust rules.

Accepted inputs of :func:`import_probe`:

* ``.npy`` vector [D] or [1, D] (bias 0);
* ``.safetensors`` with one tensor, or a tensor named ``direction``/``w``/``weight``/``coef``
  plus an optional ``bias``/``b``/``intercept``;
* a ProbeBench bundle directory, as the site's client (``openinterp probebench validate``)
  expects it::

      meta.json | meta.yaml        # one of them
      probe.joblib + scaler.joblib # two-file layout (LogisticRegression, StandardScaler), or
      <one name>.joblib            # one file holding {"probe": LogisticRegression, "scaler": StandardScaler}

  or such a single joblib file itself (its meta is read from the same directory);
* a directory written by :func:`probebench.probes.fit.save_probe`.

``meta`` is a mapping. ProbeBench keys read here: ``id`` (the probe's leaderboard id),
``modelId`` (hub id of the model it reads), ``layer`` (0-based decoder block whose *output* it
reads, the block openinterp's guards hook; a probe read from HF ``hidden_states[L]`` reads block
``L - 1``), ``position`` (which token the probe reads: probebench reads every probe at the
readout token, so only ``READ_POSITIONS`` are accepted) and ``artifactSha256`` (sha256 of
``probe.joblib``; an empty one is refused, not taken as "none declared"). The older probebench
keys ``d_model`` (an integer) and ``sha256`` (one hex string, or ``{filename: hex}``) are still
honoured. Every meta key is copied into the probe's card. The probe must be a fitted binary
classifier (a regressor's ``coef_`` is not a class boundary) whose direction has a norm a float64
can normalize.

Pickle trust: joblib files are pickles, and unpickling runs code. Every declared digest (meta
``artifactSha256``/``sha256``, or a pin passed as ``sha256_pins={"scaler.joblib": hex}``, the
CLI's ``--sha256 FILE=HEX``) is checked before anything is unpickled, and nothing is unpickled
unless ``trust_pickle=True``. A pickle with no declared digest (a bundle's ``scaler.joblib``:
the site declares only ``probe.joblib``) loads under ``trust_pickle`` alone; its sha256 is
recorded in the card (``sha256``, with ``sha256_verified_by[file] == []``) so that the next
import can pin it.

Example::

    >>> import numpy as np, tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "w.npy"); np.save(f, np.ones(4))
    >>> import_probe(f, d_model=4).direction.tolist()
    [1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import joblib
import numpy as np
import safetensors.numpy
import yaml
from sklearn.base import is_classifier
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from probebench.errors import require_finite
from probebench.artifacts.io import file_sha256
from probebench.probes.fit import CARD_FILE, DIRECTION_FILE, Probe, ProbeImportError, fold_standardized, load_probe

if TYPE_CHECKING:
    from probebench.params.schema import Params

__all__ = ["READ_POSITIONS", "ProbeImportError", "TargetModel", "check_direction", "import_probe", "parse_sha256_pins",
           "read_model_config", "target_model"]

_RAW_KEYS = ("direction", "w", "weight", "coef")
_BIAS_KEYS = ("bias", "b", "intercept")
_META_NAMES = ("meta.json", "meta.yaml", "meta.yml")
_PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
_TWO_FILE = ("probe.joblib", "scaler.joblib")
# config.json keys for d_model and the number of decoder blocks across HF architectures.
_D_MODEL_KEYS = ("hidden_size", "n_embd", "d_model")
_N_LAYERS_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
# Token positions a probe may read: probebench reads activations at the readout token (the token
# covering the prompt's anchor, by default its last token; docs/design.md §3). "last_token" is the
# site's name for it (and its default); a probe fitted on another position (a mean over tokens,
# the end of a question inside a longer prompt) would be measured on activations it never saw.
READ_POSITIONS = ("last_token", "readout", "anchor")
# How joblib/pickle files begin: pickle protocol >= 2 (b"\x80"), or joblib's compressors (zlib,
# gzip, bz2, xz, lzma, lz4); other first bytes mean the file is not a pickle at all.
_PICKLE_MAGICS = (b"\x80", b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x5d\x00\x00", b"\x04\x22\x4d\x18", b"ZF")


@dataclass(frozen=True)
class TargetModel:
    """The model entry an imported probe must agree with.

    ``d_model``: width of its residual stream. ``layer``: the 0-based block whose output the
    entry reads (None: not checked). ``model_id``: its hub id (None: not checked). ``where``
    names the source of these values in error messages (``"params.yaml: models.gemma2-base"``).
    """

    d_model: int
    layer: int | None = None
    model_id: str | None = None
    where: str = "the model"


def read_model_config(model_dir: str | os.PathLike) -> tuple[int, int]:
    """``(d_model, n_layers)`` from a model directory's ``config.json`` (the text config of a
    multimodal model), without loading weights.

    Example::

        >>> import json, tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "config.json").write_text(json.dumps({"n_embd": 768, "n_layer": 12}))
        >>> read_model_config(d)
        (768, 12)
    """
    cfg_path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProbeImportError(f"{cfg_path}: not found; build or download the model to that directory first "
                               "(dvc repro), or pass --d-model") from None
    except (OSError, ValueError) as exc:
        raise ProbeImportError(f"{cfg_path}: cannot read JSON ({exc}); re-save the model's config") from None
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}
    values = []
    for keys in (_D_MODEL_KEYS, _N_LAYERS_KEYS):
        found = next((cfg[k] for k in keys if isinstance(cfg.get(k), int) and not isinstance(cfg.get(k), bool)), None)
        if found is None:
            raise ProbeImportError(f"{cfg_path}: none of the keys {list(keys)} is an integer; is this a transformers config?")
        values.append(int(found))
    return values[0], values[1]


def target_model(params: "Params", key: str, *, root: str | os.PathLike = ".", source: str = "params.yaml") -> TargetModel:
    """The :class:`TargetModel` of ``models.<key>`` in ``params``: d_model from the model
    directory's ``config.json`` (``path`` relative to ``root``), the layer resolved as the
    pipeline resolves it (a relative depth becomes a block index), the hub id from ``hf_id``."""
    from probebench.models.load import ModelError, resolve_layer  # imports torch: only when a params model is used

    if key not in params.models:
        raise ProbeImportError(f"{source}: models has no key {key!r} (known: {sorted(params.models)}); add the model "
                               "the probe was trained on to models:, or pass --d-model to import without checks")
    mp = params.models[key]
    d_model, n_layers = read_model_config(Path(root) / mp.path)
    try:
        layer = resolve_layer(mp.layer, n_layers, where=f"{source}: models.{key}.layer")
    except ModelError as exc:
        raise ProbeImportError(str(exc)) from None
    return TargetModel(d_model=d_model, layer=layer, model_id=mp.hf_id, where=f"{source}: models.{key}")


def parse_sha256_pins(values: list[str] | tuple[str, ...]) -> tuple[dict[str, str], str | None]:
    """Split CLI ``--sha256`` values into ``{file: hex}`` pins and one bare digest (the old
    single-file form).

    Example::

        >>> parse_sha256_pins(["scaler.joblib=" + "ab" * 32])[0] == {"scaler.joblib": "ab" * 32}
        True
    """
    pins: dict[str, str] = {}
    bare: list[str] = []
    for value in values:
        name, sep, digest = value.rpartition("=")
        if not sep:
            bare.append(value)
            continue
        name = name.strip()
        if not name or "/" in name or name in pins:
            why = "repeated" if name in pins else "a bare file name, e.g. scaler.joblib=<hex>"
            raise ProbeImportError(f"--sha256 {value!r}: the file must be {why}")
        pins[name] = _normalize_digest(digest, f"--sha256 {name}")
    if len(bare) > 1 or (bare and pins):
        raise ProbeImportError("--sha256: give one bare digest (single-file probe) or FILE=HEX pins, not both")
    return pins, (_normalize_digest(bare[0], "--sha256") if bare else None)


def import_probe(path: str | os.PathLike, *, d_model: int | None = None, target: TargetModel | None = None,
                 trust_pickle: bool = False, expected_sha256: str | None = None,
                 sha256_pins: Mapping[str, str] | None = None) -> Probe:
    """Import a probe (see the module docstring for inputs, meta keys and the pickle rules).

    Give ``target`` (checks d_model, and the meta's ``layer`` and ``modelId`` where both sides
    declare them) or just ``d_model``. ``expected_sha256``: digest of a single-file probe;
    ``sha256_pins``: ``{file name: hex}`` for files of a bundle.
    """
    if (target is None) == (d_model is None):
        raise ProbeImportError("import_probe: give exactly one of d_model or target")
    target = target or TargetModel(d_model=int(d_model))
    pins = {name: _normalize_digest(v, f"sha256 pin {name}") for name, v in (sha256_pins or {}).items()}
    p = Path(path)
    if not p.exists():
        raise ProbeImportError(f"{p}: no such file or directory; pass a .npy/.safetensors vector or a bundle directory")
    if p.is_dir() and (p / CARD_FILE).is_file() and (p / DIRECTION_FILE).is_file():
        _check_pin_names(p, pins, [DIRECTION_FILE])
        declared = [d for d in (expected_sha256, pins.get(DIRECTION_FILE)) if d is not None]
        _verify_digest(p / DIRECTION_FILE, declared)
        probe = load_probe(p)
        check_direction(probe.direction, str(p))
        _check_d_model(p, probe.d_model, target)
        return probe
    if p.is_dir():
        return _import_bundle_dir(p, target=target, trust_pickle=trust_pickle, expected_sha256=expected_sha256, pins=pins)
    suffix = p.suffix.lower()
    if suffix in _PICKLE_SUFFIXES:
        return _import_pickles(p.parent, [p.name], target=target, trust_pickle=trust_pickle,
                               expected_sha256=expected_sha256, pins=pins)
    if suffix not in (".npy", ".safetensors"):
        raise ProbeImportError(
            f"{p}: unsupported probe file type {suffix!r}; use .npy, .safetensors, .joblib or a bundle directory"
        )
    _check_pin_names(p.parent, pins, [p.name])
    declared = [d for d in (expected_sha256, pins.get(p.name)) if d is not None]
    digest = _verify_digest(p, declared)
    if suffix == ".npy":
        vec, bias, key = _read_npy(p), 0.0, None
    else:
        vec, bias, key = _read_safetensors(p)
    dir_D = _as_vector(vec, p, key)
    _check_d_model(p, dir_D.size, target)
    card = {"method": "raw", "source": str(p), "source_format": suffix.lstrip("."), "sha256": {p.name: digest}}
    if key is not None:
        card["source_key"] = key
    return Probe(direction=dir_D, bias=bias, method="raw", card=card)


# --------------------------------------------------------------------------------------------
# raw vectors


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
        raise ProbeImportError(f"{p}: holds {sorted(tensors)} and {what} the direction keys {list(_RAW_KEYS)}; "
                               "keep exactly one direction tensor (e.g. 'direction')")
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
        raise ProbeImportError(f"{where}: expected a direction of shape [D] or [1, D], got {arr.shape}; "
                               "multi-class or stacked probes are not supported, save one binary direction")
    arr = arr.astype(np.float64)
    check_direction(arr, where)
    return arr


def check_direction(dir_D: np.ndarray, where: str) -> None:
    """A direction the pipeline can use: finite, with a norm that is a normal float64 (an all-zero
    direction has none; one of 1e-320 entries squares to 0, and every unit() of it divides by 0).

    >>> check_direction(np.full(4, 1e-320), "p.npy")
    Traceback (most recent call last):
    ...
    probebench.probes.fit.ProbeImportError: p.npy: direction has norm 0 (largest entry 1e-320): no usable direction (all zeros, or too small for float64 to normalize); export the probe's real coefficients
    """
    dir_D = np.asarray(dir_D, dtype=np.float64)
    require_finite(where, dir_D, ProbeImportError)
    norm = float(np.linalg.norm(dir_D))
    if not norm >= np.finfo(np.float64).tiny:
        raise ProbeImportError(f"{where}: direction has norm {norm:.3g} (largest entry {np.abs(dir_D).max():.3g}): no "
                               "usable direction (all zeros, or too small for float64 to normalize); export the "
                               "probe's real coefficients")


# --------------------------------------------------------------------------------------------
# bundles


def _import_bundle_dir(d: Path, *, target: TargetModel, trust_pickle: bool, expected_sha256: str | None,
                       pins: dict[str, str]) -> Probe:
    pickles = sorted(f.name for f in d.iterdir() if f.is_file() and f.suffix.lower() in _PICKLE_SUFFIXES)
    if all(n in pickles for n in _TWO_FILE):
        if expected_sha256 is not None:
            raise ProbeImportError(
                f"{d}: a bare --sha256 digest is for single-file probes; this bundle has {list(_TWO_FILE)}, "
                "pin each file with --sha256 FILE=HEX"
            )
        names = list(_TWO_FILE)
    elif len(pickles) == 1:
        names = pickles
    else:
        found = pickles or "no pickle files"
        raise ProbeImportError(
            f"{d}: not a probe bundle (found {found}); expected probe.joblib + scaler.joblib, exactly one "
            "joblib holding {'probe', 'scaler'}, or direction.safetensors + card.json"
        )
    return _import_pickles(d, names, target=target, trust_pickle=trust_pickle, expected_sha256=expected_sha256, pins=pins)


def _import_pickles(d: Path, names: list[str], *, target: TargetModel, trust_pickle: bool,
                    expected_sha256: str | None, pins: dict[str, str]) -> Probe:
    meta, meta_path = _read_meta(d)
    meta = _check_meta(meta, meta_path, target)
    _check_pin_names(d, pins, names)
    siblings = sorted(x.name for x in d.iterdir() if x.is_file() and x.suffix.lower() in _PICKLE_SUFFIXES)
    declared = _declared_digests(meta, meta_path, names, siblings)
    user_pins = [*pins.items(), *([(names[0], expected_sha256)] if expected_sha256 is not None else [])]
    for name, digest in user_pins:
        declared.setdefault(name, []).append((digest, "--sha256"))
    # Order matters: every digest first (a tampered file is reported as such), then trust, and only
    # then is anything unpickled.
    digests = {name: _verify_digest(d / name, [hex_ for hex_, _ in declared.get(name, [])]) for name in names}
    if not trust_pickle:
        undeclared = [n for n in names if not declared.get(n)]
        note = f" ({', '.join(undeclared)}: no sha256 declared, pin it with --sha256 FILE=HEX)" if undeclared else ""
        raise ProbeImportError(
            f"{d}: {', '.join(names)} {'is a pickle' if len(names) == 1 else 'are pickles'} and unpickling runs "
            f"code{note}; pass --trust-pickle after verifying the source (trust_pickle=True)"
        )
    verified_by = {n: sorted({origin for _, origin in declared.get(n, [])}) for n in names}
    if len(names) == 2:
        clf, scaler, layout = _unpickle(d / names[0]), _unpickle(d / names[1]), "bundle-2file"
    else:
        obj, layout = _unpickle(d / names[0]), "bundle-1file"
        if not isinstance(obj, dict) or "probe" not in obj:
            missing = (f"missing scaler: {d / 'scaler.joblib'} not found and " if names[0] == "probe.joblib" else "")
            raise ProbeImportError(
                f"{d / names[0]}: {missing}it holds a {type(obj).__name__}, not {{'probe', 'scaler'}}; add the "
                "StandardScaler the probe was fitted with as scaler.joblib (or export coef_ as .npy if it was fitted on raw activations)"
            )
        clf, scaler = obj["probe"], obj.get("scaler")
    return _bundle_probe(clf, scaler, d / names[0], target, meta, digests, verified_by, layout)


def _bundle_probe(
    clf: Any, scaler: Any, source: Path, target: TargetModel, meta: dict, digests: dict, verified_by: dict, layout: str
) -> Probe:
    if not _is_classifier(clf):
        # A regressor's (Ridge, LinearRegression) coef_ also looks like a direction, but it predicts a
        # number, not a class: no class boundary, no probability, nothing the site's client scores.
        raise ProbeImportError(f"{source}: probe is a {type(clf).__module__}.{type(clf).__name__}, not a classifier; "
                               "a ProbeBench probe is a fitted binary classifier (e.g. LogisticRegression)")
    coef = getattr(clf, "coef_", None)
    if coef is None:
        raise ProbeImportError(
            f"{source}: probe is a {type(clf).__name__} without coef_; expected a fitted LogisticRegression"
        )
    classes = getattr(clf, "classes_", None)
    coef_KD = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    n_classes = len(classes) if classes is not None else coef_KD.shape[0] + (coef_KD.shape[0] == 1)
    if coef_KD.ndim != 2 or coef_KD.shape[0] != 1 or n_classes != 2:
        raise ProbeImportError(f"{source}: probe is multi-class ({n_classes} classes, coef_ shape {coef_KD.shape}); "
                               "ProbeBench probes are binary, refit one-vs-rest and export one [1, D] probe")
    _check_d_model(source, coef_KD.shape[1], target)
    if scaler is not None and not (hasattr(scaler, "scale_") or hasattr(scaler, "mean_")):
        raise ProbeImportError(
            f"{source}: scaler is a {type(scaler).__name__} without mean_/scale_; expected a fitted StandardScaler"
        )
    intercept = np.ravel(np.asarray(getattr(clf, "intercept_", 0.0), dtype=np.float64))
    try:
        dir_D, bias = fold_standardized(coef_KD[0], float(intercept[0]) if intercept.size else 0.0, scaler)
    except ProbeImportError as exc:
        raise ProbeImportError(f"{source}: {exc}") from None
    check_direction(dir_D, f"{source} (probe {meta.get('id', source.parent.name)!r})")
    method = "logreg" if isinstance(clf, LogisticRegression) else type(clf).__name__
    card = {k: v for k, v in meta.items() if k != "sha256"}
    card.update(method=method, source=str(source), source_format=layout, sha256=digests, sha256_verified_by=verified_by)
    if scaler is not None and not isinstance(scaler, StandardScaler):
        card["scaler_type"] = type(scaler).__name__
    return Probe(direction=dir_D, bias=bias, method=method, card=card)


def _is_classifier(obj: Any) -> bool:
    try:
        return bool(is_classifier(obj))
    except Exception:  # noqa: BLE001 - an object without scikit-learn tags is no scikit-learn classifier
        return False


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
        raise ProbeImportError(f"{mp}: cannot parse ({str(exc).splitlines()[0]}); fix the file syntax") from exc
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise ProbeImportError(f"{mp}: top level is a {type(meta).__name__}; it must be a mapping of keys")
    return meta, mp


def _check_meta(meta: dict, meta_path: Path | None, target: TargetModel) -> dict:
    """Type-check the ProbeBench keys and compare them with the target model entry; returns meta
    with ``layer`` as an int."""
    meta = dict(meta)
    for key in ("id", "modelId", "position"):
        if key in meta and not (isinstance(meta[key], str) and meta[key].strip()):
            raise ProbeImportError(f"{meta_path}: key {key!r} is {meta[key]!r}; it must be a non-empty string")
    if "position" in meta and meta["position"].strip() not in READ_POSITIONS:
        raise ProbeImportError(f"{meta_path}: position {meta['position']!r} is not implemented: probebench reads every "
                               f"probe at the readout token (positions {list(READ_POSITIONS)}); refit the probe on "
                               "last-token activations")
    if meta.get("d_model") is not None:
        meta["d_model"] = _meta_int(meta["d_model"], "d_model", meta_path)
    if "layer" in meta:
        layer = meta["layer"]
        # openinterp's own guards also accept "L31" (they strip the "L"); a bool is not a layer.
        if isinstance(layer, str) and re.fullmatch(r"L?\d+", layer.strip()):
            layer = int(layer.strip().lstrip("L"))
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ProbeImportError(f"{meta_path}: key 'layer' is {meta['layer']!r}; it must be a block index >= 0")
        meta["layer"] = layer
        if target.layer is not None and layer != target.layer:
            raise ProbeImportError(
                f"{meta_path}: layer {layer} but {target.where} reads block {target.layer}; set that entry's layer "
                f"to {layer} (meta layer is the 0-based block whose output the probe reads; hidden_states[L] is block L-1)"
            )
    model_id = meta.get("modelId")
    if model_id is not None and target.model_id is not None and model_id.casefold() != target.model_id.casefold():
        raise ProbeImportError(f"{meta_path}: modelId {model_id!r} but {target.where} is hf_id {target.model_id!r}; "
                               "import the probe for the model it was trained on")
    if meta.get("d_model") is not None and meta["d_model"] != target.d_model:
        raise ProbeImportError(
            f"{meta_path}: declares d_model={meta['d_model']} but {target.where} has d_model {target.d_model}; "
            "this probe belongs to a different model"
        )
    return meta


def _meta_int(value: Any, key: str, meta_path: Path | None) -> int:
    """An integer meta value: an int, or a string of digits; 64.9, "abc" and true are refused (int()
    would truncate the first and fail with a bare ValueError on the second)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProbeImportError(f"{meta_path}: key {key!r} is {value!r}; it must be an integer (the width of the "
                               "model's residual stream, e.g. 2304)")
    return value


def _declared_digests(meta: dict, meta_path: Path | None, wanted: list[str], pickles: list[str]) -> dict:
    """``{file: [(hex, origin)]}`` from meta's ``artifactSha256`` and the older ``sha256`` key."""
    out: dict[str, list[tuple[str, str]]] = {}
    where = meta_path.name if meta_path is not None else "meta"
    for key in ("artifactSha256", "artifact_sha256"):
        if key in meta and not (isinstance(meta[key], str) and meta[key].strip()):
            # A declared but empty digest is a broken export, not "no digest": refusing it keeps the
            # file from loading under --trust-pickle alone.
            raise ProbeImportError(f"{meta_path}: key {key!r} is {meta[key]!r}; give the sha256 of probe.joblib "
                                   "(64 hex digits) or remove the key")
        if meta.get(key):
            # The site declares the digest of probe.joblib; a bundle whose only pickle has another
            # name is a renamed combined artifact, and the digest is that file's.
            name = "probe.joblib" if "probe.joblib" in pickles else (pickles[0] if len(pickles) == 1 else None)
            if name is None:
                raise ProbeImportError(
                    f"{meta_path}: {key} declares probe.joblib but the bundle has {pickles}; name the probe file probe.joblib"
                )
            if name in wanted:
                out.setdefault(name, []).append((_normalize_digest(meta[key], f"{meta_path}: {key}"), f"{where}:{key}"))
    sha = meta.get("sha256")
    if sha is None:
        return out
    if isinstance(sha, str):
        if len(pickles) != 1:
            raise ProbeImportError(
                f"{meta_path}: key 'sha256' is one string but the bundle has {len(pickles)} pickle files "
                f"{pickles}; use a mapping {{filename: digest}}"
            )
        sha = {pickles[0]: sha}
    if not isinstance(sha, dict):
        raise ProbeImportError(
            f"{meta_path}: key 'sha256' is a {type(sha).__name__}; use a hex string or {{filename: hex}}"
        )
    for name in wanted:
        if name in sha:
            out.setdefault(name, []).append((_normalize_digest(sha[name], f"{meta_path}: sha256.{name}"), f"{where}:sha256"))
    return out


def _check_pin_names(d: Path, pins: Mapping[str, str], names: list[str]) -> None:
    unknown = sorted(set(pins) - set(names))
    if unknown:
        raise ProbeImportError(f"--sha256 {unknown[0]}=...: {d} has no such probe file (files read: {names}); fix the file name")


def _normalize_digest(digest: Any, where: str) -> str:
    s = str(digest).strip().lower()
    if s.startswith("sha256:"):
        s = s[len("sha256:"):]
    if len(s) != 64 or any(c not in "0123456789abcdef" for c in s):
        raise ProbeImportError(f"{where}: sha256 {digest!r} is not 64 hex digits; copy the full digest")
    return s


def _verify_digest(p: Path, declared: list) -> str:
    actual = file_sha256(p)
    for exp in declared:
        exp_hex = _normalize_digest(exp, str(p))
        if exp_hex != actual:
            raise ProbeImportError(f"{p}: sha256 mismatch: expected {exp_hex}, actual {actual}; the file changed since the "
                                   "digest was recorded, re-fetch it from a trusted source")
    return actual


def _unpickle(p: Path) -> Any:
    try:
        return joblib.load(p)  # looked up at call time so tests can prove it is never reached
    except Exception as exc:  # noqa: BLE001
        with open(p, "rb") as f:
            head = f.read(8)
        if not head.startswith(_PICKLE_MAGICS):
            raise ProbeImportError(f"{p}: not a joblib/pickle file (it begins with {head!r}); export the probe with "
                                   "joblib.dump") from None
        if isinstance(exc, (ImportError, AttributeError)):
            raise ProbeImportError(f"{p}: joblib.load failed ({exc}); it was pickled with other library versions: "
                                   "check scikit-learn versions match") from exc
        raise ProbeImportError(f"{p}: joblib.load failed ({type(exc).__name__}: {exc}); the file is damaged or "
                               "truncated: export it again with joblib.dump") from exc


def _check_d_model(p: Path, got: int, target: TargetModel) -> None:
    if int(got) != int(target.d_model):
        raise ProbeImportError(f"{p}: probe has D={got} but {target.where} has d_model {target.d_model}; "
                               "import a probe trained on this model's residual stream")
