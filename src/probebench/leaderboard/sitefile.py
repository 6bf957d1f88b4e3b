"""Splice ``CrossModelTransfer`` entries into the ``crossModelTransfers`` array of the site's
``lib/probebench-data.ts``, parsed with tree-sitter's TypeScript grammar (a syntax error is refused,
naming the line). Rows are keyed by ``(probeId, sourceModel, targetModel)``: one is rewritten in
place (left alone if identical: reruns are no-ops), new ones go before the ``]``, all else is kept.
Typed on the name or by ``satisfies``/``as`` as ``CrossModelTransfer[]``, ``Array<>``, ``readonly []``
or ``ReadonlyArray<>`` (``as const`` allowed); an untyped array is refused (no type check guards it).

    >>> ts = "export const crossModelTransfers = [] satisfies CrossModelTransfer[];\\n"
    >>> row = {"probeId": "p", "sourceModel": "s", "targetModel": "t", "pearson_ce": 0.5}
    >>> print(apply_entries(ts, [row], source="d.ts"), end="")
    export const crossModelTransfers = [
      {
        probeId: "p",
        sourceModel: "s",
        targetModel: "t",
        pearson_ce: 0.5,
      },
    ] satisfies CrossModelTransfer[];
"""

from __future__ import annotations

import difflib
import json
import os
import re
from pathlib import Path
from typing import Any

import tree_sitter_typescript
from tree_sitter import Language, Node, Parser, Query, QueryCursor

from probebench.artifacts.io import atomic_write_bytes
from probebench.leaderboard.schema import FIELD_ORDER, KEY_FIELDS, LeaderboardError, read_entries_yaml, validate_entries

ARRAY_NAME = "crossModelTransfers"
TYPE_NAME = "CrossModelTransfer"
DECLARATION = f"export const {ARRAY_NAME}: {TYPE_NAME}[] = ["
_LANGUAGE = Language(tree_sitter_typescript.language_typescript())
_PARSER = Parser(_LANGUAGE)
_DECLARATORS = Query(_LANGUAGE, f'(variable_declarator name: (identifier) @n (#eq? @n "{ARRAY_NAME}")) @d')
# Where the name occurs in code (not in comments or strings), in any role.
_MENTIONS = Query(_LANGUAGE, f"""([(identifier) (property_identifier) (shorthand_property_identifier)
                                   (type_identifier)] @name (#eq? @name "{ARRAY_NAME}"))""")
# tree-sitter reads a raw line break inside '...' or "..." (invalid TypeScript) without an ERROR node.
_STRINGS = Query(_LANGUAGE, "(string) @s")
_BROKEN_STRING = re.compile(rb"(?:^|[^\\\r])(?:\\\\)*[\r\n]")  # a line break not escaped by a backslash
_TYPE_RE = re.compile(rf"(readonly\s+)?{TYPE_NAME}\s*\[\s*\]|(Readonly)?Array\s*<\s*{TYPE_NAME}\s*>")
_OPAQUE = object()  # a value that is not a literal (identifier, call, template with ${...})
# Escapes other than \x.. and \u....; a backslash before a line break continues the line.
_ESCAPES = dict(zip("ntrbfv0", "\n\t\r\b\f\v\0")) | dict.fromkeys("\r\n\u2028\u2029", "")


def _unescape(esc: str) -> str:
    """Decode one escape sequence (``\\n``, ``\\x41``, ``\\u2014``, ``\\u{1F600}``, ``\\'``)."""
    return chr(int(esc[2:].strip("{}"), 16)) if esc[1] in "xu" else _ESCAPES.get(esc[1], esc[1])


def _value(node: Node) -> Any:
    """Python value of a string or number literal (or ``-number``); ``_OPAQUE`` for the rest."""
    if node.type in ("string", "template_string"):
        if any(c.type == "template_substitution" for c in node.children):
            return _OPAQUE
        text = "".join(_unescape(c.text.decode()) if c.type == "escape_sequence" else c.text.decode()
                       for c in node.named_children)
        # Two \uD83D\uDE00-style escapes are one UTF-16 surrogate pair.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
    if node.type == "number":  # a BigInt (1n) is not a JSON number
        s = node.text.decode().replace("_", "")
        return _OPAQUE if s.endswith("n") else int(s, 0) if s[:2].lower() in ("0x", "0o", "0b") else float(s)
    sign = node.children[0].type if node.type == "unary_expression" else None
    v = _value(node.children[-1]) if sign in ("-", "+") else _OPAQUE
    return (-v if sign == "-" else v) if isinstance(v, (int, float)) else _OPAQUE


def _members(node: Node) -> list[Node]:
    return [m for m in node.named_children if m.type != "comment"]


def _fields(obj: Node) -> dict[str, Any]:
    """Property name -> literal value of one row (shorthands, spreads, methods: ``_OPAQUE``)."""
    pairs = [(m.child_by_field_name("key"), m.child_by_field_name("value")) if m.type == "pair" else (m, None)
             for m in _members(obj)]
    return {(_value(k) if k.type == "string" else k.text.decode()): _OPAQUE if v is None else _value(v)
            for k, v in pairs}


def _syntax_error(data: bytes, root: Node, source: str, broken: list) -> LeaderboardError:
    """One line naming the offending token at the first ERROR or MISSING node, or broken string."""
    err = broken[0] if broken else root
    while not (err.is_error or err.is_missing) and (
            inner := next((c for c in err.children if c.has_error or c.is_missing), None)) is not None:
        err = inner
    kids, opener = err.children, next((c for c in err.children if c.type in ("[", "{", "(")), None)
    if broken:
        pos, what = err.start_byte, "a line break inside a quoted string"
    elif err.is_missing:
        pos, what = err.start_byte, f"missing '{err.type}'"
    elif opener is not None and not data[err.end_byte:].strip():
        pos, what = opener.start_byte, f"'{opener.type}' is never closed"
    else:
        pos = err.start_byte
        if kids and kids[0].is_named and (prev := err.prev_sibling) is not None and not prev.is_named:
            # A complete value stands where one was expected: the token after it is the mistake.
            pos = kids[1].start_byte if len(kids) > 1 else len(data) - len(data[err.end_byte:].lstrip())
        found = data[pos : pos + 48].decode("utf-8", "replace")[:12].split("\n")[0].rstrip("\r")
        what = f"unexpected {found!r}" if found else "unexpected end of file"
    stmt = next(c for c in root.children if c.start_byte <= err.start_byte <= c.end_byte)
    in_array = bool(QueryCursor(_MENTIONS).captures(stmt))
    line = data.count(b"\n", 0, pos) + 1
    col = len(data[data.rfind(b"\n", 0, pos) + 1 : pos].decode("utf-8", "replace")) + 1  # characters
    hint = " (rows are object literals separated by commas)" if in_array else ""
    return LeaderboardError(f"{source}: malformed {f'{ARRAY_NAME!r} array' if in_array else 'TypeScript'} at "
                            f"line {line}, column {col}: {what}; fix: correct the TypeScript there{hint}")


def _find_array(data: bytes, source: str) -> tuple[int, Node]:
    """(byte offset of the declarator, the ``array`` node); refuses anything else."""
    root = _PARSER.parse(data).root_node
    broken = [s for s in QueryCursor(_STRINGS).captures(root).get("s", []) if _BROKEN_STRING.search(s.text)]
    if root.has_error or broken:
        raise _syntax_error(data, root, source, broken)
    found = sorted(QueryCursor(_DECLARATORS).captures(root).get("d", []), key=lambda n: n.start_byte)
    if len(found) > 1:
        lines = ", ".join(str(d.start_point.row + 1) for d in found)
        raise LeaderboardError(f"{source}: '{ARRAY_NAME}' is declared {len(found)} times (lines {lines}); "
                               "fix: keep exactly one declaration")
    # The type is checked where it is written: on the name, or after the array (satisfies/as).
    annotation, value = (found[0].child_by_field_name(f) for f in ("type", "value")) if found else (None, None)
    typed = annotation is not None and bool(_TYPE_RE.fullmatch(annotation.children[-1].text.decode()))
    while value is not None and value.type in ("satisfies_expression", "as_expression"):
        typed = typed or bool(_TYPE_RE.fullmatch(value.children[-1].text.decode()))
        value = value.children[0]
    if typed and value is not None and value.type == "array":
        return found[0].start_byte, value
    if mentions := QueryCursor(_MENTIONS).captures(root).get("name"):
        line = min(n.start_point.row for n in mentions) + 1
        raise LeaderboardError(f"{source}: '{ARRAY_NAME}' appears at line {line} but not as an array literal "
                               f"of the expected form; fix: declare it as '{DECLARATION} ... ];' "
                               f"(or '= [...] satisfies {TYPE_NAME}[]')")
    raise LeaderboardError(f"{source}: no '{ARRAY_NAME}' array found; fix: add '{DECLARATION}];' "
                           f"(with 'import type {{ {TYPE_NAME} }} from \"./types\";') to the file")


def _indent(data: bytes, pos: int) -> tuple[bytes, bool]:
    """Leading whitespace of the line holding ``pos``, and whether only whitespace precedes ``pos``."""
    line = data[data.rfind(b"\n", 0, pos) + 1 : pos].removeprefix(b"\xef\xbb\xbf")
    rest = line.lstrip(b" \t")
    return line[: len(line) - len(rest)], not rest


def _step(data: bytes, row: Node, indent: bytes) -> bytes | None:
    """How much deeper than its ``{`` a row's first key is indented, if the key starts a line."""
    key, first = _indent(data, _members(row)[0].start_byte) if _members(row) else (b"", False)
    return key[len(indent):] if first and key.startswith(indent) and len(key) > len(indent) else None


def _render_row(entry: dict, indent: bytes, step: bytes, nl: bytes) -> bytes:
    # json.dumps writes TS literals: strings double-quoted, 1 -> 1, 1e-05 -> 1e-05 (float repr).
    return nl.join([b"{", *(indent + step + f"{k}: {json.dumps(entry[k], ensure_ascii=False)},".encode()
                            for k in FIELD_ORDER if k in entry), indent + b"}"])


def _apply(text: str, entries: list[dict], source: str) -> tuple[str, int, int]:
    data = text.encode("utf-8")
    decl_start, array = _find_array(data, source)  # rows are indented from the declaration's line
    items = _members(array)
    rows = [c for c in items if c.type == "object"]
    nl = b"\r\n" if b"\r\n" in data else b"\n"
    decl_indent = _indent(data, decl_start)[0]
    # Follow the existing rows: the indentation of the last row's "{" and the step of the first
    # row whose keys start their own lines.
    own_line = [(r, i) for r in rows for i, first in [_indent(data, r.start_byte)] if first]
    first = own_line[0][1] if own_line else b""
    base = first[len(decl_indent):] if first.startswith(decl_indent) else b""
    step = next((s for r, i in own_line if (s := _step(data, r, i))), None) or base or b"  "
    new_indent = own_line[-1][1] if own_line else decl_indent + step

    by_key: dict[tuple, list[Node]] = {}
    for r in rows:
        by_key.setdefault(tuple(_fields(r).get(k, _OPAQUE) for k in KEY_FIELDS), []).append(r)
    edits: list[tuple[int, int, bytes]] = []
    appended = [e for e in entries if tuple(e[f] for f in KEY_FIELDS) not in by_key]
    for e in entries:
        matches = by_key.get(k := tuple(e[f] for f in KEY_FIELDS), [])
        if len(matches) > 1:
            lines = ", ".join(str(r.start_point.row + 1) for r in matches)
            raise LeaderboardError(f"{source}: rows at lines {lines} share the key probeId={k[0]!r}, "
                                   f"sourceModel={k[1]!r}, targetModel={k[2]!r}; fix: delete all but one of them")
        if matches and _fields(row := matches[0]) != e:  # dict ==: 1 == 1.0, _OPAQUE equals nothing
            indent = _indent(data, row.start_byte)[0]
            rendered = _render_row(e, indent, _step(data, row, indent) or step, nl)
            edits.append((row.start_byte, row.end_byte, rendered))
    n_updated = len(edits)
    if appended:
        last_end = items[-1].end_byte if items else None
        comma = last_end is None or any(c.type == "," and c.start_byte >= last_end for c in array.children)
        if not comma:
            edits.append((last_end, last_end, b","))
        rendered = [new_indent + _render_row(e, new_indent, step, nl) for e in appended]
        body = (b"," + nl).join(rendered) + (b"," if comma else b"")
        close = array.children[-1].start_byte
        if _indent(data, close)[1] and (line_start := data.rfind(b"\n", 0, close) + 1) > array.start_byte:
            edits.append((line_start, line_start, body + nl))  # "]" starts its own line: insert above it
        else:
            edits.append((close, close, nl + body + nl + decl_indent))
    # Back to front; of two insertions at one offset the earlier-listed one ends up first.
    for _, (start, end, repl) in sorted(enumerate(edits), key=lambda e: (e[1][0], e[1][1], e[0]), reverse=True):
        data = data[:start] + repl + data[end:]
    return data.decode("utf-8"), len(appended), n_updated


def apply_entries(ts_text: str, entries: list[dict], *, source: str, entries_source: str = "<entries>") -> str:
    """``ts_text`` with ``entries`` (validated first) merged; the sources name the inputs in errors."""
    validate_entries(entries, source=entries_source)
    return _apply(ts_text, entries, source)[0]


def unified_diff(old: str, new: str, path: str | os.PathLike) -> str:
    """Unified diff of ``old`` -> ``new`` with ``a/path`` and ``b/path`` headers ('' if equal)."""
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 fromfile=f"a/{path}", tofile=f"b/{path}")
    return "".join(s if s.endswith("\n") else s + "\n\\ No newline at end of file\n" for s in lines)


def apply_file(yaml_path: str | os.PathLike, ts_path: str | os.PathLike, *, dry_run: bool) -> tuple[str, int, int]:
    """Merge the YAML entries into ``ts_path``; return ``(diff, n_inserted, n_updated)``. All is
    validated first; the file is written atomically, only if its text changed and not on ``dry_run``;
    a symlink is written through to its target and stays a link (a site may link its data file)."""
    ypath, tpath = Path(yaml_path), Path(ts_path)
    entries = read_entries_yaml(ypath)
    validate_entries(entries, source=str(ypath))
    try:
        old = tpath.read_bytes().decode("utf-8")  # as written: no newline translation
    except FileNotFoundError:
        raise LeaderboardError(f"{tpath}: file not found; fix: pass the website's data file with --data "
                               "(e.g. lib/probebench-data.ts)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LeaderboardError(f"{tpath}: cannot read ({exc}); fix: check the file") from None
    new, n_inserted, n_updated = _apply(old, entries, str(tpath))
    if not dry_run and new != old:
        try:  # atomic_write_bytes renames over its path: give it the link's target, not the link
            atomic_write_bytes(Path(os.path.realpath(tpath)), new.encode("utf-8"))
        except OSError as exc:
            raise LeaderboardError(f"{tpath}: cannot write ({exc}); fix: check permissions of the file "
                                   "and its directory") from None
    return unified_diff(old, new, tpath), n_inserted, n_updated
