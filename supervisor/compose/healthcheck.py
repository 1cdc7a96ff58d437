"""The `healthcheck` field: compose syntax overlaid on the image's, engine Healthcheck both ways.

A normalised healthcheck is `{test, interval?, timeout?, startPeriod?, retries?}` with durations in
nanoseconds, the unit the engine stores and reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .units import duration_ns

DISABLED: dict[str, Any] = {"test": ["NONE"]}
_DOCKER_KEYS = (
    ("interval", "Interval"),
    ("timeout", "Timeout"),
    ("startPeriod", "StartPeriod"),
    ("retries", "Retries"),
)


def from_docker(healthcheck: Mapping[str, Any] | None) -> dict[str, Any]:
    """An engine Healthcheck (image or container) in service form; none means disabled."""
    if not healthcheck:
        return dict(DISABLED)
    out: dict[str, Any] = {"test": list(healthcheck.get("Test") or [])}
    for key, docker_key in _DOCKER_KEYS:
        if healthcheck.get(docker_key) is not None:
            out[key] = int(healthcheck[docker_key])
    return out


def from_compose(healthcheck: Mapping[str, Any] | None) -> dict[str, Any]:
    """Compose healthcheck fields only (the overlay): a string test runs in a shell."""
    if healthcheck is None:
        return {}
    if healthcheck.get("disable"):
        return dict(DISABLED)
    out: dict[str, Any] = {}
    test = healthcheck.get("test")
    if test is not None:
        out["test"] = ["CMD-SHELL", test] if isinstance(test, str) else [str(t) for t in test]
    for key, names in (
        ("interval", ("interval",)),
        ("timeout", ("timeout",)),
        ("startPeriod", ("start_period", "startPeriod")),
    ):
        value = next((healthcheck[n] for n in names if healthcheck.get(n) is not None), None)
        if value is not None:
            out[key] = duration_ns(value)
    if healthcheck.get("retries") is not None:
        out["retries"] = int(healthcheck["retries"])
    return out


def resolve(compose: Mapping[str, Any] | None, image_info: Mapping[str, Any] | None) -> dict[str, Any]:
    """Disabled by default, then the image's healthcheck, then the compose fields on top."""
    image_hc = ((image_info or {}).get("Config") or {}).get("Healthcheck")
    return {**DISABLED, **from_docker(image_hc), **from_compose(compose)}


def to_docker(healthcheck: Mapping[str, Any]) -> dict[str, Any]:
    """The create body's Healthcheck (unset fields left out)."""
    out: dict[str, Any] = {"Test": list(healthcheck.get("test") or [])}
    for key, docker_key in _DOCKER_KEYS:
        if healthcheck.get(key) is not None:
            out[docker_key] = healthcheck[key]
    return out
