"""Known-answer controls of the crosscoder audit (docs/design.md §8): do its numbers measure the models
or the crosscoder's training?

(a) `identical_pair_control`: a crosscoder trained on (base, base) must give cosine and CE ~1.
(b) `planted_change_control`: base vs a copy that mean-ablates a known subspace downstream of
    the layer; only the latents reading it may lose CE (`planted_subspace_copy` is the synthetic
    variant the unit tests use).
(c) `sign_reversal_control`: the (base, base) crosscoder with some latents' second decoder
    negated, so they act with the opposite sign in the second model: a sign-blind CE (KL) keeps
    them equivalent, the token-margin CE must turn negative.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from probebench.crosscoder.audit import (
    CE_DEFINITIONS,
    MIN_FIRING_INPUTS,
    AuditError,
    audit_table,
    ce_statistics,
    latent_effects,
    paired_activations,
    readout_activations,
)
from probebench.crosscoder import CrossCoder, firing_frequency, latent_table, select_shared_latents
from probebench.models.extract import encode_prompts
from probebench.models.load import decoder_blocks
from probebench.stats import pearson_rows


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
    from probebench.models.extract import readout_only_logits
    from probebench.models.extract import class_token_ids
    pos, neg = class_token_ids(tokenizer, prompts["positive"].iloc[0], prompts["negative"].iloc[0],
                               where="control (b) clean pass")
    kl, m0, m1 = [], [], []
    for start in range(0, len(prompts), batch_size):
        rows = prompts.iloc[start: start + batch_size]
        batch = encode_prompts(tokenizer, rows["text"].tolist(), rows["anchor"].tolist())
        lp = [torch.log_softmax(readout_only_logits(m, batch.to(next(m.parameters()).device)).float().cpu(), dim=-1)
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


SIGN_REVERSAL_LATENTS = 8  # latents whose action the control reverses in the second model


def sign_reversal_control(cc: CrossCoder, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                          prompts: pd.DataFrame, *, layer: int, threshold: float = 0.5,
                          n_planted: int = SIGN_REVERSAL_LATENTS, n_resamples: int = 200, seed: int = 0,
                          level: float = 0.95) -> dict[str, Any]:
    """Control (c), the sign-reversal known answer. `cc` is a crosscoder of (model, model) at
    `layer` (control (a)'s); in a copy of it the `n_planted` planted latents get the second
    model's decoder vector negated, so ablating one of them removes f d in the first model and
    adds it in the second: the same model, the same firing, the latent acting with the opposite
    sign. The planted latents are typical ones: those whose mean |token-margin change| when ablated
    is closest (in log) to the median among the latents firing on >= MIN_FIRING_INPUTS inputs
    (deterministic; ties by index).
    KL does not see the sign of a small edit (it is quadratic in it), so `ce_kl` keeps calling
    them equivalent; `ce_margin` must turn negative. Passes iff more than half of the planted
    latents get `ce_margin` < 0; reports how many keep `ce_kl` >= `threshold`."""
    acts_NMD = readout_activations([model], tokenizer, prompts, layers=[layer])[:, [0, 0]]
    record: dict[str, Any] = {"run": 1, "threshold": threshold, "n_inputs": int(acts_NMD.shape[0]),
                              "change": "the planted latents' decoder vectors negated for the second model "
                                        "(model and crosscoder otherwise identical)"}
    with torch.no_grad():
        f_NF = cc.eval().encode(torch.as_tensor(acts_NMD)).numpy()
    cand = np.flatnonzero((f_NF > 0).sum(0) >= MIN_FIRING_INPUTS)
    if len(cand) < n_planted:
        return {**record, "passed": False, "reason": f"only {len(cand)} latents fire on {MIN_FIRING_INPUTS}+ inputs; "
                f"need {n_planted}"}
    base_eff = latent_effects(cc, [model], tokenizer, prompts, layers=[layer], latents=cand.tolist(),
                              readout_acts_NMD=acts_NMD)
    strength_L = np.abs(base_eff["delta_MLN"][0]).astype(np.float64).mean(axis=1)
    typical_L = np.abs(np.log(strength_L / np.median(strength_L)))  # typical latents, not the extremes
    planted = np.sort(cand[np.lexsort((cand, typical_L))[:n_planted]])
    flipped = copy.deepcopy(cc)
    with torch.no_grad():
        flipped.W_dec_FMD[torch.as_tensor(planted), 1] *= -1
    effects = latent_effects(flipped, [model, model], tokenizer, prompts, layers=[layer, layer],
                             latents=planted.tolist(), readout_acts_NMD=acts_NMD)
    ce = ce_statistics(effects, n_resamples=n_resamples, seed=seed, level=level)
    margin_L, kl_L = ce["ce_margin"]["point_L"], ce["ce_kl"]["point_L"]
    n_caught = int((margin_L < 0).sum())
    record.update(planted_latents=planted.tolist(), n_planted=int(len(planted)),
                  ce_margin=[float(x) for x in margin_L], ce_kl=[float(x) for x in kl_L],
                  median_ce_margin=float(np.nanmedian(margin_L)), median_ce_kl=float(np.nanmedian(kl_L)),
                  n_caught_by_ce_margin=n_caught, n_equivalent_by_ce_kl=int((kl_L >= threshold).sum()),
                  passed=bool(2 * n_caught > len(planted)))
    return record
