"""What is on the device outside a target, for the admission checks a target alone cannot decide.

The engine refuses, at create or start time, a device path the host does not have ("error gathering
device information while adding custom device"), a network subnet that overlaps a network it already
has ("Pool overlaps with other one on this address space") and a host port another container holds
("port is already allocated"). Issue #10 §2 wants those refused before anything is stored or stopped,
so the admission gate (state/admission.py) asks a :class:`HostView`.

Only what this target will not remove counts: engine networks and containers of apps the supervisor
manages are the target's (replaced, kept or removed by it), everything else (the engine's own
networks, supervisor0, other programs' containers, apps outside ``--apps``) stays.

The engine is asked only when the target needs it (a published port, a subnet), at most once per
admission, with one deadline for all calls (``timeout_s``): the API thread that admits a local target
never waits on a slow engine longer than that. An engine that does not answer in time is not
consulted (logged): the target is then admitted as the engine's own refusal would have found it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from docker import APIClient

    from supervisor.paths import Paths

__all__ = ["EngineNetwork", "HostView", "PublishedPort"]

log = logging.getLogger(__name__)

Subnet = ipaddress.IPv4Network | ipaddress.IPv6Network
_APP_LABELS = ("io.balena.app-uuid", "io.balena.app-id", "io.resin.app-id")
_SUPERVISED_LABELS = ("io.balena.supervised", "io.resin.supervised")
_WILDCARDS = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class EngineNetwork:
    """An engine network the target does not own, with the subnets of its IPAM config."""

    name: str
    subnets: tuple[Subnet, ...]


@dataclass(frozen=True)
class PublishedPort:
    """A host port a running container the target does not own publishes."""

    host_ip: str
    protocol: str
    port: int
    container: str


class HostView:
    """Device paths under the supervisor's host root, and the engine's networks and published
    ports that are not the target's; engine facts are read once, lazily, within ``timeout_s``.

    ``engine`` gives the engine's client when first needed (None: no engine, the engine checks are
    skipped); ``paths`` None skips the device check. ``apps`` is the supervisor's scope (``--apps``:
    app ids or uuids), None for every app on the engine.
    """

    def __init__(
        self,
        paths: Paths | None,
        engine: Callable[[], APIClient | None] | None,
        *,
        apps: Collection[str] | None = None,
        timeout_s: float = 3.0,
    ) -> None:
        self.paths = paths
        self.engine = engine
        self.api: APIClient | None = None
        self.apps = apps
        self.timeout_s = timeout_s
        self._deadline: float | None = None
        self._networks: tuple[EngineNetwork, ...] | None = None
        self._ports: tuple[PublishedPort, ...] | None = None

    # ------------------------------------------------------------------------------ devices
    def device_problem(self, path: str) -> str | None:
        """Why the engine could not add host device ``path``, or None when it can (or unknown).

        The engine takes a device node, or a directory of them, following symlinks."""
        if self.paths is None:
            return None
        try:
            mode = os.stat(self.paths.host(path)).st_mode
        except FileNotFoundError:
            return f"device {path} does not exist on the host"
        except OSError as err:
            return f"device {path} cannot be read on the host: {err.strerror}"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISDIR(mode):
            return None
        return f"{path} on the host is not a device node"

    # ----------------------------------------------------------------------------- networks
    def overlapping(self, subnet: Subnet) -> tuple[EngineNetwork, Subnet] | None:
        """An engine network outside the target whose subnet overlaps ``subnet``, and that subnet."""
        for net in self._foreign_networks():
            for other in net.subnets:
                if other.version == subnet.version and other.overlaps(subnet):  # type: ignore[arg-type]
                    return net, other
        return None

    def _foreign_networks(self) -> tuple[EngineNetwork, ...]:
        if self._networks is None:
            listing = self._get("/networks")
            self._networks = tuple(
                EngineNetwork(str(entry.get("Name") or ""), _subnets(entry))
                for entry in listing or []
                if not self._owned(entry.get("Labels"))
            )
        return self._networks

    # -------------------------------------------------------------------------------- ports
    def port_holder(self, host_ip: str, protocol: str, port: int) -> PublishedPort | None:
        """A running container outside the target that publishes ``port`` on an address that
        clashes with ``host_ip`` (equal, or either one every address)."""
        for held in self._foreign_ports():
            if (held.port, held.protocol) != (port, protocol):
                continue
            if host_ip in _WILDCARDS or held.host_ip in _WILDCARDS or _same_ip(host_ip, held.host_ip):
                return held
        return None

    def _foreign_ports(self) -> tuple[PublishedPort, ...]:
        if self._ports is None:
            listing = self._get("/containers/json")  # running containers: only they hold ports
            ports = []
            for entry in listing or []:
                if self._owned(entry.get("Labels")):
                    continue
                name = str((entry.get("Names") or [entry.get("Id", "?")[:12]])[0]).lstrip("/")
                for binding in entry.get("Ports") or []:
                    if binding.get("PublicPort"):
                        ports.append(
                            PublishedPort(
                                str(binding.get("IP") or ""),
                                str(binding.get("Type") or "tcp"),
                                int(binding["PublicPort"]),
                                name,
                            )
                        )
            self._ports = tuple(ports)
        return self._ports

    # -------------------------------------------------------------------------------- engine
    def _owned(self, labels: Mapping[str, str] | None) -> bool:
        """A supervised object of an app in the supervisor's scope: the target's to keep or remove."""
        labels = labels or {}
        if not any(key in labels for key in _SUPERVISED_LABELS):
            return False
        return self.apps is None or any(labels.get(key) in self.apps for key in _APP_LABELS)

    def _get(self, path: str) -> list[dict[str, Any]] | None:
        """One read-only engine call within what is left of the deadline; None when it fails."""
        if self._deadline is None:
            self.api = self.engine() if self.engine is not None else None
            self._deadline = time.monotonic() + self.timeout_s
        if self.api is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            log.warning("Target admission: the engine did not answer in %.0f s; %s not checked",
                        self.timeout_s, path)
            return None
        api = self.api
        try:
            response = api._get(api._url(path), timeout=left)
            return api._result(response, json=True)
        except Exception as err:  # refused, timeout, 5xx: the engine will say it at create time
            log.warning("Target admission: could not read %s from the engine (%s); not checked", path, err)
            return None


def _subnets(entry: Mapping[str, Any]) -> tuple[Subnet, ...]:
    out = []
    for pool in ((entry.get("IPAM") or {}).get("Config")) or []:
        text = (pool or {}).get("Subnet")
        if text:
            try:
                out.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                continue
    return tuple(out)


def _same_ip(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a.strip("[]")) == ipaddress.ip_address(b.strip("[]"))
    except ValueError:
        return a == b
