"""The slice of pine (OData) a device uses: ``$select``, ``$filter``, ``$expand`` over a few resources.

cloud-api.md §6: every GET answers ``{"d": [...]}`` (a missing or invisible row is an empty list,
never 404), an unexpanded foreign key is ``{"__id": N}``, an expanded one an array; a URL or
``$filter`` that does not parse is 400 ``"Malformed url: '<url>'"``; no permission at all on the
resource is 401 with an empty body. Permissions are applied as a filter on the rows, as pine does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Malformed", "evaluate", "parse_expand", "parse_filter", "parse_resource_path", "select"]


class Malformed(ValueError):
    """The URL, ``$filter``, ``$select`` or ``$expand`` does not parse."""


_TOKEN = re.compile(r"\s*(?:(\()|(\))|('(?:[^']|'')*')|(-?\d+(?:\.\d+)?)|([A-Za-z_][\w/]*)|(,))")

Predicate = Callable[[dict[str, Any]], bool]


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None:
            raise Malformed(text)
        pos = match.end()
        lpar, rpar, string, number, word, comma = match.groups()
        if lpar:
            out.append(("(", None))
        elif rpar:
            out.append((")", None))
        elif string is not None:
            out.append(("lit", string[1:-1].replace("''", "'")))
        elif number is not None:
            out.append(("lit", float(number) if "." in number else int(number)))
        elif comma:
            out.append((",", None))
        else:
            out.append(("word", word))
    return out


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and b is not None and a > b,
    "ge": lambda a, b: a is not None and b is not None and a >= b,
    "lt": lambda a, b: a is not None and b is not None and a < b,
    "le": lambda a, b: a is not None and b is not None and a <= b,
}
_LITERAL_WORDS = {"true": True, "false": False, "null": None}


def _value(row: dict[str, Any], path: str) -> Any:
    value: Any = row
    for part in path.split("/"):
        if isinstance(value, dict) and "__id" in value and part != "__id":
            value = value.get("__id") if part == "id" else None
            continue
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    if isinstance(value, dict) and "__id" in value:
        return value["__id"]
    return value


def parse_filter(text: str) -> Predicate:
    """``a eq 'x' and (b eq 1 or c ne null)`` -> predicate over a row (foreign keys by id)."""
    tokens = _tokens(text)
    pos = 0

    def peek() -> tuple[str, Any] | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> tuple[str, Any]:
        nonlocal pos
        if pos >= len(tokens):
            raise Malformed(text)
        pos += 1
        return tokens[pos - 1]

    def operand() -> tuple[str, Any]:
        kind, value = take()
        if kind == "lit":
            return "lit", value
        if kind == "word" and value in _LITERAL_WORDS:
            return "lit", _LITERAL_WORDS[value]
        if kind == "word":
            return "field", value
        raise Malformed(text)

    def term() -> Predicate:
        nxt = peek()
        if nxt is not None and nxt[0] == "(":
            take()
            inner = expr()
            if take()[0] != ")":
                raise Malformed(text)
            return inner
        if nxt is not None and nxt == ("word", "not"):
            take()
            inner = term()
            return lambda row: not inner(row)
        left = operand()
        kind, op = take()
        if kind != "word" or op not in _OPS:
            raise Malformed(text)
        right = operand()
        compare = _OPS[op]

        def resolve(side: tuple[str, Any], row: dict[str, Any]) -> Any:
            return _value(row, side[1]) if side[0] == "field" else side[1]

        return lambda row: compare(resolve(left, row), resolve(right, row))

    def expr() -> Predicate:
        result = term()
        while peek() in (("word", "and"), ("word", "or")):
            _, joiner = take()
            right = term()
            left = result
            if joiner == "and":
                result = lambda row, a=left, b=right: a(row) and b(row)  # noqa: E731
            else:
                result = lambda row, a=left, b=right: a(row) or b(row)  # noqa: E731
        return result

    predicate = expr()
    if pos != len(tokens):
        raise Malformed(text)
    return predicate


@dataclass(frozen=True)
class Expand:
    field: str
    select: tuple[str, ...] | None
    filter: Predicate | None


def parse_expand(text: str) -> list[Expand]:
    """``a($select=x,y;$filter=...),b`` -> expands (nested options split on ``;``)."""
    out: list[Expand] = []
    depth, start = 0, 0
    parts = []
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise Malformed(text)
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise Malformed(text)
    parts.append(text[start:])
    for part in (p.strip() for p in parts if p.strip()):
        match = re.fullmatch(r"(\w+)(?:\((.*)\))?", part)
        if match is None:
            raise Malformed(text)
        sel: tuple[str, ...] | None = None
        flt: Predicate | None = None
        for option in filter(None, (match[2] or "").split(";")):
            name, _, value = option.partition("=")
            if name == "$select":
                sel = tuple(v.strip() for v in value.split(","))
            elif name == "$filter":
                flt = parse_filter(value)
            else:
                raise Malformed(text)
        out.append(Expand(match[1], sel, flt))
    return out


def select(row: dict[str, Any], fields: tuple[str, ...] | None) -> dict[str, Any]:
    if fields is None:
        return dict(row)
    return {f: row[f] for f in fields if f in row}


_RESOURCE = re.compile(r"^/v[67]/(\w+)(?:\((\d+|\w+='(?:[^']|'')*')\))?/?$")


def parse_resource_path(path: str) -> tuple[str, int | tuple[str, str] | None]:
    """``/v7/device(12)`` -> ("device", 12); ``/v7/device(uuid='x')`` -> ("device", ("uuid","x"))."""
    match = _RESOURCE.match(path)
    if match is None:
        raise Malformed(path)
    key = match[2]
    if key is None:
        return match[1], None
    if key.isdigit():
        return match[1], int(key)
    name, _, literal = key.partition("=")
    return match[1], (name, literal[1:-1].replace("''", "'"))


def evaluate(
    rows: list[dict[str, Any]],
    key: int | tuple[str, str] | None,
    params: dict[str, str],
    related: Callable[[str, dict[str, Any]], list[dict[str, Any]] | None],
) -> list[dict[str, Any]]:
    """Apply key, ``$filter``, ``$expand`` (via ``related(field, row)``) and ``$select``."""
    if isinstance(key, int):
        rows = [r for r in rows if r.get("id") == key]
    elif key is not None:
        rows = [r for r in rows if r.get(key[0]) == key[1]]
    if "$filter" in params:
        predicate = parse_filter(params["$filter"])
        rows = [r for r in rows if predicate(r)]
    expands = parse_expand(params["$expand"]) if "$expand" in params else []
    fields = tuple(f.strip() for f in params["$select"].split(",")) if "$select" in params else None
    out = []
    for row in rows:
        row = dict(row)
        for exp in expands:
            items = related(exp.field, row)
            if items is None:
                raise Malformed(exp.field)
            if exp.filter is not None:
                items = [i for i in items if exp.filter(i)]
            row[exp.field] = [select(i, exp.select) for i in items]
        selected = select(row, fields)
        for exp in expands:  # an expanded field is kept even when $select leaves it out
            selected.setdefault(exp.field, row[exp.field])
        out.append(selected)
    return out
