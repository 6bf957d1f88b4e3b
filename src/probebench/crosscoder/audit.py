"""Crosscoder audit: decoder cosine vs causal equivalence of shared latents on a base/IT pair.

Published protocol (docs/design.md §8): for each shared latent j, subtract f_j(x) d_j^m at the last
token of layer L's output in model m, on N inputs; CE_j = Pearson across inputs of
KL(ablated || clean) of the next-token distribution in the two models. We also report our
protocol: the Pearson of the signed token-margin deltas. Each protocol is reported over ALL
inputs (the published definition; zero-inflated: where latent j does not fire, nothing is
subtracted and KL = 0 in both models, which pulls the Pearson toward agreement) and over the
inputs where j fires only. Every CE comes with a bootstrap CI, and every median with one.

Known-answer controls say whether the numbers measure the models or the crosscoder's training:
`probebench.crosscoder.controls` ((a) identical pair, (b) planted change).

    >>> acts_NMD = paired_activations([base, it], tok, texts, layers=[13, 13])   # doctest: +SKIP
    >>> effects = latent_effects(cc, [base, it], tok, prompts, layers=[13, 13], latents=latents)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from probebench.errors import ProbebenchError
from probebench.models.ablate import readout_edit_effects
from probebench.crosscoder import CrossCoder, choose_latents, firing_frequency, latent_table
from probebench.models.extract import check_finite, encode_prompts, extract, word_end_anchors
from probebench.models.load import block_output, decoder_blocks, hooks, load_model
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


class AuditError(ProbebenchError):
    """A model pair or crosscoder the audit cannot use, or a control it fails; one line, with the fix."""


# ---------------------------------------------------------------------- models and activations
def check_same_tokenizer(tokenizers: Sequence[PreTrainedTokenizerBase], names: Sequence[str]) -> None:
    """A crosscoder pairs activations token by token, so both models must tokenize identically."""
    if tokenizers[0].get_vocab() != tokenizers[1].get_vocab():
        raise AuditError(f"crosscoder pair {names[0]} / {names[1]}: tokenizers differ; a crosscoder needs a base/IT "
                         "pair that shares its tokenizer")


def audit_inputs(prompts: pd.DataFrame, position: str = "readout", *, salt: str = "probebench-audit") -> pd.DataFrame:
    """The audit's inputs from a prompt set: each prompt read (and its latents ablated) at its
    readout (`position="readout"`), or (`"word_end"`) cut after one of the words before its
    readout, chosen by a hash of the prompt id and `salt`, so the last token varies from input to
    input as in varied text. A real model's crosscoder has few latents at a task's readout, which
    is the same token in every prompt (" :" for all 256 sentiment prompts): they fire on every
    input or on none, leaving no rarely-firing latent for control (b) and fewer than the 80 the
    published audit ranks. The margin columns are kept; KL needs none.

    >>> df = pd.DataFrame({"id": ["a", "b"], "text": ["the box is red . honest ?", "it is blue ."],
    ...                    "anchor": [25, 12], "label": [1, 0]})
    >>> audit_inputs(df, "word_end")[["text", "anchor"]].values.tolist()
    [['the box is', 10], ['it', 2]]
    >>> audit_inputs(df)["text"].tolist() == df["text"].tolist()
    True
    """
    prompts = prompts.reset_index(drop=True)
    if position == "readout":
        return prompts
    if position != "word_end":
        raise AuditError(f"audit position {position!r}: use readout or word_end")
    texts, anchors = [], []
    for pid, text, anchor in zip(prompts["id"], prompts["text"], prompts["anchor"]):
        ends = word_end_anchors(text, int(anchor))
        if not ends:
            raise AuditError(f"prompt {pid!r} has no word before its readout; audit_position: word_end needs one")
        end = ends[int(hashlib.sha256(f"{salt}:{pid}".encode()).hexdigest(), 16) % len(ends)]
        texts.append(text[:end])
        anchors.append(end)
    return prompts.assign(text=texts, anchor=anchors)


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
    layer L's output; returns f_LN, kl_MLN and delta_MLN (token-margin change).

    Where a latent does not fire (f_j(x_i) = 0) nothing is subtracted, so KL and the margin
    change are exactly 0 there and are not computed: each input runs only the latents that fire
    on it, packed into as many edit slots as the most latents firing on one input (a BatchTopK
    crosscoder fires ~k per token, so 300 latents cost about what 20 do)."""
    if readout_acts_NMD is None:
        readout_acts_NMD = readout_activations(models, tokenizer, prompts, layers=layers, batch_size=batch_size)
    acts_NMD = torch.as_tensor(readout_acts_NMD)
    cc = cc.eval()
    f_NF = cc.encode(acts_NMD)
    lat = torch.as_tensor(list(latents), dtype=torch.long)
    f_LN = f_NF[:, lat].T.contiguous()                                  # [L, N]
    dec_LMD = cc.decoder_vectors(lat, raw=True)                        # [L, M, D]
    fires_LN = (f_LN != 0).numpy()
    # slot_LN: the edit slot of latent l on input n (its rank among the latents firing on n)
    slot_LN = np.cumsum(fires_LN, axis=0) - 1
    n_slots = int(fires_LN.sum(0).max(initial=0))
    l_idx, n_idx = np.nonzero(fires_LN)
    kl, delta = [], []
    for m, (model, layer) in enumerate(zip(models, layers)):
        kl_LN = np.zeros(f_LN.shape, dtype=np.float32)  # the engine returns float32
        delta_LN = np.zeros(f_LN.shape, dtype=np.float32)
        if n_slots:
            edits_KND = torch.zeros(n_slots, f_LN.shape[1], dec_LMD.shape[-1], dtype=dec_LMD.dtype)
            edits_KND[slot_LN[l_idx, n_idx], n_idx] = f_LN[l_idx, n_idx, None] * dec_LMD[l_idx, m]
            out = readout_edit_effects(model, tokenizer, prompts, layer=layer, edits_KND=edits_KND.numpy(),
                                       batch_size=batch_size, where=f"crosscoder audit model {m}")
            kl_LN[l_idx, n_idx] = out["kl_KN"][slot_LN[l_idx, n_idx], n_idx]
            delta_LN[l_idx, n_idx] = (out["ablated_margin_KN"][slot_LN[l_idx, n_idx], n_idx]
                                      - out["clean_margin_N"][n_idx])
        kl.append(kl_LN)
        delta.append(delta_LN)
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
    out["sign"] = sign_disagreements(table, ce_threshold=ce_threshold)
    return out


def sign_disagreements(table: pd.DataFrame, *, ce_threshold: float = 0.5) -> dict[str, Any]:
    """What a sign-blind CE hides: the headline medians of `ce_kl` (published) and `ce_margin`
    (sign-aware) side by side, the latents `ce_kl` counts as equivalent (>= ce_threshold) whose
    token-margin effects run the other way in the two models (`ce_margin` < 0), and the Pearson
    of the two CEs across latents.

    >>> t = pd.DataFrame({"latent": [3, 5, 7], "ce_kl": [0.9, 0.8, 0.2], "ce_margin": [0.7, -0.6, 0.1]})
    >>> d = sign_disagreements(t); d["n_ce_kl_equivalent_ce_margin_negative"], d["latents"]
    (1, [5])
    """
    if not {"ce_kl", "ce_margin"} <= set(table.columns) or table.empty:
        return {"n_latents": int(len(table)), "note": "ce_kl or ce_margin missing"}
    kl_L, margin_L = table["ce_kl"].to_numpy(np.float64), table["ce_margin"].to_numpy(np.float64)
    hidden = (kl_L >= ce_threshold) & (margin_L < 0)
    ok = np.isfinite(kl_L) & np.isfinite(margin_L)
    corr = pearson_rows(kl_L[ok][None], margin_L[ok][None])[0] if ok.sum() > 2 else np.nan
    return {"median_ce_kl": float(np.nanmedian(kl_L)), "median_ce_margin": float(np.nanmedian(margin_L)),
            "n_ce_margin_negative": int((margin_L < 0).sum()),
            "n_ce_kl_equivalent_ce_margin_negative": int(hidden.sum()),
            "latents": table.loc[hidden, "latent"].astype(int).tolist(),
            "pearson_ce_kl_ce_margin": None if not np.isfinite(corr) else float(corr),
            "rule": f"ce_kl >= {ce_threshold} (equivalent under the published statistic) and ce_margin < 0"}


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
