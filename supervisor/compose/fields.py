"""Small compose fields that need only a line or two of normalisation each.

Restart policy, string-or-list fields (dns, dns_search, tmpfs), extra_hosts, sysctls, security_opt.
Each function is applied to the target and, where the engine can report a different spelling, to what
is read back, so both sides meet in the same form.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

RESTART_POLICIES = ("no", "always", "on-failure", "unless-stopped")
#: The engine's MaximumRetryCount is a Go int; beyond int32 a 32-bit engine cannot decode it.
MAX_RETRY_COUNT = 2**31 - 1
_ON_FAILURE = re.compile(r"on-failure:([0-9]+)")
_SELINUX_LABEL = re.compile(r"label=.*")


def restart_policy(value: Any) -> str:
    """One of the four engine policies, or ``on-failure:N`` (compose's retry count, the engine's
    ``MaximumRetryCount``); anything else (or nothing) means `always`.

    The reference sends `no` as an empty name; the engine treats both alike and may report either, so
    both are read as `no` here. ``on-failure:0`` is the engine's unlimited retries, i.e. `on-failure`.
    """
    if value is None:
        return "always"
    if not isinstance(value, str):
        log.warning("Non-string argument for restart field: %r - ignoring.", value)
        return "always"
    name = value.lower().strip()
    if name == "":
        return "no"
    if name in RESTART_POLICIES:
        return name
    match = _ON_FAILURE.fullmatch(name)
    if match is not None and int(match[1]) <= MAX_RETRY_COUNT:
        count = int(match[1])
        return f"on-failure:{count}" if count else "on-failure"
    return "always"


def restart_from_docker(policy: Mapping[str, Any] | None) -> str:
    """`HostConfig.RestartPolicy` (Name, MaximumRetryCount); absent means `always`, empty means `no`."""
    name = (policy or {}).get("Name")
    if name is None:
        return "always"
    count = (policy or {}).get("MaximumRetryCount") or 0
    if name == "on-failure" and isinstance(count, int) and count > 0:
        return restart_policy(f"on-failure:{count}")
    return restart_policy(name)


def restart_to_docker(policy: str) -> dict[str, Any]:
    """A policy as :func:`restart_policy` gives it -> the engine's ``RestartPolicy``."""
    name, _, count = policy.partition(":")
    return {"Name": name, "MaximumRetryCount": int(count or 0)}


def string_list(value: Any) -> list[str]:
    """A string becomes a one-element list; None an empty one."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def extra_hosts(value: Any) -> list[str]:
    """`host=ip` is written `host:ip` (the first `=` only); compose's mapping form `{host: ip}` too."""
    if isinstance(value, Mapping):
        return [f"{host}:{str(ip).removeprefix('[').removesuffix(']')}" for host, ip in value.items()]
    return [h.replace("=", ":", 1) for h in string_list(value)]


def sysctls(value: Any) -> dict[str, str]:
    """`["k=v"]` or `{k: v}` -> `{k: "v"}`."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    out: dict[str, str] = {}
    for item in value:
        key, _, val = str(item).partition("=")
        out[key] = val
    return out


def security_opt(value: Iterable[Any] | None, *, warn: bool = False) -> list[str]:
    """Drop SELinux `label=` options: balenaOS has no SELinux, and engines add them on their own."""
    opts = [str(o) for o in value or []]
    dropped = [o for o in opts if _SELINUX_LABEL.search(o)]
    if dropped and warn:
        log.debug("Ignoring unsupported security options: %s", ",".join(dropped))  # see admission
    return [o for o in opts if not _SELINUX_LABEL.search(o)]


def tmpfs_to_docker(entries: Iterable[str]) -> dict[str, str]:
    """`["/run", "/tmp:size=64m"]` -> `{"/run": "", "/tmp": "size=64m"}`."""
    out: dict[str, str] = {}
    for entry in entries:
        path, _, options = entry.partition(":")
        out[path] = options
    return out


def tmpfs_from_docker(tmpfs: Mapping[str, str] | None) -> list[str]:
    """`HostConfig.Tmpfs` back to the compose strings."""
    return [f"{path}:{opts}" if opts else path for path, opts in (tmpfs or {}).items()]
