"""Request bodies: JSON or form-encoded, as the reference's body parsers accept (spec §1.1).

The reference parses forms with ``qs`` in extended mode, so brackets build structure:
``network[hostname]=pi`` is ``{"network": {"hostname": "pi"}}``, ``a[]=1&a[]=2`` and ``a=1&a=2`` are
lists, ``a[0]=x`` is a list too (indices up to 20, as ``qs``'s ``arrayLimit``; larger ones are object
keys), and nesting stops at depth 5 (the rest of the key stays one literal segment). Values are
always strings, as in ``qs``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Final

from flask import request
from werkzeug.exceptions import BadRequest

ARRAY_LIMIT: Final = 20
DEPTH_LIMIT: Final = 5
_KEY = re.compile(r"^([^\[\]]*)((?:\[[^\[\]]*\])*)(.*)$")


def json_body() -> Any:
    """The JSON body (None when empty), parsed here rather than by Werkzeug, whose 400 says only
    "The browser (or proxy) sent a request that this server could not understand": a client
    fixing its body needs the parser's message and position (``Expecting ',' delimiter at line 1
    column 17``)."""
    data = request.get_data(cache=True)
    if not data:
        return None
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"Invalid JSON body: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError as exc:
        raise BadRequest(f"Invalid JSON body: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def request_body() -> dict[str, Any]:
    """The body as a dict; ``{}`` without a JSON/form content type; 400 for malformed JSON."""
    if request.is_json:
        body = json_body()
        if body is None:
            return {}
        if not isinstance(body, dict):
            raise BadRequest("Request body must be a JSON object")
        return body
    if request.mimetype == "application/x-www-form-urlencoded":
        return parse_form(request.form.items(multi=True))
    return {}


def parse_form(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Decoded ``key=value`` pairs, in order, to the structure ``qs`` (extended) builds."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        path = _segments(key)
        if path:
            _put(root, path, value)
    return _lists(root)


def _segments(key: str) -> list[str]:
    """``a[b][]`` -> ``['a', 'b', '']``; beyond the depth limit the rest is one literal segment."""
    match = _KEY.match(key)
    if match is None or (not match[1] and not match[2]):
        return [key] if key else []
    head, brackets, rest = match[1], match[2], match[3]
    inner = re.findall(r"\[([^\[\]]*)\]", brackets)
    segments = [head] if head else [inner.pop(0)]
    if len(inner) > DEPTH_LIMIT:
        rest = "".join(f"[{s}]" for s in inner[DEPTH_LIMIT:]) + rest
        inner = inner[:DEPTH_LIMIT]
    segments += inner
    if rest:
        segments.append(rest)
    return segments


def _put(node: dict[str, Any], path: list[str], value: str) -> None:
    """Insert along ``path``; ``''`` segments append. Lists are dicts keyed by index until
    :func:`_lists`, so a later ``a[b]`` over an ``a[0]`` still works as in ``qs`` (an object)."""
    *parents, last = path
    for segment in parents:
        segment = segment if segment else str(_next_index(node))
        child = node.get(segment)
        if not isinstance(child, dict):
            child = {} if child is None else {"0": child}
            node[segment] = child
        node = child
    if last == "":
        node[str(_next_index(node))] = value
        return
    existing = node.get(last)
    if existing is None:
        node[last] = value
    elif isinstance(existing, dict):
        node[last] = {**existing, str(_next_index(existing)): value}
    else:  # a repeated key: a list of its values
        node[last] = {"0": existing, "1": value}


def _index(key: str) -> bool:
    """An array index as ``qs`` sees one: ASCII digits only (``'²'.isdigit()`` is true)."""
    return key.isascii() and key.isdigit()


def _next_index(node: dict[str, Any]) -> int:
    return max((int(k) + 1 for k in node if _index(k)), default=0)


def _lists(node: Any) -> Any:
    """Dicts whose keys are all small indices become lists, in index order (gaps closed)."""
    if not isinstance(node, dict):
        return node
    converted = {k: _lists(v) for k, v in node.items()}
    if converted and all(_index(k) and int(k) <= ARRAY_LIMIT for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted
