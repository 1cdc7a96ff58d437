"""System log messages (spec §8.2, §8.5): the reference's ``logSystemEvent`` text composition.

``<humanName>`` + `` '<objectName>'`` (if any) + `` due to '<error>'`` (if an error; an empty one is
``Unknown cause``). The object name is, in this order: ``<serviceName> <image>`` of a service, an
image's name, a network's name, a volume's name, or ``fields`` joined with ``,``. A message with an
error is sent with ``isStdErr: true``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

__all__ = ["compose", "system_message"]


def compose(human: str, fields: Mapping[str, Any] | None = None) -> tuple[str, bool]:
    """The message text and whether it reports an error. ``fields`` keys: ``service`` (its name)
    with ``image``, ``image``, ``network``, ``volume``, ``fields`` (a list), ``error``."""
    fields = fields or {}
    name: str | None = None
    if fields.get("service"):
        name = f"{fields['service']} {fields.get('image') or ''}".rstrip()
    else:
        for key in ("image", "network", "volume"):
            if fields.get(key):
                name = str(fields[key])
                break
        else:
            extra = fields.get("fields")
            if extra:
                name = ",".join(map(str, extra))
    text = human if name is None else f"{human} '{name}'"
    error = fields.get("error")
    if "error" in fields and error is not False:
        text += f" due to '{error or 'Unknown cause'}'"
        return text, True
    return text, False


def system_message(text: str, *, is_error: bool = False, now_ms: int | None = None) -> dict[str, Any]:
    """The §8.2 system message dict."""
    message: dict[str, Any] = {"message": text, "isSystem": True,
                               "timestamp": now_ms if now_ms is not None else time.time_ns() // 1_000_000}
    if is_error:
        message["isStdErr"] = True
    return message
