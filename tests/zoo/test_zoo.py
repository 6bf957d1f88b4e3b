import torch

from probebench.models.load import load_model
from probebench.prompts import SyntheticTaskSpec
from probebench.zoo.train import FAMILIES, ZooModelSpec, build_zoo_model

TASKS = [SyntheticTaskSpec("sentiment", "sentiment"), SyntheticTaskSpec("consistency", "consistency")]
VOCAB = {"llama": 140, "qwen2": 450, "qwen3": 360, "gemma2": 200, "gpt2": 320}


def build_and_save(family, path, steps=3, **kw):
    spec = ZooModelSpec(family=family, d_model=32, n_layers=2, n_heads=4, vocab_size=VOCAB[family], steps=steps,
                        batch_size=8, **kw)
    model, tok, metrics = build_zoo_model(spec, TASKS, **({"base_dir": kw.pop("base_dir")} if "base_dir" in kw else {}))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok, metrics


def test_every_family_trains_saves_and_loads_back_through_auto_classes(tmp_path):
    for family in FAMILIES:
        model, tok, metrics = build_and_save(family, tmp_path / family)
        assert set(metrics["accuracy"]) == {"sentiment", "consistency"}
        loaded, ltok = load_model(tmp_path / family)
        assert type(loaded).__name__ == type(model).__name__ and loaded.config.model_type == family
        assert ltok.is_fast and ltok.tokenize("the box is red") == tok.tokenize("the box is red")
        ids = ltok("review : the food was good . verdict :", return_tensors="pt")
        with torch.no_grad():
            assert torch.allclose(model.eval()(**ids).logits, loaded(**ids).logits, atol=1e-5)


def test_rebuilding_from_the_same_params_gives_byte_identical_weights(tmp_path):
    build_and_save("llama", tmp_path / "a", steps=5)
    build_and_save("llama", tmp_path / "b", steps=5)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    build_and_save("llama", tmp_path / "c", steps=5, seed=1)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() != (tmp_path / "c" / "model.safetensors").read_bytes()


def test_it_finetune_keeps_tokenizer_and_width_and_changes_weights(tmp_path):
    base, tok, _ = build_and_save("gemma2", tmp_path / "base")
    spec = ZooModelSpec(family="gemma2", d_model=32, n_layers=2, n_heads=4, vocab_size=200, steps=3, batch_size=8,
                        base="base")
    it, it_tok, _ = build_zoo_model(spec, TASKS, base_dir=tmp_path / "base")
    assert it_tok.get_vocab() == tok.get_vocab() and it.config.hidden_size == base.config.hidden_size
    assert not torch.allclose(it.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
