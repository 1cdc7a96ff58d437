"""Service labels: legacy `io.resin.*` names, injected supervision labels, image labels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def normalise(labels: Mapping[str, Any] | None) -> dict[str, str]:
    """Rename `io.resin.*` to `io.balena.*` (every `resin` in the key); explicit balena labels win."""
    labels = labels or {}
    other = {k: v for k, v in labels.items() if not k.startswith(("io.balena.", "io.resin."))}
    legacy = {k.replace("resin", "balena"): v for k, v in labels.items() if k.startswith("io.resin.")}
    balena = {k: v for k, v in labels.items() if k.startswith("io.balena.")}
    return {str(k): _text(v) for k, v in {**other, **legacy, **balena}.items()}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def extend(
    user: Mapping[str, str],
    *,
    app_id: int,
    app_uuid: str,
    service_id: int,
    service_name: str,
    image_labels: Mapping[str, str] | None,
) -> dict[str, str]:
    """User labels overridden by the supervision labels, image labels filling gaps, normalised."""
    out = {
        **user,
        "io.balena.supervised": "true",
        "io.balena.app-id": str(app_id),
        "io.balena.service-id": str(service_id),
        "io.balena.service-name": service_name,
        "io.balena.app-uuid": app_uuid,
    }
    for key, value in (image_labels or {}).items():
        out.setdefault(key, value)
    return normalise(out)
