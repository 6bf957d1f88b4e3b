"""Matched semantic checkpoints and activation extraction.

A checkpoint is (layer, site, position): `resid_post` of decoder block `layer` (HF
`hidden_states[layer + 1]`, before the final norm for every block but the last), read at the
token whose character span covers the prompt's anchor, so "the same position" is the same
piece of text in every tokenizer, whatever the padding side or BOS.

    >>> batch = encode_prompts(tok, ["the box is red . honest ?"], [25])  # doctest: +SKIP
    >>> out = extract(model, tok, prompts_df, layer=0)                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import re

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from probebench.errors import ProbebenchError
from probebench.models.load import block_output, decoder_blocks, hooks


class CheckpointError(ProbebenchError):
    """A position or token that cannot be matched; names the prompt and the fix."""


@dataclass(frozen=True)
class PromptBatch:
    """Padded token ids with the readout position of every row (already shifted for padding), and
    which positions hold the tokenizer's special tokens (BOS: the attention sink of most models)."""

    ids_BP: torch.Tensor
    mask_BP: torch.Tensor
    readout_B: torch.Tensor
    special_BP: torch.Tensor
    n_past: int = 0  # tokens before these ones held in a KV cache (a shared framing prefix)

    @property
    def position_ids_BP(self) -> torch.Tensor:
        # Derived from the mask so left padding does not shift learned absolute positions.
        return (self.mask_BP.cumsum(-1) - 1).clamp(min=0) + self.n_past

    @property
    def attention_mask_BP(self) -> torch.Tensor:
        """The mask the model needs: the cached past (all real tokens) and then these tokens."""
        if not self.n_past:
            return self.mask_BP
        past = torch.ones((self.mask_BP.shape[0], self.n_past), dtype=self.mask_BP.dtype, device=self.mask_BP.device)
        return torch.cat([past, self.mask_BP], dim=1)

    def to(self, device) -> "PromptBatch":
        return PromptBatch(self.ids_BP.to(device), self.mask_BP.to(device), self.readout_B.to(device),
                           self.special_BP.to(device), self.n_past)


@dataclass(frozen=True)
class SharedPrefix:
    """The leading tokens every framed prompt of a task shares (BOS and the solved examples), run
    once into a KV cache instead of once per prompt and per ablated direction. `ids_P` and
    `special_P` are those tokens as the framed prompts encode them (only tokens that lie wholly in
    the prefix, so the task text's tokenization cannot change them); a batch whose rows do not all
    start with them is run whole (`drop_shared_prefix` returns None)."""

    ids_P: torch.Tensor
    special_P: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.ids_P.shape[0])


def shared_prefix(tokenizer: PreTrainedTokenizerBase, prefix: str, text: str) -> SharedPrefix | None:
    """The tokens of `prefix + text` that end inside `prefix` (None without a prefix)."""
    if not prefix:
        return None
    enc = tokenizer(prefix + text, return_offsets_mapping=True, return_special_tokens_mask=True)
    n = 0
    for (start, end), special in zip(enc["offset_mapping"], enc["special_tokens_mask"]):
        if end > len(prefix) - 1 and not (special and end <= start):  # keep one character of margin
            break
        n += 1
    if n == 0:
        return None
    return SharedPrefix(torch.tensor(enc["input_ids"][:n]), torch.tensor(enc["special_tokens_mask"][:n], dtype=torch.bool))


def drop_shared_prefix(batch: PromptBatch, shared: SharedPrefix | None) -> PromptBatch | None:
    """`batch` without its first `shared.n` tokens (to run after a KV cache of them), or None when
    some row does not start with exactly those tokens (right padding: every row starts at 0)."""
    if shared is None:
        return None
    n = shared.n
    if batch.ids_BP.shape[1] <= n or bool((batch.readout_B < n).any()):
        return None
    if not bool((batch.ids_BP[:, :n] == shared.ids_P.to(batch.ids_BP.device)).all()) or not bool(batch.mask_BP[:, :n].all()):
        return None
    return PromptBatch(batch.ids_BP[:, n:], batch.mask_BP[:, n:], batch.readout_B - n, batch.special_BP[:, n:], n)


def prefix_cache(model: PreTrainedModel, shared: SharedPrefix, *, hook_list: Sequence = (), k: int = 1):
    """The KV cache of the shared prefix, batch k (one row per direction when `hook_list` edits k
    directions on a [k, P, D] block output)."""
    device = next(model.parameters()).device
    ids = shared.ids_P.to(device)[None].repeat(k, 1)
    cache = empty_cache(model)
    keep = {"logits_to_keep": 1} if _supports_2d_logits_to_keep(model) else {}
    with hooks(list(hook_list)), _past_key_values_accepted():
        model(input_ids=ids, attention_mask=torch.ones_like(ids),
              position_ids=torch.arange(ids.shape[1], device=device)[None].repeat(k, 1), past_key_values=cache,
              use_cache=True, **keep)
    return cache


def empty_cache(model: PreTrainedModel, *, sliding: bool = True):
    """A new KV cache for `model`: with sliding-window layers where the model has them (they keep
    only the last window of keys), or with `sliding=False` every layer keeping every position."""
    from transformers import DynamicCache

    if not sliding:
        return DynamicCache()
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56
        return DynamicCache()


def expand_cache(cache, repeats: int):
    """A copy of `cache` with every row repeated `repeats` times (row-major: row j -> rows
    j*repeats .. j*repeats + repeats - 1), which a forward pass may extend in place."""
    import copy

    out = copy.deepcopy(cache)
    if repeats > 1:
        out.batch_repeat_interleave(repeats)
    return out


def anchor_token_index(offsets: Sequence[tuple[int, int]], special: Sequence[int], anchor: int, *, where: str) -> int:
    """Index of the token that ends at or covers the anchor: the last token covering character
    `anchor - 1` (byte-level tokenizers split a multi-byte character into several tokens with
    the same span; the character is complete only at the last one). Special tokens (BOS, offset
    (0, 0)) never match."""
    covering, before = None, None
    for i, ((start, end), is_special) in enumerate(zip(offsets, special)):
        if is_special or end <= start:
            continue
        if start <= anchor - 1 < end:
            covering = i
        elif end <= anchor:
            before = i  # the anchor falls in text no token covers (e.g. a stripped space)
    if covering is not None:
        return covering
    if before is None:
        raise CheckpointError(f"{where}: no token ends at or before anchor {anchor}; check the prompt's anchor")
    return before


def encode_prompts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], anchors: Sequence[int], *,
                   padding_side: Literal["right", "left"] = "right", ids: Sequence[str] | None = None,
                   prefix: str = "") -> PromptBatch:
    """Tokenize each prompt (with the tokenizer's own special tokens), find the anchored token via
    the fast tokenizer's offset mapping, and pad to a batch.

    `prefix` (a model's framing, e.g. solved examples) goes before every text; the anchor moves
    with it and must still fall on a token of the task text, or the framing is refused."""
    if not getattr(tokenizer, "is_fast", False):
        raise CheckpointError("tokenizer is not a fast tokenizer: no offset mapping to match positions; "
                              "use a tokenizer.json (fast) tokenizer")
    rows, positions, specials = [], [], []
    for i, (text, anchor) in enumerate(zip(texts, anchors)):
        where = f"prompt {ids[i] if ids is not None else i}"
        if not 1 <= anchor <= len(text):
            raise CheckpointError(f"{where}: anchor {anchor} is outside the text (length {len(text)}); "
                                  "anchor is a character offset in 1..len(text)")
        enc = tokenizer(prefix + text, return_offsets_mapping=True, return_special_tokens_mask=True)
        pos = anchor_token_index(enc["offset_mapping"], enc["special_tokens_mask"], anchor + len(prefix), where=where)
        if prefix and enc["offset_mapping"][pos][0] < len(prefix):
            raise CheckpointError(f"{where}: with the framing prefix the readout token starts inside the prefix "
                                  f"(token {pos}, span {tuple(enc['offset_mapping'][pos])}, prefix length "
                                  f"{len(prefix)}); end the prefix with a newline or space so that the task text "
                                  "starts a token (models.<m>.framing)")
        positions.append(pos)
        rows.append(enc["input_ids"])
        specials.append(enc["special_tokens_mask"])
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids_BP = torch.full((len(rows), width), pad, dtype=torch.long)
    mask_BP = torch.zeros((len(rows), width), dtype=torch.long)
    special_BP = torch.zeros((len(rows), width), dtype=torch.bool)
    readout_B = torch.empty(len(rows), dtype=torch.long)
    for b, (row, pos, special) in enumerate(zip(rows, positions, specials)):
        shift = width - len(row) if padding_side == "left" else 0
        ids_BP[b, shift: shift + len(row)] = torch.tensor(row)
        mask_BP[b, shift: shift + len(row)] = 1
        special_BP[b, shift: shift + len(row)] = torch.tensor(special, dtype=torch.bool)
        readout_B[b] = pos + shift
    return PromptBatch(ids_BP, mask_BP, readout_B, special_BP)


class ClassStringWarning(UserWarning):
    """A class string this tokenizer splits into several tokens (only the first one is read)."""


def class_token_ids(tokenizer: PreTrainedTokenizerBase, positive: str, negative: str, *, where: str = "") -> tuple[int, int]:
    """First token of each class string in this tokenizer; they must differ, and each must be a
    token the tokenizer knows that carries text: an unknown character maps to `<unk>` (or to
    `▁` + `<unk>`, or to a byte piece of the character), and a margin read at such a token is
    silently meaningless (issue 13: `" ☃"` gave "scored" entries at held-out accuracy 0.47). A
    class string of several tokens is allowed with a ClassStringWarning: only its first token is
    read."""
    pos = tokenizer(positive, add_special_tokens=False)["input_ids"]
    neg = tokenizer(negative, add_special_tokens=False)["input_ids"]
    if not pos or not neg:
        raise CheckpointError(f"{where}: empty class string {positive!r}/{negative!r}")
    for text, ids in ((positive, pos), (negative, neg)):
        pieces = tokenizer.convert_ids_to_tokens(ids)
        first = tokenizer.decode(ids[:1])
        unknown = tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids
        if unknown and ids[0] == tokenizer.unk_token_id:
            problem = f"starts with the unknown token {tokenizer.unk_token!r}"
        elif "\ufffd" in first and "\ufffd" not in text:
            problem = "starts with a byte piece of a character, not a whole token"
        elif not first.strip() and text.strip():
            problem = "starts with a bare space token" + (f" and holds the unknown token {tokenizer.unk_token!r}"
                                                          if unknown else "")
        else:
            if len(ids) > 1:
                warnings.warn(f"{where}: class string {text!r} is {len(ids)} tokens {pieces} in this tokenizer; "
                              f"only the first, {pieces[0]!r}, is read for the margin", ClassStringWarning, stacklevel=2)
            continue
        raise CheckpointError(f"{where}: class string {text!r} {problem} in this tokenizer (tokens {pieces}), so "
                              "its margin would not read the class; choose a class string whose first token is one this "
                              "tokenizer knows (try it with and without the leading space)")
    if pos[0] == neg[0]:
        raise CheckpointError(
            f"{where}: class strings {positive!r} and {negative!r} share their first token "
            f"{tokenizer.convert_ids_to_tokens(pos[0])!r} in this tokenizer, so the margin would be 0; "
            "choose class strings whose first tokens differ (e.g. without a leading space)")
    return pos[0], neg[0]


def word_end_anchors(text: str, anchor: int) -> list[int]:
    """Character offsets of the ends of the whitespace-separated words that end before the
    readout anchor: positions every tokenizer can be matched at (the same piece of text), which
    give the label-free map rows other than the readout itself.

    >>> word_end_anchors("the box is red . honest ?", 25)
    [3, 7, 10, 14, 16, 23]
    """
    return [m.end() for m in re.finditer(r"\S+", text) if m.end() < anchor]


def word_end_tokens(tokenizer: PreTrainedTokenizerBase, text: str, anchor: int, *, where: str,
                    prefix: str = "") -> list[int]:
    """Token index (in the unpadded encoding of `prefix + text`) of each :func:`word_end_anchors` offset."""
    enc = tokenizer(prefix + text, return_offsets_mapping=True, return_special_tokens_mask=True)
    return [anchor_token_index(enc["offset_mapping"], enc["special_tokens_mask"], a + len(prefix), where=where)
            for a in word_end_anchors(text, anchor)]


def _supports_2d_logits_to_keep(model: PreTrainedModel) -> bool:
    # transformers >= 5 accepts per-sample positions; older versions compute every position.
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    except ImportError:
        return False
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def readout_only_logits(model: PreTrainedModel, batch: PromptBatch, *, input_ids=None, k: int = 1,
                        past_key_values=None) -> torch.Tensor:
    """Logits at each row's readout token, [k*B, V]; only those positions are unembedded when the
    model supports it (a 256k vocab times every position is most of the memory otherwise). With
    `past_key_values` (a cache of `batch.n_past` shared tokens, k*B rows) only the batch's own
    tokens are run."""
    ids = batch.ids_BP.repeat(k, 1) if input_ids is None else input_ids
    readout = batch.readout_B.repeat(k)
    kwargs = dict(attention_mask=batch.attention_mask_BP.repeat(k, 1), position_ids=batch.position_ids_BP.repeat(k, 1),
                  use_cache=past_key_values is not None)
    if past_key_values is not None:
        kwargs["past_key_values"] = past_key_values
    with _past_key_values_accepted():
        return _readout_only_logits(model, ids, readout, kwargs)


@contextlib.contextmanager
def _past_key_values_accepted():
    # transformers 5.2x renames the forward's `past_key_values` to `cache` (the old name works until
    # 5.40, with a FutureWarning per call); the old name is the one every supported version takes
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
        yield


def _readout_only_logits(model: PreTrainedModel, ids, readout, kwargs) -> torch.Tensor:
    if _supports_2d_logits_to_keep(model):
        logits = model(input_ids=ids, logits_to_keep=readout[:, None], **kwargs).logits
        return logits[:, 0]
    return readout_logits(model(input_ids=ids, **kwargs).logits, readout)


def prefix_cache_enabled(model: PreTrainedModel) -> bool:
    """Whether the shared-prefix KV cache is used: unless PROBEBENCH_PREFIX_CACHE is 0 (the
    whole-prompt path, kept to compare against in tests and benchmarks/prefix_cache.py)."""
    import os

    return os.environ.get("PROBEBENCH_PREFIX_CACHE", "1") != "0"


def readout_logits(logits_BPV: torch.Tensor, readout_B: torch.Tensor) -> torch.Tensor:
    return logits_BPV[torch.arange(logits_BPV.shape[0], device=logits_BPV.device), readout_B]


def margin_stats(logits_BV: torch.Tensor, pos: int, neg: int) -> dict[str, torch.Tensor]:
    """Token margin logit(pos) - logit(neg) plus the diagnostics logit(pos) and log p(pos)."""
    logits_BV = logits_BV.float()
    return {"margin": logits_BV[:, pos] - logits_BV[:, neg], "logit_pos": logits_BV[:, pos],
            "logprob_pos": torch.log_softmax(logits_BV, dim=-1)[:, pos]}


def check_finite(name: str, tensor: torch.Tensor, *, where: str) -> None:
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise CheckpointError(f"{where}: {bad} non-finite value(s) in {name} (NaN/inf); check the model dtype "
                              "(bf16/fp16 overflow) or the weights")


@torch.no_grad()
def extract(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: pd.DataFrame, *, layer: int,
            batch_size: int = 64, where: str = "", progress: Callable[[int], None] | None = None,
            word_end_rows: np.ndarray | None = None, prefix: str = "") -> dict[str, np.ndarray]:
    """Residual stream after block `layer` at each prompt's readout token, and the clean margins.

    Returns float32 `acts_ND` and float32 `margin_N`, `logit_pos_N`, `logprob_pos_N`, in the
    order of `prompts` (one class-string pair per prompt set). With `word_end_rows` (a boolean
    mask over prompts) also `wordend_acts_WD`, the residual at every :func:`word_end_anchors`
    position of those prompts, with `wordend_row_W` (prompt row) and `wordend_char_W` (character
    offset): rows in text order, hence the same rows in every model. `prefix` is the model's
    framing (see `encode_prompts`); word-end offsets stay offsets in the task text.
    """
    positive, negative = prompts["positive"].iloc[0], prompts["negative"].iloc[0]
    if (prompts["positive"] != positive).any() or (prompts["negative"] != negative).any():
        raise CheckpointError(f"{where}: one prompt set must use one positive/negative class-string pair")
    pos, neg = class_token_ids(tokenizer, positive, negative, where=where)
    block = decoder_blocks(model)[layer]
    device = next(model.parameters()).device
    captured: dict[str, torch.Tensor] = {}

    def capture(_module, _inputs, output):
        captured["resid_BPD"] = block_output(output)

    out: dict[str, list[np.ndarray]] = {"acts": [], "margin": [], "logit_pos": [], "logprob_pos": []}
    texts, anchors, ids = prompts["text"].tolist(), prompts["anchor"].tolist(), prompts["id"].tolist()
    wordend: dict[str, list] = {"acts": [], "row": [], "char": []}
    # the framing prefix is the same in every prompt: run it once into a KV cache
    shared = shared_prefix(tokenizer, prefix, texts[0]) if texts and prefix_cache_enabled(model) else None
    clean_cache = prefix_cache(model, shared) if shared is not None else None
    with hooks([(block, capture)]):
        for start in range(0, len(texts), batch_size):
            sl = slice(start, start + batch_size)
            batch = encode_prompts(tokenizer, texts[sl], anchors[sl], ids=ids[sl], prefix=prefix).to(device)
            suffix = drop_shared_prefix(batch, shared)
            if suffix is None:
                readout_BV = readout_only_logits(model, batch)  # only the readout rows are unembedded
            else:
                batch = suffix
                readout_BV = readout_only_logits(model, batch,
                                                 past_key_values=expand_cache(clean_cache, batch.ids_BP.shape[0]))
            resid_BPD = captured.pop("resid_BPD")
            acts_BD = readout_logits(resid_BPD, batch.readout_B).float()
            if word_end_rows is not None:
                for b, row in enumerate(range(start, min(start + batch_size, len(texts)))):
                    if word_end_rows[row]:
                        # right padding: unpadded token indices are the batch's indices
                        tok = word_end_tokens(tokenizer, texts[row], anchors[row], where=f"{where} prompt {ids[row]}",
                                              prefix=prefix)
                        tok = [t - batch.n_past for t in tok]  # word ends lie in the task text, after the prefix
                        wordend["acts"].append(resid_BPD[b, tok].float().cpu().numpy())
                        wordend["row"].extend([row] * len(tok))
                        wordend["char"].extend(word_end_anchors(texts[row], anchors[row]))
            stats = margin_stats(readout_BV, pos, neg)
            check_finite("activations", acts_BD, where=where)
            check_finite("logits", stats["margin"], where=where)
            out["acts"].append(acts_BD.cpu().numpy())
            for key in ("margin", "logit_pos", "logprob_pos"):
                out[key].append(stats[key].cpu().numpy())
            if progress is not None:
                progress(min(start + batch_size, len(texts)))
    result = {f"{k}_ND" if k == "acts" else f"{k}_N": np.concatenate(v).astype(np.float32) for k, v in out.items()}
    if word_end_rows is not None:
        d = result["acts_ND"].shape[1]
        acts = np.concatenate(wordend["acts"]) if wordend["acts"] else np.zeros((0, d))
        check_finite("word-end activations", torch.from_numpy(acts), where=where)
        result.update(wordend_acts_WD=acts.astype(np.float32), wordend_row_W=np.asarray(wordend["row"], np.int64),
                      wordend_char_W=np.asarray(wordend["char"], np.int64))
    return result
