"""The zoo's architecture families and their tokenizer styles: constants only, so validating
params (`probebench check`, every stage's start) does not import torch and transformers."""

# Tokenizer styles of the real families: sentencepiece-like metaspace BPE with a BOS token
# (Llama-2, Gemma) and GPT-2 style byte-level BPE without BOS (GPT-2, Qwen).
FAMILY_TOKENIZER = {"llama": "metaspace", "gemma2": "metaspace", "qwen2": "bytelevel",
                    "qwen3": "bytelevel", "gpt2": "bytelevel"}
FAMILY_ADDS_BOS = {"llama": True, "gemma2": True, "qwen2": False, "qwen3": False, "gpt2": False}
FAMILIES = tuple(FAMILY_TOKENIZER)
