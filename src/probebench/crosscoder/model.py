"""Crosscoder models: one in-memory representation per activation rule (BatchTopK, ReLU).

A crosscoder reads the same token's activations in M models (base, IT) and writes one
sparse code f_BF that reconstructs all of them:

    pre_BF  = relu(sum_m (x_m / s_m) @ W_enc[m] + b_enc)
    f_BF    = pre_BF * keep_BF          (keep: BatchTopK / threshold, or all for ReLU)
    x_hat_m = (f_BF @ W_dec[:, m] + b_dec[m]) * s_m

Shape suffixes: B batch, M models, D d_model, F latents, L selected latents.

Scale convention (used everywhere in this package): ``input_scale_M[m]`` is a DIVISOR.
``acts_BMD[:, m] / input_scale_M[m]`` is what the weights see, and ``decode`` multiplies
by it again, so raw activations go in and raw activations come out. Loaders translate a
checkpoint's own convention into this one (see `probebench.crosscoder.loading`).

Example:
    >>> cc = ReLUCrossCoder(d_model=4, n_latents=8)
    >>> with torch.no_grad():
    ...     _ = cc.W_enc_MDF.fill_(0.1), cc.W_dec_FMD.fill_(0.5)
    >>> f_BF = cc.encode(torch.ones(3, 2, 4)).detach()    # relu(8 * 0.1) = 0.8 everywhere
    >>> round(float(f_BF[0, 0]), 6), tuple(cc.decode(f_BF).shape)
    (0.8, (3, 2, 4))
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save as _st_save_bytes

from probebench.errors import ProbebenchError
from probebench.artifacts.io import atomic_write_bytes

__all__ = ["CrossCoder", "BatchTopKCrossCoder", "ReLUCrossCoder", "CrossCoderError"]


class CrossCoderError(ProbebenchError):
    """Bad input to a crosscoder (shape, hyperparameter, unestimated threshold); one line, with the fix."""


def _positive_int(name: str, value: int) -> int:
    if int(value) != value or value <= 0:
        raise CrossCoderError(f"{name}={value} must be a positive integer")
    return int(value)


class CrossCoder(nn.Module):
    """Shared part of every crosscoder: weights, decoder geometry, persistence.

    Subclasses define `activation` = the rule that turns pre-activations into the code.
    A bare constructor is a zero-filled container (every latent silent) that
    `train_crosscoder` or a loader fills; it consumes no random state.
    """

    kind = "abstract"

    def __init__(self, d_model: int, n_latents: int, n_models: int = 2):
        super().__init__()
        self.d_model = _positive_int("d_model", d_model)
        self.n_latents = _positive_int("n_latents", n_latents)
        self.n_models = _positive_int("n_models", n_models)
        self.W_enc_MDF = nn.Parameter(torch.zeros(n_models, d_model, n_latents))
        self.b_enc_F = nn.Parameter(torch.zeros(n_latents))
        self.W_dec_FMD = nn.Parameter(torch.zeros(n_latents, n_models, d_model))
        self.b_dec_MD = nn.Parameter(torch.zeros(n_models, d_model))
        self.register_buffer("input_scale_M", torch.ones(n_models, dtype=torch.float32))

    # ------------------------------------------------------------------ core
    def _normalize(self, acts_BMD: torch.Tensor) -> torch.Tensor:
        if acts_BMD.ndim != 3 or tuple(acts_BMD.shape[1:]) != (self.n_models, self.d_model):
            raise CrossCoderError(
                f"acts_BMD has shape {tuple(acts_BMD.shape)}, expected (B, {self.n_models}, {self.d_model}); "
                "fix: stack both models' activations of the same tokens on dim 1"
            )
        return acts_BMD.to(self.W_enc_MDF.dtype) / self.input_scale_M[:, None]

    def _pre(self, x_BMD: torch.Tensor) -> torch.Tensor:
        """ReLU pre-activations of NORMALIZED inputs (x / input_scale)."""
        return torch.relu(torch.einsum("bmd,mdf->bf", x_BMD, self.W_enc_MDF) + self.b_enc_F)

    def encode(self, acts_BMD: torch.Tensor, **kw) -> torch.Tensor:
        """Raw activations [B, M, D] -> latent activations f_BF [B, F]."""
        raise NotImplementedError

    def _decode_normalized(self, f_BF: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bf,fmd->bmd", f_BF, self.W_dec_FMD) + self.b_dec_MD

    def decode(self, f_BF: torch.Tensor) -> torch.Tensor:
        """Latents f_BF [B, F] -> raw activations [B, M, D] (input scale multiplied back)."""
        if f_BF.ndim != 2 or f_BF.shape[1] != self.n_latents:
            raise CrossCoderError(f"f_BF has shape {tuple(f_BF.shape)}, expected (B, {self.n_latents})")
        return self._decode_normalized(f_BF.to(self.W_dec_FMD.dtype)) * self.input_scale_M[:, None]

    def forward(self, acts_BMD: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(acts_BMD))

    # ------------------------------------------------------------------ decoder geometry
    def _need_two(self, what: str) -> None:
        if self.n_models != 2:
            raise CrossCoderError(f"{what} needs n_models=2 (base/IT), got {self.n_models}")

    @torch.no_grad()
    def decoder_norms(self) -> torch.Tensor:
        """[F, M] norms of each latent's per-model decoder vector (crosscoder space)."""
        return self.W_dec_FMD.norm(dim=-1)

    @torch.no_grad()
    def decoder_cosine(self) -> torch.Tensor:
        """[F] cosine between model 0 and model 1 decoder vectors; NaN if either is zero.

        Invariant to input_scale_M (a per-model scalar does not change a cosine).
        """
        self._need_two("decoder_cosine")
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
        self._need_two("relative_norm")
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

        The key set says which rule it is (k and threshold only for BatchTopK), so
        `load_crosscoder` reads it back into the same class.

        Example:
            >>> import tempfile
            >>> from probebench.crosscoder import load_crosscoder
            >>> path = Path(tempfile.mkdtemp()) / "cc.safetensors"
            >>> BatchTopKCrossCoder(d_model=4, n_latents=8, k=2).save(path)
            >>> type(load_crosscoder(path)).__name__
            'BatchTopKCrossCoder'
        """
        state = {name: t.detach().cpu().contiguous().clone() for name, t in self.state_dict().items()}
        atomic_write_bytes(path, _st_save_bytes(state))

    def _fill(self, *, W_enc_MDF, b_enc_F, W_dec_FMD, b_dec_MD, input_scale_M=None) -> "CrossCoder":
        with torch.no_grad():
            # float32 regardless of the stored dtype: cosines of bf16 vectors are noisy
            self.W_enc_MDF.copy_(W_enc_MDF.float())
            self.b_enc_F.copy_(b_enc_F.float())
            self.W_dec_FMD.copy_(W_dec_FMD.float())
            self.b_dec_MD.copy_(b_dec_MD.float())
            if input_scale_M is not None:
                self.input_scale_M.copy_(input_scale_M.float())
        return self.eval()


class ReLUCrossCoder(CrossCoder):
    """Crosscoder trained with an L1 penalty: f = relu(pre), every latent may fire.

    The layout `W_enc [2, D, F], W_dec [F, 2, D], b_enc, b_dec + cfg.json` (no k, no
    threshold) is this model.

    Example:
        >>> ReLUCrossCoder(d_model=16, n_latents=64).encode(torch.randn(3, 2, 16)).shape
        torch.Size([3, 64])
    """

    kind = "relu"

    def encode(self, acts_BMD: torch.Tensor, **_ignored) -> torch.Tensor:
        # `use_threshold` etc. are accepted and ignored so callers need not know the rule
        return self._pre(self._normalize(acts_BMD))


class BatchTopKCrossCoder(CrossCoder):
    """Crosscoder with a BatchTopK activation over decoder-norm-weighted scores.

    score_BF = pre_BF * sum_m ||W_dec[f, m]||
    training (or use_threshold=False): keep the top k*B scores of the flattened batch;
    inference (eval mode, threshold estimated): keep score > threshold.

    k, threshold and input_scale_M are buffers, so a saved state dict describes itself.
    ``threshold < 0`` (or non-finite) means "not estimated yet".

    Example:
        >>> cc = BatchTopKCrossCoder(d_model=16, n_latents=64, k=4).eval()
        >>> cc.threshold_estimated
        False
        >>> cc.encode(torch.randn(3, 2, 16)).shape   # falls back to BatchTopK
        torch.Size([3, 64])
    """

    kind = "batchtopk"

    def __init__(self, d_model: int, n_latents: int, k: int, n_models: int = 2):
        super().__init__(d_model, n_latents, n_models)
        if int(k) != k or not 0 < k <= n_latents:
            raise CrossCoderError(f"k={k} must be a positive integer <= n_latents={n_latents}")
        self.register_buffer("k", torch.tensor(int(k), dtype=torch.int64))
        self.register_buffer("threshold", torch.tensor(-1.0, dtype=torch.float32))

    @property
    def threshold_estimated(self) -> bool:
        t = float(self.threshold)
        return math.isfinite(t) and t >= 0.0

    def _pre_and_score(self, x_BMD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-activations and selection scores of NORMALIZED inputs (x / input_scale)."""
        pre_BF = self._pre(x_BMD)
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
            if not self.threshold_estimated:
                raise CrossCoderError(
                    f"threshold={float(self.threshold)} is not estimated; fix: train longer, load a "
                    "checkpoint with a threshold, or pass use_threshold=False"
                )
            mask_BF = score_BF > self.threshold
        else:
            mask_BF = self._batch_topk_mask(score_BF)
        return pre_BF * mask_BF
