"""The ProbeBench ``CrossModelTransfer`` entry: its JSON Schema, validation and the YAML list.

probebench writes its leaderboard entries to ``reports/probebench.yaml`` (a YAML list of
mappings). This module validates them against ``schemas/cross_model_transfer.schema.json``
(the JSON Schema mirror of the site's TypeScript type); ``emit`` uses it before writing.
Splicing entries into the site's ``lib/probebench-data.ts`` is :mod:`probebench.leaderboard.sitefile`'s
job, so editing that does not rerun ``emit`` through its DVC deps.

    >>> row = {"probeId": "p", "sourceModel": "s", "targetModel": "t", "pearson_ce": 1.5}
    >>> validate_entries([row], source="r.yaml")
    Traceback (most recent call last):
    ...
    probebench.leaderboard.schema.LeaderboardError: r.yaml: entry 0 (probeId 'p'): key 'pearson_ce' must be in [-1, 1], got 1.5; fix: correct 'pearson_ce' to a value in [-1, 1]
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from probebench.errors import ProbebenchError

__all__ = [
    "check_bundle_id",
    "KEY_FIELDS",
    "FIELD_ORDER",
    "LeaderboardError",
    "load_schema",
    "validate_entries",
    "read_entries_yaml",
]

SCHEMA_RESOURCE = "schemas/cross_model_transfer.schema.json"
KEY_FIELDS: tuple[str, ...] = ("probeId", "sourceModel", "targetModel")
FIELD_ORDER: tuple[str, ...] = (
    "probeId",
    "sourceModel",
    "targetModel",
    "pearson_ce",
    "transfer_auroc",
    "notes",
)


class LeaderboardError(ProbebenchError):
    """A leaderboard input or target file is invalid; the message is one line and says the fix."""


# --------------------------------------------------------------------------------------
# Bundle ids
# --------------------------------------------------------------------------------------

ID_MAX_LENGTH = 200


def _id_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > ID_MAX_LENGTH:
        return f"is {len(value)} characters long (at most {ID_MAX_LENGTH})"
    for ch in value:
        if unicodedata.category(ch)[0] == "C":
            return f"contains the control character U+{ord(ch):04X}"
        if ch.isspace() or unicodedata.category(ch)[0] == "Z":
            return "contains whitespace"
    if value.startswith("-"):
        return "starts with '-' (command lines read it as an option)"
    if "\\" in value:
        return "contains a backslash"
    if any(part in ("", ".", "..") for part in value.split("/")):
        return "is path-like (a leading, trailing or doubled '/', or a '.' or '..' segment)"
    return None


def check_bundle_id(value: Any, *, where: str) -> str:
    """`value` if it is a probe id the site can show, link to and key rows by: a non-empty string
    of at most 200 printable characters without whitespace or backslashes, not starting with '-',
    whose '/'-separated parts (an owner prefix, as in alice/sentiment-probe) are neither empty nor
    '.' or '..'. Checked where ids are written (emit) and read (the YAML, `leaderboard apply`).

    >>> check_bundle_id("alice/sentiment-llama", where="card.json")
    'alice/sentiment-llama'
    >>> check_bundle_id("a/../b", where="card.json")
    Traceback (most recent call last):
    ...
    probebench.leaderboard.schema.LeaderboardError: card.json: probeId 'a/../b' is path-like (a leading, trailing or doubled '/', or a '.' or '..' segment); fix: use letters, digits and . _ - (with an optional owner/ prefix), e.g. 'a-b'
    """
    problem = _id_problem(value)
    if problem is None:
        return value
    suggestion = (re.sub(r"-{2,}", "-", re.sub(r"[^\w.-]+|\.{2,}", "-", value)).strip("-.")[:ID_MAX_LENGTH]
                  if isinstance(value, str) else "")
    example = f", e.g. {suggestion!r}" if suggestion else ""
    raise LeaderboardError(f"{where}: probeId {value!r} {problem}; fix: use letters, digits and . _ - (with an "
                           f"optional owner/ prefix){example}")


# --------------------------------------------------------------------------------------
# Schema validation
# --------------------------------------------------------------------------------------


def load_schema() -> dict:
    """Return the JSON Schema (draft 2020-12) for one ``CrossModelTransfer`` entry."""
    text = resources.files("probebench.leaderboard").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return json.loads(text)


_VALIDATOR: Draft202012Validator | None = None


def _validator() -> Draft202012Validator:
    global _VALIDATOR
    if _VALIDATOR is None:
        schema = load_schema()
        Draft202012Validator.check_schema(schema)
        _VALIDATOR = Draft202012Validator(schema)
    return _VALIDATOR


_TYPE_WORDS = {"string": "a string", "number": "a number", "object": "a mapping"}
# Order in which simultaneous problems of one entry are reported.
_ERROR_PRIORITY = {"type": 0, "required": 1, "additionalProperties": 2}


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _schema_error_message(err: Any, entry: Any, allowed: list[str], required: list[str]) -> str:
    """Turn one jsonschema error into ``key 'x': problem; fix: ...``."""
    path = list(err.absolute_path)
    key = str(path[0]) if path else None
    v = err.validator
    if v == "type" and key is None:
        return f"is {_describe(entry)}, not a mapping; fix: write each entry as a mapping of {', '.join(allowed)}"
    if v == "required":
        missing = [k for k in required if isinstance(entry, dict) and k not in entry]
        k = missing[0] if missing else "?"
        return f"key '{k}' is missing; fix: add '{k}' (required keys: {', '.join(required)})"
    if v == "additionalProperties":
        extra = sorted(str(k) for k in entry if k not in allowed) if isinstance(entry, dict) else []
        k = extra[0] if extra else "?"
        return (
            f"key '{k}' is not allowed (the site's CrossModelTransfer type rejects extra keys); "
            f"fix: remove '{k}' (allowed keys: {', '.join(allowed)})"
        )
    value = err.instance
    if v == "type":
        want = _TYPE_WORDS.get(err.validator_value, str(err.validator_value))
        hint = " (quote it in the YAML)" if err.validator_value == "string" else ""
        return f"key '{key}' must be {want}, got {_describe(value)}; fix: write '{key}' as {want}{hint}"
    if v in ("minimum", "maximum"):
        sub = err.schema
        lo, hi = sub.get("minimum"), sub.get("maximum")
        return f"key '{key}' must be in [{lo}, {hi}], got {value!r}; fix: correct '{key}' to a value in [{lo}, {hi}]"
    if v in ("minLength", "pattern"):
        return f"key '{key}' must be a non-empty string, got {value!r}; fix: fill in '{key}'"
    return f"key '{key}': {err.message}; fix: correct '{key}'"


def validate_entries(entries: list[dict], *, source: str) -> None:
    """Validate every entry against the schema; raise :class:`LeaderboardError` on the first problem.

    Also rejects non-finite numbers (YAML ``.nan``/``.inf``) and two entries with the same
    ``(probeId, sourceModel, targetModel)`` key.
    """
    if not isinstance(entries, list):
        raise LeaderboardError(
            f"{source}: expected a list of entries, got {type(entries).__name__}; "
            "fix: write the entries as a YAML list of mappings"
        )
    validator = _validator()
    schema = validator.schema
    allowed = [k for k in FIELD_ORDER if k in schema["properties"]]
    required = list(schema["required"])
    seen: dict[tuple, int] = {}
    for i, entry in enumerate(entries):
        label = f"{source}: entry {i}"
        if isinstance(entry, dict) and isinstance(entry.get("probeId"), str):
            label += f" (probeId {entry['probeId']!r})"
        errors = list(validator.iter_errors(entry))
        if errors:
            errors.sort(
                key=lambda e: (
                    len(e.absolute_path) > 0,
                    _ERROR_PRIORITY.get(e.validator, 9),
                    [str(p) for p in e.absolute_path],
                )
            )
            msg = _schema_error_message(errors[0], entry, allowed, required)
            more = f" ({len(errors) - 1} more problem(s) in this entry)" if len(errors) > 1 else ""
            raise LeaderboardError(f"{label}: {msg}{more}")
        check_bundle_id(entry["probeId"], where=f"{source}: entry {i}")
        for k in ("pearson_ce", "transfer_auroc"):
            if k in entry and not math.isfinite(entry[k]):
                raise LeaderboardError(
                    f"{label}: key '{k}' must be a finite number, got {entry[k]!r}; "
                    f"fix: drop the entry or give '{k}' a real value"
                )
        key = tuple(entry[k] for k in KEY_FIELDS)
        if key in seen:
            raise LeaderboardError(
                f"{label}: duplicates entry {seen[key]} (same probeId, sourceModel, targetModel); "
                "fix: keep only one of them"
            )
        seen[key] = i


def read_entries_yaml(path: str | os.PathLike) -> list[dict]:
    """Read the YAML list of entries (``reports/probebench.yaml``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LeaderboardError(
            f"{p}: file not found; fix: pass the path of the YAML list of entries probebench wrote "
            "(e.g. reports/probebench.yaml)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LeaderboardError(f"{p}: cannot read ({exc}); fix: check the file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LeaderboardError(
            f"{p}: malformed YAML{where}: {problem}; fix: correct the YAML syntax there "
            "(the file must be a YAML list of entry mappings)"
        ) from None
    if not isinstance(data, list):
        got = "an empty document" if data is None else f"a {type(data).__name__}"
        raise LeaderboardError(
            f"{p}: expected a YAML list of entries, got {got}; "
            "fix: make the top level a list ('- probeId: ...' items, or [] for none)"
        )
    return data
