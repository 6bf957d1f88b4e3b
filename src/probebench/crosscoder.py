"""BatchTopK crosscoder: model, training, checkpoint loaders and latent statistics.

The audited claim ("median decoder cosine 0.965 vs median causal equivalence 0.616 on
Gemma-2-2B base/IT") rests on a BatchTopK crosscoder trained jointly on the layer-13
residual stream of two models. This module holds one in-memory representation of such a
crosscoder, whatever checkpoint layout it came from, so that the cosines and the decoder
vectors used by the ablation audit are computed the same way for every source.

Shape suffixes: B batch, M models, D d_model, F latents, N dataset rows, L selected latents.

Scale convention (used everywhere in this module): ``input_scale_M[m]`` is a DIVISOR.
``acts_BMD[:, m] / input_scale_M[m]`` is what the crosscoder's weights see, and
``decode`` multiplies its output by ``input_scale_M[m]`` again, so raw activations go in
and raw activations come out.

Example:
    >>> acts_NMD = torch.randn(2048, 2, 16)                 # paired base/IT activations
    >>> cc, metrics = train_crosscoder(acts_NMD, n_latents=64, k=4, steps=200,
    ...                                batch_size=256, lr=1e-2, seed=0)
    >>> f_BF = cc.encode(acts_NMD[:8])                      # eval mode: threshold rule
    >>> cc.decode(f_BF).shape
    torch.Size([8, 2, 16])
    >>> cc.decoder_cosine().shape, cc.relative_norm().shape
    (torch.Size([64]), torch.Size([64]))
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from safetensors.torch import load_file as _st_load_file
from safetensors.torch import save as _st_save_bytes

from probebench.io import atomic_write_bytes

__all__ = [
    "BatchTopKCrossCoder",
    "CrossCoderLoadError",
    "train_crosscoder",
    "load_dictionary_learning_state",
    "load_wdec_layout",
    "load_native_state",
    "load_crosscoder",
    "latent_table",
    "firing_frequency",
    "select_shared_latents",
    "SCALE_FACTOR_KEYS",
]

# cfg.json keys accepted by `load_wdec_layout` for per-model activation scale factors.
# Their meaning is set by cfg["scale_factor_convention"]: "divide" (default; the
# crosscoder saw raw / s) or "multiply" (the crosscoder saw raw * s).
SCALE_FACTOR_KEYS = ("scale_factors", "activation_scale_factors", "input_scale_M")

_COMPILE_PREFIX = "_orig_mod."


class CrossCoderLoadError(ValueError):
    """A crosscoder checkpoint could not be loaded; the message names file, key and fix."""


class BatchTopKCrossCoder(nn.Module):
    """Crosscoder with a BatchTopK activation over decoder-norm-weighted scores.

    pre_BF   = relu(sum_m (x_m / s_m) @ W_enc[m] + b_enc)
    score_BF = pre_BF * sum_m ||W_dec[f, m]||
    training (or use_threshold=False): keep the top k*B scores of the flattened batch;
    inference (eval mode, threshold estimated): keep score > threshold.
    decode: x_hat_m = (f @ W_dec[:, m] + b_dec[m]) * s_m

    k, threshold and input_scale_M are buffers, so a saved state dict describes itself.
    ``threshold < 0`` (or non-finite) means "not estimated yet".

    Example:
        >>> cc = BatchTopKCrossCoder(d_model=16, n_latents=64, k=4).eval()
        >>> cc.threshold_estimated
        False
        >>> cc.encode(torch.randn(3, 2, 16)).shape   # falls back to BatchTopK
        torch.Size([3, 64])
    """

    def __init__(self, d_model: int, n_latents: int, k: int, n_models: int = 2):
        super().__init__()
        assert d_model > 0, f"d_model={d_model} must be a positive integer"
        assert n_latents > 0, f"n_latents={n_latents} must be a positive integer"
        assert n_models > 0, f"n_models={n_models} must be a positive integer"
        assert 0 < k <= n_latents, f"k={k} must be a positive integer <= n_latents={n_latents}"
        self.d_model = int(d_model)
        self.n_latents = int(n_latents)
        self.n_models = int(n_models)
        # zero init: a bare constructor is a container (every latent is silent until
        # train_crosscoder or a loader fills it), so no random state is consumed here.
        self.W_enc_MDF = nn.Parameter(torch.zeros(n_models, d_model, n_latents))
        self.b_enc_F = nn.Parameter(torch.zeros(n_latents))
        self.W_dec_FMD = nn.Parameter(torch.zeros(n_latents, n_models, d_model))
        self.b_dec_MD = nn.Parameter(torch.zeros(n_models, d_model))
        self.register_buffer("k", torch.tensor(int(k), dtype=torch.int64))
        self.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float32))
        self.register_buffer("input_scale_M", torch.ones(n_models, dtype=torch.float32))

    # ------------------------------------------------------------------ properties
    @property
    def threshold_estimated(self) -> bool:
        t = float(self.threshold)
        return math.isfinite(t) and t >= 0.0

    # ------------------------------------------------------------------ core
    def _pre_and_score(self, x_BMD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-activations and selection scores of NORMALIZED inputs (x / input_scale)."""
        pre_BF = torch.relu(torch.einsum("bmd,mdf->bf", x_BMD, self.W_enc_MDF) + self.b_enc_F)
        # the score only selects latents; no gradient should flow through decoder norms
        score_BF = pre_BF * self.W_dec_FMD.detach().norm(dim=-1).sum(dim=-1)
        return pre_BF, score_BF

    def _batch_topk_mask(self, score_BF: torch.Tensor) -> torch.Tensor:
        n_keep = min(int(self.k) * score_BF.shape[0], score_BF.numel())
        flat = score_BF.flatten()
        idx = flat.topk(n_keep, sorted=False).indices
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[idx] = True
        # a zero score (relu'd away or dead decoder) is not an active latent
        return mask.view_as(score_BF) & (score_BF > 0)

    def _normalize(self, acts_BMD: torch.Tensor) -> torch.Tensor:
        assert acts_BMD.ndim == 3 and acts_BMD.shape[1:] == (self.n_models, self.d_model), (
            f"acts_BMD has shape {tuple(acts_BMD.shape)}, expected (B, {self.n_models}, {self.d_model})"
        )
        return acts_BMD.to(self.W_enc_MDF.dtype) / self.input_scale_M[:, None]

    def encode(self, acts_BMD: torch.Tensor, *, use_threshold: bool | None = None) -> torch.Tensor:
        """Raw activations [B, M, D] -> latent activations f_BF [B, F].

        use_threshold=None: threshold rule iff eval mode and the threshold is estimated,
        else BatchTopK. True forces the threshold (it must be estimated), False BatchTopK.

        Example:
            >>> cc = BatchTopKCrossCoder(16, 64, k=4)
            >>> cc.encode(torch.randn(2, 2, 16), use_threshold=False).shape
            torch.Size([2, 64])
        """
        pre_BF, score_BF = self._pre_and_score(self._normalize(acts_BMD))
        if use_threshold is None:
            use_threshold = (not self.training) and self.threshold_estimated
        if use_threshold:
            assert self.threshold_estimated, (
                f"threshold={float(self.threshold)} is not estimated; train longer, load a "
                "checkpoint with a threshold, or pass use_threshold=False"
            )
            mask_BF = score_BF > self.threshold
        else:
            mask_BF = self._batch_topk_mask(score_BF)
        return pre_BF * mask_BF

    def _decode_normalized(self, f_BF: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bf,fmd->bmd", f_BF, self.W_dec_FMD) + self.b_dec_MD

    def decode(self, f_BF: torch.Tensor) -> torch.Tensor:
        """Latents f_BF [B, F] -> raw activations [B, M, D] (input scale multiplied back)."""
        assert f_BF.ndim == 2 and f_BF.shape[1] == self.n_latents, (
            f"f_BF has shape {tuple(f_BF.shape)}, expected (B, {self.n_latents})"
        )
        return self._decode_normalized(f_BF.to(self.W_dec_FMD.dtype)) * self.input_scale_M[:, None]

    def forward(self, acts_BMD: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(acts_BMD))

    # ------------------------------------------------------------------ decoder geometry
    @torch.no_grad()
    def decoder_norms(self) -> torch.Tensor:
        """[F, M] norms of each latent's per-model decoder vector (crosscoder space)."""
        return self.W_dec_FMD.norm(dim=-1)

    @torch.no_grad()
    def decoder_cosine(self) -> torch.Tensor:
        """[F] cosine between model 0 and model 1 decoder vectors; NaN if either is zero.

        Invariant to input_scale_M (a per-model scalar does not change a cosine).
        """
        assert self.n_models == 2, f"decoder_cosine needs n_models=2, got {self.n_models}"
        d0, d1 = self.W_dec_FMD[:, 0].double(), self.W_dec_FMD[:, 1].double()
        denom = d0.norm(dim=-1) * d1.norm(dim=-1)
        # a zero vector has no direction: NaN rather than a misleading "orthogonal" 0
        cos = (d0 * d1).sum(-1) / denom
        return torch.where(denom > 0, cos, torch.full_like(cos, float("nan"))).float()

    @torch.no_grad()
    def relative_norm(self) -> torch.Tensor:
        """[F] ||d_1|| / (||d_0|| + ||d_1||) in crosscoder space (as published analyses do).

        0 = model-0 (base) only, 1 = model-1 (IT) only, 0.5 = shared. NaN if both are zero.
        """
        assert self.n_models == 2, f"relative_norm needs n_models=2, got {self.n_models}"
        n = self.decoder_norms().double()
        total = n.sum(-1)
        rel = n[:, 1] / total
        return torch.where(total > 0, rel, torch.full_like(rel, float("nan"))).float()

    @torch.no_grad()
    def decoder_vectors(self, latents: list[int] | torch.Tensor | None = None, *, raw: bool = True) -> torch.Tensor:
        """[L, M, D] decoder vectors of `latents` (all if None).

        raw=True multiplies by input_scale_M: the change in RAW activations per unit of
        latent activation, i.e. what an ablation in the model's residual stream removes.
        """
        W_FMD = self.W_dec_FMD
        if raw:
            W_FMD = W_FMD * self.input_scale_M[None, :, None]
        if latents is not None:
            W_FMD = W_FMD[torch.as_tensor(latents, dtype=torch.long)]
        return W_FMD.clone()

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write a safetensors file atomically: the state dict only, no metadata, deterministic bytes.

        Example:
            >>> cc.save(tmp / "cc.safetensors"); BatchTopKCrossCoder.from_pretrained(tmp / "cc.safetensors")
        """
        state = {name: t.detach().cpu().contiguous().clone() for name, t in self.state_dict().items()}
        atomic_write_bytes(path, _st_save_bytes(state))

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu") -> "BatchTopKCrossCoder":
        """Load any layout `load_crosscoder` understands (our own `save` output included)."""
        return load_crosscoder(path).to(device)

    @classmethod
    def _from_tensors(
        cls,
        *,
        W_enc_MDF: torch.Tensor,
        b_enc_F: torch.Tensor,
        W_dec_FMD: torch.Tensor,
        b_dec_MD: torch.Tensor,
        k: int,
        threshold: float,
        input_scale_M: torch.Tensor | None = None,
    ) -> "BatchTopKCrossCoder":
        M, D, F = W_enc_MDF.shape
        cc = cls(d_model=D, n_latents=F, k=k, n_models=M)
        with torch.no_grad():
            # float32 regardless of the stored dtype: cosines of bf16 vectors are noisy
            cc.W_enc_MDF.copy_(W_enc_MDF.float())
            cc.b_enc_F.copy_(b_enc_F.float())
            cc.W_dec_FMD.copy_(W_dec_FMD.float())
            cc.b_dec_MD.copy_(b_dec_MD.float())
            cc.threshold.fill_(float(threshold))
            if input_scale_M is not None:
                cc.input_scale_M.copy_(input_scale_M.float())
        return cc.eval()


# ====================================================================== training
def _variance_explained_M(cc: BatchTopKCrossCoder, acts_NMD: torch.Tensor, batch_size: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Per-model variance explained, mean L0 and firing counts, in the encoder's current mode."""
    M, F = cc.n_models, cc.n_latents
    sse_M = torch.zeros(M, dtype=torch.float64)
    fired_F = torch.zeros(F, dtype=torch.float64)
    l0_total = 0.0
    mean_MD = acts_NMD.double().mean(0)
    sst_M = ((acts_NMD.double() - mean_MD) ** 2).sum(dim=(0, 2))
    with torch.no_grad():
        for start in range(0, acts_NMD.shape[0], batch_size):
            x = acts_NMD[start : start + batch_size]
            f = cc.encode(x)
            x_hat = cc.decode(f)
            sse_M += ((x.double() - x_hat.double()) ** 2).sum(dim=(0, 2))
            active = f != 0
            fired_F += active.sum(0).double()
            l0_total += float(active.sum())
    ve_M = (1.0 - sse_M / sst_M.clamp_min(1e-30)).numpy()
    return ve_M, l0_total / acts_NMD.shape[0], fired_F.numpy()


def _auxk_loss(
    cc: BatchTopKCrossCoder,
    x_BMD: torch.Tensor,
    x_hat_BMD: torch.Tensor,
    pre_BF: torch.Tensor,
    dead_F: torch.Tensor,
    aux_k: int,
) -> torch.Tensor:
    """AuxK loss (BatchTopK SAE paper): dead latents explain the residual; 0 if none dead.

    Each row keeps its top min(aux_k, n_dead) dead pre-activations; they are decoded without
    b_dec and compared to the detached residual, normalized by the residual's variance so
    the loss scale does not depend on how good the main reconstruction already is.
    """
    n_dead = int(dead_F.sum())
    if n_dead == 0:
        return torch.zeros((), dtype=pre_BF.dtype)
    # detached: the aux loss must train only the dead latents, not chase the live ones
    residual = (x_BMD - x_hat_BMD).detach()
    dead_pre = torch.where(dead_F[None], pre_BF, torch.full_like(pre_BF, -math.inf))
    vals, ids = dead_pre.topk(min(aux_k, n_dead), dim=-1)
    aux_f_BF = torch.zeros_like(pre_BF).scatter(-1, ids, vals)
    e_hat_BMD = torch.einsum("bf,fmd->bmd", aux_f_BF, cc.W_dec_FMD)
    aux_l2 = ((residual - e_hat_BMD) ** 2).sum(dim=(1, 2)).mean()
    resid_var = ((residual - residual.mean(0)) ** 2).sum(dim=(1, 2)).mean()
    return torch.nan_to_num(aux_l2 / resid_var, nan=0.0, posinf=0.0)


def train_crosscoder(
    acts_NMD: torch.Tensor | np.ndarray,
    *,
    n_latents: int,
    k: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    aux_k: int | None = None,
    aux_coef: float = 1 / 32,
    dead_after_steps: int = 1000,
    threshold_beta: float = 0.999,
    threshold_start_step: int | None = None,
    progress: bool = False,
) -> tuple[BatchTopKCrossCoder, dict[str, Any]]:
    """Train a BatchTopK crosscoder on paired activations [N, M, D]; deterministic on CPU.

    - input_scale_M[m] = sqrt(mean_n ||x_nm||^2 / D), so x / s has mean squared norm D.
    - W_dec rows unit norm per (latent, model), W_enc = W_dec^T, b_dec = mean of the
      normalized data, b_enc = 0; Adam; decoder norms are NOT constrained (relative norms
      must stay free to be informative).
    - loss = sum over models of the squared error (mean over batch)
      + aux_coef * AuxK loss: latents that have not fired for `dead_after_steps` steps
      reconstruct the (detached) residual with their top `aux_k` pre-activations per row,
      normalized by the residual's variance (BatchTopK SAE paper; aux_k defaults to D // 2).
    - threshold: from `threshold_start_step` (default min(1000, steps // 2)), an EMA with
      `threshold_beta` of the minimum positive score selected by BatchTopK in each batch;
      the first value is taken as is (no bias towards the -1 "unset" value).

    Metrics (computed on `acts_NMD`, eval mode, threshold rule): variance_explained
    (list, per model), mean_l0, dead_fraction (never fires on the data),
    dead_fraction_train (did not fire in the last `dead_after_steps` steps),
    initial_loss / final_loss (the training loss of the first / last batch), threshold.

    Example:
        >>> cc, m = train_crosscoder(acts_NMD, n_latents=64, k=4, steps=300, batch_size=256, lr=3e-3, seed=0)
        >>> m["variance_explained"]   # [ve_base, ve_it]
    """
    acts = torch.as_tensor(acts_NMD).to(torch.float32)
    assert acts.ndim == 3, f"acts_NMD has shape {tuple(acts.shape)}, expected (N, M, D)"
    N, M, D = acts.shape
    assert N > 0, "acts_NMD is empty"
    assert steps >= 0, f"steps={steps} must be >= 0"
    assert batch_size > 0, f"batch_size={batch_size} must be a positive integer"
    assert 0 < k <= n_latents, f"k={k} must be a positive integer <= n_latents={n_latents}"
    assert 0.0 <= threshold_beta < 1.0, f"threshold_beta={threshold_beta} must be in [0, 1)"
    assert dead_after_steps > 0, f"dead_after_steps={dead_after_steps} must be a positive integer"
    aux_k = D // 2 if aux_k is None else int(aux_k)
    assert aux_k > 0, f"aux_k={aux_k} must be a positive integer"
    if threshold_start_step is None:
        threshold_start_step = min(1000, steps // 2)

    gen = torch.Generator().manual_seed(int(seed))
    sq_norm_M = (acts.double() ** 2).sum(-1).mean(0)
    scale_M = torch.sqrt(sq_norm_M / D).float()
    assert bool((scale_M > 0).all()), f"a model's activations are all zero (scales {scale_M.tolist()})"
    x_all = acts / scale_M[:, None]

    cc = BatchTopKCrossCoder(d_model=D, n_latents=n_latents, k=k, n_models=M)
    with torch.no_grad():
        W_dec = torch.randn(n_latents, M, D, generator=gen)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        cc.W_dec_FMD.copy_(W_dec)
        cc.W_enc_MDF.copy_(W_dec.permute(1, 2, 0))
        cc.b_dec_MD.copy_(x_all.mean(0))
        cc.input_scale_M.copy_(scale_M)
    cc.train()
    opt = torch.optim.Adam(cc.parameters(), lr=lr)

    steps_since_fired_F = torch.zeros(n_latents, dtype=torch.long)
    threshold: float | None = None
    initial_loss = final_loss = float("nan")
    perm = torch.randperm(N, generator=gen)
    cursor = 0

    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress()
        task = bar.add_task("crosscoder", total=steps)
        bar.start()
    try:
        for step in range(steps):
            if cursor + batch_size > N:  # new epoch: reshuffle, drop the ragged tail
                perm = torch.randperm(N, generator=gen)
                cursor = 0
            idx = perm[cursor : cursor + batch_size]
            cursor += batch_size
            x = x_all[idx]

            pre_BF, score_BF = cc._pre_and_score(x)
            mask_BF = cc._batch_topk_mask(score_BF)
            f_BF = pre_BF * mask_BF
            x_hat = cc._decode_normalized(f_BF)
            mse = ((x_hat - x) ** 2).sum(dim=(1, 2)).mean()

            steps_since_fired_F += 1
            steps_since_fired_F[mask_BF.any(0)] = 0
            dead_F = steps_since_fired_F >= dead_after_steps
            aux = torch.zeros((), dtype=mse.dtype)
            if aux_coef > 0 and bool(dead_F.any()):
                aux = _auxk_loss(cc, x, x_hat, pre_BF, dead_F, aux_k)
            loss = mse + aux_coef * aux

            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

            if step >= threshold_start_step:
                selected = score_BF.detach()[mask_BF]
                if selected.numel() > 0:
                    m = float(selected.min())
                    threshold = m if threshold is None else threshold_beta * threshold + (1 - threshold_beta) * m

            if step == 0:
                initial_loss = float(loss.detach())
            final_loss = float(loss.detach())
            if bar is not None:
                bar.update(task, advance=1)
    finally:
        if bar is not None:
            bar.stop()

    with torch.no_grad():
        if threshold is not None:
            cc.threshold.fill_(threshold)
    cc.eval()
    ve_M, mean_l0, fired_F = _variance_explained_M(cc, acts, batch_size)
    metrics = {
        "variance_explained": [float(v) for v in ve_M],
        "mean_l0": float(mean_l0),
        "dead_fraction": float((fired_F == 0).mean()),
        "dead_fraction_train": float((steps_since_fired_F >= dead_after_steps).float().mean()),
        "initial_loss": initial_loss,
        "final_loss": final_loss,
        "threshold": float(cc.threshold),
        "input_scale": [float(s) for s in scale_M],
        "steps": int(steps),
    }
    return cc, metrics


# ====================================================================== loaders
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
            f"{source}: missing key(s) {missing} for the {layout} layout "
            f"(found {sorted(state)}); fix: {fix}"
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


def _build(
    *,
    source: str,
    enc_key: str,
    W_enc_MDF: torch.Tensor,
    b_enc_F: torch.Tensor,
    W_dec_FMD: torch.Tensor,
    b_dec_MD: torch.Tensor,
    k: float,
    threshold: float,
    input_scale_M: torch.Tensor | None,
    d_model: int | None,
    n_models: int,
    names: dict[str, str],
) -> BatchTopKCrossCoder:
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
    if input_scale_M is not None:
        _check_shape(input_scale_M, (M,), source=source, key=names.get("scale", "input_scale_M"), meaning="(n_models,)")
        if not bool(torch.isfinite(input_scale_M).all() and (input_scale_M > 0).all()):
            raise CrossCoderLoadError(
                f"{source}: {names.get('scale', 'input_scale_M')!r} = {input_scale_M.tolist()} must be finite and > 0; fix: store the per-model scale factors"
            )
    if not (k == int(k) and 0 < int(k) <= F):
        raise CrossCoderLoadError(f"{source}: key 'k' = {k} must be an integer in [1, {F}]; fix: store the BatchTopK k")
    return BatchTopKCrossCoder._from_tensors(
        W_enc_MDF=W_enc_MDF,
        b_enc_F=b_enc_F,
        W_dec_FMD=W_dec_FMD,
        b_dec_MD=b_dec_MD,
        k=int(k),
        threshold=threshold,
        input_scale_M=input_scale_M,
    )


_DL_KEYS = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias", "k", "threshold")
_WDEC_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec")
_NATIVE_KEYS = ("W_enc_MDF", "b_enc_F", "W_dec_FMD", "b_dec_MD", "k", "threshold", "input_scale_M")


def load_dictionary_learning_state(
    state: dict[str, torch.Tensor],
    *,
    source: str = "<state dict>",
    d_model: int | None = None,
    n_models: int = 2,
    strict: bool = True,
) -> BatchTopKCrossCoder:
    """dictionary_learning BatchTopKCrossCoder state dict -> BatchTopKCrossCoder.

    Layout: encoder.weight [M, D, F], encoder.bias [F], decoder.weight [M, F, D],
    decoder.bias [M, D], k, threshold. An `_orig_mod.` prefix (torch.compile) is stripped.
    The layout carries no activation scale, so input_scale_M = 1 (set it afterwards if the
    crosscoder was trained on rescaled activations).

    Example:
        >>> cc = load_dictionary_learning_state(torch.load("ae.pt", weights_only=True))
    """
    state = _strip_prefix(state)
    _require(state, _DL_KEYS, source=source, layout="dictionary_learning",
             fix="save the full BatchTopKCrossCoder state_dict (k and threshold are buffers)")
    _reject_unexpected(state, _DL_KEYS, source=source, layout="dictionary_learning", strict=strict)
    t = {key: _as_tensor(state[key], source=source, key=key) for key in _DL_KEYS[:4]}
    dec = t["decoder.weight"]
    if dec.ndim != 3:
        raise CrossCoderLoadError(
            f"{source}: key 'decoder.weight' has shape {tuple(dec.shape)}, expected (n_models, F, d_model); fix: use a crosscoder checkpoint"
        )
    return _build(
        source=source,
        enc_key="encoder.weight",
        W_enc_MDF=t["encoder.weight"],
        b_enc_F=t["encoder.bias"],
        W_dec_FMD=dec.permute(1, 0, 2),
        b_dec_MD=t["decoder.bias"],
        k=_scalar(state["k"], source=source, key="k"),
        threshold=_scalar(state["threshold"], source=source, key="threshold"),
        input_scale_M=None,
        d_model=d_model,
        n_models=n_models,
        names={"b_enc": "encoder.bias", "W_dec": "decoder.weight", "b_dec": "decoder.bias",
               "W_dec_meaning": "after permuting (n_models, F, d_model) -> (F, n_models, d_model)"},
    )


def load_wdec_layout(
    state: dict[str, torch.Tensor],
    cfg: dict[str, Any],
    *,
    source: str = "<state dict>",
    d_model: int | None = None,
    n_models: int = 2,
    strict: bool = True,
) -> BatchTopKCrossCoder:
    """W_enc/W_dec layout + cfg.json -> BatchTopKCrossCoder.

    Weights: W_enc [2, D, F], W_dec [F, 2, D], b_enc [F], b_dec [2, D] (`_orig_mod.` stripped).
    cfg: `k` (required); `threshold` (optional, default -1 = not estimated); per-model
    scale factors NOT folded into the weights under ONE of the keys in SCALE_FACTOR_KEYS
    (`scale_factors`, `activation_scale_factors`, `input_scale_M`; absent = no scaling), and
    `scale_factor_convention`:
      - "divide" (default): the crosscoder saw raw / s, so input_scale_M = s;
      - "multiply": the crosscoder saw raw * s (e.g. a norm-scaling factor
        sqrt(D) / mean||x|| applied to activations), so input_scale_M = 1 / s.
    Either way encode(raw) / decode(...) use and return raw activations.

    Example:
        >>> cc = load_wdec_layout(load_file("cc.safetensors"), {"k": 100, "scale_factors": [0.4, 0.5]})
    """
    state = _strip_prefix(state)
    cfg_source = f"{source} (cfg.json)"
    _require(state, _WDEC_KEYS, source=source, layout="W_enc/W_dec",
             fix="store W_enc [2, d, F], W_dec [F, 2, d], b_enc [F], b_dec [2, d]")
    _reject_unexpected(state, _WDEC_KEYS + ("k", "threshold"), source=source, layout="W_enc/W_dec", strict=strict)
    if "k" not in cfg and "k" not in state:
        raise CrossCoderLoadError(f"{cfg_source}: missing key(s) ['k']; fix: add the BatchTopK k to cfg.json, e.g. \"k\": 100")
    k = _scalar(cfg["k"] if "k" in cfg else state["k"], source=cfg_source, key="k")
    threshold = -1.0
    if "threshold" in cfg or "threshold" in state:
        raw_t = cfg["threshold"] if "threshold" in cfg else state["threshold"]
        threshold = -1.0 if raw_t is None else _scalar(raw_t, source=cfg_source, key="threshold")

    present = [key for key in SCALE_FACTOR_KEYS if key in cfg and cfg[key] is not None]
    if len(present) > 1:
        raise CrossCoderLoadError(
            f"{cfg_source}: several scale-factor keys {present}; fix: keep exactly one of {list(SCALE_FACTOR_KEYS)}"
        )
    convention = cfg.get("scale_factor_convention", "divide")
    if convention not in ("divide", "multiply"):
        raise CrossCoderLoadError(
            f"{cfg_source}: key 'scale_factor_convention' = {convention!r}; fix: use \"divide\" (crosscoder saw raw / s) or \"multiply\" (raw * s)"
        )
    input_scale_M = None
    scale_key = present[0] if present else "input_scale_M"
    if present:
        try:
            s = torch.as_tensor(cfg[scale_key], dtype=torch.float64).reshape(-1)
        except Exception as exc:  # noqa: BLE001 - re-raised with the key named
            raise CrossCoderLoadError(f"{cfg_source}: key {scale_key!r} is not a list of numbers; fix: write e.g. [s0, s1]") from exc
        if not bool(torch.isfinite(s).all() and (s > 0).all()):
            raise CrossCoderLoadError(f"{cfg_source}: key {scale_key!r} = {s.tolist()} must be finite and > 0; fix: store the per-model factors")
        input_scale_M = (s if convention == "divide" else 1.0 / s).float()

    t = {key: _as_tensor(state[key], source=source, key=key) for key in _WDEC_KEYS}
    return _build(
        source=source,
        enc_key="W_enc",
        W_enc_MDF=t["W_enc"],
        b_enc_F=t["b_enc"],
        W_dec_FMD=t["W_dec"],
        b_dec_MD=t["b_dec"],
        k=k,
        threshold=threshold,
        input_scale_M=input_scale_M,
        d_model=d_model,
        n_models=n_models,
        names={"b_enc": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec", "scale": scale_key,
               "W_dec_meaning": "(F, n_models, d_model)"},
    )


def load_native_state(
    state: dict[str, torch.Tensor],
    *,
    source: str = "<state dict>",
    d_model: int | None = None,
    n_models: int = 2,
    strict: bool = True,
) -> BatchTopKCrossCoder:
    """State dict written by `BatchTopKCrossCoder.save` -> BatchTopKCrossCoder."""
    state = _strip_prefix(state)
    _require(state, _NATIVE_KEYS, source=source, layout="probebench",
             fix="re-save with BatchTopKCrossCoder.save (k, threshold, input_scale_M are buffers)")
    _reject_unexpected(state, _NATIVE_KEYS, source=source, layout="probebench", strict=strict)
    t = {key: _as_tensor(state[key], source=source, key=key) for key in _NATIVE_KEYS}
    return _build(
        source=source,
        enc_key="W_enc_MDF",
        W_enc_MDF=t["W_enc_MDF"],
        b_enc_F=t["b_enc_F"],
        W_dec_FMD=t["W_dec_FMD"],
        b_dec_MD=t["b_dec_MD"],
        k=_scalar(t["k"], source=source, key="k"),
        threshold=_scalar(t["threshold"], source=source, key="threshold"),
        input_scale_M=t["input_scale_M"],
        d_model=d_model,
        n_models=n_models,
        names={"b_enc": "b_enc_F", "W_dec": "W_dec_FMD", "b_dec": "b_dec_MD", "scale": "input_scale_M",
               "W_dec_meaning": "(F, n_models, d_model)"},
    )


_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
_CFG_NAMES = ("cfg.json", "config.json")


def _read_weights(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        try:
            return dict(_st_load_file(str(path)))
        except Exception as exc:  # noqa: BLE001 - re-raised as one line
            raise CrossCoderLoadError(f"{path}: not a readable safetensors file ({exc}); fix: re-download or re-save it") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised as one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CrossCoderLoadError(
            f"{path}: torch.load(weights_only=True) failed ({first}); fix: save a plain dict of tensors"
        ) from exc
    # some trainers nest the weights: {"state_dict": {...}, "step": ...}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CrossCoderLoadError(f"{path}: holds a {type(obj).__name__}, not a state dict; fix: save model.state_dict()")
    return obj


def _find_cfg(folder: Path) -> Path | None:
    for name in _CFG_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def load_crosscoder(
    path: str | Path,
    *,
    d_model: int | None = None,
    n_models: int = 2,
    strict: bool = True,
) -> BatchTopKCrossCoder:
    """Load a crosscoder from a file or directory into a BatchTopKCrossCoder (eval mode).

    path: a `.safetensors`, `.pt` or `.pth` file, or a directory holding exactly one such
    file (plus cfg.json / config.json for the W_enc/W_dec layout; for a file path the
    cfg is looked up next to it). The key layout picks the loader: probebench's own
    (`save`), dictionary_learning (`encoder.weight`, ...) or W_enc/W_dec + cfg.json.
    d_model, if given, must match the checkpoint's; only n_models=2 is supported.
    Every failure is a CrossCoderLoadError with one line naming file, key and fix.

    Example:
        >>> cc = load_crosscoder("checkpoints/gemma2-2b-L13", d_model=2304)
    """
    path = Path(path)
    if n_models != 2:
        raise CrossCoderLoadError(
            f"{path}: n_models={n_models} was requested but only 2-model (base/IT) crosscoders are supported; fix: pass n_models=2"
        )
    if path.is_dir():
        weights = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
        if len(weights) != 1:
            raise CrossCoderLoadError(
                f"{path}: expected exactly one weights file ({', '.join(_WEIGHT_SUFFIXES)}), found "
                f"{[p.name for p in weights]}; fix: pass the weights file itself"
            )
        weights_path, cfg_path = weights[0], _find_cfg(path)
    elif path.is_file():
        if path.suffix not in _WEIGHT_SUFFIXES:
            raise CrossCoderLoadError(
                f"{path}: unsupported file type {path.suffix!r}; fix: pass a .safetensors, .pt or .pth file or a directory"
            )
        weights_path, cfg_path = path, _find_cfg(path.parent)
    else:
        raise CrossCoderLoadError(f"{path}: no such file or directory; fix: check the path")

    state = _strip_prefix(_read_weights(weights_path))
    source = str(weights_path)
    kw = {"source": source, "d_model": d_model, "n_models": n_models, "strict": strict}
    # pick the layout sharing the most weight keys with the file (names, not shapes)
    overlap = {
        "native": len(set(state) & set(_NATIVE_KEYS[:4])),
        "dictionary_learning": len(set(state) & set(_DL_KEYS[:4])),
        "wdec": len(set(state) & set(_WDEC_KEYS)),
    }
    layout = max(overlap, key=overlap.get)
    if overlap[layout] == 0:
        raise CrossCoderLoadError(
            f"{source}: unrecognised key layout {sorted(state)[:12]}; fix: expected probebench "
            f"{list(_NATIVE_KEYS[:4])}, dictionary_learning {list(_DL_KEYS[:4])} or {list(_WDEC_KEYS)} + cfg.json"
        )
    if layout == "native":
        return load_native_state(state, **kw)
    if layout == "dictionary_learning":
        return load_dictionary_learning_state(state, **kw)
    if cfg_path is None:
        raise CrossCoderLoadError(
            f"{source}: the W_enc/W_dec layout needs cfg.json (k, scale factors) next to it; fix: put cfg.json in {weights_path.parent}"
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CrossCoderLoadError(f"{cfg_path}: not valid JSON ({exc}); fix: repair or re-download it") from exc
    if not isinstance(cfg, dict):
        raise CrossCoderLoadError(f"{cfg_path}: holds a {type(cfg).__name__}, not an object; fix: write a JSON object")
    return load_wdec_layout(state, cfg, **kw)


# ====================================================================== latent statistics
@torch.no_grad()
def firing_frequency(cc: BatchTopKCrossCoder, acts_NMD: torch.Tensor | np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """[F] fraction of rows of acts_NMD (raw) on which each latent is active (threshold rule).

    Example:
        >>> freq_F = firing_frequency(cc, acts_NMD, batch_size=512)
    """
    acts = torch.as_tensor(acts_NMD)
    assert acts.ndim == 3 and acts.shape[0] > 0, f"acts_NMD has shape {tuple(acts.shape)}, expected non-empty (N, M, D)"
    assert batch_size > 0, f"batch_size={batch_size} must be a positive integer"
    assert cc.threshold_estimated, f"threshold={float(cc.threshold)} is not estimated; firing frequency needs the inference rule"
    counts_F = torch.zeros(cc.n_latents, dtype=torch.float64)
    for start in range(0, acts.shape[0], batch_size):
        f_BF = cc.encode(acts[start : start + batch_size], use_threshold=True)
        counts_F += (f_BF != 0).sum(0).double()
    return (counts_F / acts.shape[0]).numpy()


def latent_table(cc: BatchTopKCrossCoder, *, firing_frequency_F: np.ndarray | None = None) -> pd.DataFrame:
    """One row per latent: latent, decoder_cosine, relative_norm, norm_0, norm_1, firing_frequency.

    Norms are in crosscoder space (see `relative_norm`); firing_frequency is NaN if not given.

    Example:
        >>> table = latent_table(cc, firing_frequency_F=firing_frequency(cc, acts_NMD))
    """
    assert cc.n_models == 2, f"latent_table needs n_models=2, got {cc.n_models}"
    norms_FM = cc.decoder_norms().double().cpu().numpy()
    if firing_frequency_F is None:
        freq = np.full(cc.n_latents, np.nan)
    else:
        freq = np.asarray(firing_frequency_F, dtype=np.float64)
        assert freq.shape == (cc.n_latents,), f"firing_frequency_F has shape {freq.shape}, expected ({cc.n_latents},)"
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


def select_shared_latents(
    table: pd.DataFrame,
    *,
    rel_norm_band: tuple[float, float] = (0.3, 0.7),
    top_k: int = 80,
    min_frequency: float = 0.0,
) -> list[int]:
    """Shared latents: lo <= relative_norm <= hi and firing_frequency >= min_frequency,
    ranked by firing frequency (descending, ties by latent index), first top_k.

    Rows with NaN relative norm or frequency are never selected.

    Example:
        >>> select_shared_latents(table, rel_norm_band=(0.3, 0.7), top_k=80)
    """
    lo, hi = rel_norm_band
    assert lo <= hi, f"rel_norm_band={rel_norm_band} must be (low, high) with low <= high"
    assert top_k >= 0, f"top_k={top_k} must be >= 0"
    missing = {"latent", "relative_norm", "firing_frequency"} - set(table.columns)
    assert not missing, f"table lacks column(s) {sorted(missing)}; build it with latent_table"
    rel = table["relative_norm"].to_numpy(dtype=np.float64)
    freq = table["firing_frequency"].to_numpy(dtype=np.float64)
    latent = table["latent"].to_numpy(dtype=np.int64)
    assert not np.isnan(freq).all() or len(freq) == 0, (
        "firing_frequency is all NaN; pass firing_frequency_F to latent_table to rank latents"
    )
    keep = (rel >= lo) & (rel <= hi) & (freq >= min_frequency)
    latent, freq = latent[keep], freq[keep]
    order = np.lexsort((latent, -freq))  # last key is primary: frequency desc, then index asc
    return [int(i) for i in latent[order][:top_k]]
