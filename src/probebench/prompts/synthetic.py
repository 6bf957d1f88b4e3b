"""The synthetic tasks the embedded zoo is trained on and measured with: template generators with
a graded latent `strength`, and the builder of a prompt set (the table of `prompts.table`).

    >>> spec = SyntheticTaskSpec(name="sentiment", kind="sentiment", n_train=8, n_test=4)
    >>> df = build_synthetic(spec)
    >>> sorted(df.split.unique())
    ['test', 'train']
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from probebench.prompts.splits import hash_split
from probebench.prompts.table import PromptSetError, finalize, normalize_text

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

# The animal task: is the noun an animal? A word-knowledge task a pretrained model brings to the
# prompt (Gemma-3-270M does it few-shot; it does not do consistency) and the zoo learns from its
# train prompts. Strength grades how typical a member (or non-member) the noun is.
NOUNS = {
    "dog": 2.0, "cat": 2.0, "horse": 2.0, "cow": 2.0, "lion": 2.0, "sheep": 2.0, "goat": 2.0, "rabbit": 2.0,
    "bear": 2.0, "pig": 2.0, "wolf": 2.0, "bird": 1.5, "fish": 1.5, "mouse": 1.5, "duck": 1.5, "frog": 1.0,
    "snake": 1.0, "bee": 0.5, "ant": 0.5, "worm": 0.5,
    "chair": -2.0, "table": -2.0, "spoon": -2.0, "shoe": -2.0, "phone": -2.0, "clock": -2.0, "book": -2.0,
    "bottle": -2.0, "pencil": -2.0, "window": -2.0, "plate": -2.0, "brick": -2.0, "coin": -2.0, "rope": -1.5,
    "stone": -1.5, "toy": -1.0, "cloud": -1.0, "robot": -0.5, "tree": -0.5, "flower": -0.5,
}
SIZES = ["small", "big", "old", "young", "red", "brown", "black", "white", "grey", "tiny"]
PLACES = ["garden", "kitchen", "street", "field", "house", "park", "yard", "shop"]


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


def animal_example(rng: np.random.Generator) -> tuple[str, float]:
    """'in the garden there is a small frog . is a frog an animal ?' -> strength (how typical an
    animal, negative for non-animals: 'dog' 2.0, 'bee' 0.5, 'tree' -0.5, 'chair' -2.0).

    The noun is asked about by name: Gemma-3-270M with 4 solved examples reaches held-out AUROC
    0.88 on this wording (the pipeline's gate, 256 test prompts) and 0.56 on 'there is a small
    frog in the garden . is it an animal ?'."""
    noun = list(NOUNS)[rng.integers(len(NOUNS))]
    size, place = SIZES[rng.integers(len(SIZES))], PLACES[rng.integers(len(PLACES))]
    return f"in the {place} there is a {size} {noun} . is a {noun} an animal ?", NOUNS[noun]


GENERATORS: dict[str, Callable[[np.random.Generator], tuple[str, float]]] = {
    "sentiment": sentiment_example,
    "consistency": consistency_example,
    "animal": animal_example,
}

# Template slots a grouped split can keep on one side (split.group_by): every prompt sharing the
# slot's value goes to the same split, so test prompts are not one-word edits of train prompts
# in that slot. The value is read back from the rendered text.
SLOTS: dict[str, dict[str, str]] = {
    "sentiment": {"subject": r"^review : the (\w+) was"},
    "consistency": {"object": r"^the (\w+) is", "speaker": r" \. (\w+) says "},
    "animal": {"noun": r" is a (\w+) an animal \?$"},
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


