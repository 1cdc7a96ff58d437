"""The service `networks` and `network_mode` fields, and container endpoints on the engine.

Service networks are keyed by their engine name (`<appUuid>_<name>`) and always carry the service name
as an alias. Only aliases and static addresses are meaningful; a target entry compares equal to a
container endpoint when its aliases are a subset (the engine adds the short container id) and each
address it names is the same.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from .naming import network_name

log = logging.getLogger(__name__)

Endpoint = dict[str, Any]

SERVICE_MODE_RE = re.compile(r"service:\s*(.+)")
CONTAINER_MODE_RE = re.compile(r"container:\s*(.+)")
BUILTIN_MODES = frozenset({"host", "bridge", "none"})
_ENTRY_KEYS = ("aliases", "ipv4Address", "ipv6Address", "linkLocalIps")


def _entry(value: Any) -> Endpoint:
    entry = {k: value[k] for k in _ENTRY_KEYS if isinstance(value, Mapping) and k in value}
    if "aliases" in entry:
        entry["aliases"] = [str(a) for a in entry["aliases"] or []]
    if "linkLocalIps" in entry:
        entry["linkLocalIps"] = list(entry["linkLocalIps"] or [])
    return entry


def from_compose(
    networks: Any, network_mode: Any, app_uuid: str, service_name: str
) -> tuple[dict[str, Endpoint], str | None, str | None]:
    """(networks, networkMode, service named by `service:<x>` or None).

    A network mode that is not host/bridge/none/service:/an already keyed network names an app network
    (`default` when nothing is given); it is prefixed and joined with only the service-name alias,
    replacing any entry of the same name as the reference does. `container:<x>` is not supported: it
    is dropped with a warning and the mode falls back to the default.
    """
    raw: dict[str, Any] = {}
    if isinstance(networks, list | tuple):
        raw = {str(name): {} for name in networks}
    elif isinstance(networks, Mapping):
        raw = dict(networks)
    keyed: dict[str, Endpoint] = {}
    for name, value in raw.items():
        entry = _entry(value)
        aliases = entry.setdefault("aliases", [])
        if service_name not in aliases:
            aliases.append(service_name)
        keyed[network_name(app_uuid, name)] = entry

    mode: str | None = None if network_mode is None else str(network_mode)
    depends: str | None = None
    if mode is not None:
        service_match = SERVICE_MODE_RE.search(mode)
        if service_match:
            depends = service_match[1]
        elif CONTAINER_MODE_RE.search(mode):
            log.debug("A network_mode referencing a container is not supported. Ignoring.")  # see admission
            mode = None
    if mode is None:
        mode = next(iter(keyed), "default")
    if mode not in BUILTIN_MODES and mode not in keyed and depends is None:
        mode = network_name(app_uuid, mode)
        keyed[mode] = {"aliases": [service_name]}
    return keyed, mode, depends


def to_endpoint_config(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An engine EndpointSettings (for NetworkingConfig or a network connect)."""
    ipam: dict[str, Any] = {}
    if entry.get("ipv4Address"):
        ipam["IPv4Address"] = entry["ipv4Address"]
    if entry.get("ipv6Address"):
        ipam["IPv6Address"] = entry["ipv6Address"]
    if entry.get("linkLocalIps"):
        ipam["LinkLocalIPs"] = list(entry["linkLocalIps"])
    return {"IPAMConfig": ipam, "Aliases": list(entry.get("aliases") or [])}


def connect_kwargs(endpoint: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for docker SDK `APIClient.connect_container_to_network`."""
    ipam = endpoint.get("IPAMConfig") or {}
    kwargs: dict[str, Any] = {}
    if endpoint.get("Aliases"):
        kwargs["aliases"] = list(endpoint["Aliases"])
    if ipam.get("IPv4Address"):
        kwargs["ipv4_address"] = ipam["IPv4Address"]
    if ipam.get("IPv6Address"):
        kwargs["ipv6_address"] = ipam["IPv6Address"]
    if ipam.get("LinkLocalIPs"):
        kwargs["link_local_ips"] = list(ipam["LinkLocalIPs"])
    return kwargs


def from_docker(networks: Mapping[str, Any] | None, container_id: str) -> dict[str, Endpoint]:
    """Endpoints of a container inspect, without the aliases the engine derives from its id."""
    out: dict[str, Endpoint] = {}
    for name, net in (networks or {}).items():
        net = net or {}
        entry: Endpoint = {}
        aliases = net.get("Aliases") or []
        if aliases:
            entry["aliases"] = [a for a in aliases if not container_id.startswith(a)]
        ipam = net.get("IPAMConfig") or {}
        if ipam.get("IPv4Address"):
            entry["ipv4Address"] = ipam["IPv4Address"]
        if ipam.get("IPv6Address"):
            entry["ipv6Address"] = ipam["IPv6Address"]
        link_local = ipam.get("LinkLocalIPs") or ipam.get("LinkLocalIps")
        if link_local:
            entry["linkLocalIps"] = list(link_local)
        out[name] = entry
    return out


def same_endpoint(current: Mapping[str, Any], target: Mapping[str, Any]) -> bool:
    """Only what the target defines is compared; target aliases need only be a subset."""
    if "aliases" in target and (
        "aliases" not in current or not set(target["aliases"]) <= set(current["aliases"])
    ):
        return False
    return all(current.get(key) == target[key] for key in _ENTRY_KEYS[1:] if key in target)


def same_networks(current: Mapping[str, Any], target: Mapping[str, Any]) -> bool:
    """Every target network is joined, with a matching endpoint."""
    return all(name in current and same_endpoint(current[name], entry) for name, entry in target.items())


def same_network_mode(
    current_mode: str,
    target_mode: str,
    current_hostname: str,
    target_hostname: str,
    container_ids: Mapping[str, str],
) -> bool:
    """`service:<x>` equals `container:<id of x>`; otherwise equal modes and equal hostnames."""
    for a, b in ((current_mode, target_mode), (target_mode, current_mode)):
        a_service = SERVICE_MODE_RE.search(a)
        if a_service:
            if SERVICE_MODE_RE.search(b):
                if a == b:
                    return True
                continue
            b_container = CONTAINER_MODE_RE.search(b)
            if b_container and container_ids.get(a_service[1]) == b_container[1]:
                return True
        elif a == b and current_hostname == target_hostname:
            return True
    return False
