"""probebench.zoo.lora: a planted adapter merges to exactly W + (alpha / r) B A, training moves
the loss and only the adapter, an identical model shows no drift, and an adapter that does not
fit its base, a missing file, a tampered pin or a pin made on another base is refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from probebench.zoo.instructions import chat_prompt, heldout_instructions, instruction_examples
from tests.conftest import tiny_model

peft = pytest.importorskip("peft", reason="peft not installed (pip install -e '.[dev]')")

from probebench.zoo.lora import AdapterError, AdapterSpec, merge_adapter, residual_drift, residuals, \
    save_adapter, train_adapter  # noqa: E402


def base_dir(tmp_path, *, d_model: int = 32, name: str = "base"):
    """A tiny Gemma-2 model whose tokenizer has Gemma's chat-turn tokens, saved like an import."""
    model, tok = tiny_model("gemma2", d_model=d_model)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    model.resize_token_embeddings(len(tok))
    out = tmp_path / name
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_instructions_have_one_right_answer_and_the_heldout_ones_are_new():
    train = instruction_examples(400, seed=0)
    for ex in train:
        if ex.family == "plus":
            a, b = (int(w) for w in ex.instruction.removeprefix("What is ").rstrip("?").split(" plus "))
            assert ex.response == f"{a} plus {b} is {a + b}."
    assert {ex.family for ex in train} == {"plus", "opposite", "capital", "count", "reverse", "spell"}
    held = heldout_instructions(48, seed=0, exclude={ex.instruction for ex in train})
    assert len(held) == 48 and not {ex.instruction for ex in held} & {ex.instruction for ex in train}
    assert instruction_examples(5, seed=0) == instruction_examples(5, seed=0) != instruction_examples(5, seed=1)
    assert chat_prompt("hi").endswith("<start_of_turn>model\n")


def test_a_planted_adapter_merges_to_w_plus_scaled_ba(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = base_dir(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    w0 = model.model.layers[1].self_attn.q_proj.weight.detach().double().clone()
    pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj"]))
    gen = torch.Generator().manual_seed(0)
    planted = {}
    for name, module in pm.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            module.lora_A["default"].weight.data = torch.randn(module.lora_A["default"].weight.shape, generator=gen)
            module.lora_B["default"].weight.data = torch.randn(module.lora_B["default"].weight.shape, generator=gen)
            planted[name] = (module.lora_B["default"].weight.double() @ module.lora_A["default"].weight.double())
    ids = torch.tensor([[2, 5, 9, 11, 7]])
    with torch.no_grad():
        peft_logits = pm(input_ids=ids).logits
    files = save_adapter(pm, tmp_path / "adapter")
    assert set(files) == {"adapter_config.json", "adapter_model.safetensors"}
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    card = merge_adapter(base, tmp_path / "adapter", tmp_path / "merged")
    assert card["adapter"]["adapter_model.safetensors"] == files["adapter_model.safetensors"]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    key = next(k for k in planted if k.endswith("layers.1.self_attn.q_proj"))
    want = (w0 + 3.0 * planted[key]).float()
    assert torch.equal(merged.model.layers[1].self_attn.q_proj.weight, want)  # float64 merge, then one rounding
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, peft_logits, atol=1e-4)
    # a model is its own reference: no drift; the planted adapter moves the residual
    tok = __import__("transformers").AutoTokenizer.from_pretrained(base)
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    texts = ["good movie . verdict :", "the box is red . honest ?"]
    hb = residuals(plain, tok, texts, layer=1)
    same = residual_drift(hb, residuals(plain, tok, texts, layer=1))
    assert (same["cosine"], same["r2"], same["cosine_outside_massive"]) == (1.0, 1.0, 1.0)
    moved = residual_drift(hb, residuals(merged, tok, texts, layer=1))
    assert moved["cosine"] < 0.999 and moved["r2"] < 0.999 and moved["n_tokens"] > 4


def test_training_moves_the_loss_and_only_the_adapter(tmp_path):
    base = base_dir(tmp_path)
    spec = AdapterSpec(rank=4, alpha=8.0, steps=12, batch_size=4, lr=1e-2, n_heldout=4)
    model, _tok, metrics = train_adapter(base, spec, threads=1)
    curve = metrics["loss_curve"]
    assert curve[0][0] == 0 and curve[-1][0] == 11 and curve[-1][1] < curve[0][1]
    assert metrics["n_trainable"] == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert set(metrics["after"]["generations"]) == set(metrics["before"]["generations"])
    assert 0.0 <= metrics["after"]["heldout_accuracy"] <= 1.0


def test_an_adapter_that_does_not_fit_or_is_incomplete_is_refused(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    small = base_dir(tmp_path, d_model=32, name="small")
    wide = base_dir(tmp_path, d_model=48, name="wide")
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(small), LoraConfig(r=2, target_modules=["q_proj"]))
    save_adapter(pm, tmp_path / "adapter")
    with pytest.raises(AdapterError, match="does not fit the base") as exc:
        merge_adapter(wide, tmp_path / "adapter", tmp_path / "merged")
    assert str(tmp_path / "adapter") in str(exc.value) and not (tmp_path / "merged").exists()
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match=r"adapter_model.safetensors.*git checkout -- zoo"):
        merge_adapter(small, tmp_path / "adapter", tmp_path / "merged")


def test_a_pinned_adapter_is_checked_against_its_files_and_its_base(tmp_path):
    from probebench.artifacts.pinned import PinnedError, pin_dir, verify
    from probebench.params.schema import Params

    params = Params(tasks={}, imports={"g": {"hf_dir": "x"}}, adapters={"g-it": {"base": "g"}})
    (tmp_path / "trained").mkdir()
    (tmp_path / "trained" / "adapter_model.safetensors").write_bytes(b"weights")
    entry = pin_dir(tmp_path / "trained", tmp_path / "pinned", params=params.adapter_training("g-it", "aa"), metrics={})
    retrain = ("adapters.g-it.source: train", "probebench zoo pin g-it")
    verify(tmp_path / "pinned", entry, params=params.adapter_training("g-it", "aa"), where="adapter@g-it", retrain=retrain)
    with pytest.raises(PinnedError, match="fingerprints .* of the models it was trained on.*adapters.g-it.source: train"):
        verify(tmp_path / "pinned", entry, params=params.adapter_training("g-it", "bb"), where="adapter@g-it",
               retrain=retrain)
    (tmp_path / "pinned" / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(PinnedError, match="do not match"):
        verify(tmp_path / "pinned", entry, params=params.adapter_training("g-it", "aa"), where="adapter@g-it",
               retrain=retrain)
    with pytest.raises(ValueError, match="adapters.x.base 'nope' is not a key of imports"):
        Params(tasks={}, imports={"g": {"hf_dir": "x"}}, adapters={"x": {"base": "nope"}})


def test_zoo_pin_pins_a_trained_adapter_with_its_bases_fingerprint(tmp_path, monkeypatch):
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from probebench.artifacts.pinned import read_manifest, verify
    from probebench.cli import app
    from probebench.models.load import fingerprint
    from probebench.params.schema import load_params

    monkeypatch.chdir(tmp_path)
    base = base_dir(tmp_path / "data" / "models", name="g")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "tasks": {"sentiment": {"kind": "sentiment"}}, "imports": {"g": {"hf_dir": "x"}},
        "adapters": {"g-it": {"base": "g", "steps": 3}}}))
    runner = CliRunner()
    result = runner.invoke(app, ["zoo", "pin", "g-it"])
    assert result.exit_code == 2 and "adapters.g-it.source=train" in result.output  # nothing trained yet
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=2, target_modules=["q_proj"]))
    save_adapter(pm, tmp_path / "data" / "adapters" / "g-it")
    (tmp_path / "metrics" / "adapter").mkdir(parents=True)
    (tmp_path / "metrics" / "adapter" / "g-it.json").write_text(json.dumps({"after": {"heldout_accuracy": 0.5}}))
    result = runner.invoke(app, ["zoo", "pin", "g-it"])
    assert result.exit_code == 0, result.output
    entry = read_manifest("zoo")["g-it"]
    assert entry["params"]["models"] == {"g": fingerprint(base)} and entry["params"]["spec"]["steps"] == 3
    assert entry["metrics"] == {"after": {"heldout_accuracy": 0.5}}
    params = load_params("params.yaml")
    verify("zoo/g-it", entry, params=params.adapter_training("g-it", fingerprint(base)), where="adapter@g-it")
