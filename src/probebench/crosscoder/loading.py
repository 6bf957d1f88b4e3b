"""Crosscoder checkpoint loaders: every public layout into one in-memory representation.

Layouts (docs/design.md §8), picked by key names, `_orig_mod.` (torch.compile) prefixes stripped:

- probebench's own `save` output: W_enc_MDF, b_enc_F, W_dec_FMD, b_dec_MD, input_scale_M
  (+ k, threshold for BatchTopK);
- dictionary_learning CrossCoder / BatchTopKCrossCoder: encoder.weight [M, D, F], encoder.bias
  [F], decoder.weight [M, F, D], decoder.bias [M, D]; with k, threshold -> BatchTopKCrossCoder,
  without (the L1 CrossCoder) -> ReLUCrossCoder. Later saves add code_normalization_id and
  target_rms, activation_mean, activation_std, activation_global_scale (NaN = unused; a
  finite normalizer is folded into the weights). A hub folder is config.json (constructor
  arguments, dict_class) + model.safetensors; a training folder's final save
  (model_final.pt / ae_final.pt) is preferred over its checkpoint_*.pt;
- W_enc [2, D, F], W_dec [F, 2, D], b_enc [F], b_dec [2, D] + cfg.json. With a `k` (cfg
  or weights) it is a BatchTopK crosscoder; without one it is the ReLU crosscoder trained
  with an L1 penalty (cfg: d_in, dict_size, dec_init_norm, l1_coeff, ...), which has no k
  and no threshold -> ReLUCrossCoder.

Scale factors of the W_enc/W_dec layout are not folded into the weights; cfg.json names
them with ONE of `SCALE_FACTOR_KEYS`. Their meaning (the convention):

- `normalisation_factor`: the crosscoder saw raw * s (the L1 crosscoder replication's
  buffer multiplies each model's activations by s = sqrt(D) / mean ||x||, SAELens's
  norm-scaling factor), so probebench's divisor input_scale_M = 1 / s;
- `input_scale_M`: probebench's own divisor (the crosscoder saw raw / s);
- `scale_factors` / `activation_scale_factors`: as `scale_factor_convention` says,
  "divide" (default) or "multiply".

An explicit `scale_factor_convention` always wins. Every failure is a CrossCoderLoadError
with one line naming file, key and fix.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as _st_load_file

from probebench.crosscoder.model import BatchTopKCrossCoder, CrossCoder, CrossCoderError, ReLUCrossCoder

__all__ = [
    "CrossCoderLoadError",
    "SCALE_FACTOR_KEYS",
    "load_crosscoder",
    "load_dictionary_learning_state",
    "load_native_state",
    "load_wdec_layout",
]

SCALE_FACTOR_KEYS = ("scale_factors", "activation_scale_factors", "input_scale_M", "normalisation_factor")
_DEFAULT_CONVENTION = {"scale_factors": "divide", "activation_scale_factors": "divide", "input_scale_M": "divide",
                       "normalisation_factor": "multiply"}
_COMPILE_PREFIX = "_orig_mod."
_DL_KEYS = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias", "k", "threshold")
_DL_WEIGHTS = _DL_KEYS[:4]
_DL_TOPK = ("k", "threshold")
# buffers of dictionary_learning's CrossCoder since May 2025 (code_normalization_id) and June
# 2025 (NormalizableMixin: target_rms, activation_mean/std [M, D] NaN when unused, activation_global_scale [M])
_DL_NORM = ("code_normalization_id", "target_rms", "activation_mean", "activation_std", "activation_global_scale")
# dictionary_learning's CodeNormalization enum (auto() values)
_CODE_NORMS = {1: "CROSSCODER", 2: "SAE", 3: "MIXED", 4: "NONE", 5: "DECOUPLED"}
_DL_CLASSES = {"CrossCoder": "relu", "BatchTopKCrossCoder": "batchtopk"}
# a training folder holds the final save among intermediate ones (checkpoint_*.pt, ae_<step>.pt)
_FINAL_NAMES = ("model.safetensors", "model_final.pt", "ae_final.pt")
_WDEC_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec")
_NATIVE_WEIGHTS = ("W_enc_MDF", "b_enc_F", "W_dec_FMD", "b_dec_MD", "input_scale_M")
_NATIVE_TOPK = ("k", "threshold")
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
_CFG_NAMES = ("cfg.json", "config.json")


class CrossCoderLoadError(CrossCoderError):
    """A crosscoder checkpoint could not be loaded; the message names file, key and fix."""


# ---------------------------------------------------------------------- small checks
def _strip_prefix(state: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        # torch.compile wraps the module; its state dict keys gain `_orig_mod.` (maybe nested)
        while key.startswith(_COMPILE_PREFIX):
            key = key[len(_COMPILE_PREFIX) :]
        out[key] = value
    return out


def _require(state: dict[str, Any], required: tuple[str, ...], *, source: str, layout: str, fix: str) -> None:
    missing = [key for key in required if key not in state]
    if missing:
        raise CrossCoderLoadError(
            f"{source}: missing key(s) {missing} for the {layout} layout (found {sorted(state)}); fix: {fix}"
        )


def _reject_unexpected(state: dict[str, Any], known: tuple[str, ...], *, source: str, layout: str, strict: bool) -> None:
    extra = sorted(set(state) - set(known))
    if extra and strict:
        raise CrossCoderLoadError(
            f"{source}: unexpected key(s) {extra} in the {layout} layout (they could hold a "
            f"normalization this loader would silently drop); fix: check what they do, then pass strict=False"
        )


def _as_tensor(value: Any, *, source: str, key: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value)
    except Exception as exc:  # noqa: BLE001 - re-raised with the key named
        raise CrossCoderLoadError(f"{source}: key {key!r} is not a tensor ({type(value).__name__}); fix: store it as a tensor") from exc


def _check_shape(t: torch.Tensor, expected: tuple[int, ...], *, source: str, key: str, meaning: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise CrossCoderLoadError(
            f"{source}: key {key!r} has shape {tuple(t.shape)}, expected {tuple(expected)} {meaning}; "
            "fix: use a checkpoint whose tensors agree (or transpose this one to that layout)"
        )


def _scalar(value: Any, *, source: str, key: str) -> float:
    t = _as_tensor(value, source=source, key=key)
    if t.numel() != 1:
        raise CrossCoderLoadError(f"{source}: key {key!r} must be a scalar, got shape {tuple(t.shape)}; fix: store one number")
    return float(t.reshape(()).item())


def _build(*, source: str, enc_key: str, W_enc_MDF: torch.Tensor, b_enc_F: torch.Tensor, W_dec_FMD: torch.Tensor,
           b_dec_MD: torch.Tensor, k: float | None, threshold: float, input_scale_M: torch.Tensor | None,
           d_model: int | None, n_models: int, names: dict[str, str]) -> CrossCoder:
    """Check shapes against each other and the models, then fill the right class (k None -> ReLU)."""
    if n_models != 2:
        raise CrossCoderLoadError(
            f"{source}: n_models={n_models} was requested but only 2-model (base/IT) crosscoders are supported; fix: pass n_models=2"
        )
    if W_enc_MDF.ndim != 3:
        raise CrossCoderLoadError(
            f"{source}: key {enc_key!r} has shape {tuple(W_enc_MDF.shape)}, expected 3 dims; fix: use a crosscoder checkpoint, not an SAE"
        )
    M, D, F = W_enc_MDF.shape
    if M != 2:
        raise CrossCoderLoadError(
            f"{source}: key {enc_key!r} has n_models={M} (shape {tuple(W_enc_MDF.shape)}), only n_models=2 is supported; "
            "fix: use a base/IT crosscoder with exactly two models"
        )
    if d_model is not None and D != d_model:
        raise CrossCoderLoadError(
            f"{source}: key {enc_key!r} has d_model={D} but the models have d_model={d_model}; "
            "fix: use the crosscoder trained on these models' residual stream (or pass the right d_model)"
        )
    _check_shape(b_enc_F, (F,), source=source, key=names["b_enc"], meaning="(F,)")
    _check_shape(W_dec_FMD, (F, M, D), source=source, key=names["W_dec"], meaning=names["W_dec_meaning"])
    _check_shape(b_dec_MD, (M, D), source=source, key=names["b_dec"], meaning="(n_models, d_model)")
    for key, t in ((enc_key, W_enc_MDF), (names["W_dec"], W_dec_FMD), (names["b_enc"], b_enc_F), (names["b_dec"], b_dec_MD)):
        if not bool(torch.isfinite(t.float()).all()):
            raise CrossCoderLoadError(f"{source}: key {key!r} holds NaN/inf; fix: re-download or re-export the checkpoint")
    if input_scale_M is not None:
        scale_key = names.get("scale", "input_scale_M")
        _check_shape(input_scale_M, (M,), source=source, key=scale_key, meaning="(n_models,)")
        if not bool(torch.isfinite(input_scale_M).all() and (input_scale_M > 0).all()):
            raise CrossCoderLoadError(
                f"{source}: {scale_key!r} = {input_scale_M.tolist()} must be finite and > 0; fix: store the per-model scale factors"
            )
    weights = dict(W_enc_MDF=W_enc_MDF, b_enc_F=b_enc_F, W_dec_FMD=W_dec_FMD, b_dec_MD=b_dec_MD, input_scale_M=input_scale_M)
    if k is None:
        return ReLUCrossCoder(d_model=D, n_latents=F, n_models=M)._fill(**weights)
    if not (k == int(k) and 0 < int(k) <= F):
        raise CrossCoderLoadError(f"{source}: key 'k' = {k} must be an integer in [1, {F}]; fix: store the BatchTopK k")
    cc = BatchTopKCrossCoder(d_model=D, n_latents=F, k=int(k), n_models=M)
    with torch.no_grad():
        cc.threshold.fill_(float(threshold))
    return cc._fill(**weights)


# ---------------------------------------------------------------------- one loader per layout
def _dl_code_norm(state: dict[str, Any], cfg: dict[str, Any], *, source: str) -> str | None:
    """CodeNormalization name from the `code_normalization_id` buffer (or config.json), None if absent."""
    if "code_normalization_id" in state:
        value = _scalar(state["code_normalization_id"], source=source, key="code_normalization_id")
        if value != int(value) or int(value) not in _CODE_NORMS:
            raise CrossCoderLoadError(
                f"{source}: key 'code_normalization_id' = {value:g} is not a known dictionary_learning CodeNormalization "
                f"{_CODE_NORMS}; fix: re-save with a dictionary_learning version whose ids these are "
                "(1 = CROSSCODER for BatchTopK)"
            )
        return _CODE_NORMS[int(value)]
    name = cfg.get("code_normalization")
    if name is None:
        return None
    if not isinstance(name, str) or name.upper() not in _CODE_NORMS.values():
        raise CrossCoderLoadError(
            f"{source} (config.json): key 'code_normalization' = {name!r} is not one of {sorted(_CODE_NORMS.values())}; "
            "fix: use the config.json saved with these weights"
        )
    return name.upper()


def _dl_normalizer(state: dict[str, Any], *, source: str, M: int, D: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean_MD, scale_M) of NormalizableMixin, or None when it is off (NaN mean/std, as saved when unused).

    dictionary_learning (keep_relative_variance=True, the only mode its crosscoders construct):
    encode sees (x - mean) * g[m]; decode returns x_hat / (g[m] + 1e-8) + mean, with
    g = activation_global_scale = target_rms / sqrt(sum_d std^2 + 1e-8).
    """
    present = [key for key in ("activation_mean", "activation_std") if key in state]
    if not present:
        if "activation_global_scale" in state:
            g = _as_tensor(state["activation_global_scale"], source=source, key="activation_global_scale").double()
            if not bool((torch.isnan(g) | (g == 1.0)).all()):
                raise CrossCoderLoadError(
                    f"{source}: key 'activation_global_scale' = {g.flatten().tolist()} without activation_mean/activation_std; "
                    "fix: save the full state_dict (all NormalizableMixin buffers)"
                )
        return None
    t = {key: _as_tensor(state[key], source=source, key=key).double() for key in present}
    if all(bool(torch.isnan(v).all()) for v in t.values()):
        return None  # NaN buffers = no normalizer (how dictionary_learning saves "unused")
    if len(present) != 2:
        missing = ({"activation_mean", "activation_std"} - set(present)).pop()
        raise CrossCoderLoadError(
            f"{source}: key {present[0]!r} holds a normalizer but {missing!r} is missing; "
            "fix: save the full state_dict (activation_mean and activation_std together)"
        )
    for key, v in t.items():
        _check_shape(v, (M, D), source=source, key=key, meaning="(n_models, d_model)")
        if not bool(torch.isfinite(v).all()):
            raise CrossCoderLoadError(
                f"{source}: key {key!r} is partly NaN/inf (dictionary_learning then skips the normalizer, a finite "
                "partner says it was used); fix: re-export the checkpoint with finite activation_mean/activation_std"
            )
    mean, std = t["activation_mean"], t["activation_std"]
    if "activation_global_scale" in state:
        g = _as_tensor(state["activation_global_scale"], source=source, key="activation_global_scale").double()
        _check_shape(g, (M,), source=source, key="activation_global_scale", meaning="(n_models,)")
    else:  # as NormalizableMixin.__init__ computes it
        rms = _scalar(state["target_rms"], source=source, key="target_rms") if "target_rms" in state else 1.0
        if not math.isfinite(rms):
            rms = 1.0
        g = rms / torch.sqrt((std**2).sum(-1) + 1e-8)
    if not bool(torch.isfinite(g).all() and (g > 0).all()):
        raise CrossCoderLoadError(
            f"{source}: key 'activation_global_scale' = {g.tolist()} must be finite and > 0 with a normalizer; "
            "fix: re-export the checkpoint (target_rms / sqrt(sum std^2))"
        )
    return mean, g


def load_dictionary_learning_state(state: dict[str, torch.Tensor], *, source: str = "<state dict>",
                                   d_model: int | None = None, n_models: int = 2, strict: bool = True,
                                   config: dict[str, Any] | None = None) -> CrossCoder:
    """dictionary_learning `CrossCoder` / `BatchTopKCrossCoder` state dict -> ReLUCrossCoder / BatchTopKCrossCoder.

    Keys: encoder.weight [M, D, F], encoder.bias [F], decoder.weight [M, F, D], decoder.bias
    [M, D]; `k` and `threshold` make it BatchTopK (without them it is the L1 `CrossCoder`,
    f = relu(pre)). Later saves add `code_normalization_id` (BatchTopK: only 1 = CROSSCODER,
    the sum of per-model decoder norms, matches this package's selection score; other ids
    are refused) and the NormalizableMixin buffers (NaN = unused; a finite normalizer is
    folded: input_scale_M = 1 / activation_global_scale, b_enc -= sum_m g_m mean_m @ W_enc[m],
    b_dec += g * mean; decode then differs from dictionary_learning's x_hat / (g + 1e-8) by a
    relative 1e-8 / g). `config` is the hub config.json (dict_class, activation_dim,
    dict_size, num_layers, k, code_normalization), checked against the tensors.

    Example:
        >>> cc = load_dictionary_learning_state(torch.load("ae.pt", weights_only=True))   # doctest: +SKIP
    """
    state = _strip_prefix(state)
    cfg = config or {}
    cfg_source = f"{source} (config.json)"
    # a threshold says BatchTopK, which needs its k too
    needs_k = "threshold" in state and "k" not in cfg
    _require(state, _DL_WEIGHTS + (("k",) if needs_k else ()), source=source, layout="dictionary_learning",
             fix="save the full CrossCoder state_dict (encoder/decoder weight and bias; k is a BatchTopK buffer)")
    dict_class = cfg.get("dict_class")
    if dict_class is not None and dict_class not in _DL_CLASSES:
        raise CrossCoderLoadError(
            f"{cfg_source}: key 'dict_class' = {dict_class!r} is not a crosscoder this loader reads "
            f"({sorted(_DL_CLASSES)}); fix: load it with dictionary_learning itself"
        )
    topk = any(key in state for key in _DL_TOPK) or dict_class == "BatchTopKCrossCoder"
    if dict_class == "CrossCoder" and any(key in state for key in _DL_TOPK):
        raise CrossCoderLoadError(
            f"{cfg_source}: 'dict_class' = 'CrossCoder' (ReLU) but the weights hold k/threshold; "
            "fix: use the config.json saved with these weights"
        )
    if topk and "k" not in state and "k" not in cfg:
        raise CrossCoderLoadError(f"{source}: a BatchTopKCrossCoder without 'k'; fix: save the full state_dict (k is a buffer)")
    _reject_unexpected(state, _DL_WEIGHTS + _DL_TOPK + _DL_NORM, source=source, layout="dictionary_learning", strict=strict)
    t = {key: _as_tensor(state[key], source=source, key=key) for key in _DL_WEIGHTS}
    enc, dec = t["encoder.weight"], t["decoder.weight"]
    if dec.ndim != 3:
        raise CrossCoderLoadError(
            f"{source}: key 'decoder.weight' has shape {tuple(dec.shape)}, expected (n_models, F, d_model); fix: use a crosscoder checkpoint"
        )
    if enc.ndim == 3:
        for key, axis in (("num_layers", 0), ("activation_dim", 1), ("dict_size", 2)):
            if isinstance(cfg.get(key), int) and cfg[key] != enc.shape[axis]:
                raise CrossCoderLoadError(
                    f"{cfg_source}: key {key!r} = {cfg[key]} but encoder.weight has shape {tuple(enc.shape)}; "
                    "fix: use the config.json saved with these weights"
                )
    code_norm = _dl_code_norm(state, cfg, source=source)
    if topk and code_norm not in (None, "CROSSCODER"):
        raise CrossCoderLoadError(
            f"{source}: key 'code_normalization_id' says {code_norm} but this package's BatchTopK selects on the CROSSCODER "
            "score (sum of per-model decoder norms); fix: load it with dictionary_learning, or re-train with CROSSCODER"
        )
    k = threshold = None
    if topk:
        k = _scalar(state["k"] if "k" in state else cfg["k"], source=source, key="k")
        if "k" in state and isinstance(cfg.get("k"), (int, float)) and float(cfg["k"]) != k:
            raise CrossCoderLoadError(f"{cfg_source}: key 'k' = {cfg['k']} but the weights hold k = {k:g}; fix: use the config.json saved with these weights")
        threshold = _scalar(state["threshold"], source=source, key="threshold") if "threshold" in state else -1.0
    b_enc, b_dec, input_scale_M = t["encoder.bias"], t["decoder.bias"], None
    if enc.ndim == 3 and b_dec.ndim == 2:
        norm = _dl_normalizer(state, source=source, M=enc.shape[0], D=enc.shape[1])
        if norm is not None:  # fold (x - mean) * g into the weights, see the docstring
            mean, g = norm
            b_enc = (b_enc.double() - torch.einsum("md,mdf->f", mean * g[:, None], enc.double())).float()
            b_dec = (b_dec.double() + mean * g[:, None]).float()
            input_scale_M = (1.0 / g).float()
    return _build(
        source=source, enc_key="encoder.weight", W_enc_MDF=enc, b_enc_F=b_enc,
        W_dec_FMD=dec.permute(1, 0, 2), b_dec_MD=b_dec, k=k, threshold=-1.0 if threshold is None else threshold,
        input_scale_M=input_scale_M, d_model=d_model, n_models=n_models,
        names={"b_enc": "encoder.bias", "W_dec": "decoder.weight", "b_dec": "decoder.bias", "scale": "activation_global_scale",
               "W_dec_meaning": "after permuting (n_models, F, d_model) -> (F, n_models, d_model)"},
    )


def _scale_from_cfg(cfg: dict[str, Any], cfg_source: str) -> tuple[torch.Tensor | None, str]:
    """Per-model DIVISOR input_scale_M from cfg.json, or None; and the key it came from."""
    present = [key for key in SCALE_FACTOR_KEYS if key in cfg and cfg[key] is not None]
    if len(present) > 1:
        raise CrossCoderLoadError(
            f"{cfg_source}: several scale-factor keys {present}; fix: keep exactly one of {list(SCALE_FACTOR_KEYS)}"
        )
    if not present:
        return None, "input_scale_M"
    key = present[0]
    convention = cfg.get("scale_factor_convention", _DEFAULT_CONVENTION[key])
    if convention not in ("divide", "multiply"):
        raise CrossCoderLoadError(
            f"{cfg_source}: key 'scale_factor_convention' = {convention!r}; fix: use \"divide\" (crosscoder saw raw / s) or \"multiply\" (raw * s)"
        )
    try:
        s = torch.as_tensor(cfg[key], dtype=torch.float64).reshape(-1)
    except Exception as exc:  # noqa: BLE001 - re-raised with the key named
        raise CrossCoderLoadError(f"{cfg_source}: key {key!r} is not a list of numbers; fix: write e.g. [s0, s1]") from exc
    if not bool(torch.isfinite(s).all() and (s > 0).all()):
        raise CrossCoderLoadError(f"{cfg_source}: key {key!r} = {s.tolist()} must be finite and > 0; fix: store the per-model factors")
    return (s if convention == "divide" else 1.0 / s).float(), key


def load_wdec_layout(state: dict[str, torch.Tensor], cfg: dict[str, Any], *, source: str = "<state dict>",
                     d_model: int | None = None, n_models: int = 2, strict: bool = True) -> CrossCoder:
    """W_enc/W_dec layout + cfg.json -> BatchTopKCrossCoder (a `k` is given) or ReLUCrossCoder.

    cfg: `k` (BatchTopK only) and `threshold` (optional, default -1 = not estimated);
    `d_in` / `dict_size` if present must match the tensors; scale factors per the module
    docstring. encode(raw) / decode(...) use and return raw activations either way.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> state = {"W_enc": torch.randn(2, 4, 8, generator=g), "W_dec": torch.randn(8, 2, 4, generator=g),
        ...          "b_enc": torch.zeros(8), "b_dec": torch.zeros(2, 4)}
        >>> cc = load_wdec_layout(state, {"d_in": 4, "dict_size": 8, "normalisation_factor": [2.0, 0.5]})
        >>> type(cc).__name__, cc.input_scale_M.tolist()       # crosscoder saw raw * s
        ('ReLUCrossCoder', [0.5, 2.0])
    """
    state = _strip_prefix(state)
    cfg_source = f"{source} (cfg.json)"
    _require(state, _WDEC_KEYS, source=source, layout="W_enc/W_dec",
             fix="store W_enc [2, d, F], W_dec [F, 2, d], b_enc [F], b_dec [2, d]")
    _reject_unexpected(state, _WDEC_KEYS + ("k", "threshold"), source=source, layout="W_enc/W_dec", strict=strict)
    k = threshold = None
    if "k" in cfg or "k" in state:
        k = _scalar(cfg["k"] if "k" in cfg else state["k"], source=cfg_source, key="k")
    if "threshold" in cfg or "threshold" in state:
        raw_t = cfg["threshold"] if "threshold" in cfg else state["threshold"]
        threshold = None if raw_t is None else _scalar(raw_t, source=cfg_source, key="threshold")
    if k is None and threshold is not None:
        raise CrossCoderLoadError(
            f"{cfg_source}: a 'threshold' without a 'k'; fix: add the BatchTopK k, or drop the threshold for a ReLU (L1) crosscoder"
        )
    input_scale_M, scale_key = _scale_from_cfg(cfg, cfg_source)
    t = {key: _as_tensor(state[key], source=source, key=key) for key in _WDEC_KEYS}
    shape = tuple(t["W_enc"].shape)
    for key, axis in (("d_in", 1), ("dict_size", 2)):
        if key in cfg and len(shape) == 3 and int(cfg[key]) != shape[axis]:
            raise CrossCoderLoadError(
                f"{cfg_source}: key {key!r} = {cfg[key]} but W_enc has shape {shape}; fix: use the cfg.json saved with these weights"
            )
    return _build(
        source=source, enc_key="W_enc", W_enc_MDF=t["W_enc"], b_enc_F=t["b_enc"], W_dec_FMD=t["W_dec"], b_dec_MD=t["b_dec"],
        k=k, threshold=-1.0 if threshold is None else threshold, input_scale_M=input_scale_M, d_model=d_model,
        n_models=n_models,
        names={"b_enc": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec", "scale": scale_key, "W_dec_meaning": "(F, n_models, d_model)"},
    )


def load_native_state(state: dict[str, torch.Tensor], *, source: str = "<state dict>", d_model: int | None = None,
                      n_models: int = 2, strict: bool = True) -> CrossCoder:
    """State dict written by `CrossCoder.save` -> the same class (k and threshold -> BatchTopK)."""
    state = _strip_prefix(state)
    _require(state, _NATIVE_WEIGHTS, source=source, layout="probebench",
             fix="re-save with CrossCoder.save (input_scale_M is a buffer)")
    topk = any(key in state for key in _NATIVE_TOPK)
    if topk:
        _require(state, _NATIVE_TOPK, source=source, layout="probebench BatchTopK", fix="re-save with BatchTopKCrossCoder.save")
    known = _NATIVE_WEIGHTS + (_NATIVE_TOPK if topk else ())
    _reject_unexpected(state, known, source=source, layout="probebench", strict=strict)
    t = {key: _as_tensor(state[key], source=source, key=key) for key in known}
    return _build(
        source=source, enc_key="W_enc_MDF", W_enc_MDF=t["W_enc_MDF"], b_enc_F=t["b_enc_F"], W_dec_FMD=t["W_dec_FMD"],
        b_dec_MD=t["b_dec_MD"], k=_scalar(t["k"], source=source, key="k") if topk else None,
        threshold=_scalar(t["threshold"], source=source, key="threshold") if topk else -1.0,
        input_scale_M=t["input_scale_M"], d_model=d_model, n_models=n_models,
        names={"b_enc": "b_enc_F", "W_dec": "W_dec_FMD", "b_dec": "b_dec_MD", "scale": "input_scale_M",
               "W_dec_meaning": "(F, n_models, d_model)"},
    )


# ---------------------------------------------------------------------- files
def _read_weights(path: Path, *, lazy: bool = False) -> dict[str, Any]:
    """The file's state dict; `lazy`: tensors memory-mapped where the format allows (keys and
    shapes without reading a multi-GB file: what `check_checkpoint` needs)."""
    if path.suffix == ".safetensors":
        try:
            if lazy:
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:
                    return {key: f.get_slice(key) for key in f.keys()}
            return dict(_st_load_file(str(path)))
        except Exception as exc:  # noqa: BLE001 - re-raised as one line
            raise CrossCoderLoadError(f"{path}: not a readable safetensors file ({exc}); fix: re-download or re-save it") from exc
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=lazy)
        except Exception:  # noqa: BLE001 - lazy only: a legacy (non-zip) file or a filesystem without mmap
            if not lazy:
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised as one line
        raise CrossCoderLoadError(
            f"{path}: not a torch checkpoint that loads with weights_only=True ({_torch_load_reason(exc)}): a damaged "
            "or foreign file, or one that pickles objects besides tensors, which probebench does not unpickle; fix: "
            "re-download it, or re-save it as a plain dict of tensors (torch.save(model.state_dict(), path)) or as "
            ".safetensors"
        ) from None
    # some trainers nest the weights: {"state_dict": {...}, "step": ...}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CrossCoderLoadError(f"{path}: holds a {type(obj).__name__}, not a state dict; fix: save model.state_dict()")
    if not all(isinstance(key, str) for key in obj):
        bad = next(key for key in obj if not isinstance(key, str))
        raise CrossCoderLoadError(f"{path}: holds a dict keyed by {type(bad).__name__} ({bad!r}), not a state dict of "
                                  "named tensors; fix: save model.state_dict()")
    return obj


def _torch_load_reason(exc: BaseException) -> str:
    """The cause torch gives, without its advice to retry with weights_only=False (that runs
    whatever code the file carries)."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\s*\n|Check the documentation|$)", text, re.S)
    reason = " ".join((found.group(1) if found else text.strip().split("\n")[0]).split()).split(". ")[0].rstrip(".")
    if not reason or "weights_only" in reason or len(reason) > 160:
        reason = type(exc).__name__
    return reason


def _find_cfg(folder: Path) -> Path | None:
    for name in _CFG_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def _weights_and_cfg(path: Path) -> tuple[Path, Path | None]:
    if path.is_dir():
        weights = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
        if len(weights) > 1:
            # a training folder: the final save among checkpoint_*.pt / ae_<step>.pt
            final = [p for p in weights if p.name in _FINAL_NAMES]
            weights = final if len(final) == 1 else weights
        if len(weights) != 1:
            raise CrossCoderLoadError(
                f"{path}: expected exactly one weights file ({', '.join(_WEIGHT_SUFFIXES)}) or one final save "
                f"{list(_FINAL_NAMES)}, found {[p.name for p in weights]}; fix: pass the weights file itself"
            )
        return weights[0], _find_cfg(path)
    if path.is_file():
        if path.suffix not in _WEIGHT_SUFFIXES:
            raise CrossCoderLoadError(
                f"{path}: unsupported file type {path.suffix!r}; fix: pass a .safetensors, .pt or .pth file or a directory"
            )
        return path, _find_cfg(path.parent)
    raise CrossCoderLoadError(f"{path}: no such file or directory; fix: check the path")


def load_crosscoder(path: str | Path, *, d_model: int | None = None, n_models: int = 2, strict: bool = True) -> CrossCoder:
    """Load a crosscoder from a file or directory (eval mode).

    path: a `.safetensors`, `.pt` or `.pth` file, or a directory holding exactly one such
    file (plus cfg.json / config.json for the W_enc/W_dec layout; for a file path the cfg
    is looked up next to it). The key layout picks the loader. d_model, if given, must
    match the checkpoint's; only n_models=2 is supported.

    Example:
        >>> cc = load_crosscoder("checkpoints/gemma2-2b-L13", d_model=2304)   # doctest: +SKIP
    """
    path = Path(path)
    if n_models != 2:
        raise CrossCoderLoadError(
            f"{path}: n_models={n_models} was requested but only 2-model (base/IT) crosscoders are supported; fix: pass n_models=2"
        )
    state, source, cfg_path, layout = _open(path)
    kw = {"source": source, "d_model": d_model, "n_models": n_models, "strict": strict}
    if layout == "native":
        return load_native_state(state, **kw)
    if layout == "dictionary_learning":
        # hub folder: config.json = constructor arguments (+ dict_class since 2026); a training
        # folder's config.json ({"trainer": ..., "buffer": ...}) holds none of them at top level
        return load_dictionary_learning_state(state, config=_read_cfg(cfg_path) if cfg_path else None, **kw)
    return load_wdec_layout(state, _read_cfg(cfg_path), **kw)


def check_checkpoint(path: str | Path) -> str:
    """What `probebench check` can know about a crosscoder checkpoint without loading it: the
    file (or the one final save in a folder) reads as a weights-only state dict whose keys are a
    known layout (cfg.json beside the W_enc/W_dec one). Tensors stay memory-mapped. Returns the
    layout; raises CrossCoderLoadError with the loader's one line."""
    _, _, cfg_path, layout = _open(Path(path), lazy=True)
    if cfg_path is not None:
        _read_cfg(cfg_path)
    return layout


def _open(path: Path, *, lazy: bool = False) -> tuple[dict[str, Any], str, Path | None, str]:
    """The weights file's state dict (prefix stripped; `lazy`: memory-mapped), its name, the cfg
    beside it and its layout; the W_enc/W_dec layout is refused without a cfg."""
    weights_path, cfg_path = _weights_and_cfg(path)
    source = str(weights_path)
    state = _strip_prefix(_read_weights(weights_path, lazy=lazy))
    layout = _layout(state, source)
    if layout == "wdec" and cfg_path is None:
        raise CrossCoderLoadError(
            f"{source}: the W_enc/W_dec layout needs cfg.json (d_in, dict_size, scale factors; k for BatchTopK) "
            f"next to it; fix: put cfg.json in {weights_path.parent}"
        )
    return state, source, cfg_path, layout


def _layout(state: dict[str, Any], source: str) -> str:
    """The layout sharing the most weight keys with the file (names, not shapes)."""
    overlap = {
        "native": len(set(state) & set(_NATIVE_WEIGHTS[:4])),
        "dictionary_learning": len(set(state) & set(_DL_KEYS[:4])),
        "wdec": len(set(state) & set(_WDEC_KEYS)),
    }
    layout = max(overlap, key=overlap.get)
    if overlap[layout] == 0:
        raise CrossCoderLoadError(
            f"{source}: unrecognised key layout {sorted(state)[:12]}; fix: expected probebench "
            f"{list(_NATIVE_WEIGHTS[:4])}, dictionary_learning {list(_DL_KEYS[:4])} or {list(_WDEC_KEYS)} + cfg.json"
        )
    return layout


def _read_cfg(cfg_path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CrossCoderLoadError(f"{cfg_path}: not valid JSON ({exc}); fix: repair or re-download it") from exc
    if not isinstance(cfg, dict):
        raise CrossCoderLoadError(f"{cfg_path}: holds a {type(cfg).__name__}, not an object; fix: write a JSON object")
    return cfg
