"""The `ulimits` field: `{name: n}` or `{name: {soft, hard}}`, engine Ulimits list both ways."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ComposeError

Ulimits = dict[str, dict[str, int]]


def from_compose(ulimits: Mapping[str, Any] | None) -> Ulimits:
    """A single number sets both limits."""
    out: Ulimits = {}
    for name, limit in (ulimits or {}).items():
        try:
            if isinstance(limit, Mapping):
                out[str(name)] = {"soft": int(limit["soft"]), "hard": int(limit["hard"])}
            else:
                out[str(name)] = {"soft": int(limit), "hard": int(limit)}
        except (KeyError, TypeError, ValueError) as err:
            raise ComposeError(f"Invalid ulimit {name}: {limit!r}") from err
    return out


def to_docker(ulimits: Mapping[str, Mapping[str, int]]) -> list[dict[str, Any]]:
    """The create body's Ulimits."""
    return [{"Name": n, "Soft": v["soft"], "Hard": v["hard"]} for n, v in ulimits.items()]


def from_docker(ulimits: Iterable[Mapping[str, Any]] | None) -> Ulimits:
    """`HostConfig.Ulimits` back to the service form."""
    return {u["Name"]: {"soft": u.get("Soft"), "hard": u.get("Hard")} for u in ulimits or []}
