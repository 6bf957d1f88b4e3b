"""Issue 13: every user mistake gets one line (exit 2, naming the key or file and the fix) before
any compute, and nothing is written or removed. Each test plants the mistake and checks the line,
the exit code and the untouched directory."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from probebench.cli import main as cli
from probebench.models.extract import CheckpointError, ClassStringWarning, class_token_ids, extract
from probebench.models.load import ModelError, load_model
from probebench.params.schema import ParamsError, load_params
from probebench.artifacts.store import CellStore, StoreError
from probebench.prompts import PromptSetError, SyntheticTaskSpec, build_synthetic, hash_split, read_user_prompts
from probebench.zoo.train import train_tokenizer

from tests.conftest import tiny_model
from tests.support.check import check_fails, snapshot

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
CORPUS = [f"the box is {c} . honest ?{a}" for c in ("red", "blue", "big") for a in (" yes", " no")] * 40


def project_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())




def check_passes(tmp_path: Path, raw: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    result = runner.invoke(cli.app, ["check", str(path)])
    assert result.exit_code == 0, result.output
    return result


def small_params(**matrix) -> dict:
    """The project's params without the crosscoder audits and with tasks small enough to build fast."""
    raw = project_params()
    raw["crosscoders"] = {}
    raw["matrix"].update(matrix)
    return raw


def write_prompts(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


def prompt_rows(n: int, **over) -> list[dict]:
    return [{"id": f"p{i:03d}", "text": f"prompt number {i} . ok ?", "label": i % 2, "positive": " yes",
             "negative": " no", **over} for i in range(n)]


# --- item 1: class strings the tokenizer does not know ------------------------------------------

@pytest.fixture(scope="module")
def toks():
    return {"metaspace": train_tokenizer("metaspace", 80, CORPUS, add_bos=True),
            "bytelevel": train_tokenizer("bytelevel", 300, CORPUS, add_bos=False)}


@pytest.mark.parametrize("style,positive,problem", [
    ("metaspace", " ☃", "holds the unknown token '<unk>'"),   # read as '▁' + '<unk>' (the case)
    ("bytelevel", "☃", "byte piece of a character"),          # 'â' of the UTF-8 bytes e2 98 83
    ("bytelevel", " ☃", "bare space token"),                   # 'Ġ' then bytes
    ("metaspace", "  yes", "bare space token"),                # '▁' then '▁yes'
])
def test_unknown_class_strings_are_refused(toks, style, positive, problem):
    with pytest.raises(CheckpointError, match=problem) as exc:
        class_token_ids(toks[style], positive, " no", where="tasks.t")
    assert str(exc.value).startswith("tasks.t: class string") and "\n" not in str(exc.value)


def test_unknown_first_token_is_refused():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    word = Tokenizer(models.WordLevel({"<unk>": 0, "yes": 1, "no": 2}, unk_token="<unk>"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=word, unk_token="<unk>")
    assert class_token_ids(tok, "yes", "no") == (1, 2)
    with pytest.raises(CheckpointError, match=r"class string 'maybe' starts with the unknown token '<unk>'"):
        class_token_ids(tok, "maybe", "no", where="tasks.t")


def test_multi_token_class_string_warns_and_uses_the_first_token(toks):
    tok = toks["bytelevel"]
    with pytest.warns(ClassStringWarning, match=r"' yes box' is \d+ tokens .*only the first, 'Ġyes'"):
        pos, neg = class_token_ids(tok, " yes box", " no", where="tasks.t")
    assert (pos, neg) == class_token_ids(tok, " yes", " no")


def test_default_class_strings_are_one_known_token_in_every_zoo_family(tiny_models):
    for family, (_, tok) in tiny_models.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no ClassStringWarning either
            pos, neg = class_token_ids(tok, " yes", " no", where=family)
        assert tok.convert_ids_to_tokens([pos, neg]) in (["▁yes", "▁no"], ["Ġyes", "Ġno"]), family


def test_extract_refuses_an_unknown_class_string_before_any_forward(tiny_models):
    model, tok = tiny_models["llama"]
    prompts = build_synthetic(SyntheticTaskSpec("t", "sentiment", n_train=4, n_test=4, positive=" ☃"))
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(CheckpointError, match="class string ' ☃'"):
            extract(model, tok, prompts, layer=0, where="extract@llama task t")
    finally:
        handle.remove()
    assert calls == []


# --- items 2 and 3 (fixed in params.py): NaN thresholds, boolean layers ---------------------------

@pytest.mark.parametrize("section,key,value,needle", [
    ("matrix", "not_same_threshold", float("nan"), "matrix.not_same_threshold"),
    ("matrix", "cosine_confound_threshold", float("inf"), "matrix.cosine_confound_threshold"),
    ("matrix", "within_threshold", 1.5, "matrix.within_threshold"),
    ("crosscoders/zoo-gemma2", "cos_threshold", float("nan"), "crosscoders.zoo-gemma2.cos_threshold"),
    ("crosscoders/gemma3-270m", "ce_threshold", 2.0, "crosscoders.gemma3-270m.ce_threshold"),
])
def test_thresholds_must_be_finite_and_in_range(tmp_path, section, key, value, needle):
    raw = project_params()
    target = raw
    for part in section.split("/"):
        target = target[part]
    target[key] = value
    check_fails(tmp_path, raw, needle)


def test_boolean_layer_is_refused(tmp_path):
    raw = project_params()
    raw["models"]["llama-s"]["layer"] = True
    check_fails(tmp_path, raw, "models.llama-s.layer", "True is not a layer")


# --- item 4: ids are strings ------------------------------------------------------------------------

def test_csv_ids_with_leading_zeros_stay_strings(tmp_path):
    rows = [{"id": i, "text": f"prompt {i} . ok ?", "label": n % 2, "positive": " yes", "negative": " no"}
            for n, i in enumerate(["000", "001", "01", "1", "010", "10"])]
    path = tmp_path / "p.csv"
    path.write_text("id,text,label,positive,negative\n" + "".join(
        f"{r['id']},{r['text']},{r['label']},{r['positive']},{r['negative']}\n" for r in rows))
    df = read_user_prompts(path, name="t", split_salt="s", test_fraction=0.5)
    assert sorted(df["id"]) == sorted(r["id"] for r in rows)  # "1" and "01" are different prompts
    assert all(s == hash_split(i, "s", 0.5) for i, s in zip(df["id"], df["split"]))


def test_numeric_ids_become_their_decimal_string(tmp_path):
    rows = prompt_rows(6)
    for n, r in enumerate(rows):
        r["id"] = n + 1
    jsonl = read_user_prompts(write_prompts(tmp_path / "p.jsonl", rows), name="t", split_salt="s", test_fraction=0.5)
    parquet = read_user_prompts(write_prompts(tmp_path / "p.parquet", rows), name="t", split_salt="s",
                                test_fraction=0.5)
    as_float = [{**r, "id": float(r["id"])} for r in rows]
    floats = read_user_prompts(write_prompts(tmp_path / "f.parquet", as_float), name="t", split_salt="s",
                               test_fraction=0.5)
    for df in (jsonl, parquet, floats):
        assert list(df["id"]) == ["1", "2", "3", "4", "5", "6"]
    pd.testing.assert_frame_equal(jsonl, parquet)


@pytest.mark.parametrize("ids,match", [([1, None, 3, 4], "row 2 has no id"), ([1, 2.5, 3, 4], "fractional id 2.5"),
                                       (["a", "", "c", "d"], "row 2 has no id")])
def test_missing_or_fractional_ids_are_refused(tmp_path, ids, match):
    rows = [{**r, "id": i} for r, i in zip(prompt_rows(4), ids)]
    with pytest.raises(PromptSetError, match=match):
        read_user_prompts(write_prompts(tmp_path / "p.jsonl", rows), name="t", split_salt="s", test_fraction=0.5)


# --- item 9: prompt text stored as bytes or null; a task with no test rows ------------------------

@pytest.mark.parametrize("fmt,value,got,first", [
    ("parquet", b"the box is red", r"b'prompt number 0 . ok \?' \(bytes\)", "p000"),  # binary column: all bytes
    ("jsonl", None, "null", "p003"), ("parquet", None, "null", "p003"), ("jsonl", "", r"'' \(str\)", "p003")])
def test_text_as_bytes_or_null_names_the_row(tmp_path, fmt, value, got, first):
    rows = prompt_rows(6)
    if isinstance(value, bytes):
        for r in rows:
            r["text"] = r["text"].encode()
    rows[3]["text"] = value
    with pytest.raises(PromptSetError, match=rf"id '{first}' has text {got}; text must be a non-empty string"):
        read_user_prompts(write_prompts(tmp_path / f"p.{fmt}", rows), name="t", split_salt="s", test_fraction=0.5)


@pytest.mark.parametrize("split,missing", [("train", "test"), ("test", "train")])
def test_a_prompt_set_without_test_or_train_rows_is_refused(tmp_path, split, missing):
    path = write_prompts(tmp_path / "p.jsonl", prompt_rows(6, split=split))
    with pytest.raises(PromptSetError, match=rf"p.jsonl: no {missing} rows among 6 prompts"):
        read_user_prompts(path, name="t", split_salt="s", test_fraction=0.5)


def test_prompts_stage_refuses_bytes_text_and_writes_nothing(tmp_path):
    rows = prompt_rows(8)
    for r in rows:
        r["text"] = r["text"].encode()
    write_prompts(tmp_path / "mine.parquet", rows)
    raw = small_params(scored_run=False)
    raw["tasks"] = {"mine": {"file": "mine.parquet"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    before = snapshot(tmp_path)
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "prompts.py"), "mine"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
    assert "mine.parquet: id 'p000' has text b'prompt number 0 . ok ?' (bytes)" in lines[0]
    assert snapshot(tmp_path) == before


# --- item 7: `check` knows everything params and inputs can tell ---------------------------------------

def test_check_refuses_n_test_below_min_n_for_a_scored_run(tmp_path):
    raw = small_params()
    raw["tasks"]["sentiment"]["n_test"] = 150
    check_fails(tmp_path, raw, "tasks.sentiment has N=150 test prompts, fewer than matrix.min_n=200",
                "raise tasks.sentiment.n_test or set matrix.scored_run: false")
    raw["matrix"]["scored_run"] = False
    check_passes(tmp_path, raw)


def test_check_counts_the_test_rows_of_a_prompt_file(tmp_path):
    write_prompts(tmp_path / "mine.jsonl", prompt_rows(40, split="train") + [
        {**r, "id": f"t{i}", "text": f"test prompt {i} . ok ?", "split": "test"} for i, r in enumerate(prompt_rows(30))])
    raw = small_params()
    raw["tasks"]["mine"] = {"file": "mine.jsonl"}
    check_fails(tmp_path, raw, "tasks.mine has N=30 test prompts, fewer than matrix.min_n=200",
                "add test prompts to mine.jsonl")
    raw["matrix"]["min_n"] = 30
    check_passes(tmp_path, raw)


def test_check_reports_a_bad_prompt_file(tmp_path):
    write_prompts(tmp_path / "mine.jsonl", prompt_rows(6, split="train"))
    raw = small_params(scored_run=False)
    raw["tasks"]["mine"] = {"file": "mine.jsonl"}
    check_fails(tmp_path, raw, "mine.jsonl: no test rows among 6 prompts")


def test_duplicate_keys_are_refused_with_their_line(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    first = "  llama-s: {path: data/zoo/llama-s"
    assert text.count(first) == 1
    dup = text.replace("  qwen2-s: {path: data/zoo/qwen2-s", "  llama-s: {path: data/zoo/qwen2-s")
    line = text.splitlines().index(next(li for li in text.splitlines() if li.startswith(first))) + 1
    msg = check_fails(tmp_path, dup, f"line {line + 1}: duplicate key 'llama-s' (first on line {line})",
                      "remove or rename one")
    assert "params.yaml" in msg
    with pytest.raises(ParamsError, match="duplicate key 'kind'"):
        path = tmp_path / "flow.yaml"
        path.write_text("tasks: {t: {kind: sentiment, kind: consistency}}\n")
        load_params(path)


def test_yaml_merge_keys_still_work(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("tasks:\n  a: &t {kind: sentiment, n_test: 300}\n  b: {<<: *t, n_test: 400}\n")
    assert load_params(path).tasks["b"].n_test == 400


@pytest.mark.parametrize("mutate,needles", [
    (lambda c: c.update(base="nope"), ["crosscoders.zoo-gemma2.base 'nope' is not a key of models"]),
    (lambda c: c.update(chat="nope"), ["crosscoders.zoo-gemma2.chat 'nope' is not a key of models"]),
    (lambda c: c.update(audit_task="nope"), ["crosscoders.zoo-gemma2: task 'nope' is not a key of tasks"]),
    (lambda c: c.update(rel_norm_band=[0.7, 0.3]), ["crosscoder", "rel_norm_band [0.7, 0.3]", "0 <= low < high <= 1"]),
    (lambda c: c.update(rel_norm_band=[0.3, 1.5]), ["rel_norm_band [0.3, 1.5]"]),
    (lambda c: c.update(rel_norm_band=[0.5, 0.5]), ["rel_norm_band [0.5, 0.5]"]),
    (lambda c: c.update(k=600), ["k=600 must be <= n_latents=512", "lower k or raise n_latents"]),
])
def test_crosscoder_section_is_checked(tmp_path, mutate, needles):
    raw = project_params()
    mutate(raw["crosscoders"]["zoo-gemma2"])
    check_fails(tmp_path, raw, *needles)


def test_the_old_single_crosscoder_section_is_refused_with_the_new_layout(tmp_path):
    raw = project_params()
    raw["crosscoder"] = raw.pop("crosscoders")["zoo-gemma2"]
    check_fails(tmp_path, raw, "crosscoder: is now crosscoders: {<key>: ...}", "data/crosscoder/<key>")


def test_crosscoder_keys_are_slugs(tmp_path):
    raw = project_params()
    raw["crosscoders"]["a.b"] = raw["crosscoders"].pop("zoo-gemma2")
    check_fails(tmp_path, raw, "crosscoders key 'a.b' must be a slug", "rename it (e.g. 'a-b')")


@pytest.mark.parametrize("device,needle", [("gpu", "device 'gpu' is not a torch device"),
                                           ("cuda:x", "device 'cuda:x' is not a torch device"),
                                           ("meta", "device 'meta' is not a torch device")])
def test_unknown_device_strings_are_refused(tmp_path, device, needle):
    raw = project_params()
    raw["models"]["gpt2-s"]["device"] = device
    check_fails(tmp_path, raw, "models.gpt2-s.device", needle)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a visible CUDA GPU")
def test_cuda_device_on_a_cpu_machine_is_refused_by_check_and_load_model(tmp_path):
    raw = small_params()
    raw["models"]["gpt2-s"]["device"] = "cuda"
    check_fails(tmp_path, raw, "models.gpt2-s.device: device 'cuda' but torch sees no CUDA GPU here", "use device: cpu")
    with pytest.raises(ModelError, match="device 'cuda' but torch sees no CUDA GPU"):
        load_model(tmp_path, device="cuda")
    raw["models"]["gpt2-s"]["device_map"] = "auto"  # accelerate places it: no device check
    check_passes(tmp_path, raw)


def test_check_warns_when_no_entry_can_be_scored(tmp_path):
    raw = small_params()
    raw["models"] = {"llama-s": raw["models"]["llama-s"]}
    result = check_passes(tmp_path, raw)
    assert "1 model(s) in models:, fewer than matrix.min_sources=3; every entry will be reported unscored" in result.output


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model, tok = tiny_model("llama")
    path = tmp_path_factory.mktemp("models") / "llama"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_check_tries_class_strings_and_layer_on_an_existing_model_dir(tmp_path, saved_model):
    raw = small_params(scored_run=False)
    raw["models"] = {"m": {"path": str(saved_model), "layer": 0.5}}
    check_passes(tmp_path, raw)
    bad = copy.deepcopy(raw)
    bad["tasks"]["sentiment"]["positive"] = " ☃"
    check_fails(tmp_path, bad, f"tasks.sentiment in models.m ({saved_model}): class string ' ☃'", "unknown token")
    bad = copy.deepcopy(raw)
    bad["models"]["m"]["layer"] = 7
    check_fails(tmp_path, bad, "models.m.layer", "layer 7 out of range for a model with 3 blocks")
    several = copy.deepcopy(raw)
    several["tasks"]["sentiment"]["positive"] = " yes box"
    result = check_passes(tmp_path, several)
    assert "warning: tasks.sentiment in models.m" in result.output and "only the first" in result.output


def test_model_dir_without_tokenizer_files_names_the_path(tmp_path, saved_model):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bare / f).write_bytes((saved_model / f).read_bytes())
    with pytest.raises(ModelError, match=rf"{bare}: no tokenizer files .*tokenizer.save_pretrained"):
        load_model(bare)
    (bare / "config.json").unlink()
    with pytest.raises(ModelError, match=rf"{bare}: no config.json"):
        load_model(bare)
    with pytest.raises(ModelError, match="model directory not found"):
        load_model(tmp_path / "nope")
    model, tok = load_model(saved_model)  # the good directory still loads
    assert tok.is_fast


# --- `probebench run`: check first, and say how to restore when a stage fails ------------------------

def test_run_checks_params_before_calling_dvc(tmp_path, monkeypatch):
    raw = small_params()
    raw["tasks"]["sentiment"]["n_test"] = 150
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.subprocess, "call", lambda *a, **k: pytest.fail("dvc ran before check"))
    result = runner.invoke(cli.app, ["run"])
    assert result.exit_code == 2 and "N=150 test prompts" in result.output


def test_run_says_how_to_restore_when_dvc_repro_fails(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False))
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.shutil, "which", lambda *a, **k: "dvc")
    monkeypatch.setattr(cli.subprocess, "call", lambda *a, **k: 255)
    result = runner.invoke(cli.app, ["run"])
    assert result.exit_code == 255
    assert "dvc repro failed (exit 255)" in result.output and "`dvc checkout`" in result.output
    assert "git checkout -- reports metrics" in result.output
    monkeypatch.setattr(cli.subprocess, "call", lambda *a, **k: 0)
    assert "dvc checkout" not in runner.invoke(cli.app, ["run"]).output


# --- item 9: an unwritable cell store is found before computing ------------------------------------------

def test_store_check_writable_passes_on_a_writable_dir(tmp_path):
    store = CellStore(tmp_path / "store")
    store.check_writable()
    assert list((tmp_path / "store").iterdir()) == []  # the probe file is gone


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file modes")
def test_store_check_writable_refuses_a_read_only_dir(tmp_path):
    root = tmp_path / "store"
    store = CellStore(root)
    root.chmod(0o500)
    try:
        with pytest.raises(StoreError, match=rf"{root}: the cell store is not writable .*chmod u\+w"):
            store.check_writable()
    finally:
        root.chmod(0o700)


def test_store_refusals_are_one_line_store_errors(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the cell store"):
        CellStore(blocker / "store")  # a file where the directory should be
    store = CellStore(tmp_path / "store")

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("probebench.artifacts.store.tempfile.NamedTemporaryFile", denied)
    with pytest.raises(StoreError, match=r"not writable \(Permission denied\)"):
        store.check_writable()
    monkeypatch.setattr("probebench.artifacts.store.atomic_write_bytes", denied)
    with pytest.raises(StoreError, match=r"cannot store the result \(Permission denied\)"):
        store.put("k", {"x": np.zeros(2, np.float32)})
    assert isinstance(StoreError("x"), ValueError)  # stage shells turn ValueError into one line, exit 2


# --- benchmarks: nnsight missing is said, not a silent null -------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nnsight") is not None, reason="nnsight is installed")
def test_ablation_benchmark_says_when_nnsight_is_missing():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ablation.py"), "--d-model", "64", "--layers", "2",
                           "--heads", "2", "--directions", "2", "--prompts", "8", "--batch-size", "4", "--repeats", "1",
                           "--vocab-size", "200", "--skip-prefix-k1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "warning: nnsight is not installed: install the benchmark extra with pip install -e '.[bench]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["speedup_vs_nnsight"] is None and "pip install -e '.[bench]'" in summary["speedup_vs_nnsight_missing_because"]
    assert not math.isnan(summary["speedup_vs_naive"])


def test_show_on_a_truncated_parquet_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from probebench.cli.main import app

    good = tmp_path / "cells.parquet"
    pd.DataFrame({"task": ["t"], "source": ["a"], "target": ["a"], "pearson": [1.0]}).to_parquet(good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[:40])
    result = CliRunner().invoke(app, ["show", "--cells", str(bad)])
    assert result.exit_code == 2 and "cannot be read" in result.output and "dvc checkout" in result.output
    assert "Traceback" not in result.output


def test_show_says_how_many_bootstrap_resamples_its_ci_has(tmp_path):
    from typer.testing import CliRunner

    from probebench.cli.main import app
    from tests.support.cells import complete

    cells = tmp_path / "cells.parquet"
    complete(pd.DataFrame({"task": ["t", "t"], "source": ["a", "a"], "target": ["a", "b"], "pearson": [1.0, 0.5],
                           "ci_low": [1.0, 0.2], "ci_high": [1.0, 0.7], "ci_level": [0.95, 0.95],
                           "n_resamples": [10, 10]})).to_parquet(cells)
    result = CliRunner().invoke(app, ["show", "--cells", str(cells)])
    assert result.exit_code == 0 and "B = 10" in result.output
