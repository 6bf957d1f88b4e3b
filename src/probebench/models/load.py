"""Loading models (zoo directories, local paths, Hugging Face ids) and addressing their
decoder blocks by their HF module path, plus hook plumbing that is always removed.

    >>> model, tok = load_model("data/zoo/llama-s")  # doctest: +SKIP
    >>> blocks = decoder_blocks(model)                # model.model.layers  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path
from typing import Callable, Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from probebench.errors import ProbebenchError
from probebench.params.devices import device_problem  # one rule for `probebench check` and here

# Decoder-block lists by architecture: the HF module path *is* the address.
BLOCK_PATHS = {
    "llama": "model.layers", "mistral": "model.layers", "qwen2": "model.layers", "qwen3": "model.layers",
    "gemma": "model.layers", "gemma2": "model.layers", "gemma3_text": "model.layers", "phi3": "model.layers",
    "olmo2": "model.layers", "gpt2": "transformer.h", "gptj": "transformer.h", "gpt_neox": "gpt_neox.layers",
}
# Final norm applied before the unembedding (needed to rebuild logits from a residual).
FINAL_NORM_PATHS = {"gpt2": "transformer.ln_f", "gptj": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm"}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelError(ProbebenchError):
    """A model that cannot be used: the message names the model and the fix."""


def load_model(name_or_path: str | Path, *, device: str = "cpu", dtype: str = "float32",
               device_map: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its fast tokenizer from a local directory or a Hugging Face id.

    device_map="auto" shards a model larger than one GPU across devices (Accelerate).
    """
    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r} not supported; use one of {sorted(DTYPES)}")
    if device_map is None:
        # before the weights load: torch's own failure is a bare AssertionError after it
        if (problem := device_problem(device)) is not None:
            raise ModelError(f"{name_or_path}: {problem}")
    local = Path(name_or_path)
    if local.is_dir():
        present = {f.name for f in local.iterdir()}
        if "config.json" not in present:
            raise ModelError(f"{local}: no config.json in the model directory; save the model there with "
                             "model.save_pretrained(path)")
        tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")  # any one
        if not present.intersection(tokenizer_files):
            raise ModelError(f"{local}: no tokenizer files ({', '.join(tokenizer_files)}) in the model "
                             "directory; save the tokenizer next to the model with tokenizer.save_pretrained(path)")
    elif local.is_absolute() or str(name_or_path).startswith(".") or str(name_or_path).count("/") > 1:
        raise ModelError(f"{name_or_path}: model directory not found (and not a hub id 'org/name'); check the path")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as exc:  # transformers' messages span lines and may not name the path
        raise ModelError(f"{name_or_path}: cannot load its tokenizer ({str(exc).strip().splitlines()[0]}); "
                         "give a directory or hub id with a fast tokenizer (tokenizer.json)") from None
    if not tokenizer.is_fast:
        raise ModelError(f"{name_or_path}: tokenizer is not a fast tokenizer, so it has no offset mapping; "
                         "convert it (tokenizer.json) or load with use_fast=True")
    kwargs = {"dtype": DTYPES[dtype]}
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    if device_map is None:
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # real LMs often ship without a pad token
    return model, tokenizer


def get_module(model: torch.nn.Module, path: str) -> torch.nn.Module:
    module = model
    for part in path.split("."):
        module = getattr(module, part)
    return module


def model_type(model: PreTrainedModel) -> str:
    return model.config.model_type


def decoder_blocks(model: PreTrainedModel) -> torch.nn.ModuleList:
    """The list of decoder blocks, by the architecture's HF module path."""
    mtype = model_type(model)
    if mtype not in BLOCK_PATHS:
        raise ModelError(f"architecture {mtype!r} has no decoder-block path; add it to BLOCK_PATHS "
                         f"(known: {sorted(BLOCK_PATHS)})")
    return get_module(model, BLOCK_PATHS[mtype])


def final_norm(model: PreTrainedModel) -> torch.nn.Module:
    return get_module(model, FINAL_NORM_PATHS.get(model_type(model), "model.norm"))


def n_layers(model: PreTrainedModel) -> int:
    return len(decoder_blocks(model))


def d_model(model: PreTrainedModel) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(getattr(config, "hidden_size", None) or config.n_embd)


def resolve_layer(layer: int | float, n_layers_: int, *, where: str = "layer") -> int:
    """An int is a block index (negative counts from the end); a float in (0, 1] is a relative
    depth resolved as floor(depth * n_layers + 0.5) - 1 (halves round up, never to even: 0.5 is
    block 2 of 5 and block 3 of 7).

    >>> resolve_layer(0.5, 5), resolve_layer(0.5, 7), resolve_layer(1.0, 26), resolve_layer(-1, 4)
    (2, 3, 25, 3)
    """
    if isinstance(layer, bool):
        raise ModelError(f"{where}: {layer!r} is not a layer; use a block index or a depth in (0, 1]")
    if isinstance(layer, float):
        if not 0.0 < layer <= 1.0:
            raise ModelError(f"{where}: relative depth {layer} must be in (0, 1]")
        return max(0, math.floor(layer * n_layers_ + 0.5) - 1)
    index = layer + n_layers_ if layer < 0 else layer
    if not 0 <= index < n_layers_:
        raise ModelError(f"{where}: layer {layer} out of range for a model with {n_layers_} blocks "
                         f"(use 0..{n_layers_ - 1} or a depth in (0, 1])")
    return index


def block_output(output) -> torch.Tensor:
    """The residual stream a decoder block returns: a tensor (transformers 5) or tuple[0]."""
    return output[0] if isinstance(output, tuple) else output


def replace_block_output(output, resid_BPD: torch.Tensor):
    return (resid_BPD, *output[1:]) if isinstance(output, tuple) else resid_BPD


@contextlib.contextmanager
def hooks(registrations: list[tuple[torch.nn.Module, Callable]]) -> Iterator[None]:
    """Register forward hooks for the duration of the block; always removed ("hooks are global
    state"), even when the forward raises."""
    handles = []
    try:
        for module, fn in registrations:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


def fingerprint(path: str | Path) -> str:
    """Content fingerprint of a model directory: sha256 over its weight and config files."""
    path = Path(path)
    if not path.is_dir():
        return hashlib.sha256(json.dumps({"hf_id": str(path)}).encode()).hexdigest()
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in {".json", ".safetensors", ".bin", ".model"}):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
