"""A user's own prompt file (.jsonl, .csv or .parquet) read into the prompt-set table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from probebench.prompts.splits import hash_split
from probebench.prompts.table import PromptSetError, finalize

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
    """A user's own prompt file (.jsonl, .csv or .parquet) with the docs/design.md §2 columns.

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
