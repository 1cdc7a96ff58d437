"""Composition key names: lodash-style camelCasing and the supported-key filter.

The cloud sends compose keys in snake_case (`network_mode`, `cap_add`); the reference camelCases them with
lodash and drops what it does not support. Keeping the exact same key set matters because every kept key
takes part in the container comparison.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Words as lodash splits them: an upper-case run not followed by lower case (`XML` in `XMLHttp`), a
# capitalised or lower-case word, or a run of digits. Anything else separates words.
_WORD_RE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

SUPPORTED_KEYS: frozenset[str] = frozenset(
    {
        "capAdd", "capDrop", "command", "cgroupParent", "devices", "dns", "dnsOpt", "dnsSearch",
        "tmpfs", "entrypoint", "environment", "extraHosts", "groupAdd", "healthcheck", "image",
        "init", "labels", "running", "networkMode", "networks", "pid", "pidsLimit", "ports",
        "securityOpt", "stopGracePeriod", "stopSignal", "storageOpt", "sysctls", "ulimits",
        "usernsMode", "volumes", "restart", "cpuShares", "cpuQuota", "cpus", "cpuset", "domainname",
        "hostname", "ipc", "macAddress", "memLimit", "memReservation", "oomKillDisable",
        "oomScoreAdj", "privileged", "readOnly", "shmSize", "user", "workingDir", "tty",
    }
)  # fmt: skip


def camel_case(key: str) -> str:
    """`network_mode` -> `networkMode`, `ipv4_address` -> `ipv4Address` (lodash `camelCase`)."""
    words = _WORD_RE.findall(key)
    if not words:
        return ""
    first, *rest = (w.lower() for w in words)
    return first + "".join(w[:1].upper() + w[1:] for w in rest)


def camel_case_composition(composition: Mapping[str, Any]) -> dict[str, Any]:
    """camelCase the top-level keys, and the keys of each entry of a dict-form `networks`."""
    config = {camel_case(k): v for k, v in composition.items()}
    networks = config.get("networks")
    if isinstance(networks, Mapping):
        config["networks"] = {
            name: {camel_case(k): v for k, v in (entry or {}).items()}
            if isinstance(entry, Mapping) or entry is None
            else entry
            for name, entry in networks.items()
        }
    return config


def split_supported(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Keep the supported keys; return them and the names of the dropped ones (for the warning)."""
    kept = {k: v for k, v in config.items() if k in SUPPORTED_KEYS}
    dropped = [k for k in config if k not in SUPPORTED_KEYS]
    return kept, dropped
