"""Directional ablation and its effect on the token margin, K directions per forward pass.

Ablating unit direction u at block L's output (resid_post):
    projection:  h <- h - (h.u) u              mean:  h <- h - (h.u - mu) u   (mu = train mean of h.u)
at all positions or only the readout token, at block L only (`single`) or at every block from
L to the last (`from_layer`). The effect is read at the readout token:
    delta = margin_ablated - margin_clean,  margin = logit(pos) - logit(neg)
(token-margin normalization: a shift applied to every logit cancels).

Three engines give the same numbers (tested to 1e-4 on every zoo architecture):
- `hooks`: the obvious way, a full forward per direction batch with a forward hook at block L.
- `prefix` (default): blocks 0..L are identical for the clean run and every ablated run, so they
  run once per prompt batch; for each direction batch blocks 0..L are swapped for stubs that
  hand over the cached (ablated) block-L residual, and only blocks L+1.. run. The model's own
  forward still builds masks and rotary/learned positions, so this works across architectures.
- `last_token` (used where only the readout token is edited: `positions: readout` with
  `layers: single`, and the crosscoder audit): every earlier position is unchanged at every
  layer, so the clean pass's KV cache serves all of them. Each edited readout token runs alone
  through blocks L+1.. over that cache; K edits of one prompt ride as K query tokens at the same
  position, each seeing the clean past and itself (a 4-D mask), so the cache is never copied.

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
    _past_key_values_accepted,
    drop_shared_prefix,
    empty_cache,
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
                     engine: Literal["auto", "prefix", "hooks", "last_token"] = "auto", batch_size: int = 64,
                     memory_budget_bytes: float = 2e9, where: str = "",
                     progress: Callable[[int], None] | None = None, prefix: str = "") -> dict[str, np.ndarray]:
    """Clean and ablated readouts for K directions on the prompts (in their order), each prompt
    after the model's framing `prefix` (see `encode_prompts`).

    Returns float32 arrays: `clean_{margin,logit_pos,logprob_pos}_N` and
    `ablated_{margin,logit_pos,logprob_pos}_KN`. Directions are normalized to unit length.
    `engine="auto"`: `last_token` where the spec edits the readout token only, else `prefix`.
    """
    if engine not in ("auto", "prefix", "hooks", "last_token"):
        raise AblationError(f"engine {engine!r}: use auto, prefix, hooks or last_token")
    readout_only = spec.positions == "readout" and spec.layers == "single"
    if engine == "last_token" and not readout_only:
        raise AblationError(f"{where}: the last_token engine edits the readout token at one block only; "
                            f"spec {spec.to_dict()} needs engine prefix or hooks")
    if engine == "auto":
        engine = "last_token" if readout_only else "prefix"
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

    def make_readout_resid(resid_BD, rows, k0, k):
        coef_Bk = resid_BD @ units_KD[k0: k0 + k].T
        if mus is not None:
            coef_Bk = coef_Bk - mus[k0: k0 + k][None]
        return resid_BD[None] - coef_Bk.T[..., None] * units_KD[k0: k0 + k][:, None, :]

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
                        make_resid=make_resid if engine != "hooks" else None, make_hooks=make_hooks,
                        batch_size=batch_size, memory_budget_bytes=memory_budget_bytes, where=where, progress=progress,
                        prefix=prefix, make_prefix_hooks=make_prefix_hooks,
                        make_readout_resid=make_readout_resid if engine == "last_token" else None)


@torch.no_grad()
def readout_edit_effects(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: pd.DataFrame, *,
                         layer: int, edits_KND: np.ndarray, batch_size: int = 64, memory_budget_bytes: float = 2e9,
                         where: str = "", progress: Callable[[int], None] | None = None,
                         engine: Literal["last_token", "prefix"] = "last_token", prefix: str = "") -> dict[str, np.ndarray]:
    """Subtract a per-prompt vector from block `layer`'s output at the readout token, K edits
    (e.g. a crosscoder latent's contribution f_j(x) d_j). Same outputs as `ablation_effects` plus
    `kl_KN` = KL(ablated || clean) of the next-token distribution at the readout. `engine`:
    `last_token` (default) or `prefix` (the whole prompt after block `layer`; to compare). Each
    prompt follows the framing `prefix`, which is not edited."""
    if engine not in ("last_token", "prefix"):
        raise AblationError(f"engine {engine!r}: use last_token or prefix")
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

    def make_readout_resid(resid_BD, rows, k0, k):
        return resid_BD[None] - edits[k0: k0 + k, rows]

    return _edit_passes(model, tokenizer, prompts, layer=layer, n_edits=len(edits), make_resid=make_resid,
                        make_hooks=lambda batch, k0, k: [], batch_size=batch_size,
                        memory_budget_bytes=memory_budget_bytes, where=where, progress=progress, with_kl=True,
                        prefix=prefix, make_readout_resid=make_readout_resid if engine == "last_token" else None)


def _device_dtype(model: PreTrainedModel) -> tuple[torch.device, torch.dtype]:
    param = next(model.parameters())
    return param.device, param.dtype


def _edit_passes(model, tokenizer, prompts, *, layer, n_edits, make_resid, make_hooks, batch_size,
                 memory_budget_bytes, where, progress, with_kl=False, prefix: str = "",
                 make_prefix_hooks=None, make_readout_resid=None) -> dict[str, np.ndarray]:
    """The shared loop: per prompt batch one clean pass (capturing block `layer`'s output), then
    per chunk of edits either the suffix only with the edited residual injected (`make_resid`,
    prefix reuse) or a full forward with the edit hooks (`make_resid=None`).

    With a framing `prefix` the tokens every prompt shares run once into a KV cache: clean for
    the clean pass, and per chunk of edits once more with the edits applied to the prefix
    (`make_prefix_hooks`; None: the prefix is not edited, the clean cache serves), so each prompt
    runs only its own tokens. Blocks up to `layer` keep the clean prefix's keys and values (an
    edit of block `layer`'s output does not reach them).

    With `make_readout_resid` (edits of the readout token only: [B, D] clean readout residuals ->
    [k, B, D] edited ones) the clean pass also keeps its KV cache, and each chunk of edits runs
    the readout token alone over it (`_last_token_logits`); where the prompt outgrows the model's
    sliding window the batch runs whole instead of after the cached prefix."""
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
        whole = encode_prompts(tokenizer, texts[rows], anchors[rows], ids=ids[rows], prefix=prefix).to(device)
        batch = drop_shared_prefix(whole, shared) or whole
        last_token = make_readout_resid is not None and _window_mask_kind(model) is not None
        if last_token and not _prefix_in_window(model, batch):
            batch = whole  # the prefix cache's sliding layers keep only the last window of keys
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

        if last_token:  # the clean pass fills a cache of every position (prefix included) for the edits
            past = expand_cache(clean_cache, B) if batch.n_past else empty_cache(model, sliding=False)
        else:
            past = expand_cache(clean_cache, B) if batch.n_past else None
        with hooks([(blocks[layer], capture)]):
            clean_BV = readout_only_logits(model, batch, past_key_values=past).float()
        clean_stats = margin_stats(clean_BV, pos, neg)
        check_finite("clean logits", clean_stats["margin"], where=where)
        for key in keys:
            clean[key].append(clean_stats[key].cpu().numpy())
        clean_logp_BV = torch.log_softmax(clean_BV, dim=-1)
        if last_token:
            readout_BD = captured["resid_BPD"][torch.arange(B, device=device), batch.readout_B]
            k_step = last_token_batch_size(model, B, n_edits, memory_budget_bytes)
        else:
            k_step = direction_batch_size(model, batch, n_edits, memory_budget_bytes)
        chunks = {key: [] for key in ablated}
        for k0 in range(0, n_edits, k_step):
            k = min(k_step, n_edits - k0)
            if last_token:
                logits_kBV = _last_token_logits(model, batch, past, make_readout_resid(readout_BD, rows, k0, k),
                                                layer=layer, as_tuple=captured["as_tuple"])
            elif make_resid is None:
                cache = chunk_cache(k0, k)
                with hooks(make_hooks(batch, k0, k)):
                    logits_kBV = readout_only_logits(model, batch, k=k, past_key_values=cache)
            else:
                cache = chunk_cache(k0, k)
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


def _sliding_window(model: PreTrainedModel) -> int | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    window = getattr(config, "sliding_window", None)
    return int(window) if window else None


# Model types whose forward takes {layer type: 4-D mask} (mixed full and sliding-window layers);
# other models get one mask for every layer, or the prefix engine where their layers mix.
_DICT_MASK_MODELS = {"gemma2", "gemma3", "gemma3_text", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe"}


def _window_mask_kind(model: PreTrainedModel) -> str | None:
    """How the last-token engine masks a model with a sliding window: "full" (no window),
    "sliding" (every layer slides), "dict" (mixed layers, a forward that takes a mask per layer
    type), or None (mixed layers and a forward that takes one mask: the prefix engine serves)."""
    if not _sliding_window(model):
        return "full"
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    kinds = set(getattr(config, "layer_types", None) or ["sliding_attention"])
    if kinds == {"full_attention"}:
        return "full"
    if kinds == {"sliding_attention"}:
        return "sliding"
    return "dict" if getattr(config, "model_type", None) in _DICT_MASK_MODELS else None


def _prefix_in_window(model: PreTrainedModel, batch: PromptBatch) -> bool:
    """Whether the last-token engine can start from the cached prefix: where the model has a
    sliding window, only if the whole prompt lies within it (that cache's sliding layers keep
    the last window of keys only). Otherwise the batch runs whole into a cache that keeps every
    position in every layer, and the masks carry the window."""
    window = _sliding_window(model)
    return not batch.n_past or not window or batch.n_past + batch.ids_BP.shape[1] < window


def last_token_batch_size(model: PreTrainedModel, B: int, n_edits: int, budget_bytes: float) -> int:
    """How many edits share one last-token pass: k * B query tokens, bounded on CPU by
    CPU_TOKENS_PER_PASS and everywhere by the full-vocabulary logits they return within
    `budget_bytes`: two copies at the model's precision (the logits and their direction-major
    reshape) and ~4 float32 ones (margin statistics, log-softmax, exp and difference for the KL)."""
    param = next(model.parameters())
    vocab = int(model.get_output_embeddings().weight.shape[0])
    per_edit = B * (vocab * (2 * param.element_size() + 16) + 16 * _width(model) * param.element_size())
    k = min(n_edits, int(budget_bytes // max(per_edit, 1)))
    if param.device.type == "cpu":
        k = min(k, CPU_TOKENS_PER_PASS // max(B, 1))
    return int(max(1, k))


class _FrozenPast:
    """A view of a filled KV cache whose `update` returns the cached keys and values followed by
    the new ones without storing them, so one clean cache serves every chunk of edits."""

    @staticmethod
    def of(cache):
        import copy

        view = copy.copy(cache)  # shares the layers; only `update` differs

        def update(key_states, value_states, layer_idx, *args, **kwargs):
            if hasattr(cache, "layers"):
                keys, values = cache.layers[layer_idx].keys, cache.layers[layer_idx].values
            else:  # transformers < 4.56
                keys, values = cache.key_cache[layer_idx], cache.value_cache[layer_idx]
            return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)

        view.update = update
        return view


def _last_token_logits(model: PreTrainedModel, batch: PromptBatch, past, resid_kBD: torch.Tensor, *, layer: int,
                       as_tuple: bool) -> torch.Tensor:
    """Logits [k*B, V] (direction-major rows) of each prompt's readout token with block `layer`'s
    output replaced by `resid_kBD`, run through blocks layer+1.. over the clean pass's cache `past`
    (n_past + P positions per row). The k edits of row b are k query tokens at the readout's
    position: each attends to row b's real tokens before the readout, and to itself; in a
    sliding-window layer only to those within the window (a dict of masks per layer type where the
    model mixes full and sliding layers)."""
    k, B, _ = resid_kBD.shape
    device, dtype = _device_dtype(model)
    b = torch.arange(B, device=device)
    P = batch.ids_BP.shape[1]
    ids_Bk = batch.ids_BP[b, batch.readout_B][:, None].expand(B, k)
    pos_Bk = batch.position_ids_BP[b, batch.readout_B][:, None].expand(B, k)
    before_BP = (torch.arange(P, device=device)[None] < batch.readout_B[:, None]) & batch.mask_BP.bool()
    past_BL = torch.cat([torch.ones(B, batch.n_past, dtype=torch.bool, device=device), before_BP], dim=1)
    self_kk = torch.eye(k, dtype=torch.bool, device=device)[None].expand(B, k, k)

    def additive(allow_BL):
        allow_Bkl = torch.cat([allow_BL[:, None, :].expand(B, k, -1), self_kk], dim=2)
        return torch.zeros(allow_Bkl.shape, dtype=dtype, device=device).masked_fill(
            ~allow_Bkl, torch.finfo(dtype).min)[:, None]

    mask = additive(past_BL)
    window, kind = _sliding_window(model), _window_mask_kind(model)
    if kind in ("sliding", "dict") and past_BL.shape[1] >= window:
        # HF's sliding window: key index > query index - window; the query sits at the readout's index
        query_B = batch.n_past + batch.readout_B
        near_BL = torch.arange(past_BL.shape[1], device=device)[None] > (query_B - window)[:, None]
        sliding = additive(past_BL & near_BL)
        mask = {"full_attention": mask, "sliding_attention": sliding} if kind == "dict" else sliding
    with prefix_stubs(model, layer, as_tuple) as inject, _past_key_values_accepted():
        inject.resid = resid_kBD.transpose(0, 1).contiguous()
        logits_BkV = model(input_ids=ids_Bk, attention_mask=mask, position_ids=pos_Bk,
                           past_key_values=_FrozenPast.of(past), use_cache=True).logits
    return logits_BkV.transpose(0, 1).reshape(k * B, -1)


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
