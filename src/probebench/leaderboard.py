"""Merge ProbeBench ``CrossModelTransfer`` entries into the website's ``lib/probebench-data.ts``.

probebench writes its leaderboard entries to ``reports/probebench.yaml`` (a YAML list of
mappings). This module validates them against ``schemas/cross_model_transfer.schema.json``
(the JSON Schema mirror of the site's TypeScript type) and splices them into the
``crossModelTransfers`` array of the site's data file:

* rows are keyed by ``(probeId, sourceModel, targetModel)``;
* a row whose key already exists is replaced in place (same position, same indentation);
  a row whose content is already identical is left byte-for-byte untouched;
* new rows are appended before the closing ``]`` of the array;
* every byte outside the rows that change stays identical.

Pure core: no CLI, no printing. See :mod:`probebench.cli_leaderboard` for the command.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from probebench.io import atomic_write_bytes

__all__ = [
    "ARRAY_NAME",
    "KEY_FIELDS",
    "FIELD_ORDER",
    "LeaderboardError",
    "load_schema",
    "validate_entries",
    "read_entries_yaml",
    "apply_entries",
    "unified_diff",
    "apply_file",
]

SCHEMA_RESOURCE = "schemas/cross_model_transfer.schema.json"
ARRAY_NAME = "crossModelTransfers"
TYPE_NAME = "CrossModelTransfer"
KEY_FIELDS: tuple[str, ...] = ("probeId", "sourceModel", "targetModel")
FIELD_ORDER: tuple[str, ...] = (
    "probeId",
    "sourceModel",
    "targetModel",
    "pearson_ce",
    "transfer_auroc",
    "notes",
)
DECLARATION = f"export const {ARRAY_NAME}: {TYPE_NAME}[] = ["

_DECL_RE = re.compile(
    r"\bexport\s+const\s+" + ARRAY_NAME + r"\s*:\s*" + TYPE_NAME + r"\s*\[\s*\]\s*=\s*\["
)
_NAME_RE = re.compile(r"\b" + ARRAY_NAME + r"\b")


class LeaderboardError(ValueError):
    """A leaderboard input or target file is invalid; the message is one line and says the fix."""


# --------------------------------------------------------------------------------------
# Schema validation
# --------------------------------------------------------------------------------------


def load_schema() -> dict:
    """Return the JSON Schema (draft 2020-12) for one ``CrossModelTransfer`` entry."""
    text = resources.files("probebench").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
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


# --------------------------------------------------------------------------------------
# A small scanner for the subset of TypeScript found in data files
# --------------------------------------------------------------------------------------


class _ParseError(Exception):
    def __init__(self, message: str, pos: int):
        super().__init__(message)
        self.message = message
        self.pos = pos


_OPAQUE = object()  # a value we skip but cannot evaluate (identifier, template with ${...}, ...)

_IDENT_RE = re.compile(r"[A-Za-z_$\u00A0-\uFFFF][\w$\u00A0-\uFFFF]*")
_NUMBER_RE = re.compile(
    r"(?:0[xX][0-9a-fA-F](?:_?[0-9a-fA-F])*"
    r"|0[oO][0-7](?:_?[0-7])*"
    r"|0[bB][01](?:_?[01])*"
    r"|(?:\d(?:_?\d)*(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)(?:[eE][+-]?\d(?:_?\d)*)?)"
    r"n?",
    re.ASCII,
)
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col


def _skip_ws_comments(t: str, i: int) -> int:
    n = len(t)
    while i < n:
        c = t[i]
        if c.isspace() or c == "\ufeff":
            i += 1
        elif t.startswith("//", i):
            j = t.find("\n", i)
            i = n if j < 0 else j
        elif t.startswith("/*", i):
            j = t.find("*/", i + 2)
            if j < 0:
                raise _ParseError("unterminated /* comment", i)
            i = j + 2
        else:
            break
    return i


def _read_escape(t: str, j: int) -> tuple[str, int]:
    """``t[j]`` is the character after a backslash; return (decoded text, next index)."""
    c = t[j]
    if c in _SIMPLE_ESCAPES and not (c == "0" and j + 1 < len(t) and t[j + 1].isdigit()):
        return _SIMPLE_ESCAPES[c], j + 1
    if c == "x":
        hexs = t[j + 1 : j + 3]
        if len(hexs) == 2 and all(h in "0123456789abcdefABCDEF" for h in hexs):
            return chr(int(hexs, 16)), j + 3
        raise _ParseError("bad \\x escape in string", j - 1)
    if c == "u":
        if t.startswith("{", j + 1):
            end = t.find("}", j + 2)
            hexs = t[j + 2 : end] if end >= 0 else ""
            if hexs and all(h in "0123456789abcdefABCDEF" for h in hexs) and int(hexs, 16) <= 0x10FFFF:
                return chr(int(hexs, 16)), end + 1
            raise _ParseError("bad \\u{...} escape in string", j - 1)
        hexs = t[j + 1 : j + 5]
        if len(hexs) == 4 and all(h in "0123456789abcdefABCDEF" for h in hexs):
            code = int(hexs, 16)
            # Combine a UTF-16 surrogate pair written as two escapes.
            if 0xD800 <= code <= 0xDBFF and t.startswith("\\u", j + 5):
                low = t[j + 7 : j + 11]
                if len(low) == 4 and all(h in "0123456789abcdefABCDEF" for h in low):
                    lo = int(low, 16)
                    if 0xDC00 <= lo <= 0xDFFF:
                        return chr(0x10000 + ((code - 0xD800) << 10) + (lo - 0xDC00)), j + 11
            return chr(code), j + 5
        raise _ParseError("bad \\u escape in string", j - 1)
    if c == "\r":  # line continuation
        return "", j + 2 if t.startswith("\n", j + 1) else j + 1
    if c in "\n\u2028\u2029":
        return "", j + 1
    return c, j + 1


def _read_string(t: str, i: int) -> tuple[Any, int]:
    """Read a '...', "..." or `...` literal at ``t[i]``; return (value, end).

    A template literal with ``${...}`` substitutions yields ``_OPAQUE``.
    """
    quote = t[i]
    n = len(t)
    j = i + 1
    buf: list[str] = []
    opaque = False
    while j < n:
        c = t[j]
        if c == quote:
            return (_OPAQUE if opaque else "".join(buf)), j + 1
        if c == "\\":
            if j + 1 >= n:
                break
            s, j = _read_escape(t, j + 1)
            buf.append(s)
            continue
        if quote == "`" and t.startswith("${", j):
            opaque = True
            j = _skip_code_block(t, j + 2)
            continue
        if c in "\r\n" and quote != "`":
            raise _ParseError("unterminated string literal", i)
        buf.append(c)
        j += 1
    raise _ParseError("unterminated string literal", i)


def _skip_code_block(t: str, i: int) -> int:
    """Skip code up to and including the ``}`` closing a ``${`` or ``{`` opened before ``i``."""
    depth = 0
    n = len(t)
    while i < n:
        i = _skip_ws_comments(t, i)
        if i >= n:
            break
        c = t[i]
        if c in "'\"`":
            _, i = _read_string(t, i)
        elif c == "{":
            depth += 1
            i += 1
        elif c == "}":
            if depth == 0:
                return i + 1
            depth -= 1
            i += 1
        else:
            i += 1
    raise _ParseError("unterminated ${...} in template literal", i)


def _mask_code(t: str) -> str | None:
    """Blank out comments and string literals (same length, newlines kept) so that a regex
    search only sees code. Returns None if the file cannot be tokenised (then the caller
    searches the raw text)."""
    out: list[str] = []
    i = 0
    n = len(t)

    def blank(a: int, b: int) -> None:
        out.append("".join(ch if ch == "\n" else " " for ch in t[a:b]))

    try:
        while i < n:
            c = t[i]
            if c in "'\"`":
                _, j = _read_string(t, i)
                blank(i, j)
                i = j
            elif t.startswith("//", i) or t.startswith("/*", i):
                j = _skip_ws_comments(t, i)
                blank(i, j)
                i = j
            else:
                out.append(c)
                i += 1
    except _ParseError:
        return None
    return "".join(out)


@dataclass
class _Row:
    start: int  # index of "{"
    end: int  # index after "}"
    fields: dict[str, Any] = field(default_factory=dict)
    first_key_pos: int | None = None

    def key(self) -> tuple | None:
        vals = tuple(self.fields.get(k, _OPAQUE) for k in KEY_FIELDS)
        if all(isinstance(v, str) for v in vals):
            return vals
        return None


@dataclass
class _ArrayInfo:
    open_pos: int  # index of "["
    close_pos: int  # index of "]"
    rows: list[_Row]
    last_item_end: int | None  # end of the last item (object or spread)
    last_item_has_comma: bool


class _TSArrayParser:
    def __init__(self, text: str):
        self.t = text
        self.n = len(text)

    def ws(self, i: int) -> int:
        return _skip_ws_comments(self.t, i)

    def found(self, i: int) -> str:
        if i >= self.n:
            return "end of file"
        return repr(self.t[i : i + 12].split("\n")[0] or self.t[i])

    def parse_array_items(self, open_pos: int) -> _ArrayInfo:
        t = self.t
        i = open_pos + 1
        rows: list[_Row] = []
        last_end: int | None = None
        last_comma = False
        while True:
            i = self.ws(i)
            if i >= self.n:
                raise _ParseError("the array is never closed with ']'", open_pos)
            c = t[i]
            if c == "]":
                return _ArrayInfo(open_pos, i, rows, last_end, last_comma)
            if c == "{":
                row = self.parse_row(i)
                rows.append(row)
                i = row.end
            elif t.startswith("...", i):
                _, i = self.parse_value(self.ws(i + 3))
            else:
                raise _ParseError(
                    f"expected a row object literal '{{ ... }}' or ']', found {self.found(i)}", i
                )
            last_end = i
            last_comma = False
            i = self.ws(i)
            if i < self.n and t[i] == ",":
                last_comma = True
                i += 1
            elif i < self.n and t[i] == "]":
                continue
            else:
                raise _ParseError(f"expected ',' or ']' after a row, found {self.found(i)}", i)

    def parse_key(self, i: int) -> tuple[str, int]:
        t = self.t
        c = t[i]
        if c in "'\"":
            val, j = _read_string(t, i)
            return val, j
        m = _IDENT_RE.match(t, i)
        if m:
            return m.group(0), m.end()
        m = _NUMBER_RE.match(t, i)
        if m and m.end() > i:
            return m.group(0), m.end()
        raise _ParseError(f"expected a property name, found {self.found(i)}", i)

    def parse_row(self, i: int) -> _Row:
        fields, end, first_key = self.parse_object(i)
        return _Row(start=i, end=end, fields=fields, first_key_pos=first_key)

    def parse_object(self, i: int) -> tuple[dict[str, Any], int, int | None]:
        """Parse ``{ ... }`` at ``i``; return (static property values, end, first key index)."""
        t = self.t
        start = i
        i += 1
        out: dict[str, Any] = {}
        first_key: int | None = None
        while True:
            i = self.ws(i)
            if i >= self.n:
                raise _ParseError("object literal is never closed with '}'", start)
            if t[i] == "}":
                return out, i + 1, first_key
            if first_key is None:
                first_key = i
            if t.startswith("...", i):
                _, i = self.parse_value(self.ws(i + 3))
                out["..."] = _OPAQUE
            else:
                key, i = self.parse_key(i)
                i = self.ws(i)
                if i < self.n and t[i] == ":":
                    val, i = self.parse_value(self.ws(i + 1))
                    out[key] = val
                elif i < self.n and t[i] in ",}":
                    out[key] = _OPAQUE  # shorthand property
                else:
                    raise _ParseError(
                        f"expected ':' after property {key!r}, found {self.found(i)}", i
                    )
            i = self.ws(i)
            if i < self.n and t[i] == ",":
                i += 1
            elif i < self.n and t[i] == "}":
                continue
            else:
                raise _ParseError(
                    f"expected ',' or '}}' after a property value, found {self.found(i)}", i
                )

    def parse_value(self, i: int) -> tuple[Any, int]:
        t = self.t
        if i >= self.n:
            raise _ParseError("expected a value, found end of file", i)
        c = t[i]
        if c in "'\"`":
            return _read_string(t, i)
        if c == "{":
            _, end, _ = self.parse_object(i)
            return _OPAQUE, end
        if c == "[":
            return _OPAQUE, self._skip_array(i)
        if c in "+-":
            j = self.ws(i + 1)
            val, end = self.parse_value(j)
            if isinstance(val, bool) or not isinstance(val, (int, float)):
                if val is _OPAQUE:
                    return _OPAQUE, end
                raise _ParseError(f"expected a number after {c!r}, found {self.found(j)}", j)
            return (-val if c == "-" else val), end
        m = _NUMBER_RE.match(t, i)
        if m and m.end() > i and c in "0123456789.":
            end = m.end()
            if end < self.n and (_IDENT_RE.match(t, end) or t[end].isdigit()):
                raise _ParseError(f"malformed number {t[i:end + 1]!r}", i)
            return self._number_value(m.group(0)), end
        m = _IDENT_RE.match(t, i)
        if m:
            word = m.group(0)
            end = m.end()
            # Member access chains such as Models.llama8b
            while True:
                j = self.ws(end)
                if j < self.n and t[j] == "." and not t.startswith("...", j):
                    m2 = _IDENT_RE.match(t, self.ws(j + 1))
                    if not m2:
                        raise _ParseError(f"expected a name after '.', found {self.found(j + 1)}", j)
                    end = m2.end()
                    word = None
                else:
                    break
            consts = {"true": True, "false": False, "null": None, "Infinity": math.inf, "NaN": math.nan}
            if word in consts:
                return consts[word], end
            return _OPAQUE, end
        raise _ParseError(f"expected a value, found {self.found(i)}", i)

    def _skip_array(self, i: int) -> int:
        t = self.t
        start = i
        i += 1
        while True:
            i = self.ws(i)
            if i >= self.n:
                raise _ParseError("array literal is never closed with ']'", start)
            if t[i] == "]":
                return i + 1
            if t[i] == ",":  # hole
                i += 1
                continue
            if t.startswith("...", i):
                i = self.ws(i + 3)
            _, i = self.parse_value(i)
            i = self.ws(i)
            if i < self.n and t[i] == ",":
                i += 1
            elif i < self.n and t[i] == "]":
                continue
            else:
                raise _ParseError(f"expected ',' or ']' in array, found {self.found(i)}", i)

    @staticmethod
    def _number_value(lit: str) -> Any:
        s = lit.replace("_", "")
        if s.endswith("n"):
            return _OPAQUE  # BigInt
        low = s.lower()
        if low.startswith("0x"):
            return int(s[2:], 16)
        if low.startswith("0o"):
            return int(s[2:], 8)
        if low.startswith("0b"):
            return int(s[2:], 2)
        return float(s)


# --------------------------------------------------------------------------------------
# Locating the array and splicing rows
# --------------------------------------------------------------------------------------


def _find_declaration(ts_text: str, source: str) -> re.Match:
    masked = _mask_code(ts_text)
    haystack = masked if masked is not None else ts_text
    matches = list(_DECL_RE.finditer(haystack))
    if len(matches) > 1:
        lines = ", ".join(str(_line_col(ts_text, m.start())[0]) for m in matches)
        raise LeaderboardError(
            f"{source}: '{ARRAY_NAME}' is declared {len(matches)} times (lines {lines}); "
            "fix: keep exactly one declaration"
        )
    if not matches:
        other = _NAME_RE.search(haystack)
        if other:
            line = _line_col(ts_text, other.start())[0]
            raise LeaderboardError(
                f"{source}: '{ARRAY_NAME}' appears at line {line} but not as an array literal of the "
                f"expected form; fix: declare it as '{DECLARATION} ... ];'"
            )
        raise LeaderboardError(
            f"{source}: no '{ARRAY_NAME}' array found; fix: add "
            f"'{DECLARATION}];' (with 'import type {{ {TYPE_NAME} }} from \"./types\";') to the file"
        )
    return matches[0]


def _line_start(t: str, pos: int) -> int:
    return t.rfind("\n", 0, pos) + 1


def _indent_if_first(t: str, pos: int) -> str | None:
    """Leading whitespace of the line containing ``pos`` if only whitespace precedes ``pos``."""
    prefix = t[_line_start(t, pos) : pos].lstrip("\ufeff")
    return prefix if prefix.strip(" \t") == "" else None


def _line_indent(t: str, pos: int) -> str:
    ls = _line_start(t, pos)
    m = re.match(r"[ \t]*", t[ls:pos])
    return m.group(0) if m else ""


def _render_value(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"cannot render {v!r}")
    return str(v) if isinstance(v, int) else repr(float(v))


def _render_row(entry: dict, obj_indent: str, step: str, nl: str) -> str:
    lines = ["{"]
    for k in FIELD_ORDER:
        if k in entry:
            lines.append(f"{obj_indent}{step}{k}: {_render_value(entry[k])},")
    lines.append(f"{obj_indent}}}")
    return nl.join(lines)


def _same_content(row: _Row, entry: dict) -> bool:
    if set(row.fields) != set(entry):
        return False
    for k, want in entry.items():
        have = row.fields[k]
        if isinstance(want, str):
            if have != want:
                return False
        else:
            if isinstance(have, bool) or not isinstance(have, (int, float)) or float(have) != float(want):
                return False
    return True


def _apply(ts_text: str, entries: list[dict], source: str) -> tuple[str, int, int]:
    decl = _find_declaration(ts_text, source)
    open_pos = decl.end() - 1
    parser = _TSArrayParser(ts_text)
    try:
        arr = parser.parse_array_items(open_pos)
    except _ParseError as exc:
        line, col = _line_col(ts_text, exc.pos)
        raise LeaderboardError(
            f"{source}: malformed '{ARRAY_NAME}' array at line {line}, column {col}: {exc.message}; "
            "fix: correct the TypeScript there (rows are object literals separated by commas)"
        ) from None

    t = ts_text
    nl = "\r\n" if "\r\n" in t else "\n"
    decl_indent = _line_indent(t, decl.start())

    # Infer the indentation style from the existing rows.
    obj_indent_default: str | None = None
    step = "  "
    step_found = False
    for row in arr.rows:
        oi = _indent_if_first(t, row.start)
        if oi is None:
            continue
        if obj_indent_default is None:
            obj_indent_default = oi
        if row.first_key_pos is not None and not step_found:
            ki = _indent_if_first(t, row.first_key_pos)
            if ki is not None and ki.startswith(oi) and len(ki) > len(oi):
                step = ki[len(oi) :]
                step_found = True
    if not step_found and obj_indent_default is not None:
        base = obj_indent_default[len(decl_indent) :] if obj_indent_default.startswith(decl_indent) else ""
        if base:
            step = base
    last_obj_indent = None
    for row in reversed(arr.rows):
        last_obj_indent = _indent_if_first(t, row.start)
        if last_obj_indent is not None:
            break
    new_obj_indent = last_obj_indent or obj_indent_default or (decl_indent + step)

    by_key: dict[tuple, list[_Row]] = {}
    for row in arr.rows:
        k = row.key()
        if k is not None:
            by_key.setdefault(k, []).append(row)

    edits: list[tuple[int, int, str]] = []
    appended: list[dict] = []
    n_updated = 0
    for entry in entries:
        k = tuple(entry[f] for f in KEY_FIELDS)
        rows = by_key.get(k)
        if not rows:
            appended.append(entry)
            continue
        if len(rows) > 1:
            lines = ", ".join(str(_line_col(t, r.start)[0]) for r in rows)
            raise LeaderboardError(
                f"{source}: rows at lines {lines} share the key probeId={k[0]!r}, sourceModel={k[1]!r}, "
                f"targetModel={k[2]!r}; fix: delete all but one of them"
            )
        row = rows[0]
        if _same_content(row, entry):
            continue
        row_indent = _indent_if_first(t, row.start)
        if row_indent is None:
            row_indent = _line_indent(t, row.start)
        row_step = step
        if row.first_key_pos is not None:
            ki = _indent_if_first(t, row.first_key_pos)
            if ki is not None and ki.startswith(row_indent) and len(ki) > len(row_indent):
                row_step = ki[len(row_indent) :]
        edits.append((row.start, row.end, _render_row(entry, row_indent, row_step, nl)))
        n_updated += 1

    if appended:
        trailing = arr.last_item_has_comma or arr.last_item_end is None
        rendered = [new_obj_indent + _render_row(e, new_obj_indent, step, nl) for e in appended]
        close = arr.close_pos
        if arr.last_item_end is not None and not arr.last_item_has_comma:
            edits.append((arr.last_item_end, arr.last_item_end, ","))
        body = ("," + nl).join(rendered) + ("," if trailing else "")
        close_indent = _indent_if_first(t, close)
        if close_indent is not None and _line_start(t, close) > open_pos:
            ls = _line_start(t, close)
            edits.append((ls, ls, body + nl))
        else:
            edits.append((close, close, nl + body + nl + decl_indent))

    out = t
    # Apply back to front; of two insertions at one index the earlier-listed one ends up first.
    order = sorted(range(len(edits)), key=lambda k: (edits[k][0], edits[k][1], k), reverse=True)
    for k in order:
        start, end, repl = edits[k]
        out = out[:start] + repl + out[end:]
    return out, len(appended), n_updated


def apply_entries(
    ts_text: str, entries: list[dict], *, source: str, entries_source: str = "<entries>"
) -> str:
    """Return ``ts_text`` with ``entries`` merged into its ``crossModelTransfers`` array.

    ``source`` names the TypeScript file in error messages; ``entries`` are validated first
    (``entries_source`` names them in error messages).
    """
    validate_entries(entries, source=entries_source)
    new, _, _ = _apply(ts_text, entries, source)
    return new


def unified_diff(old: str, new: str, path: str | os.PathLike) -> str:
    """Unified diff of ``old`` -> ``new`` with ``a/path`` and ``b/path`` headers ('' if equal)."""
    p = str(path)
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile=f"a/{p}",
        tofile=f"b/{p}",
    )
    out: list[str] = []
    for line in lines:
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        out.append(line)
    return "".join(out)


def apply_file(
    yaml_path: str | os.PathLike, ts_path: str | os.PathLike, *, dry_run: bool
) -> tuple[str, int, int]:
    """Merge the YAML entries at ``yaml_path`` into ``ts_path``.

    Returns ``(diff, n_inserted, n_updated)``; ``n_updated`` counts existing rows whose text
    changed. All entries are validated before anything is touched; the file is written
    atomically and only if its text changed; ``dry_run`` writes nothing.
    """
    ypath, tpath = Path(yaml_path), Path(ts_path)
    entries = read_entries_yaml(ypath)
    validate_entries(entries, source=str(ypath))
    try:
        with open(tpath, encoding="utf-8", newline="") as fh:
            old = fh.read()
    except FileNotFoundError:
        raise LeaderboardError(
            f"{tpath}: file not found; fix: pass the website's data file with --data "
            "(e.g. lib/probebench-data.ts)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LeaderboardError(f"{tpath}: cannot read ({exc}); fix: check the file") from None
    new, n_inserted, n_updated = _apply(old, entries, str(tpath))
    diff = unified_diff(old, new, tpath)
    if not dry_run and new != old:
        try:
            atomic_write_bytes(tpath, new.encode("utf-8"))
        except OSError as exc:
            raise LeaderboardError(
                f"{tpath}: cannot write ({exc}); fix: check permissions of the file and its directory"
            ) from None
    return diff, n_inserted, n_updated
