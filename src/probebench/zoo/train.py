"""The embedded model zoo: tiny causal LMs of real Hugging Face architecture families, each
with its own `tokenizers`-trained vocabulary, trained on the project's synthetic corpus.

No weights can be downloaded here, so the default pipeline builds its models; they are saved
with `save_pretrained` and loaded back through the Auto classes, the path a real hub id takes.

    >>> spec = ZooModelSpec(family="llama", d_model=32, n_layers=1, n_heads=2, vocab_size=300, steps=2)
    >>> model, tok, metrics = build_zoo_model(spec, [SyntheticTaskSpec("sentiment", "sentiment")])  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
from typing import Iterable, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from probebench.errors import ProbebenchError
from probebench.params.zoo import FAMILIES, FAMILY_ADDS_BOS, FAMILY_TOKENIZER, ZooModelSpec  # noqa: F401 (re-exported)
from probebench.prompts import SyntheticTaskSpec, iter_synthetic, normalize_text, split_of

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]

# Instruction-format wrapper for the "IT" fine-tune (Gemma-2 base -> IT analogue).
IT_PREFIX = "user : please answer . "
IT_SUFFIX = " . model : done ."


class ZooError(ProbebenchError):
    """Bad zoo configuration."""


def _tokenizer_corpus(tasks: Sequence[SyntheticTaskSpec], n_per_task: int, seed: int) -> list[str]:
    texts = []
    for task in tasks:
        for text, strength in itertools.islice(iter_synthetic(task.kind, seed + 17), n_per_task):
            answer = task.positive if strength > 0 else task.negative
            texts.append(text + answer)
            texts.append(IT_PREFIX + text + answer + IT_SUFFIX)
    return texts


def train_tokenizer(style: str, vocab_size: int, corpus: Iterable[str], *, add_bos: bool) -> PreTrainedTokenizerFast:
    """A BPE tokenizer trained with the `tokenizers` library, wrapped as a HF fast tokenizer."""
    if style == "metaspace":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
        tok.decoder = decoders.Metaspace(prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False)
    elif style == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        raise ZooError(f"unknown tokenizer style {style!r}")
    tok.train_from_iterator(list(corpus), trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    elif style == "bytelevel":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def make_config(spec: ZooModelSpec, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    """A transformers config of the spec's real architecture family."""
    d_mlp = spec.d_mlp or 2 * spec.d_model
    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if spec.family == "gpt2":
        kwargs = dict(n_embd=spec.d_model, n_layer=spec.n_layers, n_head=spec.n_heads, n_inner=d_mlp,
                      n_positions=spec.max_positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      tie_word_embeddings=False)
    elif spec.family in ("llama", "qwen2", "qwen3", "gemma2"):
        kwargs = dict(hidden_size=spec.d_model, num_hidden_layers=spec.n_layers,
                      num_attention_heads=spec.n_heads, num_key_value_heads=spec.n_kv_heads or spec.n_heads,
                      intermediate_size=d_mlp, max_position_embeddings=spec.max_positions,
                      head_dim=spec.d_model // spec.n_heads)
        if spec.family == "gemma2":
            # Short sliding window so the tiny model really alternates local/global layers.
            kwargs.update(sliding_window=16, query_pre_attn_scalar=spec.d_model // spec.n_heads)
        # Tied input/output embeddings stall 64-d models on the verdict (Qwen2 sat at 0.58).
        kwargs.update(tie_word_embeddings=False)
    else:
        raise ZooError(f"unknown architecture family {spec.family!r}; known: {list(FAMILIES)}")
    kwargs.update(spec.extra)
    config = AutoConfig.for_model(spec.family, **common, **kwargs)
    if spec.family == "gemma2":
        config._attn_implementation = "eager"  # softcapping needs eager attention
    return config


def _training_texts(tasks: Sequence[SyntheticTaskSpec], seed: int, it_fraction: float):
    """Endless stream of (prompt, answer) from the TRAIN side of every task's hash split."""
    rng = np.random.default_rng(seed)
    streams = [iter_synthetic(t.kind, seed + 1000 * i) for i, t in enumerate(tasks)]
    while True:
        i = int(rng.integers(len(tasks)))
        task = tasks[i]
        text, strength = next(streams[i])
        if split_of(task, text) == "test":
            continue  # the zoo never sees a held-out prompt
        answer = task.positive if strength > 0 else task.negative
        if it_fraction > 0 and rng.random() < it_fraction:
            yield IT_PREFIX + text, answer, IT_SUFFIX
        else:
            yield text, answer, ""


def encode_batch(tokenizer: PreTrainedTokenizerFast, items: Sequence[tuple[str, str, str]]):
    """Right-padded ids of prompt + first answer token + suffix; returns ids, mask, verdict index.

    The prompt and the answer are tokenized separately so the verdict token is exactly the first
    token of the class string in this tokenizer, the token the margin is read from.
    """
    rows, verdict_pos = [], []
    for prompt, answer, suffix in items:
        ids = tokenizer(prompt)["input_ids"]
        verdict_pos.append(len(ids) - 1)  # the logits at the last prompt token predict the verdict
        ids = ids + tokenizer(answer, add_special_tokens=False)["input_ids"][:1]
        if suffix:
            ids = ids + tokenizer(suffix, add_special_tokens=False)["input_ids"]
        rows.append(ids)
    width = max(map(len, rows))
    ids_BP = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask_BP = torch.zeros((len(rows), width), dtype=torch.long)
    for b, ids in enumerate(rows):
        ids_BP[b, : len(ids)] = torch.tensor(ids)
        mask_BP[b, : len(ids)] = 1
    return ids_BP, mask_BP, torch.tensor(verdict_pos)


def position_ids_from_mask(mask_BP: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore padding on either side (learned absolute positions need it)."""
    return (mask_BP.cumsum(-1) - 1).clamp(min=0)


def train_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, tasks: Sequence[SyntheticTaskSpec],
                spec: ZooModelSpec, *, it_fraction: float, progress=None) -> list[float]:
    """Verdict-weighted LM training; returns the loss curve (every 50 steps)."""
    torch.manual_seed(spec.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, spec.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, spec.steps) / spec.steps)))
    stream = _training_texts(tasks, spec.seed, it_fraction)
    losses = []
    for step in range(spec.steps):
        ids_BP, mask_BP, verdict_B = encode_batch(tokenizer, list(itertools.islice(stream, spec.batch_size)))
        logits_BPV = model(input_ids=ids_BP, attention_mask=mask_BP,
                           position_ids=position_ids_from_mask(mask_BP)).logits
        rows = torch.arange(ids_BP.shape[0])
        verdict_loss = torch.nn.functional.cross_entropy(logits_BPV[rows, verdict_B], ids_BP[rows, verdict_B + 1])
        targets_BP = ids_BP[:, 1:].masked_fill(mask_BP[:, 1:] == 0, -100)
        lm_loss = torch.nn.functional.cross_entropy(logits_BPV[:, :-1].flatten(0, 1), targets_BP.flatten())
        loss = verdict_loss + spec.lm_weight * lm_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == spec.steps - 1:
            losses.append(round(loss.item(), 6))
        if progress is not None:
            progress(step + 1)
    model.eval()
    return losses


@torch.no_grad()
def verdict_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, task: SyntheticTaskSpec,
                     n: int = 512, seed: int = 12345, batch_size: int = 128) -> float:
    """Held-out accuracy: sign of logit(pos) - logit(neg) vs the label, on test-bucket prompts."""
    pos = tokenizer(task.positive, add_special_tokens=False)["input_ids"][0]
    neg = tokenizer(task.negative, add_special_tokens=False)["input_ids"][0]
    items, labels, seen = [], [], set()
    for text, strength in iter_synthetic(task.kind, seed):
        key = normalize_text(text)
        if key in seen or split_of(task, text) != "test":
            continue
        seen.add(key)
        items.append((text, task.positive, ""))
        labels.append(strength > 0)
        if len(items) == n:
            break
    correct = 0
    for start in range(0, n, batch_size):
        ids_BP, mask_BP, verdict_B = encode_batch(tokenizer, items[start: start + batch_size])
        logits = model(input_ids=ids_BP, attention_mask=mask_BP, position_ids=position_ids_from_mask(mask_BP)).logits
        rows = torch.arange(ids_BP.shape[0])
        margin = logits[rows, verdict_B, pos] - logits[rows, verdict_B, neg]
        correct += int(((margin > 0) == torch.tensor(labels[start: start + batch_size])).sum())
    return correct / n


def build_tokenizer(spec: ZooModelSpec, tasks: Sequence[SyntheticTaskSpec]) -> PreTrainedTokenizerFast:
    corpus = _tokenizer_corpus(tasks, n_per_task=4000, seed=0)
    tokenizer = train_tokenizer(FAMILY_TOKENIZER[spec.family], spec.vocab_size, corpus,
                                add_bos=FAMILY_ADDS_BOS[spec.family])
    for task in tasks:
        pos = tokenizer(task.positive, add_special_tokens=False)["input_ids"][:1]
        neg = tokenizer(task.negative, add_special_tokens=False)["input_ids"][:1]
        if pos == neg:
            raise ZooError(f"task {task.name}: class strings {task.positive!r}/{task.negative!r} share their first "
                           f"token in a vocab of {spec.vocab_size}; raise vocab_size")
    return tokenizer


def build_zoo_model(spec: ZooModelSpec, tasks: Sequence[SyntheticTaskSpec], *, base_dir=None, progress=None):
    """Build (or fine-tune from `base_dir`) and train one zoo model; returns model, tokenizer, metrics."""
    torch.manual_seed(spec.seed)
    if spec.base is not None:
        if base_dir is None:
            raise ZooError(f"model fine-tuned from {spec.base!r} needs the base directory")
        from probebench.models.load import load_model
        model, tokenizer = load_model(base_dir, dtype="float32")
        model.requires_grad_(True)
        it_fraction = spec.it_fraction
    else:
        tokenizer = build_tokenizer(spec, tasks)
        model = AutoModelForCausalLM.from_config(make_config(spec, tokenizer))
        it_fraction = 0.0
    losses = train_model(model, tokenizer, tasks, spec, it_fraction=it_fraction, progress=progress)
    metrics = {"loss_curve": losses, "n_params": sum(p.numel() for p in model.parameters()),
               "vocab_size": len(tokenizer),
               "accuracy": {t.name: round(verdict_accuracy(model, tokenizer, t), 4) for t in tasks}}
    return model, tokenizer, metrics
