"""A light instruction fine-tune of a real base model: a LoRA adapter (`peft`) trained on
chat-formatted instructions (`probebench.zoo.instructions`), pinned like the zoo, and merged
into a plain Hugging Face directory so that every stage loads it like any other model.

Training is chaotic across CPUs, so the default run does not train: it merges the committed
adapter (sha256-checked, `zoo/<key>`) into the imported base. The merge runs in float64 and is
stored in the base's dtype, so the merged weights are the same on every machine.

    >>> spec = AdapterSpec(rank=8, alpha=16.0, targets=("q_proj", "v_proj"), steps=150)
    >>> spec.scale
    2.0
    >>> model, tok, metrics = train_adapter("data/models/gemma3-270m", spec)  # doctest: +SKIP
    >>> save_adapter(model, "data/adapters/gemma3-270m-it")                  # doctest: +SKIP
    >>> merge_adapter("data/models/gemma3-270m", "data/adapters/gemma3-270m-it", "data/models/gemma3-270m-it")  # doctest: +SKIP

Errors are :class:`AdapterError` (a ProbebenchError) naming the file and the fix.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from pathlib import Path
from typing import Callable, Sequence

from probebench.errors import ProbebenchError
from probebench.params.zoo import AdapterSpec
from probebench.zoo.instructions import END_TURN, Instruction, chat_prompt, chat_turn_tokens, \
    heldout_instructions, instruction_examples

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# what the card and the report show: one instruction of each family the fine-tune never saw
SHOWCASE = ("What is 12 plus 30?", "What is the opposite of loud?", "What is the capital of Peru?",
            "Count from 3 to 7.", "Name three colors.")


class AdapterError(ProbebenchError):
    """An adapter that is missing, altered, or made for another base."""


@contextlib.contextmanager
def _quiet_peft():
    """peft asks transformers a deprecated question on every wrap (a FutureWarning per call)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _encode(tokenizer, ex: Instruction) -> tuple[list[int], list[int]]:
    """Token ids of the whole turn and the labels (-100 outside the response and its end-of-turn)."""
    prompt = tokenizer(chat_prompt(ex.instruction)).input_ids
    response = tokenizer(ex.response + END_TURN, add_special_tokens=False).input_ids
    return prompt + response, [-100] * len(prompt) + response


def _response_loss(model, tokenizer, batch: Sequence[Instruction]):
    """Cross-entropy on the response tokens, computing logits only where they are read (the
    vocabulary is 262k wide; the response is a tenth of the tokens)."""
    import torch

    encoded = [_encode(tokenizer, ex) for ex in batch]
    width = max(len(ids) for ids, _ in encoded)
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in encoded])
    labels = torch.tensor([l + [-100] * (width - len(l)) for _, l in encoded])
    mask = torch.arange(width)[None] < torch.tensor([len(i) for i, _ in encoded])[:, None]
    body = model.get_base_model().model if hasattr(model, "get_base_model") else model.model
    hidden = body(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    read = labels[:, 1:] != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][read])
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][read])


def train_adapter(base_dir: str | Path, spec: AdapterSpec, *, progress: Callable[[int], None] | None = None,
                  threads: int | None = None):
    """Train a LoRA adapter on `base_dir`; returns (peft model, tokenizer, metrics) where metrics
    hold the loss curve (every 10 steps), the held-out instructions' exact-match accuracy and
    generations before and after, and the residual drift at mid depth (see `residual_drift`)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from probebench.models.load import load_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(spec.seed)
    base, tokenizer = load_model(base_dir)
    chat_turn_tokens(tokenizer, str(base_dir))
    train = instruction_examples(spec.steps * spec.batch_size, seed=spec.seed)
    heldout = heldout_instructions(spec.n_heldout, seed=spec.seed, exclude={ex.instruction for ex in train})
    before = {"heldout_accuracy": heldout_accuracy(base, tokenizer, heldout),
              "generations": generations(base, tokenizer, SHOWCASE)}
    reference = {k: v.detach().clone() for k, v in base.state_dict().items()}
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.targets), lora_dropout=0.0)
    with _quiet_peft():
        model = get_peft_model(base, config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.lr)
    curve = []
    model.train()
    for step in range(spec.steps):
        loss = _response_loss(model, tokenizer, train[step * spec.batch_size:(step + 1) * spec.batch_size])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == spec.steps - 1:
            curve.append([step, round(float(loss.detach()), 4)])
        if progress:
            progress(step + 1)
    model.eval()
    with model.disable_adapter():
        untouched = all(torch.equal(reference[k], v) for k, v in model.get_base_model().state_dict().items()
                        if k in reference)
    if not untouched:
        raise AdapterError(f"{base_dir}: training changed the base weights; only the adapter may train")
    after = {"heldout_accuracy": heldout_accuracy(model, tokenizer, heldout),
             "generations": generations(model, tokenizer, SHOWCASE)}
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    metrics = {"spec": spec.as_params(), "n_trainable": int(n_trainable), "loss_curve": curve,
               "n_heldout": len(heldout), "before": before, "after": after}
    return model, tokenizer, metrics


def save_adapter(model, out_dir: str | Path) -> dict[str, str]:
    """Write the adapter (config + safetensors) atomically; returns the files' sha256."""
    from probebench.artifacts.io import atomic_dir, file_sha256

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        cfg_path = tmp / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg["base_model_name_or_path"] = None  # a local path says nothing on another machine; the pin holds the base's fingerprint
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        stray = sorted(p.name for p in tmp.iterdir() if p.name not in ADAPTER_FILES)
        for name in stray:  # peft's README.md model card: boilerplate with a date-free template, not needed
            (tmp / name).unlink()
    return {name: file_sha256(out_dir / name) for name in ADAPTER_FILES}


def _check_adapter_dir(adapter_dir: Path) -> None:
    missing = [n for n in ADAPTER_FILES if not (adapter_dir / n).is_file()]
    if missing:
        raise AdapterError(f"{adapter_dir}: no {missing}; restore the pinned adapter (git checkout -- zoo) or "
                           "train it (adapters.<key>.source: train)")


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, *, card: dict | None = None) -> dict:
    """Merge the adapter into the base (float64, stored in the base's dtype) and save a plain HF
    directory with the base's tokenizer and a model card naming base, adapter and training."""
    from peft import PeftModel

    from probebench.artifacts.io import file_sha256
    from probebench.models.load import fingerprint, load_model
    from probebench.weights.convert import CARD_NAME, _save_atomically, _torch_dtype

    base_dir, adapter_dir = Path(base_dir), Path(adapter_dir)
    _check_adapter_dir(adapter_dir)
    base, tokenizer = load_model(base_dir, dtype="float64")
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    stored = config.get("dtype") or config.get("torch_dtype") or "float32"
    try:
        with _quiet_peft():
            merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes of another base, or unknown target modules
        first = str(exc).strip().splitlines()[0][:240]
        raise AdapterError(f"{adapter_dir}: does not fit the base {base_dir} ({type(exc).__name__}: {first}); "
                           "an adapter must be trained on this base (adapters.<key>.base)") from None
    base_card_path = base_dir / CARD_NAME
    base_card = json.loads(base_card_path.read_text(encoding="utf-8")) if base_card_path.is_file() else {}
    dtype = _torch_dtype(stored)
    out_card = {k: v for k, v in base_card.items() if k not in ("files", "import_check")}
    out_card.update({"weights": f"{base_card.get('weights', 'base weights')}; plus a merged LoRA adapter "
                                f"(probebench instruction fine-tune, {adapter_dir.name})",
                     "base": {"dir": base_dir.name, "fingerprint": fingerprint(base_dir)},
                     "adapter": {name: file_sha256(adapter_dir / name) for name in ADAPTER_FILES}, **(card or {})})
    return _save_atomically(merged, tokenizer, Path(out_dir), out_card, True, dtype)


def copy_adapter(src: str | Path, dst: str | Path) -> None:
    from probebench.artifacts.io import atomic_dir

    _check_adapter_dir(Path(src))
    with atomic_dir(dst) as tmp:
        for name in ADAPTER_FILES:
            shutil.copy(Path(src) / name, tmp / name)


def _generate(model, tokenizer, instructions: Sequence[str], max_new_tokens: int) -> list[str]:
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer([chat_prompt(q) for q in instructions], return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = side
    end = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=end,
                             pad_token_id=tokenizer.pad_token_id)
    texts = tokenizer.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=False)
    return [t.split("<end_of_turn>")[0].replace(tokenizer.pad_token or "\0", "").strip() for t in texts]


def generations(model, tokenizer, instructions: Sequence[str], *, max_new_tokens: int = 20) -> dict[str, str]:
    """Greedy answers (up to the end of the model's turn), keyed by instruction."""
    return dict(zip(instructions, _generate(model, tokenizer, instructions, max_new_tokens)))


def heldout_accuracy(model, tokenizer, examples: Sequence[Instruction], *, batch_size: int = 16) -> float:
    """Share of instructions answered exactly (greedy, up to the end of the turn)."""
    hits = 0
    for k in range(0, len(examples), batch_size):
        chunk = examples[k:k + batch_size]
        answers = _generate(model, tokenizer, [ex.instruction for ex in chunk], max_new_tokens=24)
        hits += sum(a == ex.response for a, ex in zip(answers, chunk))
    return round(hits / max(len(examples), 1), 4)


def residuals(model, tokenizer, texts: Sequence[str], *, layer: int):
    """The residual stream at the output of block `layer` at every non-special token of `texts`
    (one text at a time: no padding), as a float64 array (tokens x d_model)."""
    import torch

    from probebench.models.load import block_output, decoder_blocks, hooks

    special = torch.tensor(tokenizer.all_special_ids)
    got = []
    block = decoder_blocks(model)[layer]
    with torch.no_grad(), hooks([(block, lambda m, i, o: got.append(block_output(o)[0].detach()))]):
        for text in texts:
            enc = tokenizer(text, return_tensors="pt")
            model(**enc)
            got[-1] = got[-1][~torch.isin(enc.input_ids[0], special)]
    return torch.cat(got).double().numpy()


def residual_drift(base_ND, tuned_ND, *, massive_dims: Sequence[int] = ()) -> dict:
    """How far a fine-tune moved the residual stream (`residuals` of base and tuned model on the
    same texts): mean per-token cosine and identity R^2 (1 - |h_t - h_b|^2 / |h_t - mean h_t|^2),
    over all dimensions and outside `massive_dims` (where a few dimensions of ~5000 make every
    cosine ~1). Identical residuals give 1.0 on both.

    >>> import numpy as np
    >>> h = np.random.default_rng(0).standard_normal((50, 8))
    >>> d = residual_drift(h, h, massive_dims=[3])
    >>> d["cosine"], d["r2"], d["cosine_outside_massive"], d["r2_outside_massive"]
    (1.0, 1.0, 1.0, 1.0)
    >>> residual_drift(h, -h)["cosine"]
    -1.0
    """
    import numpy as np

    keep = np.ones(base_ND.shape[1], dtype=bool)
    keep[list(massive_dims)] = False

    def both(a, b):
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        r2 = 1.0 - ((b - a) ** 2).sum() / ((b - b.mean(0)) ** 2).sum()
        return round(float(cos.mean()), 4), round(float(r2), 4)

    (cos_all, r2_all), (cos_out, r2_out) = both(base_ND, tuned_ND), both(base_ND[:, keep], tuned_ND[:, keep])
    return {"n_tokens": int(base_ND.shape[0]), "massive_dims": [int(d) for d in massive_dims], "cosine": cos_all,
            "r2": r2_all, "cosine_outside_massive": cos_out, "r2_outside_massive": r2_out}
