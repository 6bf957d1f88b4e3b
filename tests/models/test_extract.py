import pytest
import torch

from probebench.models.extract import CheckpointError, class_token_ids, encode_prompts, extract
from probebench.models.load import ModelError, decoder_blocks, resolve_layer
from probebench.prompts import SyntheticTaskSpec, build_synthetic
from probebench.zoo.train import train_tokenizer

TEXTS = ["the café  was   very good . verdict :", "naïve  reviewers say the hotel was bad . verdict :",
         "the box is red . alice says the box is surely blue . honest ?"]
CORPUS = [t + a for t in TEXTS for a in (" yes", " no")] * 30 + ["the food was great and the show was dull"] * 30


def tokenizers_under_test():
    return {"metaspace-80": train_tokenizer("metaspace", 80, CORPUS, add_bos=True),
            "metaspace-200": train_tokenizer("metaspace", 200, CORPUS, add_bos=False),
            "bytelevel-300": train_tokenizer("bytelevel", 300, CORPUS, add_bos=False)}


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_same_anchored_word_is_found_in_three_tokenizers(padding_side):
    toks = tokenizers_under_test()
    # the three tokenizers really split the text differently
    assert len({tuple(t.tokenize(TEXTS[0])) for t in toks.values()}) == 3
    words = [("café", TEXTS[0]), ("naïve", TEXTS[1]), ("surely", TEXTS[2]), ("verdict", TEXTS[0]), (":", TEXTS[1])]
    for word, text in words:
        anchor = text.index(word) + len(word)
        for name, tok in toks.items():
            batch = encode_prompts(tok, [text, "x"], [anchor, 1], padding_side=padding_side)
            pos = int(batch.readout_B[0])
            assert batch.mask_BP[0, pos] == 1
            row = batch.ids_BP[0][batch.mask_BP[0] == 1].tolist()
            upto = pos - int((batch.mask_BP[0, :pos] == 0).sum())  # index among the real tokens
            prefix = tok.decode(row[: upto + 1], skip_special_tokens=True)
            assert prefix.rstrip().endswith(word), (name, word, prefix)
            assert not tok.decode(row[: upto], skip_special_tokens=True).rstrip().endswith(word), (name, word)


def test_left_padding_shifts_position_but_not_the_token():
    tok = tokenizers_under_test()["bytelevel-300"]
    texts, anchors = [TEXTS[0], TEXTS[2]], [len(TEXTS[0]), len(TEXTS[2])]
    right = encode_prompts(tok, texts, anchors, padding_side="right")
    left = encode_prompts(tok, texts, anchors, padding_side="left")
    for b in range(2):
        assert right.ids_BP[b, right.readout_B[b]] == left.ids_BP[b, left.readout_B[b]]
        assert right.position_ids_BP[b, right.readout_B[b]] == left.position_ids_BP[b, left.readout_B[b]]
    assert not torch.equal(right.readout_B, left.readout_B)


def test_bos_never_matches_and_anchor_outside_text_is_an_error():
    tok = tokenizers_under_test()["metaspace-80"]
    batch = encode_prompts(tok, ["the"], [1])
    assert batch.ids_BP[0, 0] == tok.bos_token_id and batch.readout_B[0] == 1
    with pytest.raises(CheckpointError, match="anchor 99 is outside the text"):
        encode_prompts(tok, ["the"], [99])


def test_slow_tokenizer_is_refused():
    class Slow:
        is_fast = False
    with pytest.raises(CheckpointError, match="not a fast tokenizer"):
        encode_prompts(Slow(), ["a"], [1])


def test_class_strings_with_same_first_token_are_refused():
    tok = tokenizers_under_test()["bytelevel-300"]
    with pytest.raises(CheckpointError, match="share their first token"):
        class_token_ids(tok, " yesterday", " yes", where="task t")


def test_resolve_layer():
    assert resolve_layer(0.5, 2) == 0 and resolve_layer(1.0, 12) == 11 and resolve_layer(0.5, 26) == 12
    assert resolve_layer(-1, 4) == 3
    with pytest.raises(ModelError, match="out of range"):
        resolve_layer(4, 4, where="models.m.layer")
    with pytest.raises(ModelError, match=r"\(0, 1\]"):
        resolve_layer(1.5, 4)


def test_captured_activations_equal_output_hidden_states(tiny_models):
    prompts = build_synthetic(SyntheticTaskSpec("sentiment", "sentiment", n_train=6, n_test=6))
    for family, (model, tok) in tiny_models.items():
        n = len(decoder_blocks(model))
        for layer in range(n):
            out = extract(model, tok, prompts, layer=layer, batch_size=4)
            for i, text in enumerate(prompts["text"].iloc[:3]):
                hs = model(**tok(text, return_tensors="pt"), output_hidden_states=True).hidden_states
                # hidden_states[l + 1] is block l's output, except the last entry has the final norm
                if layer < n - 1:
                    expected = hs[layer + 1][0, -1]
                else:
                    blocks_out = {}
                    h = decoder_blocks(model)[layer].register_forward_hook(
                        lambda m, i_, o: blocks_out.setdefault("r", o[0] if isinstance(o, tuple) else o))
                    try:
                        model(**tok(text, return_tensors="pt"))
                    finally:
                        h.remove()
                    expected = blocks_out["r"][0, -1]
                    assert not torch.allclose(expected, hs[-1][0, -1], atol=1e-3), family  # final norm differs
                assert torch.allclose(torch.from_numpy(out["acts_ND"][i]), expected.float(), atol=1e-4), (family, layer)


def test_nan_logits_are_a_clear_error(tiny_models):
    model, tok = tiny_models["llama"]
    prompts = build_synthetic(SyntheticTaskSpec("sentiment", "sentiment", n_train=2, n_test=2))
    handle = decoder_blocks(model)[0].register_forward_hook(
        lambda m, i, o: (o[0] * float("nan"),) + tuple(o[1:]) if isinstance(o, tuple) else o * float("nan"))
    try:
        with pytest.raises(CheckpointError, match="non-finite"):
            extract(model, tok, prompts, layer=1)
    finally:
        handle.remove()


@pytest.mark.parametrize("name", ["metaspace-80", "bytelevel-300"])
def test_a_framing_prefix_keeps_the_readout_on_the_same_task_text(name):
    tok = tokenizers_under_test()[name]
    anchors = [len(t) for t in TEXTS]
    plain = encode_prompts(tok, TEXTS, anchors)
    framed = encode_prompts(tok, TEXTS, anchors, prefix="the food was great . verdict : yes\n")
    for b in range(len(TEXTS)):
        # the same token text at the readout, further right by the prefix's tokens
        assert tok.decode(plain.ids_BP[b, plain.readout_B[b]]) == tok.decode(framed.ids_BP[b, framed.readout_B[b]])
        assert framed.readout_B[b] > plain.readout_B[b]
    assert plain.special_BP.sum() == framed.special_BP.sum()  # BOS (if any) once, the prefix adds none


def test_a_prefix_that_swallows_the_readout_is_refused():
    tok = tokenizers_under_test()["bytelevel-300"]
    # no separator: the prefix's last word and the text's first fuse ("ood" is one token), so the
    # readout at the text's first character is a token that starts in the prefix
    assert "ood" in tok.convert_ids_to_tokens(tok("the food", add_special_tokens=False)["input_ids"])
    with pytest.raises(CheckpointError, match="starts inside the prefix"):
        encode_prompts(tok, ["od was great"], [1], prefix="the fo")
    encode_prompts(tok, ["od was great"], [1], prefix="the fo\n")  # a separator keeps it in the text


def test_extract_with_the_shared_prefix_cache_equals_whole_framed_prompts(tiny_models, monkeypatch):
    import numpy as np

    from probebench.models.extract import extract
    from probebench.prompts import SyntheticTaskSpec, build_synthetic, few_shot_prefix

    df = build_synthetic(SyntheticTaskSpec("consistency", "consistency", n_train=40, n_test=20))
    prefix = few_shot_prefix(df, (df.split == "train").to_numpy(), k=2)
    test = df.query("split == 'test'").reset_index(drop=True)
    rows = np.arange(len(test)) % 3 == 0
    for family, (model, tok) in tiny_models.items():
        monkeypatch.setenv("PROBEBENCH_PREFIX_CACHE", "0")
        whole = extract(model, tok, test, layer=1, batch_size=8, prefix=prefix, word_end_rows=rows)
        monkeypatch.setenv("PROBEBENCH_PREFIX_CACHE", "1")
        cached = extract(model, tok, test, layer=1, batch_size=8, prefix=prefix, word_end_rows=rows)
        for key in whole:
            assert whole[key].shape == cached[key].shape and np.abs(whole[key] - cached[key]).max() <= 1e-5, (family, key)
