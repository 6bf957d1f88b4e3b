"""A model's framing of a task: a prefix of solved train examples put before every prompt, so that
a base model is asked the task the way it can answer it (few-shot), while the readout stays on the
same piece of task text in every model.

    >>> df = pd.DataFrame({"id": [f"p{i}" for i in range(6)], "text": [f"t{i} ." for i in range(6)],
    ...                    "label": [0, 1, 0, 1, 0, 1], "positive": " yes", "negative": " no"})
    >>> print(few_shot_prefix(df, np.ones(6, dtype=bool), k=2), end="")
    t0 . no
    t1 . yes
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from probebench.prompts.table import PromptSetError


def few_shot_prefix(prompts: pd.DataFrame, rows_N: np.ndarray, *, k: int, salt: str = "probebench-framing") -> str:
    """`k` solved examples drawn from `rows_N` (the probe rows: labelled train prompts, never test),
    k/2 of each class, picked and ordered by a salted hash of their id (no RNG state), alternating
    negative/positive; one per line, ending in its class string. "" for k = 0."""
    if k == 0:
        return ""
    if k % 2:
        raise PromptSetError(f"few_shot {k} must be even (half of the examples from each class)")
    rows = prompts.loc[np.asarray(rows_N, dtype=bool)]
    order = rows["id"].map(lambda i: hashlib.sha256(f"{salt}\x00{i}".encode()).hexdigest())
    picked = []
    for label in (0, 1):
        cls = rows.loc[rows["label"] == label].assign(_h=order).sort_values(["_h", "id"])
        if len(cls) < k // 2:
            raise PromptSetError(f"few_shot {k}: only {len(cls)} train prompt(s) of label {label} to draw from")
        picked.append(cls.head(k // 2))
    lines = []
    for neg, pos in zip(picked[0].itertuples(), picked[1].itertuples()):
        lines += [neg.text + neg.negative, pos.text + pos.positive]
    return "\n".join(lines) + "\n"
