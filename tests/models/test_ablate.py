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


READOUT_SPECS = [AblationSpec(positions="readout"), AblationSpec(mode="mean", positions="readout")]


@pytest.fixture
def last_token_calls(monkeypatch):
    """Counts the last-token engine's passes (so a test can tell it really ran, not a fallback)."""
    import probebench.models.ablate as ablate

    calls = []  # per pass: the batch's cached prefix length (0: the whole prompt ran)
    original = ablate._last_token_logits
    monkeypatch.setattr(ablate, "_last_token_logits", lambda *a, **kw: calls.append(a[1].n_past) or original(*a, **kw))
    return calls


@pytest.mark.parametrize("framed", [False, True])
@pytest.mark.parametrize("spec", READOUT_SPECS)
def test_last_token_engine_equals_the_full_forward_on_every_architecture(tiny_models, spec, framed, last_token_calls):
    """Readout-only ablation through the clean pass's KV cache (one query token per edit) gives
    the numbers of a full forward with a hook, with and without a cached framing prefix, on
    uneven prompt lengths (right padding: some rows have pad tokens after the readout)."""
    from probebench.prompts import few_shot_prefix

    prompts = FRAMED.query("split == 'test'").reset_index(drop=True) if framed else PROMPTS
    prefix = few_shot_prefix(FRAMED, (FRAMED.split == "train").to_numpy(), k=2) if framed else ""
    for family, (model, tok) in tiny_models.items():
        d = model.config.get_text_config().hidden_size
        kw = dict(layer=1, dirs_KD=np.random.default_rng(0).normal(size=(5, d)), spec=spec, prefix=prefix,
                  mus_K=np.random.default_rng(1).normal(size=5), batch_size=7)
        naive = ablation_effects(model, tok, prompts, engine="hooks", **kw)
        before = len(last_token_calls)
        fast = ablation_effects(model, tok, prompts, **kw)  # auto: readout-only -> last_token
        assert len(last_token_calls) > before, family
        for key in naive:
            assert np.abs(fast[key] - naive[key]).max() <= 1e-4, (family, key)
        assert np.abs(fast["ablated_margin_KN"] - fast["clean_margin_N"]).max() > 1e-4, family


def test_last_token_readout_edits_and_kl_equal_the_prefix_engine(tiny_models, last_token_calls):
    """The crosscoder audit's path: per-prompt edits at the readout, margins and KL, last-token
    engine against the whole-prompt one; one pass carries many edits (chunks of k > 1)."""
    from probebench.models.ablate import readout_edit_effects

    for family, (model, tok) in tiny_models.items():
        d = model.config.get_text_config().hidden_size
        edits = np.random.default_rng(3).normal(size=(6, len(PROMPTS), d)) * 3
        ref = readout_edit_effects(model, tok, PROMPTS, layer=0, edits_KND=edits, batch_size=9, engine="prefix")
        before = len(last_token_calls)
        out = readout_edit_effects(model, tok, PROMPTS, layer=0, edits_KND=edits, batch_size=9)
        assert len(last_token_calls) > before, family
        for key in ref:
            assert np.abs(out[key] - ref[key]).max() <= 1e-4, (family, key)
        assert out["kl_KN"].max() > 1e-3, family


def test_last_token_engine_carries_a_sliding_window_shorter_than_the_prompt(tiny_models, last_token_calls):
    """Gemma-2's local layers see only the last `sliding_window` keys: with a window of 4 tokens
    (prompts are ~20) the last-token masks must carry it, per layer type. The window must matter
    (the full forward with and without it differs), or this test could not fail."""
    model, tok = tiny_models["gemma2"]
    config = model.config.get_text_config()
    d, window = config.hidden_size, config.sliding_window
    kw = dict(layer=0, dirs_KD=np.random.default_rng(0).normal(size=(3, d)), spec=AblationSpec(positions="readout"),
              batch_size=10)
    try:
        config.sliding_window = 4
        short = ablation_effects(model, tok, PROMPTS, engine="hooks", **kw)
        fast = ablation_effects(model, tok, PROMPTS, **kw)
        config.sliding_window = 10_000
        unlimited = ablation_effects(model, tok, PROMPTS, engine="hooks", **kw)
    finally:
        config.sliding_window = window
    assert last_token_calls
    assert np.abs(short["ablated_margin_KN"] - unlimited["ablated_margin_KN"]).max() > 1e-3
    for key in short:
        assert np.abs(fast[key] - short[key]).max() <= 1e-4, key


def test_last_token_engine_is_refused_for_edits_beyond_the_readout(tiny_models):
    model, tok = tiny_models["llama"]
    with pytest.raises(AblationError, match="readout token at one block"):
        ablation_effects(model, tok, PROMPTS, layer=1, dirs_KD=np.ones((1, 32)), spec=AblationSpec(),
                         engine="last_token")


def test_last_token_engine_with_text_after_the_readout_and_one_edit_per_pass(tiny_models, last_token_calls):
    """Rows whose readout is not their last token (text follows the anchor, so the clean cache
    holds positions the edited token must not see), and a budget that allows one edit per pass
    (many chunks, k0 > 0)."""
    after = PROMPTS.assign(text=PROMPTS.text + " and then the review went on for a while .")
    assert (after.anchor < after.text.str.len() - 10).all()
    for family, (model, tok) in tiny_models.items():
        d = model.config.get_text_config().hidden_size
        kw = dict(layer=1, dirs_KD=np.random.default_rng(4).normal(size=(3, d)), spec=AblationSpec(positions="readout"),
                  batch_size=10)
        naive = ablation_effects(model, tok, after, engine="hooks", **kw)
        before = len(last_token_calls)
        fast = ablation_effects(model, tok, after, memory_budget_bytes=1, **kw)
        assert len(last_token_calls) - before >= 3 * 3, family  # 3 batches x 3 one-edit chunks
        for key in naive:
            assert np.abs(fast[key] - naive[key]).max() <= 1e-4, (family, key)


def test_last_token_engine_starts_from_a_cached_prefix_on_a_sliding_window_model(tiny_models, last_token_calls):
    """Gemma-2 with a window longer than the framed prompt: the engine runs after the prefix
    cache, whose layers are sliding-window cache layers, and agrees with the full forward."""
    from probebench.prompts import few_shot_prefix

    model, tok = tiny_models["gemma2"]
    config = model.config.get_text_config()
    window = config.sliding_window
    test = FRAMED.query("split == 'test'").reset_index(drop=True)
    prefix = few_shot_prefix(FRAMED, (FRAMED.split == "train").to_numpy(), k=2)
    kw = dict(layer=1, dirs_KD=np.random.default_rng(5).normal(size=(3, config.hidden_size)),
              spec=AblationSpec(positions="readout"), batch_size=8, prefix=prefix)
    try:
        config.sliding_window = 100
        naive = ablation_effects(model, tok, test, engine="hooks", **kw)
        fast = ablation_effects(model, tok, test, **kw)
    finally:
        config.sliding_window = window
    assert last_token_calls and min(last_token_calls) > 10  # every pass started from the cached prefix
    for key in naive:
        assert np.abs(fast[key] - naive[key]).max() <= 1e-4, key


def test_mixed_layers_without_a_per_type_mask_use_the_prefix_engine(tiny_models, last_token_calls):
    """A Mistral-like model whose config mixes full and sliding layers but whose forward takes one
    mask: the last-token engine steps aside (it would need a mask per layer type) and the numbers
    still equal the full forward; the same model with every layer sliding uses it."""
    from transformers import MistralConfig, MistralForCausalLM

    _, tok = tiny_models["llama"]
    config = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, sliding_window=6,
                           layer_types=["full_attention", "sliding_attention"], bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = MistralForCausalLM(config).eval().requires_grad_(False)
    kw = dict(layer=0, dirs_KD=np.random.default_rng(6).normal(size=(2, 32)), spec=AblationSpec(positions="readout"),
              batch_size=10)
    naive = ablation_effects(model, tok, PROMPTS, engine="hooks", **kw)
    mixed = ablation_effects(model, tok, PROMPTS, **kw)
    assert not last_token_calls
    assert np.abs(mixed["ablated_margin_KN"] - naive["ablated_margin_KN"]).max() <= 1e-4
    config.layer_types = ["sliding_attention", "sliding_attention"]
    naive = ablation_effects(model, tok, PROMPTS, engine="hooks", **kw)
    sliding = ablation_effects(model, tok, PROMPTS, **kw)
    assert last_token_calls
    assert np.abs(sliding["ablated_margin_KN"] - naive["ablated_margin_KN"]).max() <= 1e-4
