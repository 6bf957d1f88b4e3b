"""Directional ablation and its effect on the token margin, K directions per forward pass.

Ablating unit direction u at block L's output (resid_post):
    projection:  h <- h - (h.u) u              mean:  h <- h - (h.u - mu) u   (mu = train mean of h.u)
at all positions or only the readout token, at block L only (`single`) or at every block from
L to the last (`from_layer`). The effect is read at the readout token:
    delta = margin_ablated - margin_clean,  margin = logit(pos) - logit(neg)
(token-margin normalization: a shift applied to every logit cancels).

Two engines give the same numbers (tested to 1e-4 on every zoo architecture):
- `hooks`: the obvious way, a full forward per direction batch with a forward hook at block L.
- `prefix` (default): blocks 0..L are identical for the clean run and every ablated run, so they
  run once per prompt batch; for each direction batch blocks 0..L are swapped for stubs that
  hand over the cached (ablated) block-L residual, and only blocks L+1.. run. The model's own
  forward still builds masks and rotary/learned positions, so this works across architectures.

    >>> spec = AblationSpec(mode="projection", positions="all", layers="single")
    >>> out = ablation_effects(model, tok, test_prompts, layer=1, dirs_KD=dirs, spec=spec)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from probebench.errors import ProbebenchError
from probebench.models.extract import (
    PromptBatch,
    SharedPrefix,
    check_finite,
    class_token_ids,
    drop_shared_prefix,
    encode_prompts,
    expand_cache,
    margin_stats,
    prefix_cache,
    prefix_cache_enabled,
    readout_only_logits,
    shared_prefix,
)
from probebench.models.load import block_output, decoder_blocks, hooks, replace_block_output

# The modules whose code computes an effect (tokenizing, the readout position, hooks, batching of
# directions, the margin): a hash of their source is part of every cell-store key, so an edit to
# any of them recomputes the cells instead of trusting a hand-bumped version.
MEASURING_MODULES = ("load.py", "extract.py", "ablate.py")


def measuring_code_hash(root: Path = Path(__file__).parent) -> str:
    """sha256 over the measuring modules' source (line endings normalized, so a checkout with CRLF
    endings keys the same cells)."""
    digest = hashlib.sha256()
    for name in MEASURING_MODULES:
        digest.update(name.encode() + b"\0" + (root / name).read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return digest.hexdigest()


EFFECT_CODE_HASH = measuring_code_hash()


class AblationError(ProbebenchError):
    """An ablation that cannot be run as configured."""


@dataclass(frozen=True)
class AblationSpec:
    """mode: projection | mean. positions: all | readout. layers: single | from_layer.
    edit_special: also edit the tokenizer's special tokens (BOS). Off by default: BOS is the
    attention sink of real models and carries activations orders of magnitude above the rest
    (Gemma-3-270M block 8: norm ~83000 at BOS, ~6300 elsewhere), so projecting anything out of it
    moves every later token; no probe reads the concept there."""

    mode: Literal["projection", "mean"] = "projection"
    positions: Literal["all", "readout"] = "all"
    layers: Literal["single", "from_layer"] = "single"
    edit_special: bool = False

    def __post_init__(self):
        if self.mode not in ("projection", "mean"):
            raise AblationError(f"ablation mode {self.mode!r}: use projection or mean")
        if self.positions not in ("all", "readout"):
            raise AblationError(f"ablation positions {self.positions!r}: use all or readout")
        if self.layers not in ("single", "from_layer"):
            raise AblationError(f"ablation layers {self.layers!r}: use single or from_layer")
        if self.mode == "mean" and self.layers == "from_layer":
            # mu is the train mean of h.u at the checkpoint layer; other layers have other means.
            raise AblationError("mean ablation needs a per-layer mean; use layers: single, or mode: projection")

    def to_dict(self) -> dict:
        return asdict(self)


def ablate_resid(resid_KBPD: torch.Tensor, dirs_KD: torch.Tensor, mus_K: torch.Tensor | None,
                 edit_BP: torch.Tensor | None) -> torch.Tensor:
    """Remove each direction's component (or its deviation from mu) from the residual.

    Returns a new tensor; `edit_BP` (0/1 or bool) restricts the edit to those positions (None: all).
    """
    coef_KBP = torch.einsum("kbpd,kd->kbp", resid_KBPD, dirs_KD)
    if mus_K is not None:
        coef_KBP = coef_KBP - mus_K[:, None, None]
    if edit_BP is not None:
        coef_KBP = coef_KBP * edit_BP.to(coef_KBP.dtype)
    return resid_KBPD - coef_KBP[..., None] * dirs_KD[:, None, None, :]


def edit_positions(batch: PromptBatch, spec: AblationSpec) -> torch.Tensor | None:
    """[B, P] mask of the positions an ablation edits: the readout only, or every position except
    the special tokens unless `spec.edit_special` (None: every position)."""
    if spec.positions == "readout":
        only_BP = torch.zeros(batch.ids_BP.shape, dtype=torch.bool, device=batch.ids_BP.device)
        only_BP[torch.arange(len(batch.readout_B)), batch.readout_B] = True
        return only_BP
    return None if spec.edit_special else ~batch.special_BP


class _Passthrough(torch.nn.Module):
    """Stands in for a block below the checkpoint: returns its input unchanged."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.as_tuple else hidden_states


class _Inject(_Passthrough):
    """Stands in for block L: returns the cached, already-ablated block-L residual."""

    def __init__(self, as_tuple: bool):
        super().__init__(as_tuple)
        self.resid: torch.Tensor | None = None

    def forward(self, hidden_states, *args, **kwargs):
        assert self.resid is not None and self.resid.shape[:2] == hidden_states.shape[:2], \
            f"cached residual {None if self.resid is None else tuple(self.resid.shape)} does not match the batch"
        return (self.resid,) if self.as_tuple else self.resid


@contextlib.contextmanager
def prefix_stubs(model: PreTrainedModel, layer: int, as_tuple: bool) -> Iterator[_Inject]:
    """Swap blocks 0..layer for stubs (restored in `finally`)."""
    blocks = decoder_blocks(model)
    saved = [blocks[i] for i in range(layer + 1)]
    inject = _Inject(as_tuple)
    try:
        for i in range(layer):
            blocks[i] = _Passthrough(as_tuple)
        blocks[layer] = inject
        yield inject
    finally:
        for i, block in enumerate(saved):
            blocks[i] = block


# On CPU, passes of more than a few thousand tokens run slower per FLOP (measured in
# benchmarks/ablation.py: 1 direction x 64 prompts per pass beat 16 x 64 by 1.35x).
CPU_TOKENS_PER_PASS = 2048


def direction_batch_size(model: PreTrainedModel, batch: PromptBatch, n_dirs: int, budget_bytes: float) -> int:
    """How many directions share one pass: activations scale with k * B * P * d_model, bounded by
    `budget_bytes`; on CPU also by CPU_TOKENS_PER_PASS."""
    width = _width(model)
    tokens = batch.ids_BP.numel()
    per_dir = tokens * width * 16 * 4  # ~16 live activations of width D per token, fp32
    k = min(n_dirs, budget_bytes // max(per_dir, 1))
    if batch.ids_BP.device.type == "cpu":
        k = min(k, CPU_TOKENS_PER_PASS // max(tokens, 1))
    return int(max(1, k))


@torch.no_grad()
def ablation_effects(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: pd.DataFrame, *,
                     layer: int, dirs_KD: np.ndarray, spec: AblationSpec, mus_K: np.ndarray | None = None,
                     engine: Literal["prefix", "hooks"] = "prefix", batch_size: int = 64,
                     memory_budget_bytes: float = 2e9, where: str = "",
                     progress: Callable[[int], None] | None = None, prefix: str = "") -> dict[str, np.ndarray]:
    """Clean and ablated readouts for K directions on the prompts (in their order), each prompt
    after the model's framing `prefix` (see `encode_prompts`).

    Returns float32 arrays: `clean_{margin,logit_pos,logprob_pos}_N` and
    `ablated_{margin,logit_pos,logprob_pos}_KN`. Directions are normalized to unit length.
    """
    if engine not in ("prefix", "hooks"):
        raise AblationError(f"engine {engine!r}: use prefix or hooks")
    dirs_KD = np.asarray(dirs_KD, dtype=np.float64)
    if dirs_KD.ndim != 2:
        raise AblationError(f"{where}: directions must be [K, D], got shape {dirs_KD.shape}")
    norms_K = np.linalg.norm(dirs_KD, axis=1)
    if not np.all(np.isfinite(dirs_KD)) or np.any(norms_K == 0):
        raise AblationError(f"{where}: a direction is zero or non-finite; check the probe / transfer")
    if spec.mode == "mean" and (mus_K is None or len(mus_K) != len(dirs_KD)):
        raise AblationError(f"{where}: mean ablation needs one train mean of h.u per direction")
    device, dtype = _device_dtype(model)
    units_KD = torch.tensor(dirs_KD / norms_K[:, None], dtype=dtype, device=device)
    if units_KD.shape[1] != _width(model):
        raise AblationError(f"{where}: directions have d={units_KD.shape[1]} but the model's d_model is {_width(model)}")
    mus = None if spec.mode == "projection" else torch.tensor(np.asarray(mus_K), dtype=dtype, device=device)
    blocks = decoder_blocks(model)

    def make_resid(resid_BPD, batch, rows, k0, k):
        chunk_mus = None if mus is None else mus[k0: k0 + k]
        return ablate_resid(resid_BPD.unsqueeze(0).expand(k, -1, -1, -1), units_KD[k0: k0 + k], chunk_mus,
                            edit_positions(batch, spec))

    def make_hooks(batch, k0, k):
        B, dirs = batch.ids_BP.shape[0], units_KD[k0: k0 + k]
        where_BP = edit_positions(batch, spec)
        # Later blocks re-apply the projection when ablating from the layer onwards.
        later = [(blocks[i], _edit_hook(dirs, None, where_BP, B)) for i in range(layer + 1, len(blocks))] \
            if spec.layers == "from_layer" else []
        if engine == "hooks":
            chunk_mus = None if mus is None else mus[k0: k0 + k]
            return [(blocks[layer], _edit_hook(dirs, chunk_mus, where_BP, B)), *later]
        return later

    def make_prefix_hooks(shared: SharedPrefix, k0, k):
        """Hooks that edit the shared framing prefix for directions k0..k0+k (rows: one per
        direction), or None when the spec leaves the prefix alone (the readout is in the task text)."""
        if spec.positions == "readout":
            return None
        dirs = units_KD[k0: k0 + k]
        edit_1P = None if spec.edit_special else ~shared.special_P[None].to(device)
        edited = range(layer, len(blocks)) if spec.layers == "from_layer" else (layer,)
        return [(blocks[i], _edit_hook(dirs, None, edit_1P, 1)) for i in edited]

    return _edit_passes(model, tokenizer, prompts, layer=layer, n_edits=len(units_KD),
                        make_resid=make_resid if engine == "prefix" else None, make_hooks=make_hooks,
                        batch_size=batch_size, memory_budget_bytes=memory_budget_bytes, where=where, progress=progress,
                        prefix=prefix, make_prefix_hooks=make_prefix_hooks)


@torch.no_grad()
def readout_edit_effects(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: pd.DataFrame, *,
                         layer: int, edits_KND: np.ndarray, batch_size: int = 64, memory_budget_bytes: float = 2e9,
                         where: str = "", progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Subtract a per-prompt vector from block `layer`'s output at the readout token, K edits
    (e.g. a crosscoder latent's contribution f_j(x) d_j). Same outputs as `ablation_effects` plus
    `kl_KN` = KL(ablated || clean) of the next-token distribution at the readout."""
    edits_KND = np.asarray(edits_KND)
    if edits_KND.ndim != 3 or edits_KND.shape[1] != len(prompts) or edits_KND.shape[2] != _width(model):
        raise AblationError(f"{where}: edits must be [K, N={len(prompts)}, D={_width(model)}], got {edits_KND.shape}")
    device, dtype = _device_dtype(model)
    edits = torch.tensor(edits_KND, dtype=dtype, device=device)

    def make_resid(resid_BPD, batch, rows, k0, k):
        resid_kBPD = resid_BPD.unsqueeze(0).repeat(k, 1, 1, 1)
        b = torch.arange(resid_BPD.shape[0], device=device)
        resid_kBPD[:, b, batch.readout_B] = resid_kBPD[:, b, batch.readout_B] - edits[k0: k0 + k, rows]
        return resid_kBPD

    return _edit_passes(model, tokenizer, prompts, layer=layer, n_edits=len(edits), make_resid=make_resid,
                        make_hooks=lambda batch, k0, k: [], batch_size=batch_size,
                        memory_budget_bytes=memory_budget_bytes, where=where, progress=progress, with_kl=True)


def _device_dtype(model: PreTrainedModel) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def _edit_passes(model, tokenizer, prompts, *, layer, n_edits, make_resid, make_hooks, batch_size,
                 memory_budget_bytes, where, progress, with_kl=False, prefix: str = "",
                 make_prefix_hooks=None) -> dict[str, np.ndarray]:
    """The shared loop: per prompt batch one clean pass (capturing block `layer`'s output), then
    per chunk of edits either the suffix only with the edited residual injected (`make_resid`,
    prefix reuse) or a full forward with the edit hooks (`make_resid=None`).

    With a framing `prefix` the tokens every prompt shares run once into a KV cache: clean for
    the clean pass, and per chunk of edits once more with the edits applied to the prefix
    (`make_prefix_hooks`; None: the prefix is not edited, the clean cache serves), so each prompt
    runs only its own tokens. Blocks up to `layer` keep the clean prefix's keys and values (an
    edit of block `layer`'s output does not reach them)."""
    blocks = decoder_blocks(model)
    if not 0 <= layer < len(blocks):
        raise AblationError(f"{where}: layer {layer} out of range for {len(blocks)} blocks")
    device, _ = _device_dtype(model)
    pos, neg = class_token_ids(tokenizer, prompts["positive"].iloc[0], prompts["negative"].iloc[0], where=where)
    texts, anchors, ids = prompts["text"].tolist(), prompts["anchor"].tolist(), prompts["id"].tolist()
    keys = ("margin", "logit_pos", "logprob_pos")
    clean = {k: [] for k in keys}
    ablated = {k: [] for k in (*keys, "kl")}
    shared = shared_prefix(tokenizer, prefix, texts[0]) if texts and prefix and prefix_cache_enabled(model) else None
    clean_cache = prefix_cache(model, shared) if shared is not None else None
    for start in range(0, len(texts), batch_size):
        rows = slice(start, start + batch_size)
        batch = encode_prompts(tokenizer, texts[rows], anchors[rows], ids=ids[rows], prefix=prefix).to(device)
        batch = drop_shared_prefix(batch, shared) or batch
        B = batch.ids_BP.shape[0]
        captured: dict = {}

        def capture(_m, _i, output):
            captured["resid_BPD"] = block_output(output)
            captured["as_tuple"] = isinstance(output, tuple)

        def chunk_cache(k0: int, k: int):
            """The prefix's KV cache for k edits x B prompts (direction-major rows), or None."""
            if not batch.n_past:
                return None
            prefix_hooks = None if make_prefix_hooks is None else make_prefix_hooks(shared, k0, k)
            if prefix_hooks is None:
                return expand_cache(clean_cache, k * B)
            return expand_cache(prefix_cache(model, shared, hook_list=prefix_hooks, k=k), B)

        with hooks([(blocks[layer], capture)]):
            clean_BV = readout_only_logits(model, batch, past_key_values=expand_cache(clean_cache, B)
                                           if batch.n_past else None).float()
        clean_stats = margin_stats(clean_BV, pos, neg)
        check_finite("clean logits", clean_stats["margin"], where=where)
        for key in keys:
            clean[key].append(clean_stats[key].cpu().numpy())
        clean_logp_BV = torch.log_softmax(clean_BV, dim=-1)
        k_step = direction_batch_size(model, batch, n_edits, memory_budget_bytes)
        chunks = {key: [] for key in ablated}
        for k0 in range(0, n_edits, k_step):
            k = min(k_step, n_edits - k0)
            cache = chunk_cache(k0, k)
            if make_resid is None:
                with hooks(make_hooks(batch, k0, k)):
                    logits_kBV = readout_only_logits(model, batch, k=k, past_key_values=cache)
            else:
                resid_kBPD = make_resid(captured["resid_BPD"], batch, rows, k0, k)
                with prefix_stubs(model, layer, captured["as_tuple"]) as inject, hooks(make_hooks(batch, k0, k)):
                    inject.resid = resid_kBPD.reshape(k * B, *resid_kBPD.shape[2:])
                    logits_kBV = readout_only_logits(model, batch, k=k, past_key_values=cache)
            stats = margin_stats(logits_kBV, pos, neg)
            check_finite("ablated logits", stats["margin"], where=where)
            for key in keys:
                chunks[key].append(stats[key].reshape(k, B).cpu().numpy())
            if with_kl:
                logp_kBV = torch.log_softmax(logits_kBV.float(), dim=-1).reshape(k, B, -1)
                kl_kB = (logp_kBV.exp() * (logp_kBV - clean_logp_BV)).sum(-1).clamp(min=0.0)
                chunks["kl"].append(kl_kB.cpu().numpy())
        for key in ablated:
            if chunks[key]:
                ablated[key].append(np.concatenate(chunks[key], axis=0))
        if progress is not None:
            progress(min(start + batch_size, len(texts)))
    out = {f"clean_{k}_N": np.concatenate(v).astype(np.float32) for k, v in clean.items()}
    out.update({f"ablated_{k}_KN": np.concatenate(v, axis=1).astype(np.float32) for k, v in ablated.items() if v})
    if with_kl:
        out["kl_KN"] = out.pop("ablated_kl_KN")
    return out


def _width(model: PreTrainedModel) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(config, "hidden_size", None) or config.n_embd)


def _edit_hook(dirs_kD: torch.Tensor, mus_k: torch.Tensor | None, edit_BP: torch.Tensor | None, B: int):
    """Forward hook ablating k directions on a [k*B, P, D] block output (direction-major rows)."""

    def hook(_module, _inputs, output):
        resid = block_output(output)
        k = dirs_kD.shape[0]
        edited = ablate_resid(resid.reshape(k, B, *resid.shape[1:]), dirs_kD, mus_k, edit_BP)
        return replace_block_output(output, edited.reshape(resid.shape))

    return hook


def split_directions(out: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Per-direction results (what the cell store holds): clean_* and ablated_* arrays of [N]."""
    K = out["ablated_margin_KN"].shape[0]
    clean = {k.removesuffix("_N"): v for k, v in out.items() if k.startswith("clean")}
    return [{**clean, **{k.removesuffix("_KN"): v[i] for k, v in out.items() if k.startswith("ablated")}}
            for i in range(K)]


def effects_frame(entry: dict[str, np.ndarray], prompts: pd.DataFrame, source: str,
                  kind: str = "matched") -> pd.DataFrame:
    """One row per prompt: clean/ablated margins, the token-margin delta and the diagnostics.
    `kind` says which direction was ablated (matched | transferred | random, see
    :mod:`probebench.transfer.plan`), `source` whose probe it came from."""
    return pd.DataFrame({
        "kind": kind, "source": source, "prompt_id": prompts["id"].to_numpy(), "label": prompts["label"].to_numpy(),
        "clean_margin": entry["clean_margin"], "ablated_margin": entry["ablated_margin"],
        "delta": entry["ablated_margin"] - entry["clean_margin"],
        "delta_logit_pos": entry["ablated_logit_pos"] - entry["clean_logit_pos"],
        "delta_logprob_pos": entry["ablated_logprob_pos"] - entry["clean_logprob_pos"],
    })
