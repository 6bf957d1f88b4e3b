"""Crosscoder audit: decoder cosine vs causal equivalence of shared latents on a base/IT pair.

Published protocol (DESIGN §8): for each shared latent j, subtract f_j(x) d_j^m at the last
token of layer L's output in model m, on N inputs; CE_j = Pearson across inputs of
KL(ablated || clean) of the next-token distribution in the two models. We also report our
protocol: the Pearson of the signed token-margin deltas. Each protocol is reported over ALL
inputs (the published definition; zero-inflated: where latent j does not fire, nothing is
subtracted and KL = 0 in both models, which pulls the Pearson toward agreement) and over the
inputs where j fires only. Every CE comes with a bootstrap CI, and every median with one.

Known-answer controls say whether the numbers measure the models or the crosscoder's training:
(a) `identical_pair_control` (a (base, base) crosscoder: cosine and CE ~1); (b)
`planted_change_control` (base vs a copy that mean-ablates a known subspace downstream of the
layer: only the latents reading it lose CE; `planted_subspace_copy` is the synthetic variant the
unit tests use).

    >>> acts_NMD = paired_activations([base, it], tok, texts, layers=[13, 13])   # doctest: +SKIP
    >>> effects = latent_effects(cc, [base, it], tok, prompts, layers=[13, 13], latents=latents)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from probebench.ablate import readout_edit_effects
from probebench.crosscoder import CrossCoder, choose_latents, firing_frequency, latent_table, select_shared_latents
from probebench.extract import check_finite, encode_prompts, extract
from probebench.models import block_output, decoder_blocks, hooks, load_model
from probebench.stats import bootstrap_indices, cosine_overstatement, pearson_rows, percentile_ci

# name -> (effect key, inputs); "ce_kl" over all inputs is the published protocol
CE_DEFINITIONS = {
    "ce_kl": ("kl_MLN", "all"),
    "ce_kl_firing": ("kl_MLN", "firing"),
    "ce_margin": ("delta_MLN", "all"),
    "ce_margin_firing": ("delta_MLN", "firing"),
}
PUBLISHED_DEFINITION = "ce_kl"
_DEFINITION_TEXT = {
    "ce_kl": "Pearson over ALL inputs of KL(ablated || clean), next-token distribution (the published protocol)",
    "ce_kl_firing": "Pearson of KL(ablated || clean) over the inputs where the latent fires only",
    "ce_margin": "Pearson over ALL inputs of the token-margin change (ablated - clean)",
    "ce_margin_firing": "Pearson of the token-margin change over the inputs where the latent fires only",
}
MIN_FIRING_INPUTS = 5  # a Pearson over fewer firing inputs is reported as NaN


class AuditError(ValueError):
    """A model pair or crosscoder the audit cannot use, or a control it fails; one line, with the fix."""


# ---------------------------------------------------------------------- models and activations
def check_same_tokenizer(tokenizers: Sequence[PreTrainedTokenizerBase], names: Sequence[str]) -> None:
    """A crosscoder pairs activations token by token, so both models must tokenize identically."""
    if tokenizers[0].get_vocab() != tokenizers[1].get_vocab():
        raise AuditError(f"crosscoder pair {names[0]} / {names[1]}: tokenizers differ; a crosscoder needs a base/IT "
                         "pair that shares its tokenizer")


def load_pair(model_params: Sequence[Any], names: Sequence[str]) -> tuple[list[PreTrainedModel], PreTrainedTokenizerBase]:
    """Load the two models (each with `path`, `device`, `dtype`, `device_map`) and their shared
    tokenizer; a pair whose two keys name one model is loaded once."""
    loaded = [load_model(mp.path, device=mp.device, dtype=mp.dtype, device_map=mp.device_map)
              for mp in model_params[: 1 if names[0] == names[1] else 2]]
    if len(loaded) == 1:
        loaded = loaded * 2
    check_same_tokenizer([tok for _, tok in loaded], names)
    return [m for m, _ in loaded], loaded[0][1]


@torch.no_grad()
def paired_activations(models: Sequence[PreTrainedModel], tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *,
                       layers: Sequence[int], batch_size: int = 64,
                       progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Block outputs at every real (non-pad, non-special) token of every text, both models:
    float32 [N_tokens, M, D] — the crosscoder's training data. A model passed twice runs once."""
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start: start + batch_size])
        batch = encode_prompts(tokenizer, chunk, [len(t) for t in chunk])
        special = torch.tensor([[int(i in tokenizer.all_special_ids) for i in row] for row in batch.ids_BP.tolist()])
        keep_BP = (batch.mask_BP == 1) & (special == 0)
        per_model: list[torch.Tensor] = []
        for m, (model, layer) in enumerate(zip(models, layers)):
            if m > 0 and model is models[0] and layer == layers[0]:
                per_model.append(per_model[0])
                continue
            captured = {}
            block = decoder_blocks(model)[layer]
            with hooks([(block, lambda mod, i, o: captured.setdefault("r", block_output(o)))]):
                device = next(model.parameters()).device
                model(input_ids=batch.ids_BP.to(device), attention_mask=batch.mask_BP.to(device),
                      position_ids=batch.position_ids_BP.to(device), use_cache=False)
            resid = captured["r"].float().cpu()
            check_finite("activations", resid, where="crosscoder activations")
            per_model.append(resid[keep_BP])
        out.append(torch.stack(per_model, dim=1).numpy())
        if progress is not None:
            progress(min(start + batch_size, len(texts)))
    return np.concatenate(out).astype(np.float32)


def readout_activations(models: Sequence[PreTrainedModel], tokenizer: PreTrainedTokenizerBase,
                        prompts: pd.DataFrame, *, layers: Sequence[int], batch_size: int = 64) -> np.ndarray:
    """Both models' layer outputs at each prompt's readout token (the ablation site): [N, M, D]."""
    return np.stack([extract(model, tokenizer, prompts, layer=layer, batch_size=batch_size)["acts_ND"]
                     for model, layer in zip(models, layers)], axis=1)


@torch.no_grad()
def latent_effects(cc: CrossCoder, models: Sequence[PreTrainedModel], tokenizer: PreTrainedTokenizerBase,
                   prompts: pd.DataFrame, *, layers: Sequence[int], latents: Sequence[int],
                   readout_acts_NMD: np.ndarray | None = None, batch_size: int = 64,
                   progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Per latent j, per model m, per input i: subtract f_j(x_i) d_j^m at the readout token of
    layer L's output; returns f_LN, kl_MLN and delta_MLN (token-margin change)."""
    if readout_acts_NMD is None:
        readout_acts_NMD = readout_activations(models, tokenizer, prompts, layers=layers, batch_size=batch_size)
    acts_NMD = torch.as_tensor(readout_acts_NMD)
    cc = cc.eval()
    f_NF = cc.encode(acts_NMD)
    lat = torch.as_tensor(list(latents), dtype=torch.long)
    f_LN = f_NF[:, lat].T.contiguous()                                  # [L, N]
    dec_LMD = cc.decoder_vectors(lat, raw=True)                        # [L, M, D]
    kl, delta = [], []
    for m, (model, layer) in enumerate(zip(models, layers)):
        edits_LND = f_LN[:, :, None] * dec_LMD[:, m][:, None, :]
        out = readout_edit_effects(model, tokenizer, prompts, layer=layer, edits_KND=edits_LND.numpy(),
                                   batch_size=batch_size, where=f"crosscoder audit model {m}")
        kl.append(out["kl_KN"])
        delta.append(out["ablated_margin_KN"] - out["clean_margin_N"][None])
        if progress is not None:
            progress(m + 1)
    if (np.stack(kl) < 0).any():
        raise AuditError("crosscoder audit: negative KL; this is a bug, please report it")
    return {"f_LN": f_LN.numpy(), "kl_MLN": np.stack(kl), "delta_MLN": np.stack(delta)}


def select_latents(cc: CrossCoder, readout_acts_NMD: np.ndarray, *, rel_norm_band: tuple[float, float], top_k: int,
                   min_frequency: float, spread_init: float,
                   min_spread_gain: float) -> tuple[pd.DataFrame, list[int], dict[str, Any]]:
    """Latent table with firing frequency AT THE ABLATION SITE (a latent that never fires at the
    readout token has no effect there and no defined CE), the selected latents, and the
    selection record (`choose_latents`), plus the median decoder cosine of the selection."""
    stats = latent_table(cc, firing_frequency_F=firing_frequency(cc, torch.from_numpy(readout_acts_NMD)))
    latents, record = choose_latents(stats, rel_norm_band=rel_norm_band, top_k=top_k, min_frequency=min_frequency,
                                     spread_init=spread_init, min_spread_gain=min_spread_gain)
    if not latents:
        raise AuditError("crosscoder: no latent fires at the readout token (and passes crosscoder.min_frequency / "
                         "crosscoder.rel_norm_band); fix: train the crosscoder longer or lower min_frequency")
    cos = stats.set_index("latent").loc[latents, "decoder_cosine"].to_numpy(np.float64)
    record["median_decoder_cosine"] = float(np.nanmedian(cos))
    return stats, latents, record


# ---------------------------------------------------------------------- CE statistics
def ce_statistics(effects: dict[str, np.ndarray], *, n_resamples: int = 1000, seed: int = 0,
                  level: float = 0.95) -> dict[str, dict[str, np.ndarray]]:
    """Per CE definition (CE_DEFINITIONS): point CE_L, its percentile CI (low_L, high_L),
    the bootstrap replicates reps_SL, and n_inputs_L (inputs the Pearson ran over).

    "all": one index matrix shared by every latent (so the replicate medians are paired);
    "firing": each latent resamples its own firing inputs (seeded), NaN below
    MIN_FIRING_INPUTS. A replicate that is constant on one side is NaN and dropped.
    """
    f_LN = effects["f_LN"]
    L, N = f_LN.shape
    idx_all_SN = bootstrap_indices(N, n_resamples, seed)
    out = {}
    for name, (key, inputs) in CE_DEFINITIONS.items():
        x_LN, y_LN = effects[key][0].astype(np.float64), effects[key][1].astype(np.float64)
        point_L, low_L, high_L = (np.full(L, np.nan) for _ in range(3))
        reps_SL = np.full((n_resamples, L), np.nan)
        n_L = np.zeros(L, dtype=np.int64)
        for j in range(L):
            rows = np.arange(N) if inputs == "all" else np.flatnonzero(f_LN[j] > 0)
            n_L[j] = len(rows)
            if len(rows) < (2 if inputs == "all" else MIN_FIRING_INPUTS):
                continue
            x, y = x_LN[j, rows], y_LN[j, rows]
            point_L[j] = pearson_rows(x[None], y[None])[0]
            if np.isnan(point_L[j]):
                continue
            idx_SN = idx_all_SN if inputs == "all" else bootstrap_indices(len(rows), n_resamples, seed)
            reps_SL[:, j] = pearson_rows(x[idx_SN], y[idx_SN])
            low_L[j], high_L[j] = percentile_ci(reps_SL[:, j], level)
        out[name] = {"point_L": point_L, "low_L": low_L, "high_L": high_L, "reps_SL": reps_SL, "n_inputs_L": n_L}
    return out


def audit_table(latent_stats: pd.DataFrame, effects: dict[str, np.ndarray], latents: Sequence[int], *,
                n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                ce: dict[str, dict[str, np.ndarray]] | None = None) -> pd.DataFrame:
    """One row per audited latent: decoder cosine, relative norm, firing, and every CE definition
    with its bootstrap CI (`ce_kl` = the published protocol)."""
    ce = ce_statistics(effects, n_resamples=n_resamples, seed=seed, level=level) if ce is None else ce
    stats = latent_stats.set_index("latent").loc[list(latents)]
    table = pd.DataFrame({
        "latent": np.asarray(latents, dtype=np.int64),
        "decoder_cosine": stats["decoder_cosine"].to_numpy(np.float64),
        "relative_norm": stats["relative_norm"].to_numpy(np.float64),
        "firing_frequency": stats["firing_frequency"].to_numpy(np.float64),
        "fires_on_inputs": (effects["f_LN"] > 0).mean(axis=1).astype(np.float64),
    })
    for name, c in ce.items():
        table[name], table[f"{name}_low"], table[f"{name}_high"] = c["point_L"], c["low_L"], c["high_L"]
    table["mean_kl_0"] = effects["kl_MLN"][0].mean(axis=1).astype(np.float64)
    table["mean_kl_1"] = effects["kl_MLN"][1].mean(axis=1).astype(np.float64)
    return table


def _median_ci(reps_SL: np.ndarray, ok_L: np.ndarray, level: float) -> list[float | None]:
    reps = reps_SL[:, ok_L]
    if reps.shape[1] == 0:
        return [None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN replicate row -> NaN, dropped below
        med_S = np.nanmedian(reps, axis=1)
    med_S = med_S[np.isfinite(med_S)]
    return [None, None] if med_S.size == 0 else list(percentile_ci(med_S, level))


def audit_summary(table: pd.DataFrame, *, cos_threshold: float = 0.7, ce_threshold: float = 0.5,
                  ce: dict[str, dict[str, np.ndarray]] | None = None, level: float = 0.95) -> dict:
    """Per CE definition: median cosine, median CE (+ its bootstrap CI when `ce` is given), the
    share with cos > 0.7 and CE < 0.5, and 1 - median(CE)/median(cos) — null, with the reason,
    where it is not meaningful (median cos <= 0 or <= median CE: it measures how far CE falls
    below the cosine). Also names the published definition."""
    out: dict[str, Any] = {
        "n_latents": int(len(table)), "published_definition": PUBLISHED_DEFINITION,
        "reproduces_paper": (f"{PUBLISHED_DEFINITION}: the paper's CE is the Pearson of KL over all inputs, zeros where "
                             "the latent is silent included; ce_kl_firing is the same without that zero inflation"),
        "definitions": dict(_DEFINITION_TEXT)}
    cos_L = table["decoder_cosine"].to_numpy(np.float64)
    for name in CE_DEFINITIONS:
        if name not in table.columns:
            continue
        rho_L = table[name].to_numpy(np.float64)
        ok_L = np.isfinite(rho_L) & np.isfinite(cos_L)
        if not ok_L.any():
            out[name] = {"n": 0, "n_nan": int(len(table)), "note": "no latent has this CE defined"}
            continue
        # cosine_overstatement nulls the ratio, with the reason, where it is not meaningful
        s = cosine_overstatement(rho_L, cos_L, cos_threshold=cos_threshold, ce_threshold=ce_threshold)
        if ce is not None:
            s["median_rho_low"], s["median_rho_high"] = _median_ci(ce[name]["reps_SL"], ok_L, level)
        out[name] = s
    return out


def numeric_metrics(summary: dict) -> dict:
    """The numbers of a summary only (DVC metrics stay a table; flags as 0/1); text, lists and nulls
    stay in summary.json.

    >>> numeric_metrics({"n": 3, "note": "x", "ok": True, "s": {"r": None, "m": 0.5}})
    {'n': 3, 'ok': 1, 's': {'m': 0.5}}
    """
    def keep(v):
        if isinstance(v, dict):
            d = {k: keep(x) for k, x in v.items()}
            return {k: x for k, x in d.items() if x is not None and x != {}}
        if isinstance(v, bool):
            return int(v)  # pass/fail flags as 0/1, so `dvc metrics diff` shows them
        return v if isinstance(v, (int, float)) else None
    return keep(summary)


# ---------------------------------------------------------------------- known-answer controls
def identical_pair_control(cc: CrossCoder, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                           prompts: pd.DataFrame, *, layer: int, n_latents: int, min_value: float = 0.99,
                           n_resamples: int = 200, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Control (a): a crosscoder trained on (model, model) — identical inputs on both sides — must
    give cosine >= min_value and CE >= min_value (published protocol and token margin, all
    inputs) for its `n_latents` most frequently firing latents, ablated in the model on both
    sides. Fails when training has not erased the difference between the decoder halves'
    initializations. Returns a record with `passed`."""
    acts_NMD = readout_activations([model], tokenizer, prompts, layers=[layer])[:, [0, 0]]
    stats = latent_table(cc, firing_frequency_F=firing_frequency(cc, torch.from_numpy(acts_NMD)))
    latents = select_shared_latents(stats[stats["firing_frequency"] > 0], rel_norm_band=None, top_k=n_latents)
    if not latents:
        return {"passed": False, "n_latents": 0, "reason": "no latent of the control crosscoder fires at the readout"}
    effects = latent_effects(cc, [model, model], tokenizer, prompts, layers=[layer, layer], latents=latents,
                             readout_acts_NMD=acts_NMD)
    table = audit_table(stats, effects, latents, n_resamples=n_resamples, seed=seed, level=level)
    record: dict[str, Any] = {"n_latents": len(latents), "min_value": min_value}
    worst = []
    for col in ("decoder_cosine", "ce_kl", "ce_margin"):
        v = table[col].to_numpy(np.float64)
        # a CE that is undefined (latent silent on every input) fails: nothing was measured
        record[f"min_{col}"] = float(np.nanmin(v)) if np.isfinite(v).any() else None
        record[f"median_{col}"] = float(np.nanmedian(v)) if np.isfinite(v).any() else None
        record[f"n_below_{col}"] = int((~(v >= min_value)).sum())
        worst.append(record[f"n_below_{col}"])
    record["passed"] = sum(worst) == 0
    return record


def planted_subspace_copy(model: PreTrainedModel, *, layer: int, from_KD: np.ndarray, to_KD: np.ndarray) -> PreTrainedModel:
    """Control (b): a copy of `model` that reads a known subspace differently downstream of `layer`.

    The residual entering block layer+1 has span(from_KD) and span(to_KD) swapped (an
    orthogonal map, so norms are kept): layer `layer`'s own activations are unchanged, so a
    crosscoder sees the two models as identical there (cosine ~1 everywhere), while an edit
    along span(from_KD) acts downstream like an edit along span(to_KD). Latents whose decoder
    lies in these spans should lose CE; latents orthogonal to them keep it (up to the change
    in the clean context). Rows of from_KD and to_KD must be orthonormal and mutually orthogonal.
    """
    blocks = decoder_blocks(model)
    if not 0 <= layer < len(blocks) - 1:
        raise AuditError(f"planted change after layer {layer}: needs a block after it (model has {len(blocks)})")
    S = torch.as_tensor(np.asarray(from_KD), dtype=torch.float32)
    U = torch.as_tensor(np.asarray(to_KD), dtype=torch.float32)
    gram = torch.cat([S, U]) @ torch.cat([S, U]).T
    if S.shape != U.shape or not torch.allclose(gram, torch.eye(gram.shape[0]), atol=1e-4):
        raise AuditError("planted change: from_KD and to_KD must have equal shapes and orthonormal, mutually "
                         "orthogonal rows")
    D = S.shape[1]
    T_DD = torch.eye(D) - S.T @ S - U.T @ U + U.T @ S + S.T @ U   # swap the two spans
    twin = copy.deepcopy(model)
    param = next(twin.parameters())
    T_DD = T_DD.to(device=param.device, dtype=param.dtype)

    def swap(_module, args, kwargs):
        if args:
            return (args[0] @ T_DD, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] @ T_DD}

    decoder_blocks(twin)[layer + 1].register_forward_pre_hook(swap, with_kwargs=True)
    return twin


# Control (b) on a real pair: defaults of `planted_change_control` (module constants, not params,
# because CrosscoderParams is a strict schema outside the audit; the pass threshold is the
# audit's own crosscoder.ce_threshold, passed in by the stage).
PLANTED_LATENTS = 2            # latents whose decoder span S the planted copy mean-ablates
PLANTED_MAX_FREQUENCY = 0.25   # "fires rarely": on at most this share of the audit inputs ...
PLANTED_MIN_INPUTS = 10        # ... and on at least this many (so its firing-only CE is defined)
READ_MIN_SHARE = 0.5           # reads S: ||P_S d||^2 / ||d||^2 >= this
AVOID_MAX_SHARE = 0.02         # avoids S: <= this
MAX_AVOIDERS = 64              # seeded sample of the avoiders, to keep the control cheap on big crosscoders
EFFECT_REMOVED_BELOW = 1e-3    # copy-side mean |margin change| / base-side below this: the effect is gone


def subspace_mean_ablated_copy(model: PreTrainedModel, *, layer: int, S_KD: np.ndarray,
                               mean_D: np.ndarray) -> PreTrainedModel:
    """Control (b)'s planted copy: the residual entering block layer+1 has its component in
    span(S_KD) replaced by that of `mean_D` (h <- h - P_S (h - mean)), at every position.

    Block `layer`'s output is unchanged, so a crosscoder at `layer` sees identical activations
    for `model` and the copy; downstream the copy ignores S entirely: an edit inside S has no
    effect in it, an edit orthogonal to S the same as in `model` up to the (small, where S
    carries little variance) change of the clean context. Rows of S_KD must be orthonormal."""
    blocks = decoder_blocks(model)
    if not 0 <= layer < len(blocks) - 1:
        raise AuditError(f"planted change after layer {layer}: needs a block after it (model has {len(blocks)})")
    S = torch.as_tensor(np.asarray(S_KD), dtype=torch.float32)
    if S.ndim != 2 or S.shape[0] == 0 or not torch.allclose(S @ S.T, torch.eye(S.shape[0]), atol=1e-4):
        raise AuditError("planted change: S_KD must have orthonormal rows")
    twin = copy.deepcopy(model)
    param = next(twin.parameters())
    S = S.to(device=param.device, dtype=param.dtype)
    mu = torch.as_tensor(np.asarray(mean_D), dtype=param.dtype, device=param.device)

    def ablate(h):
        return h - ((h - mu) @ S.T) @ S

    def pre(_module, args, kwargs):
        if args:
            return (ablate(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": ablate(kwargs["hidden_states"])}

    decoder_blocks(twin)[layer + 1].register_forward_pre_hook(pre, with_kwargs=True)
    return twin


@torch.no_grad()
def clean_pass_change(model: PreTrainedModel, twin: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                      prompts: pd.DataFrame, *, batch_size: int = 64) -> dict[str, float]:
    """How much a planted copy changes the CLEAN forward pass at the readout token:
    KL(copy || model) of the next-token distribution (mean, median, max over inputs), the
    Pearson of the two clean margins, and the mean |margin change| in clean-margin SDs."""
    from probebench.ablate import _readout_logits
    from probebench.extract import class_token_ids
    pos, neg = class_token_ids(tokenizer, prompts["positive"].iloc[0], prompts["negative"].iloc[0],
                               where="control (b) clean pass")
    kl, m0, m1 = [], [], []
    for start in range(0, len(prompts), batch_size):
        rows = prompts.iloc[start: start + batch_size]
        batch = encode_prompts(tokenizer, rows["text"].tolist(), rows["anchor"].tolist())
        lp = [torch.log_softmax(_readout_logits(m, batch.to(next(m.parameters()).device)).float().cpu(), dim=-1)
              for m in (model, twin)]
        kl.append((lp[1].exp() * (lp[1] - lp[0])).sum(-1).clamp(min=0.0))
        m0.append(lp[0][:, pos] - lp[0][:, neg])
        m1.append(lp[1][:, pos] - lp[1][:, neg])
    kl_N, m0_N, m1_N = (torch.cat(x).double().numpy() for x in (kl, m0, m1))
    return {"kl_mean": float(kl_N.mean()), "kl_median": float(np.median(kl_N)), "kl_max": float(kl_N.max()),
            "margin_pearson": float(pearson_rows(m0_N[None], m1_N[None])[0]),
            "margin_abs_change_sd": float(np.abs(m1_N - m0_N).mean() / m0_N.std())}


def _group_record(ce: dict[str, dict[str, np.ndarray]], rows: np.ndarray, removed_L: np.ndarray, *,
                  threshold: float, readers: bool) -> dict[str, Any]:
    """Per CE definition, one group's CEs. Readers pass when more than half of them lose CE (CE <
    threshold, or their effect is gone in the copy: CE over rounding noise is undefined);
    avoiders pass when their median CE (defined ones) is >= threshold."""
    out: dict[str, Any] = {}
    for name in CE_DEFINITIONS:
        v = ce[name]["point_L"][rows].copy()
        v[removed_L[rows]] = np.nan
        ok = np.isfinite(v)
        rec: dict[str, Any] = {"values": [None if not np.isfinite(x) else float(x) for x in v],
                               "median": float(np.median(v[ok])) if ok.any() else None, "n_undefined": int((~ok).sum())}
        if readers:
            rec["n_lost"] = int((removed_L[rows] | (ok & (v < threshold))).sum())
            rec["passed"] = bool(len(rows) > 0 and 2 * rec["n_lost"] > len(rows))
        else:
            rec["q25"] = float(np.quantile(v[ok], 0.25)) if ok.any() else None
            rec["passed"] = bool(rec["median"] is not None and rec["median"] >= threshold)
        out[name] = rec
    return out


def planted_change_control(cc: CrossCoder, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                           prompts: pd.DataFrame, train_texts: Sequence[str], *, layer: int, threshold: float = 0.5,
                           n_planted: int = PLANTED_LATENTS, max_frequency: float = PLANTED_MAX_FREQUENCY,
                           min_planted_inputs: int = PLANTED_MIN_INPUTS, read_min_share: float = READ_MIN_SHARE,
                           avoid_max_share: float = AVOID_MAX_SHARE, max_avoiders: int = MAX_AVOIDERS,
                           n_resamples: int = 200, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Control (b): `model` vs a copy with a planted change in a known subspace S; only the latents
    that read S may lose CE.

    `cc` is a crosscoder of (model, model) at `layer` (control (a)'s): the planted change sits
    downstream of `layer`, so the activations there are identical for the model and its copy and
    this crosscoder is the right one for the pair. S = span of the model-0 decoder directions of
    the `n_planted` latents that fire rarely (on min_planted_inputs .. max_frequency * N audit
    inputs) and have the largest mean KL when they fire (deterministic; ties by index). The copy
    mean-ablates S (`subspace_mean_ablated_copy`, mean over every token of `train_texts`).
    Readers: latents whose decoder has >= read_min_share of its squared norm in S; avoiders: <=
    avoid_max_share (a seeded sample of at most max_avoiders); both firing on >=
    MIN_FIRING_INPUTS inputs. Passes iff, for every CE definition, more than half of the readers
    lose CE (below `threshold`, or no effect left in the copy) and the avoiders' median CE is >=
    `threshold`. Also reports the clean-pass change (did the copy just break the model?)."""
    acts_NMD = readout_activations([model], tokenizer, prompts, layers=[layer])[:, [0, 0]]
    N = acts_NMD.shape[0]
    record: dict[str, Any] = {"run": 1, "threshold": threshold, "n_inputs": int(N),
                              "change": (f"residual entering block {layer + 1}: component in S = span of the planted "
                                         "latents' decoder directions replaced by its mean over every train token")}
    with torch.no_grad():
        f_NF = cc.eval().encode(torch.as_tensor(acts_NMD)).numpy()
    n_fire_F = (f_NF > 0).sum(0)
    dec_FD = cc.decoder_vectors(raw=True)[:, 0].double().numpy()
    cand = np.flatnonzero((n_fire_F >= min_planted_inputs) & (n_fire_F <= max_frequency * N))
    if len(cand) < n_planted:
        return {**record, "passed": False, "reason": f"only {len(cand)} latents fire on {min_planted_inputs}.."
                f"{max_frequency:.0%} of the inputs; need {n_planted}"}
    base_eff = latent_effects(cc, [model], tokenizer, prompts, layers=[layer], latents=cand.tolist(),
                              readout_acts_NMD=acts_NMD)
    fires_LN = base_eff["f_LN"] > 0
    mean_kl_L = (base_eff["kl_MLN"][0] * fires_LN).sum(1) / fires_LN.sum(1)
    order = np.lexsort((cand, -mean_kl_L))
    planted = np.sort(cand[order[:n_planted]])
    Q, _ = np.linalg.qr(dec_FD[planted].T)
    S_KD = Q.T
    norms_F = (dec_FD ** 2).sum(1)
    share_F = np.where(norms_F > 0, ((dec_FD @ S_KD.T) ** 2).sum(1) / np.where(norms_F > 0, norms_F, 1), np.nan)
    eligible = n_fire_F >= MIN_FIRING_INPUTS
    readers = np.flatnonzero(eligible & (share_F >= read_min_share))
    avoiders_all = np.flatnonzero(eligible & (share_F <= avoid_max_share))
    avoiders = avoiders_all
    if len(avoiders_all) > max_avoiders:
        avoiders = np.sort(np.random.default_rng(seed).choice(avoiders_all, size=max_avoiders, replace=False))
    record.update(planted_latents=planted.tolist(), planted_mean_kl_firing=[
        float(mean_kl_L[cand == j][0]) for j in planted], subspace_dim=int(S_KD.shape[0]),
        n_readers=int(len(readers)), n_avoiders=int(len(avoiders)), n_avoiders_eligible=int(len(avoiders_all)),
        read_min_share=read_min_share, avoid_max_share=avoid_max_share)
    if len(readers) == 0 or len(avoiders) == 0:
        return {**record, "passed": False, "reason": "no reader or no avoider of the planted subspace fires on "
                f"{MIN_FIRING_INPUTS}+ inputs"}
    mean_D = paired_activations([model], tokenizer, list(train_texts), layers=[layer])[:, 0].astype(np.float64).mean(0)
    twin = subspace_mean_ablated_copy(model, layer=layer, S_KD=S_KD, mean_D=mean_D)
    record["clean_pass"] = clean_pass_change(model, twin, tokenizer, prompts)
    latents = np.concatenate([readers, avoiders])
    effects = latent_effects(cc, [model, twin], tokenizer, prompts, layers=[layer, layer], latents=latents.tolist(),
                             readout_acts_NMD=acts_NMD)
    ce = ce_statistics(effects, n_resamples=n_resamples, seed=seed, level=level)
    dm = np.abs(effects["delta_MLN"]).astype(np.float64).mean(axis=2)          # [M, L]
    retained_L = np.where(dm[0] > 0, dm[1] / np.where(dm[0] > 0, dm[0], 1), np.nan)
    removed_L = retained_L < EFFECT_REMOVED_BELOW
    r_rows, a_rows = np.arange(len(readers)), np.arange(len(readers), len(latents))
    record["readers"] = {"latents": readers.tolist(), "share_in_S": share_F[readers].tolist(),
                         "effect_retained": retained_L[r_rows].tolist(), "n_effect_removed": int(removed_L[r_rows].sum()),
                         **_group_record(ce, r_rows, removed_L, threshold=threshold, readers=True)}
    record["avoiders"] = {"latents": avoiders.tolist(), "median_share_in_S": float(np.median(share_F[avoiders])),
                          "median_effect_retained": float(np.nanmedian(retained_L[a_rows])),
                          **_group_record(ce, a_rows, removed_L, threshold=threshold, readers=False)}
    record["passed"] = all(record[g][name]["passed"] for g in ("readers", "avoiders") for name in CE_DEFINITIONS)
    return record
