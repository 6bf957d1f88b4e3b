"""Prompt sets: the synthetic tasks the embedded zoo is trained on, users' own prompt files,
the held-out split, and the test-set hash that becomes the leaderboard `testSetHash`.

A prompt set is a pandas DataFrame with the DESIGN §2 columns:
`id, text, label, split, anchor, positive, negative, strength`.

    >>> spec = SyntheticTaskSpec(name="sentiment", kind="sentiment", n_train=8, n_test=4)
    >>> df = build_synthetic(spec)
    >>> sorted(df.split.unique())
    ['test', 'train']
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd

COLUMNS = ["id", "text", "label", "split", "anchor", "positive", "negative", "strength"]


class PromptSetError(ValueError):
    """Bad prompt-set input: the message names the file, the key and the fix."""


# ---------------------------------------------------------------------------------------
# Synthetic tasks. Each is a fixed template ending in a cue ("verdict :", "honest ?") whose
# next token is the verdict; a graded latent `strength` drives the label (label = strength > 0)
# so that per-prompt effect sizes genuinely vary.
# ---------------------------------------------------------------------------------------

SUBJECTS = ["movie", "food", "book", "hotel", "service", "music", "game", "show"]
ADJECTIVES = {  # valence of the bare adjective
    "good": 1.0, "nice": 1.0, "great": 2.0, "lovely": 2.0, "excellent": 3.0, "perfect": 3.0,
    "bad": -1.0, "dull": -1.0, "poor": -2.0, "boring": -2.0, "awful": -3.0, "terrible": -3.0,
}
INTENSIFIERS = {"": 1.0, "slightly ": 0.5, "quite ": 1.25, "very ": 1.5, "extremely ": 2.0}
# Negation flips and damps ("not very good" is mildly negative, not strongly).
NEGATION_DAMPING = 0.6

OBJECTS = ["box", "ball", "cup", "car", "hat", "door", "lamp", "kite", "boat", "bag"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "pink", "brown"]
SPEAKERS = ["alice", "bob", "carol", "dave", "erin", "frank"]
HEDGES = {"": 1.0, "surely ": 2.0, "maybe ": 0.5}


def _sentiment_clause(rng: np.random.Generator) -> tuple[str, float]:
    subject = SUBJECTS[rng.integers(len(SUBJECTS))]
    adjective = list(ADJECTIVES)[rng.integers(len(ADJECTIVES))]
    intensifier = list(INTENSIFIERS)[rng.integers(len(INTENSIFIERS))]
    negated = bool(rng.random() < 0.3)
    value = ADJECTIVES[adjective] * INTENSIFIERS[intensifier]
    if negated:
        value = -NEGATION_DAMPING * value
    words = f"the {subject} was {'not ' if negated else ''}{intensifier}{adjective}"
    return words, value


def sentiment_example(rng: np.random.Generator) -> tuple[str, float]:
    """'review : the food was not very good and the hotel was great . verdict :' -> strength."""
    while True:
        n_clauses = 1 + int(rng.random() < 0.4)
        clauses = [_sentiment_clause(rng) for _ in range(n_clauses)]
        strength = float(sum(v for _, v in clauses))
        if abs(strength) >= 1.0:  # near-ties are arithmetic puzzles, not sentiment
            break
    text = "review : " + " and ".join(w for w, _ in clauses) + " . verdict :"
    return text, strength


def consistency_example(rng: np.random.Generator) -> tuple[str, float]:
    """'the box is red . alice says the box is surely blue . honest ?' -> strength.

    Honest iff the claim matches the fact; the hedge grades how strongly the speaker commits
    to the claim, so strength = +/- confidence.
    """
    obj = OBJECTS[rng.integers(len(OBJECTS))]
    fact = COLORS[rng.integers(len(COLORS))]
    honest = bool(rng.random() < 0.5)
    claim = fact if honest else COLORS[(COLORS.index(fact) + 1 + rng.integers(len(COLORS) - 1)) % len(COLORS)]
    speaker = SPEAKERS[rng.integers(len(SPEAKERS))]
    hedge = list(HEDGES)[rng.integers(len(HEDGES))]
    text = f"the {obj} is {fact} . {speaker} says the {obj} is {hedge}{claim} . honest ?"
    return text, (1.0 if honest else -1.0) * HEDGES[hedge]


GENERATORS: dict[str, Callable[[np.random.Generator], tuple[str, float]]] = {
    "sentiment": sentiment_example,
    "consistency": consistency_example,
}

# Template slots a grouped split can keep on one side (split.group_by): every prompt sharing the
# slot's value goes to the same split, so test prompts are not one-word edits of train prompts
# in that slot. The value is read back from the rendered text.
SLOTS: dict[str, dict[str, str]] = {
    "sentiment": {"subject": r"^review : the (\w+) was"},
    "consistency": {"object": r"^the (\w+) is", "speaker": r" \. (\w+) says "},
}


def slot_value(kind: str, slot: str, text: str) -> str:
    """The value of a template slot in a rendered prompt.

    >>> slot_value("consistency", "object", "the box is red . alice says the box is blue . honest ?")
    'box'
    """
    if slot not in SLOTS.get(kind, {}):
        raise PromptSetError(f"split.group_by: task kind {kind!r} has no slot {slot!r}; "
                             f"slots: {sorted(SLOTS.get(kind, {}))}")
    m = re.search(SLOTS[kind][slot], text)
    if m is None:
        raise PromptSetError(f"split.group_by: slot {slot!r} not found in {text!r}")
    return m.group(1)


@dataclass(frozen=True)
class SyntheticTaskSpec:
    """A synthetic task.

    name: task slug (prompt-set file name). kind: generator in GENERATORS.
    n_train / n_test: prompts per split. test_fraction: share of the text space reserved for
    test by the hash split (the zoo never trains on that share). seed: sampling seed; the
    split itself depends only on `split_salt` so it is stable when n_train/n_test change.
    group_by: a template slot (SLOTS) whose value, not the whole text, decides the split.
    """

    name: str
    kind: str
    n_train: int = 768
    n_test: int = 256
    positive: str = " yes"
    negative: str = " no"
    seed: int = 0
    split_salt: str = "probebench-v1"
    test_fraction: float = 0.2
    group_by: str | None = None


def normalize_text(text: str) -> str:
    """NFC, collapsed whitespace, casefold: two prompts with equal normal forms are 'the same'."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip().casefold()


def hash_split(key: str, salt: str, test_fraction: float) -> str:
    """Deterministic train/test assignment by a salted sha256 of `key`."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if bucket < test_fraction else "train"


def split_of(spec: SyntheticTaskSpec, text: str) -> str:
    """The split of a synthetic prompt: by its normalized text, or by its `group_by` slot value."""
    key = normalize_text(text) if spec.group_by is None else slot_value(spec.kind, spec.group_by, text)
    return hash_split(key, spec.split_salt, spec.test_fraction)


def iter_synthetic(kind: str, seed: int) -> Iterator[tuple[str, float]]:
    """Endless stream of (text, strength) for a task kind."""
    if kind not in GENERATORS:
        raise PromptSetError(f"unknown synthetic task kind {kind!r}; known: {sorted(GENERATORS)}")
    rng = np.random.default_rng(seed)
    generate = GENERATORS[kind]
    while True:
        yield generate(rng)


def build_synthetic(spec: SyntheticTaskSpec, max_draws: int = 2_000_000) -> pd.DataFrame:
    """Sample unique prompts; the text's normalized form decides its split (no leakage)."""
    wanted = {"train": spec.n_train, "test": spec.n_test}
    rows: dict[str, list[dict]] = {"train": [], "test": []}
    seen: set[str] = set()
    for text, strength in itertools.islice(iter_synthetic(spec.kind, spec.seed), max_draws):
        key = normalize_text(text)
        if key in seen:
            continue
        seen.add(key)
        split = split_of(spec, text)
        if len(rows[split]) < wanted[split]:
            rows[split].append({"text": text, "strength": strength, "split": split})
        if all(len(rows[s]) >= wanted[s] for s in wanted):
            break
    else:
        raise PromptSetError(
            f"task {spec.name!r}: only {len(rows['train'])} train / {len(rows['test'])} test unique "
            f"prompts after {max_draws} draws; lower n_train/n_test"
        )
    records = rows["train"] + rows["test"]
    df = pd.DataFrame.from_records(records)
    df.insert(0, "id", [f"{spec.name}-{r['split']}-{i:05d}" for i, r in enumerate(records)])
    df["label"] = (df["strength"] > 0).astype("int64")
    df["anchor"] = df["text"].str.len().astype("int64")
    df["positive"] = spec.positive
    df["negative"] = spec.negative
    return finalize(df, source=f"task {spec.name}")


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


def map_mask(df: pd.DataFrame, salt: str, fraction: float) -> np.ndarray:
    """Train rows held aside for the label-free direction map (never seen by a probe).

    A salted hash of the id picks ``fraction`` of the train split; test rows are never map rows.
    Probes are fitted on train rows outside the mask, the map on the rows inside it, without
    their labels, so the map cannot encode the probe's own labelled rows.

    >>> df = pd.DataFrame({"id": [f"p{i}" for i in range(1000)], "split": ["train"] * 900 + ["test"] * 100})
    >>> m = map_mask(df, "s", 0.25)
    >>> bool(m[900:].any()), bool(0.2 < m[:900].mean() < 0.3)
    (False, True)
    """
    if not 0.0 < fraction < 1.0:
        raise PromptSetError(f"map fraction {fraction} must lie in (0, 1)")
    train = (df["split"] == "train").to_numpy()
    held = np.array([hash_split(str(i), f"{salt}\x00map", fraction) == "test" for i in df["id"]], dtype=bool)
    return train & held


def _one_word_keys(words: tuple[str, ...]) -> tuple[set, set]:
    """Keys that two word sequences share iff they are within one word (substitution, insertion
    or deletion): each word replaced by a wildcard, and each word deleted."""
    subs = {(i, words[:i] + words[i + 1:]) for i in range(len(words))}
    dels = {words[:i] + words[i + 1:] for i in range(len(words))}
    return subs, dels


def near_duplicate_share(df: pd.DataFrame) -> float:
    """Share of test prompts within one word (one substitution, insertion or deletion, on
    normalized whitespace-separated words) of some train prompt: a leakage measure the
    exact-duplicate check cannot see.

    >>> df = pd.DataFrame({"text": ["a b c", "x y z", "a q c", "x y z w", "m n o"],
    ...                    "split": ["train", "train", "test", "test", "test"]})
    >>> near_duplicate_share(df)  # "a q c" (substitution), "x y z w" (insertion); not "m n o"
    0.6666666666666666
    """
    words = df["text"].map(lambda t: tuple(normalize_text(t).split()))
    is_train = (df["split"] == "train").to_numpy()
    train_exact, train_subs, train_dels = set(), set(), set()
    for w in words[is_train]:
        subs, dels = _one_word_keys(w)
        train_exact.add(w)
        train_subs |= subs
        train_dels |= dels
    test = words[~is_train]
    if len(test) == 0:
        return float("nan")
    near = 0
    for w in test:
        subs, dels = _one_word_keys(w)
        near += bool(w in train_exact or subs & train_subs or dels & train_exact or w in train_dels)
    return near / len(test)


def _id_string(value, row: int, path: Path) -> str:
    """A prompt id as the string the file meant. A JSON/parquet integer id is its decimal string; a
    float one (an integer column with a gap is read as float) must be integral, so `1` never
    becomes `1.0`. A missing id is an error: hashing "nan" would silently pick a split."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and not value):
        raise PromptSetError(f"{path}: row {row + 1} has no id; every prompt needs a unique id")
    if isinstance(value, (bytes, bool, np.bool_)):
        raise PromptSetError(f"{path}: row {row + 1} has id {value!r}; write ids as strings")
    if isinstance(value, (float, np.floating)):
        if not float(value).is_integer():
            raise PromptSetError(f"{path}: row {row + 1} has the fractional id {value!r}; write ids as strings")
        value = int(value)
    return str(value)


def read_user_prompts(path: Path, *, name: str, split_salt: str, test_fraction: float) -> pd.DataFrame:
    """A user's own prompt file (.jsonl, .csv or .parquet) with the DESIGN §2 columns.

    Rows without a `split` are assigned by a salted hash of their id.
    """
    path = Path(path)
    if not path.exists():
        raise PromptSetError(f"{path}: prompt file not found (tasks.{name}.file)")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            df = pd.read_json(path, lines=True, dtype=False)
        elif suffix == ".csv":
            # Text columns stay text: read as numbers, ids `000`/`001` would become 0/1 (another
            # split and test-set hash, and `1` vs `01` a "duplicate").
            df = pd.read_csv(path, keep_default_na=False, na_values={"split": [""], "anchor": [""], "strength": [""]},
                             dtype={c: str for c in ("id", "text", "split", "positive", "negative")})
        elif suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            raise PromptSetError(f"{path}: unsupported prompt file type {suffix!r}; use .jsonl, .csv or .parquet")
    except PromptSetError:
        raise
    except Exception as exc:  # pandas raises many types; the user needs the file name
        raise PromptSetError(f"{path}: cannot read prompt file ({exc})") from exc
    if "id" not in df.columns:
        raise PromptSetError(f"{path}: missing column 'id'; every prompt needs a unique id")
    if len(df) == 0:
        raise PromptSetError(f"{path}: no prompts (tasks.{name}.file); give one row per prompt")
    df["id"] = [_id_string(v, row, path) for row, v in enumerate(df["id"])]
    given = df["split"].astype(object) if "split" in df.columns else pd.Series([None] * len(df), dtype=object)
    assigned = [s if isinstance(s, str) and s else hash_split(i, split_salt, test_fraction)
                for s, i in zip(given, df["id"])]
    df["split"] = pd.Series(assigned, index=df.index, dtype=object)
    return finalize(df, source=str(path))


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
