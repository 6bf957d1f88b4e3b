"""Crosscoder audit: decoder cosine vs causal equivalence of shared latents on a base/IT pair.

Published protocol (DESIGN §8): for each shared latent j, subtract f_j(x) d_j^m at the last
token of layer L's output in model m, on M inputs; CE_j = Pearson across inputs of
KL(ablated || clean) of the next-token distribution in the two models. We also report our
protocol: the Pearson of the signed token-margin deltas. Both come with a bootstrap CI.

    >>> acts_NMD = paired_activations([base, it], tok, texts, layers=[13, 13])   # doctest: +SKIP
    >>> table = latent_effects(cc, models, tok, prompts, layers, latents)        # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from probebench.ablate import readout_edit_effects
from probebench.crosscoder import BatchTopKCrossCoder
from probebench.extract import check_finite, encode_prompts, extract
from probebench.models import block_output, decoder_blocks, hooks
from probebench.stats import bootstrap_indices, cosine_overstatement, pearson, pearson_rows, percentile_ci


class AuditError(ValueError):
    """A model pair or crosscoder the audit cannot use."""


def check_same_tokenizer(tokenizers: Sequence[PreTrainedTokenizerBase], names: Sequence[str]) -> None:
    """A crosscoder pairs activations token by token, so both models must tokenize identically."""
    if tokenizers[0].get_vocab() != tokenizers[1].get_vocab():
        raise AuditError(f"crosscoder pair {names[0]} / {names[1]}: tokenizers differ; a crosscoder needs a base/IT "
                         "pair that shares its tokenizer")


@torch.no_grad()
def paired_activations(models: Sequence[PreTrainedModel], tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *,
                       layers: Sequence[int], batch_size: int = 64,
                       progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Block outputs at every real (non-pad, non-special) token of every text, both models:
    float32 [N_tokens, M, D] — the crosscoder's training data."""
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start: start + batch_size])
        batch = encode_prompts(tokenizer, chunk, [len(t) for t in chunk])
        special = torch.tensor([[int(i in tokenizer.all_special_ids) for i in row] for row in batch.ids_BP.tolist()])
        keep_BP = (batch.mask_BP == 1) & (special == 0)
        per_model = []
        for model, layer in zip(models, layers):
            captured = {}
            block = decoder_blocks(model)[layer]
            with hooks([(block, lambda m, i, o: captured.setdefault("r", block_output(o)))]):
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
def latent_effects(cc: BatchTopKCrossCoder, models: Sequence[PreTrainedModel], tokenizer: PreTrainedTokenizerBase,
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
    return {"f_LN": f_LN.numpy(), "kl_MLN": np.stack(kl), "delta_MLN": np.stack(delta)}


def _ce(x_N: np.ndarray, y_N: np.ndarray, idx_BN: np.ndarray, level: float) -> tuple[float, float, float]:
    r = pearson(x_N, y_N)
    if np.isnan(r):
        return np.nan, np.nan, np.nan
    low, high = percentile_ci(pearson_rows(x_N[idx_BN], y_N[idx_BN]), level)
    return r, low, high


def audit_table(latent_stats: pd.DataFrame, effects: dict[str, np.ndarray], latents: Sequence[int], *,
                n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """One row per audited latent: decoder cosine, both CE protocols with bootstrap CIs."""
    n = effects["f_LN"].shape[1]
    idx_BN = bootstrap_indices(n, n_resamples, seed)
    rows = []
    for i, j in enumerate(latents):
        stats = latent_stats.set_index("latent").loc[j]
        ce_kl = _ce(effects["kl_MLN"][0, i].astype(np.float64), effects["kl_MLN"][1, i].astype(np.float64), idx_BN, level)
        ce_m = _ce(effects["delta_MLN"][0, i].astype(np.float64), effects["delta_MLN"][1, i].astype(np.float64), idx_BN, level)
        rows.append({"latent": int(j), "decoder_cosine": float(stats["decoder_cosine"]),
                     "relative_norm": float(stats["relative_norm"]), "firing_frequency": float(stats["firing_frequency"]),
                     "fires_on_inputs": float((effects["f_LN"][i] > 0).mean()),
                     "ce_kl": ce_kl[0], "ce_kl_low": ce_kl[1], "ce_kl_high": ce_kl[2],
                     "ce_margin": ce_m[0], "ce_margin_low": ce_m[1], "ce_margin_high": ce_m[2],
                     "mean_kl_0": float(effects["kl_MLN"][0, i].mean()), "mean_kl_1": float(effects["kl_MLN"][1, i].mean())})
    return pd.DataFrame(rows)


def audit_summary(table: pd.DataFrame, *, cos_threshold: float = 0.7, ce_threshold: float = 0.5) -> dict:
    """Median cosine, median CE per protocol, the share with cos > 0.7 and CE < 0.5, and
    1 - median(CE)/median(cos), each named with its formula."""
    out = {"n_latents": int(len(table))}
    for protocol in ("ce_kl", "ce_margin"):
        out[protocol] = cosine_overstatement(table[protocol].to_numpy(), table["decoder_cosine"].to_numpy(),
                                             cos_threshold=cos_threshold, ce_threshold=ce_threshold)
    return out
