"""The `devices` field (`host[:container[:perm]]`) and GPU device requests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Device = dict[str, str]

GPU_REQUEST: dict[str, Any] = {
    "Driver": "",
    "Count": 1,
    "DeviceIDs": [],
    "Capabilities": [["gpu"]],
    "Options": {},
}


def parse_device(entry: Any) -> Device:
    """`/dev/ttyUSB0:/dev/serial:rw` -> engine device mapping (container path and perms defaulted)."""
    if isinstance(entry, Mapping):
        return from_docker(entry)
    host, *rest = str(entry).split(":")
    container = rest[0] if rest else host
    perms = rest[1] if len(rest) > 1 else "rwm"
    return {"PathOnHost": host, "PathInContainer": container, "CgroupPermissions": perms}


def from_docker(device: Mapping[str, Any]) -> Device:
    """An engine device mapping, with the same defaults as the compose side."""
    host = str(device.get("PathOnHost") or "")
    return {
        "PathOnHost": host,
        "PathInContainer": str(device.get("PathInContainer") or host),
        "CgroupPermissions": str(device.get("CgroupPermissions") or "rwm"),
    }


def request_from_docker(request: Mapping[str, Any]) -> dict[str, Any]:
    """An engine DeviceRequest with empty lists/maps for the fields the engine reports as null."""
    return {
        "Driver": request.get("Driver") or "",
        "Count": request.get("Count") or 0,
        "DeviceIDs": list(request.get("DeviceIDs") or []),
        "Capabilities": [list(c) for c in request.get("Capabilities") or []],
        "Options": dict(request.get("Options") or {}),
    }
