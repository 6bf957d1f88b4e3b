"""Latent statistics: firing frequency, the per-latent table, and the choice of "shared" latents.

"Shared" latents are selected by relative decoder norm (a band around 0.5) only when the
relative norms have moved away from their initialization: a crosscoder whose decoder
halves all still have the norms they started with puts every latent in any band around
0.5, so the band would say "shared" about the initialization, not about the models
(docs/design.md §8). Then the band is refused and latents are ranked by firing frequency alone,
and the selection record says so.

Example:
    >>> import pandas as pd
    >>> table = pd.DataFrame({"latent": [0, 1, 2], "relative_norm": [0.5, 0.9, 0.45],
    ...                       "firing_frequency": [0.1, 0.5, 0.3]})
    >>> select_shared_latents(table, rel_norm_band=(0.3, 0.7), top_k=80)
    [2, 0]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from probebench.crosscoder.model import BatchTopKCrossCoder, CrossCoder, CrossCoderError

__all__ = ["firing_frequency", "latent_table", "select_shared_latents", "rel_norm_spread", "choose_latents", "pair_drift"]


@torch.no_grad()
def firing_frequency(cc: CrossCoder, acts_NMD: torch.Tensor | np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """[F] fraction of rows of acts_NMD (raw) on which each latent is active (inference rule).

    Example:
        >>> from probebench.crosscoder import ReLUCrossCoder
        >>> firing_frequency(ReLUCrossCoder(4, 8), torch.randn(10, 2, 4)).tolist() == [0.0] * 8
        True
    """
    acts = torch.as_tensor(acts_NMD)
    if acts.ndim != 3 or acts.shape[0] == 0:
        raise CrossCoderError(f"acts_NMD has shape {tuple(acts.shape)}, expected non-empty (N, M, D)")
    if batch_size <= 0:
        raise CrossCoderError(f"batch_size={batch_size} must be a positive integer")
    kw = {}
    if isinstance(cc, BatchTopKCrossCoder):
        if not cc.threshold_estimated:
            raise CrossCoderError(
                f"threshold={float(cc.threshold)} is not estimated; firing frequency needs the inference rule; "
                "fix: train longer or load a checkpoint with a threshold"
            )
        kw["use_threshold"] = True
    counts_F = torch.zeros(cc.n_latents, dtype=torch.float64)
    for start in range(0, acts.shape[0], batch_size):
        f_BF = cc.encode(acts[start : start + batch_size], **kw)
        counts_F += (f_BF != 0).sum(0).double()
    return (counts_F / acts.shape[0]).numpy()


def latent_table(cc: CrossCoder, *, firing_frequency_F: np.ndarray | None = None) -> pd.DataFrame:
    """One row per latent: latent, decoder_cosine, relative_norm, norm_0, norm_1, firing_frequency.

    Norms are in crosscoder space (see `CrossCoder.relative_norm`); firing_frequency is NaN if not given.
    """
    cc._need_two("latent_table")
    norms_FM = cc.decoder_norms().double().cpu().numpy()
    if firing_frequency_F is None:
        freq = np.full(cc.n_latents, np.nan)
    else:
        freq = np.asarray(firing_frequency_F, dtype=np.float64)
        if freq.shape != (cc.n_latents,):
            raise CrossCoderError(f"firing_frequency_F has shape {freq.shape}, expected ({cc.n_latents},)")
    return pd.DataFrame(
        {
            "latent": np.arange(cc.n_latents, dtype=np.int64),
            "decoder_cosine": cc.decoder_cosine().double().cpu().numpy(),
            "relative_norm": cc.relative_norm().double().cpu().numpy(),
            "norm_0": norms_FM[:, 0],
            "norm_1": norms_FM[:, 1],
            "firing_frequency": freq,
        }
    )


def _check_table(table: pd.DataFrame) -> None:
    missing = {"latent", "relative_norm", "firing_frequency"} - set(table.columns)
    if missing:
        raise CrossCoderError(f"table lacks column(s) {sorted(missing)}; fix: build it with latent_table")
    if len(table) and table["firing_frequency"].isna().all():
        raise CrossCoderError("firing_frequency is all NaN; fix: pass firing_frequency_F to latent_table to rank latents")


def select_shared_latents(table: pd.DataFrame, *, rel_norm_band: tuple[float, float] | None = (0.3, 0.7),
                          top_k: int = 80, min_frequency: float = 0.0) -> list[int]:
    """Shared latents: lo <= relative_norm <= hi (no band: every latent) and
    firing_frequency >= min_frequency, ranked by firing frequency (descending, ties by
    latent index), first top_k. Rows with NaN relative norm or frequency are never selected.
    """
    if top_k < 0:
        raise CrossCoderError(f"top_k={top_k} must be >= 0")
    _check_table(table)
    rel = table["relative_norm"].to_numpy(dtype=np.float64)
    freq = table["firing_frequency"].to_numpy(dtype=np.float64)
    latent = table["latent"].to_numpy(dtype=np.int64)
    keep = np.isfinite(rel) & (freq >= min_frequency)
    if rel_norm_band is not None:
        lo, hi = rel_norm_band
        if not lo <= hi:
            raise CrossCoderError(f"rel_norm_band={tuple(rel_norm_band)} must be (low, high) with low <= high")
        keep &= (rel >= lo) & (rel <= hi)
    latent, freq = latent[keep], freq[keep]
    order = np.lexsort((latent, -freq))  # last key is primary: frequency desc, then index asc
    return [int(i) for i in latent[order][:top_k]]


def rel_norm_spread(relative_norm: np.ndarray) -> float:
    """5-95% quantile range of the finite relative norms (NaN if none): how far they spread.

    >>> rel_norm_spread(np.full(10, 0.5))
    0.0
    """
    rel = np.asarray(relative_norm, dtype=np.float64)
    rel = rel[np.isfinite(rel)]
    return float(np.quantile(rel, 0.95) - np.quantile(rel, 0.05)) if rel.size else float("nan")


def choose_latents(table: pd.DataFrame, *, rel_norm_band: tuple[float, float], top_k: int, min_frequency: float,
                   spread_init: float, min_spread_gain: float) -> tuple[list[int], dict[str, Any]]:
    """The audited latents and a record of how they were chosen.

    Latents that fire (frequency > 0 in `table`) are the population. If their relative-norm
    spread exceeds `spread_init` (the crosscoder's spread at initialization; 0 for
    unit-norm decoder rows) by more than `min_spread_gain`, the band selects; otherwise the
    band is refused (it would select on the initialization) and latents are ranked by firing
    frequency alone. The record holds spread, spread_init, band_applied and the reason.

    Example:
        >>> table = pd.DataFrame({"latent": [0, 1, 2], "relative_norm": [0.5, 0.51, 0.49],
        ...                       "firing_frequency": [0.1, 0.5, 0.3]})
        >>> latents, record = choose_latents(table, rel_norm_band=(0.3, 0.7), top_k=2, min_frequency=0.0,
        ...                                  spread_init=0.0, min_spread_gain=0.05)
        >>> latents, record["band_applied"]
        ([1, 2], False)
    """
    _check_table(table)
    fires = table[table["firing_frequency"] > 0]
    spread = rel_norm_spread(fires["relative_norm"].to_numpy())
    band_ok = bool(np.isfinite(spread) and spread > spread_init + min_spread_gain)
    latents = select_shared_latents(fires, rel_norm_band=tuple(rel_norm_band) if band_ok else None, top_k=top_k,
                                    min_frequency=min_frequency)
    record = {
        "n_firing": int(len(fires)),
        "rel_norm_spread": spread,
        "rel_norm_spread_init": float(spread_init),
        "band_applied": band_ok,
        "rule": (f"relative norm in [{rel_norm_band[0]}, {rel_norm_band[1]}], then the {top_k} most frequent"
                 if band_ok else f"the {top_k} most frequent firing latents (band refused)"),
    }
    if not band_ok:
        record["band_refused_because"] = (
            f"relative-norm spread (5-95% range) {spread:.3f} is within {min_spread_gain} of its initialization "
            f"level {spread_init:.3f}: every latent sits in any band around 0.5, so the band would select on the "
            "initialization; whether that is 'all shared' or 'not trained' is decided by the controls")
    return latents, record


def pair_drift(acts_NMD: np.ndarray, massive_dims: Sequence[int] = ()) -> dict[str, Any]:
    """How far the second model's activations moved from the first's, token by token (e.g. a
    fine-tune from its base, at the audit layer): the median per-token cosine, and the identity
    R^2 = 1 - sum ||h_1 - h_0||^2 / sum ||h_1 - mean(h_1)||^2 (how much of the second model's
    variance the first's activations explain unchanged; 1 = identical, 0 = no better than its mean,
    negative = worse). Over rows of acts_NMD [N tokens, 2, D]. With `massive_dims`, both again
    outside them (`*_outside_massive`): a few dims of ~5000 make every cosine ~1.

    Example (an identical pair is 1 and 1; noise of half the signal's variance: R^2 = 1 - 0.5 / 1.5):
        >>> rng = np.random.default_rng(0)
        >>> h = rng.normal(size=(20000, 1, 16))
        >>> pair_drift(np.concatenate([h, h], axis=1))
        {'per_token_cosine_median': 1.0, 'identity_r2': 1.0, 'n_tokens': 20000}
        >>> d = pair_drift(np.concatenate([h, h + rng.normal(size=h.shape) / 2 ** 0.5], axis=1))
        >>> round(d["identity_r2"], 2)
        0.67
        >>> big = np.concatenate([h, h + rng.normal(size=h.shape)], axis=1); big[:, :, 0] = 5000.0
        >>> d = pair_drift(big, massive_dims=[0])
        >>> round(d["per_token_cosine_median"], 3), round(d["per_token_cosine_median_outside_massive"], 1)
        (1.0, 0.7)
    """
    acts = np.asarray(acts_NMD, dtype=np.float64)
    if acts.ndim != 3 or acts.shape[1] != 2:
        raise CrossCoderError(f"pair_drift: expected activations [N, 2, D], got {acts.shape}")

    def drift(h0: np.ndarray, h1: np.ndarray) -> tuple[float, float]:
        norms = np.linalg.norm(h0, axis=1) * np.linalg.norm(h1, axis=1)
        cos = np.divide((h0 * h1).sum(axis=1), norms, out=np.full(len(h0), np.nan), where=norms > 0)
        total = ((h1 - h1.mean(axis=0)) ** 2).sum()
        r2 = 1.0 - ((h1 - h0) ** 2).sum() / total if total > 0 else float("nan")
        return round(float(np.nanmedian(cos)), 6), round(float(r2), 6)

    cos, r2 = drift(acts[:, 0], acts[:, 1])
    out: dict[str, Any] = {"per_token_cosine_median": cos, "identity_r2": r2, "n_tokens": int(len(acts))}
    if len(massive_dims):
        keep = np.setdiff1d(np.arange(acts.shape[2]), np.asarray(massive_dims, dtype=int))
        cos_out, r2_out = drift(acts[:, 0, keep], acts[:, 1, keep])
        out.update(massive_dims=[int(d) for d in massive_dims], per_token_cosine_median_outside_massive=cos_out,
                   identity_r2_outside_massive=r2_out)
    return out
