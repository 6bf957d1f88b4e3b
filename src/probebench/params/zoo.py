"""The zoo's vocabulary as configuration: architecture families, their tokenizer styles, the
spec of one zoo model and of a LoRA adapter (`AdapterSpec`). Constants and dataclasses only, so
validating params (`probebench check`, every stage's start) imports neither torch nor
transformers; `probebench.zoo.train` and `probebench.zoo.lora` build what these describe."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


# Tokenizer styles of the real families: sentencepiece-like metaspace BPE with a BOS token
# (Llama-2, Gemma) and GPT-2 style byte-level BPE without BOS (GPT-2, Qwen).
FAMILY_TOKENIZER = {"llama": "metaspace", "gemma2": "metaspace", "qwen2": "bytelevel",
                    "qwen3": "bytelevel", "gpt2": "bytelevel"}
FAMILY_ADDS_BOS = {"llama": True, "gemma2": True, "qwen2": False, "qwen3": False, "gpt2": False}
FAMILIES = tuple(FAMILY_TOKENIZER)


@dataclass(frozen=True)
class ZooModelSpec:
    """One tiny model of the zoo.

    family: HF architecture family (llama, qwen2, qwen3, gemma2, gpt2).
    vocab_size: BPE vocabulary size of its own tokenizer (different per model on purpose, so
        the same text tokenizes differently). tokenizer_seed: models sharing a tokenizer spec
        (a family pair) get the identical tokenizer, as real families do.
    steps/batch_size/lr: training; loss = verdict CE + lm_weight * LM loss (the verdict-weighted
        loss is what lets 2-layer models learn the tasks within a CPU budget, docs/design.md §4).
    base: slug of a zoo model to fine-tune from (the "IT" variant); it then reuses the base's
        tokenizer and architecture and trains `steps` more steps on `it_fraction` instruction-
        formatted text.
    """

    family: str
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_mlp: int | None = None
    vocab_size: int = 600
    max_positions: int = 128
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    lm_weight: float = 0.2
    seed: int = 0
    base: str | None = None
    it_fraction: float = 0.5
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AdapterSpec:
    """LoRA on `targets` (attention projections) with rank `rank` and scale alpha / rank; `steps`
    of AdamW at `lr` on `batch_size` fresh instructions each, the loss on the response tokens only.
    `n_heldout` instructions never drawn for training measure it."""
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    steps: int = 150
    batch_size: int = 8
    lr: float = 5e-4
    seed: int = 0
    n_heldout: int = 48

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def as_params(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}
