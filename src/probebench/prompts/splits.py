"""Which rows of a prompt set do which job: the salted-hash train/test split, the train rows held
aside (unlabelled) for the label-free transfer map, and the rows a probe is fitted on
(`row_roles`, the one place this is decided), plus a near-duplicate leakage measure.

    >>> df = pd.DataFrame({"id": [f"p{i}" for i in range(10)], "split": ["train"] * 8 + ["test"] * 2})
    >>> roles = row_roles(df, salt="s", map_fraction=0.25)
    >>> bool((roles.test_N ^ roles.map_N ^ roles.probe_N).all())   # every row has exactly one role
    True
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from probebench.prompts.table import PromptSetError, normalize_text

def hash_split(key: str, salt: str, test_fraction: float) -> str:
    """Deterministic train/test assignment by a salted sha256 of `key`."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if bucket < test_fraction else "train"


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




@dataclass(frozen=True)
class RowRoles:
    """Boolean masks over a prompt set's rows: `test_N` (measured, never fitted on), `map_N`
    (train rows held aside, unlabelled, for the label-free map) and `probe_N` (the remaining
    train rows: what probes are fitted on and what their cards' train hash covers)."""

    test_N: np.ndarray
    map_N: np.ndarray
    probe_N: np.ndarray


def row_roles(df: pd.DataFrame, *, salt: str, map_fraction: float) -> RowRoles:
    """The role of every row (see RowRoles); `salt` is `split.salt`, `map_fraction` is
    `transfer.map_fraction`."""
    test_N = (df["split"] == "test").to_numpy()
    map_N = map_mask(df, salt, map_fraction)
    return RowRoles(test_N=test_N, map_N=map_N, probe_N=(df["split"] == "train").to_numpy() & ~map_N)
