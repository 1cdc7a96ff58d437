"""`command` / `entrypoint` strings split into argv the way the reference does.

The reference escapes every `$` and then runs the string through the npm `shell-quote` parser: words are
split on blanks, quotes group, a backslash escapes outside quotes, shell operators (`&&`, `|`, `;`, ...)
become their own words and glob patterns stay literal text. Variables are therefore never expanded,
except that a `$` inside single quotes keeps the escaping backslash (a quirk kept for compatibility:
both supervisors must produce the same Cmd for the same target).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_CONTROL = r"(?:\|\||&&|;;|\|&|<\(|<<<|>>|>&|<&|[&;()|<>])"
_CONTROL_RE = re.compile(rf"^{_CONTROL}$")
_META = "|&;()<> \t"
_BAREWORD = rf"(?:\\['\"{re.escape(_META)}]|[^\s'\"{re.escape(_META)}])+"
_DQ = r'"(?:\\"|[^"])*?"'
_SQ = r"'(?:\\'|[^'])*?'"
_CHUNK_RE = re.compile(rf"({_CONTROL})|((?:{_BAREWORD}|{_DQ}|{_SQ})+)")
_SPECIAL_VAR = set("*@#?$!_-")
_WORD_CHAR_RE = re.compile(r"[^\w]")


def _expand_var(chunk: str, i: int) -> tuple[str, int]:
    """Expand `$name` at `chunk[i]` with an empty environment; return (text, index of last char)."""
    i += 1
    if i < len(chunk) and chunk[i] == "{":
        end = chunk.find("}", i + 1)
        if end < 0 or end == i + 1:
            # shell-quote throws "Bad substitution"; keep the text rather than fail the whole target.
            return "$" + chunk[i:], len(chunk) - 1
        return "", end
    if i < len(chunk) and chunk[i] in _SPECIAL_VAR:
        return "", i
    rest = chunk[i:]
    match = _WORD_CHAR_RE.search(rest)
    name = rest if match is None else rest[: match.start()]
    last = i + len(name) - 1
    return ("" if name else "$"), last


def _scan(chunk: str) -> tuple[str | None, bool]:
    """One chunk to its word; returns (word, comment_started)."""
    out: list[str] = []
    quote = ""
    escaped = False
    i = 0
    while i < len(chunk):
        c = chunk[i]
        if escaped:
            out.append(c)
            escaped = False
        elif quote:
            if c == quote:
                quote = ""
            elif quote == "'":
                out.append(c)
            elif c == "\\":
                i += 1
                nxt = chunk[i] if i < len(chunk) else ""
                out.append(nxt if nxt in ('"', "\\", "$") else "\\" + nxt)
            elif c == "$":
                text, i = _expand_var(chunk, i)
                out.append(text)
            else:
                out.append(c)
        elif c in ('"', "'"):
            quote = c
        elif c == "#":
            return ("".join(out) if out else None), True
        elif c == "\\":
            escaped = True
        elif c == "$":
            text, i = _expand_var(chunk, i)
            out.append(text)
        else:
            out.append(c)
        i += 1
    return "".join(out), False


def split_command(command: str) -> list[str]:
    """`"sh -c 'echo $HOME' && ls *.txt"` -> argv, with no expansion of variables or globs."""
    escaped = command.replace("$", "\\$")
    words: list[str] = []
    for match in _CHUNK_RE.finditer(escaped):
        chunk = match.group(0)
        if not chunk:
            continue
        if _CONTROL_RE.match(chunk):
            words.append(chunk)
            continue
        word, comment = _scan(chunk)
        if word is not None:
            words.append(word)
        if comment:
            break  # the rest of the line is a comment
    return words


def as_argv(value: Any) -> list[str] | None:
    """A string is split; a list is kept (as strings); None stays None (meaning: not set)."""
    if value is None:
        return None
    if isinstance(value, str):
        return split_command(value)
    if isinstance(value, Sequence):
        return [str(v) for v in value]
    return [str(value)]
