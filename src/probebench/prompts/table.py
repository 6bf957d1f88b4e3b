"""The prompt-set table (docs/design.md §2 columns `id, text, label, split, anchor, positive, negative,
strength`): validation, the leakage check, and the canonical hashes (the leaderboard
`testSetHash`, the probe cards' train hash).

    >>> df = pd.DataFrame({"id": ["a", "b"], "text": ["good . verdict :", "bad . verdict :"], "label": [1, 0],
    ...                    "split": ["train", "test"], "positive": " yes", "negative": " no"})
    >>> list(finalize(df, source="demo").columns) == COLUMNS
    True
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

import numpy as np
import pandas as pd

from probebench.errors import ProbebenchError

COLUMNS = ["id", "text", "label", "split", "anchor", "positive", "negative", "strength"]


class PromptSetError(ProbebenchError):
    """Bad prompt-set input: the message names the file, the key and the fix."""


def normalize_text(text: str) -> str:
    """NFC, collapsed whitespace, casefold: two prompts with equal normal forms are 'the same'."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip().casefold()


def finalize(df: pd.DataFrame, *, source: str) -> pd.DataFrame:
    """Validate a prompt set, order its columns, and refuse train/test leakage."""
    missing = [c for c in ("id", "text", "label", "positive", "negative") if c not in df.columns]
    if missing:
        raise PromptSetError(f"{source}: missing column(s) {missing}; required: id, text, label, positive, negative")
    df = df.copy()
    for column in ("text", "positive", "negative"):
        # bytes (a binary parquet column) or null would otherwise crash `.str` with a traceback
        bad = ~df[column].map(lambda v: isinstance(v, str) and v != "")
        if bad.any():
            value = df.loc[bad, column].iloc[0]
            got = "null" if value is None or (isinstance(value, float) and np.isnan(value)) else \
                f"{value!r} ({type(value).__name__})"
            raise PromptSetError(f"{source}: id {df.loc[bad, 'id'].iloc[0]!r} has {column} {got}; {column} must be "
                                 "a non-empty string" + (" (decode the bytes as UTF-8 before writing the file)"
                                                         if isinstance(value, bytes) else ""))
    if "anchor" not in df.columns:
        df["anchor"] = df["text"].str.len()
    df["anchor"] = df["anchor"].fillna(df["text"].str.len()).astype("int64")
    if "strength" not in df.columns:
        df["strength"] = np.nan
    df["strength"] = df["strength"].astype("float64")
    if df["id"].duplicated().any():
        dup = df.loc[df["id"].duplicated(), "id"].iloc[0]
        raise PromptSetError(f"{source}: duplicate id {dup!r}; ids must be unique")
    bad_label = ~df["label"].isin([0, 1])
    if bad_label.any():
        raise PromptSetError(f"{source}: id {df.loc[bad_label, 'id'].iloc[0]!r} has label "
                             f"{df.loc[bad_label, 'label'].iloc[0]!r}; labels must be 0 or 1")
    bad_split = ~df["split"].isin(["train", "test"])
    if bad_split.any():
        raise PromptSetError(f"{source}: id {df.loc[bad_split, 'id'].iloc[0]!r} has split "
                             f"{df.loc[bad_split, 'split'].iloc[0]!r}; use 'train' or 'test'")
    out_of_range = (df["anchor"] < 1) | (df["anchor"] > df["text"].str.len())
    if out_of_range.any():
        row = df.loc[out_of_range].iloc[0]
        raise PromptSetError(f"{source}: id {row['id']!r} anchor {row['anchor']} is outside its text "
                             f"(length {len(row['text'])}); anchor is a character offset in 1..len(text)")
    same = df["positive"] == df["negative"]
    if same.any():
        raise PromptSetError(f"{source}: id {df.loc[same, 'id'].iloc[0]!r} has identical positive and "
                             "negative class strings")
    df["label"] = df["label"].astype("int64")
    for split in ("test", "train"):
        if not (df["split"] == split).any():
            raise PromptSetError(f"{source}: no {split} rows among {len(df)} prompts, so there is nothing to "
                                 f"{'measure on' if split == 'test' else 'fit probes on'}; give some rows split: "
                                 f"{split}, or leave split empty to assign rows by a hash of their id")
    check_no_leakage(df, source=source)
    return df[COLUMNS].reset_index(drop=True)


def check_no_leakage(df: pd.DataFrame, *, source: str) -> None:
    train = set(df.loc[df["split"] == "train", "text"].map(normalize_text))
    leaked = df.loc[(df["split"] == "test") & df["text"].map(normalize_text).isin(train)]
    if len(leaked):
        raise PromptSetError(
            f"{source}: {len(leaked)} test prompt(s) also occur in train after normalization "
            f"(first: id {leaked['id'].iloc[0]!r}, text {leaked['text'].iloc[0]!r}); "
            "remove them from one split"
        )


def test_set_hash(df: pd.DataFrame) -> str:
    """sha256 of the canonical serialization of the test split (the leaderboard testSetHash).

    Canonical: one JSON object per row with sorted keys, UTF-8, joined by '\\n', rows in id order.
    """
    test = df.loc[df["split"] == "test", COLUMNS].sort_values("id")
    lines = []
    for record in test.to_dict(orient="records"):
        record = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in record.items()}
        record["label"] = int(record["label"])
        record["anchor"] = int(record["anchor"])
        lines.append(json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")))
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


test_set_hash.__test__ = False  # not a pytest test, despite the name


def train_hash(df: pd.DataFrame) -> str:
    """The same canonical hash for the train split (goes on probe cards)."""
    flipped = df.assign(split=df["split"].map({"train": "test", "test": "train"}))
    return test_set_hash(flipped)
