"""Engine names of supervised objects, and reading them back.

Volumes are `<appId>_<name>` (still keyed by the numeric app id), networks `<appUuid>_<name>` (older
devices may still carry `<appId>_<name>`), containers `<service>_<imageId>_<releaseId>_<commit>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidNameError

_NET_WITH_ID = re.compile(r"^(\d+)_(\S+)")
_NET_WITH_UUID = re.compile(r"^([0-9a-fA-F]+)_(\S+)")
_VOLUME = re.compile(r"(\d+)_(\S+)")
_CONTAINER = re.compile(r".*_(\d+)_(\d+)(?:_(.*?))?$")

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
    """Split a network name; a numeric prefix is an appId unless the app-id label is known."""
    match = _NET_WITH_ID.match(docker_name)
    if match is not None:
        if label_app_id is not None:
            # The app id is known from the label, so a numeric prefix is the app uuid.
            return ParsedNetworkName(match[2], app_id=label_app_id, app_uuid=match[1])
        return ParsedNetworkName(match[2], app_id=int(match[1]))
    match = _NET_WITH_UUID.match(docker_name)
    if match is None:
        raise InvalidNameError(f"Invalid network name: {docker_name}")
    return ParsedNetworkName(match[2], app_id=label_app_id, app_uuid=match[1])


def parse_volume_name(docker_name: str) -> tuple[int, str]:
    """`<appId>_<name>` -> (appId, name)."""
    match = _VOLUME.search(docker_name)
    if match is None:
        raise InvalidNameError(f"Could not detect volume data from docker name: {docker_name}")
    return int(match[1]), match[2]


def parse_container_name(name: str) -> tuple[str, int, int, str | None] | None:
    """`/main_11_1_deadbeef` -> ("main", 11, 1, "deadbeef"); None when it does not match.

    The service name is whatever precedes `_<imageId>_<releaseId>` (the reference reads the service
    name from the labels; this is the best the name alone can tell).
    """
    bare = name[1:] if name.startswith("/") else name
    match = _CONTAINER.match(bare)
    if match is None:
        return None
    suffix = f"_{match[1]}_{match[2]}" + (f"_{match[3]}" if match[3] is not None else "")
    service = bare[: len(bare) - len(suffix)]
    return service, int(match[1]), int(match[2]), match[3]
