import json

import numpy as np
import pandas as pd
import pytest

from probebench.prompts import (PromptSetError, SyntheticTaskSpec, build_synthetic, normalize_text, read_user_prompts,
                              test_set_hash)


def spec(**kw):
    return SyntheticTaskSpec(**{"name": "t", "kind": "sentiment", "n_train": 64, "n_test": 32, **kw})


def test_synthetic_prompt_set_is_deterministic_balanced_and_leak_free():
    a, b = build_synthetic(spec()), build_synthetic(spec())
    pd.testing.assert_frame_equal(a, b)
    assert (a.split == "train").sum() == 64 and (a.split == "test").sum() == 32
    assert set(a.loc[a.split == "test", "text"].map(normalize_text)).isdisjoint(a.loc[a.split == "train", "text"].map(normalize_text))
    assert 0.3 < a.label.mean() < 0.7
    assert (a.label == (a.strength > 0)).all() and a.strength.abs().min() >= 1.0
    assert (a.anchor == a.text.str.len()).all() and a.text.str.endswith("verdict :").all()


def test_consistency_label_rule():
    df = build_synthetic(spec(kind="consistency"))
    for text, label in zip(df.text, df.label):
        fact = text.split(" . ")[0].split()[-1]
        claim = text.split(" . ")[1].split()[-1]
        assert label == int(fact == claim), text


def test_animal_label_follows_the_noun_and_its_slot_groups_the_split():
    from probebench.prompts.synthetic import NOUNS, slot_value

    df = build_synthetic(spec(kind="animal", n_train=200, n_test=80))
    nouns = df["text"].map(lambda t: slot_value("animal", "noun", t))
    assert (df["label"] == nouns.map(lambda n: int(NOUNS[n] > 0))).all()
    assert (df["strength"] == nouns.map(NOUNS)).all()
    assert 0.3 < df.label.mean() < 0.7 and nouns.nunique() > 30
    grouped = build_synthetic(spec(kind="animal", n_train=200, n_test=80, group_by="noun"))
    by_split = grouped.assign(noun=grouped["text"].map(lambda t: slot_value("animal", "noun", t))).groupby("noun")
    assert (by_split["split"].nunique() == 1).all()  # a noun lies on one side only


def test_split_is_stable_when_sizes_change():
    small = build_synthetic(spec(n_test=16))
    big = build_synthetic(spec(n_test=32))
    assert set(small.loc[small.split == "test", "text"]) <= set(big.loc[big.split == "test", "text"]) | set(big.text)
    assert set(small.loc[small.split == "test", "text"]).isdisjoint(big.loc[big.split == "train", "text"])


def test_test_set_hash_is_canonical_and_sensitive():
    df = build_synthetic(spec())
    shuffled = df.sample(frac=1.0, random_state=1)
    assert test_set_hash(df) == test_set_hash(shuffled)
    assert test_set_hash(df) == test_set_hash(df.assign(text=np.where(df.split == "train", df.text + "!", df.text)))
    changed = df.copy()
    changed.loc[changed.split == "test", "label"] = 1 - changed.loc[changed.split == "test", "label"]
    assert test_set_hash(changed) != test_set_hash(df)
    # the documented canonical form, recomputed independently
    import hashlib
    test = df[df.split == "test"].sort_values("id")
    lines = [json.dumps({**r, "label": int(r["label"]), "anchor": int(r["anchor"])}, sort_keys=True, ensure_ascii=False,
                        separators=(",", ":")) for r in test.to_dict(orient="records")]
    assert test_set_hash(df) == hashlib.sha256("\n".join(lines).encode()).hexdigest()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_user_prompt_files(tmp_path, fmt):
    rows = [{"id": f"p{i}", "text": f"statement number {i} is  fine . ok ?", "label": i % 2,
             "positive": " yes", "negative": " no"} for i in range(40)]
    df = pd.DataFrame(rows)
    path = tmp_path / f"prompts.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif fmt == "csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    out = read_user_prompts(path, name="mine", split_salt="s", test_fraction=0.3)
    assert set(out.split) == {"train", "test"}
    again = read_user_prompts(path, name="mine", split_salt="s", test_fraction=0.3)
    pd.testing.assert_frame_equal(out, again)
    assert (out.anchor == out.text.str.len()).all()


def test_train_test_overlap_is_refused(tmp_path):
    rows = [{"id": "a", "text": "The  box is red", "label": 1, "split": "train", "positive": " yes", "negative": " no"},
            {"id": "b", "text": "the box is red", "label": 1, "split": "test", "positive": " yes", "negative": " no"}]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(PromptSetError, match=r"p.jsonl.*also occur in train.*id 'b'"):
        read_user_prompts(path, name="x", split_salt="s", test_fraction=0.5)


@pytest.mark.parametrize("bad,match", [({"label": 2}, "labels must be 0 or 1"), ({"anchor": 500}, "outside its text"),
                                       ({"negative": " yes"}, "identical positive and negative"),
                                       ({"split": "dev"}, "use 'train' or 'test'")])
def test_bad_user_rows_name_the_file_and_fix(tmp_path, bad, match):
    row = {"id": "a", "text": "the box is red", "label": 1, "split": "test", "positive": " yes", "negative": " no", **bad}
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row))
    with pytest.raises(PromptSetError, match=match):
        read_user_prompts(path, name="x", split_salt="s", test_fraction=0.5)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(PromptSetError, match="not found"):
        read_user_prompts(tmp_path / "nope.jsonl", name="x", split_salt="s", test_fraction=0.5)
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(PromptSetError, match="unsupported"):
        read_user_prompts(tmp_path / "p.txt", name="x", split_salt="s", test_fraction=0.5)
