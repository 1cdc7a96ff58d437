"""`io.balena.features.*` labels: host binds, injected variables, extra networks and devices.

Applied after every other normalisation, so what a feature adds (host binds, the `extra-firmware`
volume) is not subject to the bind refusal or volume namespacing of user entries.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

from .devices import GPU_REQUEST
from .validation import check_truthy

log = logging.getLogger(__name__)

PREFIX = "io.balena.features."
SUPERVISOR_NETWORK = "supervisor0"
CONTAINER_DOCKER_SOCKET = "/host/run/balena-engine.sock"
LEGACY_DOCKER_SOCKET = "/var/run/balena.sock"
#: Without supervisor0 (``--no-host-setup``, a dev machine), a supervisor-api service reaches the API
#: at this name, which the engine maps to the host (``host-gateway``: the host's address on the
#: default bridge, reachable from every bridge network); the API must listen there (the default
#: 0.0.0.0 does). Chosen over creating supervisor0 anyway: its fixed subnet and bridge name are the
#: machine's business (another supervisor, a balenaOS host), which ``--no-host-setup`` promises to
#: leave alone.
HOST_GATEWAY_NAME = "host.docker.internal"

_SIMPLE_BINDS: dict[str, tuple[str, ...]] = {
    "dbus": ("/run/dbus:/host/run/dbus",),
    "sysfs": ("/sys:/sys",),
    "procfs": ("/proc:/proc",),
    "journal-logs": (
        "/var/log/journal:/var/log/journal:ro",
        "/run/log/journal:/run/log/journal:ro",
        "/etc/machine-id:/etc/machine-id:ro",
    ),
}
_HOST_PATH_BINDS = {"kernel-modules": "/lib/modules", "firmware": "/lib/firmware"}


@dataclass(frozen=True)
class FeatureInputs:
    """What the features need from outside the target."""

    listen_port: int
    api_endpoint: str
    device_api_key: str
    scoped_api_key: str | None
    supervisor_host: str
    docker_socket: str
    host_paths: frozenset[str]
    board_rev: str | None
    #: False under ``--no-host-setup``: there is no supervisor0, so the API is reached through the
    #: host's address on the service's own network (:data:`HOST_GATEWAY_NAME`).
    supervisor_network: bool = True


def enabled(labels: dict[str, str], feature: str) -> bool:
    """A feature is on when its (normalised) label value is truthy."""
    return check_truthy(labels.get(PREFIX + feature))


def apply(config: dict[str, Any], inputs: FeatureInputs) -> None:
    """Add what the enabled features ask for to `config` (volumes, environment, networks, devices)."""
    labels = config["labels"]
    volumes = config["volumes"]
    env = config["environment"]

    def set_env(key: str, value: str) -> None:
        env[f"RESIN_{key}"] = value
        env[f"BALENA_{key}"] = value

    for feature, binds in _SIMPLE_BINDS.items():
        if enabled(labels, feature):
            volumes.extend(binds)
    for feature, path in _HOST_PATH_BINDS.items():
        if enabled(labels, feature) and path in inputs.host_paths:
            volumes.append(f"{path}:{path}")

    if enabled(labels, "balena-socket"):
        sock = inputs.docker_socket
        targets = [CONTAINER_DOCKER_SOCKET, sock]
        if sock != LEGACY_DOCKER_SOCKET:
            targets.append(LEGACY_DOCKER_SOCKET)
        volumes.extend({"type": "bind", "source": sock, "target": t} for t in targets)
        env.setdefault("DOCKER_HOST", f"unix://{CONTAINER_DOCKER_SOCKET}")

    if enabled(labels, "balena-api"):
        set_env("API_KEY", inputs.device_api_key)
        set_env("API_URL", inputs.api_endpoint)

    if enabled(labels, "supervisor-api"):
        if config["networkMode"] == "host":
            host = "127.0.0.1"
        elif not inputs.supervisor_network:
            host = HOST_GATEWAY_NAME
            if not any(entry.split(":", 1)[0] == host for entry in config["extraHosts"]):
                config["extraHosts"].append(f"{host}:host-gateway")
        else:
            config["networks"][SUPERVISOR_NETWORK] = {}
            host = inputs.supervisor_host or "127.0.0.1"
        if inputs.scoped_api_key is None:
            log.warning("No scoped API key given for a service using the supervisor API")
        set_env("SUPERVISOR_API_KEY", inputs.scoped_api_key or "")
        set_env("SUPERVISOR_PORT", str(inputs.listen_port))
        set_env("SUPERVISOR_HOST", host)
        set_env("SUPERVISOR_ADDRESS", f"http://{host}:{inputs.listen_port}")
    else:
        # Only services that asked for the API may join the supervisor's network.
        config["networks"].pop(SUPERVISOR_NETWORK, None)

    if enabled(labels, "gpu"):
        config["deviceRequests"].append(copy.deepcopy(GPU_REQUEST))

    if enabled(labels, "host-os.board-rev") and inputs.board_rev is not None:
        set_env("HOST_OS_BOARD_REV", inputs.board_rev)
        set_env("HOST_OS_BUILD", inputs.board_rev)

    if enabled(labels, "extra-firmware"):
        volumes.append({"type": "volume", "source": "extra-firmware", "target": "/extra-firmware"})
