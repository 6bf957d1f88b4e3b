import numpy as np
import pytest
import torch

from probebench.models.ablate import AblationError, AblationSpec, ablate_resid, ablation_effects
from probebench.models.load import decoder_blocks
from probebench.prompts import SyntheticTaskSpec, build_synthetic

PROMPTS = build_synthetic(SyntheticTaskSpec("consistency", "consistency", n_train=4, n_test=24)).query("split == 'test'")


def test_projection_leaves_residual_orthogonal_to_direction():
    g = torch.Generator().manual_seed(0)
    resid = torch.randn(2, 3, 5, 16, generator=g, dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.randn(2, 16, generator=g, dtype=torch.float64), dim=-1)
    out = ablate_resid(resid, dirs, None, None)
    assert torch.allclose(torch.einsum("kbpd,kd->kbp", out, dirs), torch.zeros(2, 3, 5, dtype=torch.float64), atol=1e-12)
    # the orthogonal complement is untouched
    assert torch.allclose(out + torch.einsum("kbpd,kd->kbp", resid, dirs)[..., None] * dirs[:, None, None], resid)
    assert out is not resid


def test_mean_ablation_sets_component_to_mu_and_readout_only_touches_one_position():
    g = torch.Generator().manual_seed(1)
    resid = torch.randn(1, 2, 4, 8, generator=g, dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.randn(1, 8, generator=g, dtype=torch.float64), dim=-1)
    only_BP = torch.zeros(2, 4, dtype=torch.bool)
    only_BP[0, 3] = only_BP[1, 1] = True
    out = ablate_resid(resid, dirs, torch.tensor([0.7], dtype=torch.float64), only_BP)
    comp = torch.einsum("kbpd,kd->kbp", out, dirs)
    assert torch.allclose(comp[0, 0, 3], torch.tensor(0.7, dtype=torch.float64))
    assert torch.allclose(comp[0, 1, 1], torch.tensor(0.7, dtype=torch.float64))
    untouched = torch.ones(2, 4, dtype=torch.bool)
    untouched[0, 3] = untouched[1, 1] = False
    assert torch.equal(out[0][untouched], resid[0][untouched])


@pytest.mark.parametrize("spec", [AblationSpec(), AblationSpec(positions="readout"), AblationSpec(layers="from_layer"),
                                  AblationSpec(mode="mean")])
def test_prefix_reuse_equals_full_forward_with_hook_on_every_architecture(tiny_models, spec):
    for family, (model, tok) in tiny_models.items():
        d = model.config.get_text_config().hidden_size
        dirs = np.random.default_rng(0).normal(size=(5, d))
        mus = np.random.default_rng(1).normal(size=5)
        kw = dict(layer=1, dirs_KD=dirs, spec=spec, mus_K=mus, batch_size=10)
        fast = ablation_effects(model, tok, PROMPTS, engine="prefix", **kw)
        naive = ablation_effects(model, tok, PROMPTS, engine="hooks", **kw)
        for key in naive:
            assert np.abs(fast[key] - naive[key]).max() <= 1e-4, (family, spec, key)
        # ablation really changed something (a test that cannot fail is a defect)
        assert np.abs(fast["ablated_margin_KN"] - fast["clean_margin_N"]).max() > 1e-5, family


def test_hooks_and_stubs_are_removed_after_an_error(tiny_models):
    model, tok = tiny_models["llama"]
    blocks_before = list(decoder_blocks(model))
    # compared with what was there before, not with none: transformers 5 leaves its own output
    # recorders on the blocks once any test of this session has asked for output_hidden_states
    hooks_before = [dict(b._forward_hooks) for b in blocks_before]
    bad = PROMPTS.assign(anchor=10_000)
    with pytest.raises(ValueError, match="anchor"):
        ablation_effects(model, tok, bad, layer=1, dirs_KD=np.ones((1, 32)), spec=AblationSpec())
    assert list(decoder_blocks(model)) == blocks_before
    assert [dict(b._forward_hooks) for b in decoder_blocks(model)] == hooks_before


def test_clean_margin_matches_a_plain_forward(tiny_models):
    model, tok = tiny_models["gpt2"]
    out = ablation_effects(model, tok, PROMPTS.iloc[:4], layer=0, dirs_KD=np.ones((1, 32)), spec=AblationSpec())
    pos, neg = tok(" yes", add_special_tokens=False)["input_ids"][0], tok(" no", add_special_tokens=False)["input_ids"][0]
    for i, text in enumerate(PROMPTS["text"].iloc[:4]):
        logits = model(**tok(text, return_tensors="pt")).logits[0, -1]
        assert abs(float(logits[pos] - logits[neg]) - out["clean_margin_N"][i]) < 1e-4


def test_bad_ablation_config_is_refused():
    with pytest.raises(AblationError, match="per-layer mean"):
        AblationSpec(mode="mean", layers="from_layer")
    with pytest.raises(AblationError, match="mode"):
        AblationSpec(mode="zero")


def test_readout_edit_matches_projection_at_readout_and_kl_is_nonnegative(tiny_models):
    """Subtracting (h.u)u at the readout token through the edit path equals projection ablation
    restricted to the readout position; KL(ablated || clean) >= 0 and is 0 for a zero edit."""
    from probebench.models.extract import extract

    for family, (model, tok) in tiny_models.items():
        d = model.config.get_text_config().hidden_size
        u = np.random.default_rng(2).normal(size=d)
        u /= np.linalg.norm(u)
        acts = extract(model, tok, PROMPTS, layer=1)["acts_ND"].astype(np.float64)
        edits = np.stack([(acts @ u)[:, None] * u[None, :], np.zeros_like(acts)])
        out = __import__("probebench.models.ablate", fromlist=["x"]).readout_edit_effects(
            model, tok, PROMPTS, layer=1, edits_KND=edits, batch_size=7)
        ref = ablation_effects(model, tok, PROMPTS, layer=1, dirs_KD=u[None], spec=AblationSpec(positions="readout"))
        assert np.abs(out["ablated_margin_KN"][0] - ref["ablated_margin_KN"][0]).max() <= 1e-4, family
        assert (out["kl_KN"] >= 0).all() and np.abs(out["kl_KN"][1]).max() <= 1e-5 and out["kl_KN"][0].max() > 0
        assert np.abs(out["ablated_margin_KN"][1] - out["clean_margin_N"]).max() <= 1e-4


def test_special_tokens_are_not_edited_unless_asked(tiny_models):
    """BOS (the attention sink of real models) keeps its residual under an all-positions ablation;
    with edit_special it is edited like every other token, and the effects differ."""
    from probebench.models.ablate import edit_positions
    from probebench.models.extract import encode_prompts

    model, tok = tiny_models["llama"]  # the llama family adds a BOS token
    batch = encode_prompts(tok, PROMPTS.text.tolist()[:4], PROMPTS.anchor.tolist()[:4])
    assert batch.special_BP[:, 0].all()
    keep = edit_positions(batch, AblationSpec())
    assert not keep[:, 0].any() and keep[batch.mask_BP.bool() & ~batch.special_BP].all()
    assert edit_positions(batch, AblationSpec(edit_special=True)) is None
    u = np.random.default_rng(0).standard_normal((1, 32))
    default = ablation_effects(model, tok, PROMPTS, layer=1, dirs_KD=u, spec=AblationSpec())
    special = ablation_effects(model, tok, PROMPTS, layer=1, dirs_KD=u, spec=AblationSpec(edit_special=True))
    assert not np.allclose(default["ablated_margin_KN"], special["ablated_margin_KN"])
    np.testing.assert_array_equal(default["clean_margin_N"], special["clean_margin_N"])


FRAMED = build_synthetic(SyntheticTaskSpec("sentiment", "sentiment", n_train=40, n_test=20))


@pytest.mark.parametrize("spec", [AblationSpec(), AblationSpec(positions="readout"), AblationSpec(layers="from_layer"),
                                  AblationSpec(mode="mean", positions="readout"), AblationSpec(edit_special=True)])
def test_shared_prefix_cache_equals_running_every_framed_prompt_whole(tiny_models, spec, monkeypatch):
    from probebench.models.extract import drop_shared_prefix, encode_prompts, shared_prefix
    from probebench.prompts import few_shot_prefix

    prefix = few_shot_prefix(FRAMED, (FRAMED.split == "train").to_numpy(), k=2)
    test = FRAMED.query("split == 'test'").reset_index(drop=True)
    for family, (model, tok) in tiny_models.items():
        shared = shared_prefix(tok, prefix, test.text[0])
        batch = encode_prompts(tok, test.text.tolist(), test.anchor.tolist(), prefix=prefix)
        assert shared is not None and drop_shared_prefix(batch, shared).n_past == shared.n > 10  # the cache is used
        d = model.config.get_text_config().hidden_size
        kw = dict(layer=1, dirs_KD=np.random.default_rng(0).normal(size=(3, d)), spec=spec,
                  mus_K=np.random.default_rng(1).normal(size=3), batch_size=8, prefix=prefix)
        for engine in ("prefix", "hooks"):
            monkeypatch.setenv("PROBEBENCH_PREFIX_CACHE", "0")
            whole = ablation_effects(model, tok, test, engine=engine, **kw)
            monkeypatch.setenv("PROBEBENCH_PREFIX_CACHE", "1")
            cached = ablation_effects(model, tok, test, engine=engine, **kw)
            for key in whole:
                assert np.abs(whole[key] - cached[key]).max() <= 1e-5, (family, spec, engine, key)
            assert np.abs(cached["ablated_margin_KN"] - cached["clean_margin_N"]).max() > 1e-4, family


def test_a_batch_that_does_not_share_the_prefix_is_run_whole(tiny_models):
    from probebench.models.extract import drop_shared_prefix, encode_prompts, shared_prefix

    _, tok = tiny_models["llama"]
    test = FRAMED.query("split == 'test'").reset_index(drop=True)
    shared = shared_prefix(tok, "the movie was great . verdict : yes\n", test.text[0])
    other = encode_prompts(tok, test.text[:2].tolist(), test.anchor[:2].tolist(), prefix="the book was bad . verdict : no\n")
    assert drop_shared_prefix(other, shared) is None
    assert shared_prefix(tok, "", test.text[0]) is None and drop_shared_prefix(other, None) is None
