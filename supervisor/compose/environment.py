"""Service environment: engine `K=V` arrays, and the variables the supervisor injects.

User values win over the injected defaults and the image's variables fill what is still missing: the
same precedence the engine applies when it merges the image env into a container, so a target and the
container read back agree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

DEVICE_NAME_VARS = ("RESIN_DEVICE_NAME_AT_INIT", "BALENA_DEVICE_NAME_AT_INIT")
LOCK_PATH = "/tmp/balena/updates.lock"
HANDOVER_PATH = "/tmp/balena/handover-complete"


def from_array(env: Iterable[str] | None) -> dict[str, str]:
    """`["A=1", "B=x=y"]` -> `{A: "1", B: "x=y"}`; entries without `=` are dropped with a warning."""
    out: dict[str, str] = {}
    for item in env or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            log.warning(
                "Could not correctly parse env var %s. Please fix this var and recreate the container.",
                item,
            )
            continue
        out[key] = value
    return out


def to_array(env: Mapping[str, str]) -> list[str]:
    """`{A: "1"}` -> `["A=1"]`."""
    return [f"{k}={v}" for k, v in env.items()]


def as_dict(env: Any) -> dict[str, str]:
    """A compose `environment` (dict or `K=V` list) with string values."""
    if env is None:
        return {}
    if isinstance(env, Mapping):
        return {str(k): "" if v is None else _text(v) for k, v in env.items()}
    return from_array(env)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def injected(
    *,
    app_id: int,
    app_uuid: str,
    app_name: str,
    service_name: str,
    device_uuid: str,
    device_type: str,
    device_arch: str,
    os_version: str,
) -> dict[str, str]:
    """The variables every service gets, under both the BALENA_ and the legacy RESIN_ prefix."""
    values = {
        "APP_ID": str(app_id),
        "APP_UUID": app_uuid,
        "APP_NAME": app_name,
        "SERVICE_NAME": service_name,
        "DEVICE_UUID": device_uuid,
        "DEVICE_TYPE": device_type,
        "DEVICE_ARCH": device_arch,
        "HOST_OS_VERSION": os_version,
        "APP_LOCK_PATH": LOCK_PATH,
    }
    env: dict[str, str] = {}
    for prefix in ("BALENA", "RESIN"):
        env.update({f"{prefix}_{k}": v for k, v in values.items()})
        env[prefix] = "1"
    env["RESIN_SERVICE_KILL_ME_PATH"] = HANDOVER_PATH
    env["BALENA_SERVICE_HANDOVER_COMPLETE_PATH"] = HANDOVER_PATH
    env["USER"] = "root"
    return env


def extend(
    user: Mapping[str, str], defaults: Mapping[str, str], image_env: Iterable[str] | None
) -> dict[str, str]:
    """User env, then injected defaults, then image env, each only filling missing keys."""
    out = dict(user)
    for source in (defaults, from_array(image_env)):
        for key, value in source.items():
            out.setdefault(key, value)
    return without_device_name(out)


def without_device_name(env: Mapping[str, str]) -> dict[str, str]:
    """Drop the create-time-only *_DEVICE_NAME_AT_INIT variables (never compared)."""
    return {k: v for k, v in env.items() if k not in DEVICE_NAME_VARS}
