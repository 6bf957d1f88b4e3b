"""Training a BatchTopK crosscoder on paired activations, deterministically on CPU.

The decoder initialization is a choice the audit must be able to vary: with
``decoder_init="independent"`` each model's decoder half starts from its own random
directions (cosine ~0 at step 0), with ``"shared"`` both halves start identical (cosine 1).
An under-trained crosscoder remembers its initialization, so its decoder cosines say more
about the init than about the models; two trainings that differ only in this choice and
agree on the median cosine are evidence that training, not init, set it (docs/design.md §8).

Shape suffixes: B batch, M models, D d_model, F latents, N dataset rows.

Example:
    >>> acts_NMD = torch.randn(512, 2, 16)                  # paired base/IT activations
    >>> cc, metrics = train_crosscoder(acts_NMD, n_latents=32, k=4, steps=20,
    ...                                batch_size=128, lr=1e-2, seed=0)
    >>> cc.decode(cc.encode(acts_NMD[:8])).shape
    torch.Size([8, 2, 16])
    >>> sorted(metrics)[:3]
    ['dead_fraction', 'dead_fraction_train', 'decoder_init']
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from probebench.crosscoder.model import BatchTopKCrossCoder, CrossCoderError

__all__ = ["train_crosscoder", "DECODER_INITS"]

DECODER_INITS = ("independent", "shared")


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


def _check_args(acts: torch.Tensor, *, n_latents, k, steps, batch_size, threshold_beta, dead_after_steps,
                lr_decay_start, decoder_init) -> None:
    if acts.ndim != 3 or acts.shape[0] == 0:
        raise CrossCoderError(f"acts_NMD has shape {tuple(acts.shape)}, expected non-empty (N, M, D)")
    if not bool(torch.isfinite(acts).all()):
        raise CrossCoderError("acts_NMD holds NaN/inf; fix: check the model's activations (dtype overflow?)")
    problems = [
        (steps >= 0, f"steps={steps} must be >= 0"),
        (batch_size > 0, f"batch_size={batch_size} must be a positive integer"),
        (0 < k <= n_latents, f"k={k} must be a positive integer <= n_latents={n_latents}"),
        (0.0 <= threshold_beta < 1.0, f"threshold_beta={threshold_beta} must be in [0, 1)"),
        (dead_after_steps > 0, f"dead_after_steps={dead_after_steps} must be a positive integer"),
        (0.0 <= lr_decay_start <= 1.0, f"lr_decay_start={lr_decay_start} must be a fraction in [0, 1]"),
        (decoder_init in DECODER_INITS, f"decoder_init={decoder_init!r} must be one of {DECODER_INITS}"),
    ]
    for ok, message in problems:
        if not ok:
            raise CrossCoderError(message)


@torch.no_grad()
def _refit_decoder(cc: BatchTopKCrossCoder, x_all: torch.Tensor, batch_size: int) -> None:
    """Replace W_dec, b_dec by their least-squares optimum given the codes (inference rule).

    The reconstruction loss is quadratic in the decoder for fixed codes, so this is where Adam
    would end after infinitely many steps: the decoder keeps no memory of its initialization
    (identical inputs give identical halves). A ridge of 1e-6 x the mean code energy only keeps
    the solve stable; a latent that never fires gets a zero decoder (it stays silent).
    """
    N, M, D = x_all.shape
    F = cc.n_latents
    G = torch.zeros(F + 1, F + 1, dtype=torch.float64)
    C = torch.zeros(F + 1, M * D, dtype=torch.float64)
    for start in range(0, N, batch_size):
        x = x_all[start : start + batch_size]
        pre_BF, score_BF = cc._pre_and_score(x)
        f1 = torch.cat([pre_BF * (score_BF > cc.threshold), torch.ones(len(x), 1)], dim=1).double()
        G += f1.T @ f1
        C += f1.T @ x.reshape(len(x), M * D).double()
    G += torch.eye(F + 1, dtype=torch.float64) * 1e-6 * float(G.diagonal()[:F].mean().clamp_min(1e-12))
    W = torch.linalg.solve(G, C)                                      # [F + 1, M * D]
    cc.W_dec_FMD.copy_(W[:F].reshape(F, M, D).float())
    cc.b_dec_MD.copy_(W[F].reshape(M, D).float())


@torch.no_grad()
def _threshold_for_l0(cc: BatchTopKCrossCoder, x_all: torch.Tensor, batch_size: int, mean_l0: float) -> float:
    """The threshold whose inference rule keeps `mean_l0` latents per row on x_all (decoder norms
    enter the score, so a refit decoder needs its own threshold to keep the trained sparsity)."""
    scores = torch.cat([cc._pre_and_score(x_all[s : s + batch_size])[1].flatten() for s in range(0, len(x_all), batch_size)])
    n_keep = int(round(mean_l0 * len(x_all)))
    positive = scores[scores > 0]
    if n_keep <= 0 or positive.numel() == 0:
        return float(cc.threshold)
    return float(positive.topk(min(n_keep, positive.numel())).values[-1]) * (1 - 1e-6)


def _rel_norm_spread(cc: BatchTopKCrossCoder) -> float:
    rel = cc.relative_norm().double().numpy()
    rel = rel[np.isfinite(rel)]
    return float(np.quantile(rel, 0.95) - np.quantile(rel, 0.05)) if rel.size else float("nan")


def train_crosscoder(
    acts_NMD: torch.Tensor | np.ndarray,
    *,
    n_latents: int,
    k: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    decoder_init: str = "independent",
    lr_decay_start: float = 0.8,
    refit_decoder: bool = True,
    aux_k: int | None = None,
    aux_coef: float = 1 / 32,
    dead_after_steps: int = 1000,
    threshold_beta: float = 0.999,
    threshold_start_step: int | None = None,
    exclude_dims: Sequence[int] = (),
    progress: bool = False,
) -> tuple[BatchTopKCrossCoder, dict[str, Any]]:
    """Train a BatchTopK crosscoder on paired activations [N, M, D]; deterministic on CPU.

    - input_scale_M[m] = sqrt(mean_n ||x_nm||^2 / D), so x / s has mean squared norm D.
    - W_dec rows unit norm per (latent, model): `decoder_init="independent"` draws each
      model's rows separately, `"shared"` copies model 0's rows to every model.
      W_enc = W_dec^T, b_dec = mean of the normalized data, b_enc = 0. Decoder norms are
      NOT constrained (relative norms must stay free to be informative).
    - Adam; lr constant, then linear decay to 0 over the last (1 - lr_decay_start) of the
      steps (as dictionary_learning's trainers do).
    - refit_decoder (default): after Adam, W_dec and b_dec are replaced by their exact
      least-squares optimum given the final codes, twice, re-estimating the threshold in
      between so the trained mean L0 is kept. Adam moves the two decoder halves' difference
      slowly (measured on the zoo: 2000 steps left (base, base) decoder cosines as low as 0.09);
      the refit removes the decoder's memory of its initialization. The encoder keeps its own,
      which the independent-vs-shared-init comparison of the audit measures.
    - loss = sum over models of the squared error (mean over batch)
      + aux_coef * AuxK loss: latents that have not fired for `dead_after_steps` steps
      reconstruct the (detached) residual with their top `aux_k` pre-activations per row,
      normalized by the residual's variance (BatchTopK SAE paper; aux_k defaults to D // 2).
    - threshold: from `threshold_start_step` (default min(1000, steps // 2)), an EMA with
      `threshold_beta` of the minimum positive score selected by BatchTopK in each batch;
      the first value is taken as is (no bias towards the -1 "unset" value).

    - exclude_dims: residual dimensions the crosscoder neither reads nor writes (a real model's
      massive activations: a few dims of ~5000 would set the input scale and most of the loss).
      They are zeroed in the data before the scale is taken, and the encoder rows, decoder
      columns and decoder bias on them start at zero and stay there (their gradients are zero),
      so every latent's decoder direction avoids them and encoding ignores them.

    Metrics (computed on `acts_NMD` outside `exclude_dims`, eval mode, threshold rule): variance_explained
    (list, per model), mean_l0, dead_fraction (never fires on the data),
    dead_fraction_train (did not fire in the last `dead_after_steps` steps),
    initial_loss / final_loss (the training loss of the first / last batch), threshold,
    rel_norm_spread_init / rel_norm_spread (5-95% quantile range of the relative decoder
    norm over all latents at step 0 / at the end), decoder_init, excluded_dims.

    Example:
        >>> cc, m = train_crosscoder(torch.randn(512, 2, 8), n_latents=16, k=2, steps=20,
        ...                          batch_size=64, lr=3e-3, seed=0, decoder_init="shared")
        >>> m["rel_norm_spread_init"], len(m["variance_explained"])
        (0.0, 2)
        >>> x = torch.randn(512, 2, 8); x[:, :, 3] += 500.0    # one massive dimension
        >>> cc, m = train_crosscoder(x, n_latents=16, k=2, steps=20, batch_size=64, lr=3e-3, seed=0,
        ...                          exclude_dims=[3])
        >>> float(cc.W_dec_FMD[..., 3].abs().max()), float(cc.W_enc_MDF[:, 3].abs().max()), m["excluded_dims"]
        (0.0, 0.0, [3])
    """
    acts = torch.as_tensor(acts_NMD).to(torch.float32)
    excluded = sorted({int(d) for d in exclude_dims})
    if excluded and not 0 <= excluded[0] <= excluded[-1] < acts.shape[-1]:
        raise CrossCoderError(f"exclude_dims {excluded} must be dimensions of the activations (0..{acts.shape[-1] - 1})")
    if excluded:
        acts = acts.clone()
        acts[..., excluded] = 0.0
    _check_args(acts, n_latents=n_latents, k=k, steps=steps, batch_size=batch_size, threshold_beta=threshold_beta,
                dead_after_steps=dead_after_steps, lr_decay_start=lr_decay_start, decoder_init=decoder_init)
    N, M, D = acts.shape
    aux_k = D // 2 if aux_k is None else int(aux_k)
    if aux_k <= 0:
        raise CrossCoderError(f"aux_k={aux_k} must be a positive integer")
    if threshold_start_step is None:
        threshold_start_step = min(1000, steps // 2)

    gen = torch.Generator().manual_seed(int(seed))
    sq_norm_M = (acts.double() ** 2).sum(-1).mean(0)
    scale_M = torch.sqrt(sq_norm_M / D).float()
    if not bool((scale_M > 0).all()):
        raise CrossCoderError(f"a model's activations are all zero (scales {scale_M.tolist()}); fix: check the layer")
    x_all = acts / scale_M[:, None]

    cc = BatchTopKCrossCoder(d_model=D, n_latents=n_latents, k=k, n_models=M)
    with torch.no_grad():
        W_dec = torch.randn(n_latents, M, D, generator=gen)
        if decoder_init == "shared":
            W_dec[:] = W_dec[:, :1]
        W_dec[..., excluded] = 0.0
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        cc.W_dec_FMD.copy_(W_dec)
        cc.W_enc_MDF.copy_(W_dec.permute(1, 2, 0))
        cc.b_dec_MD.copy_(x_all.mean(0))
        cc.input_scale_M.copy_(scale_M)
    spread_init = _rel_norm_spread(cc)
    cc.train()
    opt = torch.optim.Adam(cc.parameters(), lr=lr)
    decay_from = int(lr_decay_start * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < decay_from else max(0.0, (steps - s) / max(1, steps - decay_from)))

    steps_since_fired_F = torch.zeros(n_latents, dtype=torch.long)
    threshold: float | None = None
    initial_loss = final_loss = float("nan")
    perm = torch.randperm(N, generator=gen)
    cursor = 0

    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress()
        task = bar.add_task(f"crosscoder ({decoder_init} init)", total=steps)
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
            sched.step()

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
    if refit_decoder and cc.threshold_estimated:
        _, l0_trained, _ = _variance_explained_M(cc, acts, batch_size)
        for _ in range(2):  # refit, re-estimate the threshold for the trained L0, refit on those codes
            _refit_decoder(cc, x_all, batch_size)
            cc.threshold.fill_(_threshold_for_l0(cc, x_all, batch_size, l0_trained))
    with torch.no_grad():  # already zero (no gradient reaches them); exactly zero whatever the refit's rounding
        cc.W_enc_MDF[:, excluded] = 0.0
        cc.W_dec_FMD[..., excluded] = 0.0
        cc.b_dec_MD[:, excluded] = 0.0
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
        "decoder_init": decoder_init,
        "rel_norm_spread_init": spread_init,
        "rel_norm_spread": _rel_norm_spread(cc),
        "excluded_dims": excluded,
    }
    return cc, metrics
