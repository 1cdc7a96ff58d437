"""Facts about the host OS the supervisor reports and gives to services (spec §5.2).

Read from the balenaOS files under the root prefix, so a test or a dev machine gets its own answers.
Everything here is best effort: a missing file means "unknown", never a failed start.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..paths import Paths

log = logging.getLogger(__name__)

UNKNOWN = "unknown"


def read_os_release(path: Path) -> dict[str, str]:
    """``KEY=value`` pairs of an os-release file (shell quoting removed); {} when unreadable."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if not sep or not key.strip() or key.lstrip().startswith("#"):
            continue
        try:
            parts = shlex.split(raw, comments=False)
        except ValueError:
            parts = [raw.strip().strip("\"'")]
        values[key.strip()] = " ".join(parts)
    return values


def _read_json_fields(path: Path, *keys: str) -> dict[str, str]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: data[k] for k in keys if isinstance(data.get(k), str) and data[k]}


@dataclass(frozen=True)
class HostFacts:
    """What the host is; read once at start (these only change with a reboot or a HUP)."""

    os_version: str | None = None
    os_variant: str | None = None
    board_rev: str | None = None
    device_type: str = UNKNOWN
    device_arch: str = UNKNOWN
    hostname: str = ""
    host_paths: frozenset[str] = frozenset()
    boot_time: float | None = None

    @classmethod
    def read(cls, paths: Paths) -> HostFacts:
        release = read_os_release(paths.os_release)
        device_type = _read_json_fields(paths.device_type_json, "slug", "arch")
        if len(device_type) < 2:  # no device-type.json (a dev board): what the board says
            from ..devicetype import detect

            found = detect(paths)
            log.info("No device type in %s: detected %s (from %s), arch %s",
                     paths.device_type_json, found.slug, found.source, found.arch)
            device_type = {"slug": found.slug, "arch": found.arch, **device_type}
        try:
            hostname = paths.host("/etc/hostname").read_text().strip()
        except OSError:
            hostname = ""
        return cls(
            os_version=release.get("PRETTY_NAME"),
            os_variant=release.get("VARIANT_ID"),
            board_rev=release.get("BALENA_BOARD_REV"),
            device_type=device_type.get("slug", UNKNOWN),
            device_arch=device_type.get("arch", UNKNOWN),
            hostname=hostname,
            host_paths=frozenset(p for p in ("/lib/modules", "/lib/firmware") if paths.host(p).exists()),
            boot_time=_boot_time(),
        )


def _boot_time() -> float | None:
    """Epoch seconds of the last boot (``btime`` of /proc/stat: the kernel's, never prefixed)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            for line in stat:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        log.debug("No boot time from /proc/stat")
    return None
