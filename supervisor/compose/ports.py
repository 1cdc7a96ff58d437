"""The `ports` field: docker-py port grammar, range folding, engine PortBindings both ways.

A port map is a plain dict `{internalStart, internalEnd, externalStart, externalEnd, protocol, host}`.
Both sides of a comparison are normalised the same way (sorted, consecutive single ports folded into
ranges) so a target and the PortBindings the engine reports compare equal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidPortDefinition

PortMap = dict[str, Any]

_PORT_RE = re.compile(
    r"^(?:(?:(?P<host>\[[a-fA-F\d.:]+\]|[a-fA-F\d.:]+):)?(?P<ext>\d*)(?:-(?P<ext_end>\d+))?:)?"
    r"(?P<int>\d+)(?:-(?P<int_end>\d+))?(?:/(?P<proto>udp|tcp))?$"
)
_BINDING_KEY_RE = re.compile(r"(\d+)(?:/?([a-z]+))?", re.IGNORECASE)


def _port_string(entry: Any) -> str:
    """Accept compose's long syntax too (`{target, published, protocol, host_ip}`)."""
    if isinstance(entry, Mapping):
        text = str(entry.get("target", ""))
        if entry.get("published") not in (None, ""):
            text = f"{entry['published']}:{text}"
            host = str(entry.get("host_ip") or "")
            if host:
                text = f"[{host}]:{text}" if ":" in host and not host.startswith("[") else f"{host}:{text}"
        if entry.get("protocol"):
            text = f"{text}/{entry['protocol']}"
        return text
    return str(entry)


def parse_port(entry: Any) -> PortMap:
    """`"127.0.0.1:8080-8081:80-81/udp"` -> one port map; raises InvalidPortDefinition."""
    text = _port_string(entry)
    match = _PORT_RE.match(text)
    if match is None:
        raise InvalidPortDefinition(f"Could not parse port definition: {text}")
    internal = int(match["int"])
    internal_end = int(match["int_end"]) if match["int_end"] is not None else internal
    # `host::80` (empty published port) is read as the internal port, like a bare `80`.
    external = int(match["ext"]) if match["ext"] else internal
    if match["ext_end"] is not None:
        external_end = int(match["ext_end"])
    elif internal == internal_end:
        external_end = external
    else:
        external_end = internal_end
    port = {
        "internalStart": internal,
        "internalEnd": internal_end,
        "externalStart": external,
        "externalEnd": external_end,
        "protocol": match["proto"] or "tcp",
        "host": (match["host"] or "").removeprefix("[").removesuffix("]"),  # the engine's HostIp
    }
    if internal_end - internal != external_end - external:
        raise InvalidPortDefinition(f"Range for internal and external ports does not match: {text}")
    if internal_end < internal:
        raise InvalidPortDefinition(f"The end port cannot be lower than the start port: {text}")
    return port


def normalise(ports: Iterable[PortMap]) -> list[PortMap]:
    """Sort and fold ranges that continue each other on both sides (same protocol and host).

    Ranges are first split into single ports and grouped by host and protocol, so the result
    depends only on the set of bindings, whichever way they were written.
    """
    singles = sorted(
        (p["host"], p["protocol"], p["internalStart"] + offset, p["externalStart"] + offset)
        for p in ports
        for offset in range(p["internalEnd"] - p["internalStart"] + 1)
    )
    folded: list[PortMap] = []
    for host, protocol, internal, external in singles:
        last = folded[-1] if folded else None
        if (
            last is not None
            and last["internalEnd"] + 1 == internal
            and last["externalEnd"] + 1 == external
            and last["protocol"] == protocol
            and last["host"] == host
        ):
            last["internalEnd"] = internal
            last["externalEnd"] = external
        else:
            folded.append(
                {
                    "internalStart": internal,
                    "internalEnd": internal,
                    "externalStart": external,
                    "externalEnd": external,
                    "protocol": protocol,
                    "host": host,
                }
            )
    return folded


def from_compose(entries: Iterable[Any]) -> list[PortMap]:
    """The normalised port maps of a compose `ports` list."""
    return normalise(parse_port(e) for e in entries)


def to_docker(ports: Iterable[PortMap]) -> tuple[dict[str, dict], dict[str, list[dict[str, str]]]]:
    """(ExposedPorts, PortBindings) for the create body; several maps of one port accumulate."""
    exposed: dict[str, dict] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for port in ports:
        span = port["internalEnd"] - port["internalStart"]
        for offset in range(span + 1):
            key = f"{port['internalStart'] + offset}/{port['protocol']}"
            exposed[key] = {}
            bindings.setdefault(key, []).append(
                {"HostIp": port["host"], "HostPort": str(port["externalStart"] + offset)}
            )
    return exposed, bindings


def from_docker(bindings: Mapping[str, Any] | None) -> list[PortMap]:
    """Port maps from the engine's `HostConfig.PortBindings`."""
    ports: list[PortMap] = []
    for key, hosts in (bindings or {}).items():
        match = _BINDING_KEY_RE.match(key)
        if match is None:
            raise InvalidPortDefinition(f"Could not parse docker port output: {key}")
        internal = int(match.group(1))
        protocol = (match.group(2) or "tcp").lower()
        for host in hosts or []:
            host_port = str(host.get("HostPort") or "")
            external = int(host_port) if host_port.isdigit() else internal
            ports.append(
                {
                    "internalStart": internal,
                    "internalEnd": internal,
                    "externalStart": external,
                    "externalEnd": external,
                    "protocol": protocol,
                    "host": host.get("HostIp") or "",
                }
            )
    return normalise(ports)
