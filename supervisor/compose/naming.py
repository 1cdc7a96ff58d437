r"""Engine names of supervised objects, and reading them back.

Volumes are `<appId>_<name>` (still keyed by the numeric app id), networks `<appUuid>_<name>` (older
devices may still carry `<appId>_<name>`), containers `<service>_<imageId>_<releaseId>_<commit>`
(older ones `<service>_<imageId>_<releaseId>`, and `old_<...>` while a hand-over runs).

A name is read back only when it is *whole* one of these forms: ids as the supervisor writes them
(decimal, no sign, no leading zero), compose names as the target allows them, a container's service
name equal to its ``io.balena.service-name`` label. Anything else is not ours and is left alone: the
reference's unanchored ``(\d+)_(\S+)`` took a volume ``x7119_data`` for app 7119's ``data``, so
purge and ``/v2/cleanup-volumes`` deleted it and the engine looped on ``removeVolume`` -> 404.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidNameError

#: An id as ``str(int)`` writes it.
_ID = r"(?:0|[1-9][0-9]*)"
#: A compose volume or network name (the target's DOCKER_NAME_PATTERN).
_NAME = r"[a-zA-Z0-9][a-zA-Z0-9_.-]*"
_ID_RE = re.compile(_ID)
_VOLUME = re.compile(rf"({_ID})_({_NAME})")
# An app uuid is hex and has no `_`, so the first `_` ends it (the reference's `^([0-9a-fA-F]+)_`).
_NETWORK = re.compile(rf"([0-9a-fA-F]+)_({_NAME})")
# What follows `<service>` in a container name; a commit is whatever the release calls itself.
_CONTAINER_TAIL = re.compile(rf"_({_ID})_({_ID})(?:_([a-zA-Z0-9_.-]+))?")
#: The prefix a hand-over gives the old container while the new one starts (§3.6).
HANDOVER_PREFIX = "old_"

BASE_LOCK_DIR = "/tmp/balena-supervisor/services"


def volume_name(app_id: int, name: str) -> str:
    """`<appId>_<name>`."""
    return f"{app_id}_{name}"


def network_name(app_uuid: str, name: str) -> str:
    """`<appUuid>_<name>`."""
    return f"{app_uuid}_{name}"


def container_name(service_name: str, image_id: int, release_id: int, commit: str | None) -> str:
    """`<serviceName>_<imageId>_<releaseId>_<commit>`."""
    return f"{service_name}_{image_id}_{release_id}_{commit}"


def lock_dir_for(app_id: int, service_name: str, root: str = "") -> str:
    """The host directory bound at /tmp/balena and /tmp/resin; `root` prefixes it (tests, chroots)."""
    return f"{root.rstrip('/')}{BASE_LOCK_DIR}/{app_id}/{service_name}"


@dataclass(frozen=True)
class ParsedNetworkName:
    """A network name split into its app reference and compose name."""

    name: str
    app_id: int | None = None
    app_uuid: str | None = None


def parse_network_name(docker_name: str, label_app_id: int | None = None) -> ParsedNetworkName:
    """Split a network name, exactly ``<appUuid>_<name>`` or ``<appId>_<name>``; InvalidNameError
    for anything else.

    A decimal prefix is the app id of a legacy network; with an ``io.balena.app-id`` label it must be
    that id (in local mode the app's uuid *is* its id), or the network is another app's by name.
    A hex prefix is the app uuid, and the label says which app that is.
    """
    match = _NETWORK.fullmatch(docker_name)
    if match is None:
        raise InvalidNameError(f"Invalid network name: {docker_name}")
    prefix, name = match[1], match[2]
    if _ID_RE.fullmatch(prefix):
        if label_app_id is None:
            return ParsedNetworkName(name, app_id=int(prefix))
        if prefix == str(label_app_id):
            return ParsedNetworkName(name, app_id=label_app_id, app_uuid=prefix)
        raise InvalidNameError(f"Network {docker_name} is named for app {prefix} but labelled {label_app_id}")
    if prefix.isdigit():  # a leading zero: not a name the supervisor writes
        raise InvalidNameError(f"Invalid network name: {docker_name}")
    return ParsedNetworkName(name, app_id=label_app_id, app_uuid=prefix)


def parse_volume_name(docker_name: str) -> tuple[int, str]:
    """Exactly `<appId>_<name>` -> (appId, name); InvalidNameError for anything else."""
    match = _VOLUME.fullmatch(docker_name)
    if match is None:
        raise InvalidNameError(f"Could not detect volume data from docker name: {docker_name}")
    return int(match[1]), match[2]


def parse_container_name(name: str, service_name: str) -> tuple[int, int, str | None] | None:
    """`/main_11_1_deadbeef` of service `main` -> (11, 1, "deadbeef"); None unless the name is
    exactly `[old_]<service_name>_<imageId>_<releaseId>[_<commit>]` (the engine's leading `/`
    aside). The service name comes from the container's label, as in the reference."""
    bare = name[1:] if name.startswith("/") else name
    for prefix in (service_name, HANDOVER_PREFIX + service_name):
        if service_name and bare.startswith(prefix):
            match = _CONTAINER_TAIL.fullmatch(bare, len(prefix))
            if match is not None:
                return int(match[1]), int(match[2]), match[3]
    return None
