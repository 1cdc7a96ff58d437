"""The service `volumes` field: short and long syntax, bind refusal, engine Binds/Mounts/Volumes.

A normalised entry is either a short string (`<appId>_<name>:/path[:mode]`, a host bind added by a
feature label, or an anonymous `/path`) or a long-syntax dict `{type, target, source?, readOnly?,
bind?, volume?, tmpfs?}` that only carries options which survive a trip through the engine, so the
target and the container read back compare equal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from .naming import volume_name

log = logging.getLogger(__name__)

Mount = str | dict[str, Any]
LOCK_TARGETS = ("/tmp/resin", "/tmp/balena")


def _is_abs(path: Any) -> bool:
    return isinstance(path, str) and path.startswith("/")


def normalise_long(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical long syntax: `read_only` read as `readOnly`, options kept only for their own type."""
    kind = entry.get("type")
    out: dict[str, Any] = {"type": kind, "target": entry.get("target")}
    if "source" in entry and entry["source"] is not None:
        out["source"] = entry["source"]
    if entry.get("readOnly", entry.get("read_only")):
        out["readOnly"] = True
    option = entry.get(kind) if isinstance(kind, str) else None
    if isinstance(option, Mapping):
        if kind == "bind" and option.get("propagation"):
            out["bind"] = {"propagation": option["propagation"]}
        elif kind == "volume" and option.get("nocopy"):
            out["volume"] = {"nocopy": True}
        elif kind == "tmpfs" and option.get("size"):
            out["tmpfs"] = {"size": option["size"]}
    return out


def sanitise(entries: Iterable[Any] | None, app_id: int) -> list[Mount]:
    """Namespace named volumes by appId; refuse binds and malformed entries with a warning."""
    kept: list[Mount] = []
    for entry in entries or []:
        if isinstance(entry, str):
            if ":" not in entry:
                kept.append(entry)  # anonymous volume
                continue
            source, target, *rest = entry.split(":")
            if _is_abs(source):
                log.debug("Ignoring invalid bind mount %s", entry)  # the user was told at admission
                continue
            short = f"{volume_name(app_id, source.strip())}:{target.strip()}"
            if rest:
                short = f"{short}:{rest[0].strip()}"
            kept.append(short)
        elif isinstance(entry, Mapping) and isinstance(entry.get("target"), str):
            kind = entry.get("type")
            source = entry.get("source")
            if kind == "bind" and _is_abs(source):
                log.debug("Ignoring invalid bind mount %s", json.dumps(entry, default=str))
            elif kind == "volume" and source is None:
                kept.append(normalise_long(entry))
            elif kind == "volume" and isinstance(source, str) and not _is_abs(source):
                long = normalise_long(entry)
                long["source"] = volume_name(app_id, source.strip())
                kept.append(long)
            elif kind == "tmpfs" and "source" not in entry:
                kept.append(normalise_long(entry))
            else:
                log.warning("Ignoring invalid compose volume definition %s", json.dumps(entry, default=str))
        else:
            log.warning("Ignoring invalid compose volume definition %r", entry)
    return kept


def lock_binds(lock_dir: str) -> list[str]:
    """The two binds of the service's update-lock directory."""
    return [f"{lock_dir}:{target}" for target in LOCK_TARGETS]


def union(*groups: Iterable[Mount]) -> list[Mount]:
    """Concatenate, dropping repeats (first occurrence wins)."""
    seen: set[str] = set()
    out: list[Mount] = []
    for group in groups:
        for item in group:
            key = canonical(item)
            if key not in seen:
                seen.add(key)
                out.append(item)
    return out


def canonical(item: Any) -> str:
    """A sortable, hashable text form of any config value (for unordered comparison)."""
    return json.dumps(item, sort_keys=True, separators=(",", ":"), default=str)


def to_docker(mounts: Iterable[Mount]) -> tuple[list[str], list[dict[str, Any]], dict[str, dict]]:
    """(Binds, Mounts, Volumes) for the create body."""
    binds: list[str] = []
    long_mounts: list[dict[str, Any]] = []
    anonymous: dict[str, dict] = {}
    for item in mounts:
        if isinstance(item, Mapping):
            long_mounts.append(long_to_docker(item))
        elif ":" in item:
            binds.append(item)
        else:
            anonymous[item] = {}
    return binds, long_mounts, anonymous


def long_to_docker(item: Mapping[str, Any]) -> dict[str, Any]:
    """One long-syntax entry as an engine `Mount`."""
    mount: dict[str, Any] = {"Type": item["type"], "Target": item["target"]}
    if item.get("source") is not None:
        mount["Source"] = item["source"]
    if item.get("readOnly"):
        mount["ReadOnly"] = True
    if item.get("bind", {}).get("propagation"):
        mount["BindOptions"] = {"Propagation": item["bind"]["propagation"]}
    if item.get("volume", {}).get("nocopy"):
        mount["VolumeOptions"] = {"NoCopy": True}
    if item.get("tmpfs", {}).get("size"):
        mount["TmpfsOptions"] = {"SizeBytes": item["tmpfs"]["size"]}
    return mount


def long_from_docker(mount: Mapping[str, Any]) -> dict[str, Any]:
    """An engine `HostConfig.Mounts` entry back to long syntax."""
    item: dict[str, Any] = {"type": mount.get("Type"), "target": mount.get("Target")}
    if mount.get("Source"):
        item["source"] = mount["Source"]
    if mount.get("ReadOnly"):
        item["readOnly"] = True
    if (mount.get("BindOptions") or {}).get("Propagation"):
        item["bind"] = {"propagation": mount["BindOptions"]["Propagation"]}
    if (mount.get("VolumeOptions") or {}).get("NoCopy"):
        item["volume"] = {"nocopy": True}
    if (mount.get("TmpfsOptions") or {}).get("SizeBytes"):
        item["tmpfs"] = {"size": mount["TmpfsOptions"]["SizeBytes"]}
    return item


def from_docker(inspect: Mapping[str, Any]) -> list[Mount]:
    """Binds, then `Config.Volumes` paths, then long-syntax Mounts, of a container inspect."""
    host = inspect.get("HostConfig") or {}
    config = inspect.get("Config") or {}
    short = union(host.get("Binds") or [], (config.get("Volumes") or {}).keys())
    return short + [long_from_docker(m) for m in host.get("Mounts") or []]


def named_source(item: Mount) -> str | None:
    """The engine volume name a mount uses, if it is a named volume (for `hasVolume`)."""
    if isinstance(item, Mapping):
        source = item.get("source")
        if item.get("type") == "volume" and isinstance(source, str) and not _is_abs(source):
            return source
        return None
    if ":" in item:
        source = item.split(":")[0]
        return None if _is_abs(source) else source
    return None
