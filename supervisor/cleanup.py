"""``GET /v2/cleanup-volumes``: remove app volumes nothing uses any more (spec §1.4).

Old volumes are never removed during an update (spec §16.3), only here or when an app is removed.
A volume is removed when it is a supervised app volume (``<appId>_<name>``, label
``io.balena.supervised``), no container mounts it (stopped and unsupervised containers count), it is
not a volume of the target, and its app is one the caller may act on (the key's scope, and this
supervisor's ``--apps``). The reference removes *any* unused volume of the device whatever the key's
scope; docs/API.md lists that difference.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .compose.errors import InvalidNameError
from .compose.naming import parse_volume_name

log = logging.getLogger(__name__)

SUPERVISED_LABELS = ("io.balena.supervised", "io.resin.supervised")


def _mounted(containers: Iterable[Mapping[str, Any]]) -> set[str]:
    names: set[str] = set()
    for container in containers:
        for mount in container.get("Mounts") or []:
            if mount.get("Type") == "volume" and mount.get("Name"):
                names.add(mount["Name"])
    return names


def orphaned_volumes(
    volumes: Iterable[Mapping[str, Any]],
    containers: Iterable[Mapping[str, Any]],
    referenced: set[str],
    allows: Callable[[int], bool],
) -> list[str]:
    """Names of the volumes to remove, in listing order."""
    mounted = _mounted(containers)
    doomed = []
    for volume in volumes:
        name = str(volume.get("Name") or "")
        labels = volume.get("Labels") or {}
        if not any(labels.get(key) in ("true", "1") for key in SUPERVISED_LABELS):
            continue
        try:
            app_id, _ = parse_volume_name(name)
        except InvalidNameError:
            continue
        if name in mounted or name in referenced or not allows(app_id):
            continue
        doomed.append(name)
    return doomed


class CleanupError(RuntimeError):
    """Some volumes could not be removed; the message names them."""


def remove_orphaned_volumes(api: Any, referenced: set[str], allows: Callable[[int], bool]) -> list[str]:
    """Remove the orphaned volumes through the Docker API client; the names removed."""
    import docker.errors

    volumes = (api.volumes() or {}).get("Volumes") or []
    containers = api.containers(all=True)
    removed, failures = [], []
    for name in orphaned_volumes(volumes, containers, referenced, allows):
        try:
            api.remove_volume(name)
        except docker.errors.NotFound:
            continue
        except docker.errors.APIError as exc:
            failures.append(f"{name}: {exc.explanation or exc}")
            continue
        log.info("Removed orphaned volume %s", name)
        removed.append(name)
    if failures:
        raise CleanupError("Could not remove volumes: " + "; ".join(failures))
    return removed
