"""Persistent logging (``SUPERVISOR_PERSISTENT_LOGGING``, spec §5.3, §13.10; balenaos-integration.md §3.6).

The reference only writes ``persistentLogging`` to config.json and schedules a reboot; balenaOS does the
rest at boot (its ``bind-var-log-journal`` service puts ``/var/log/journal`` on the data partition, so
journald stores the journal there). Both happen here too (supervisor/state/device_config.py). On a host
that is not balenaOS nothing reads that key, so the equivalent is a journald drop-in,
``/etc/systemd/journald.conf.d/50-balena-persistent-logging.conf`` with ``Storage=persistent``, written
when the value is true and removed when it is false (the host's own default then stands); journald
reads it when it starts, i.e. after the reboot the change schedules. balenaOS (read-only ``/etc``) is
left to its boot-time mechanism.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..atomic import write_atomic
from ..paths import Paths
from .facts import read_os_release

log = logging.getLogger(__name__)

DROP_IN = "/etc/systemd/journald.conf.d/50-balena-persistent-logging.conf"
CONTENT = (
    "# Written by the supervisor from SUPERVISOR_PERSISTENT_LOGGING=true; removed when it is false.\n"
    "[Journal]\nStorage=persistent\n"
)


def is_balena_os(paths: Paths) -> bool:
    release = read_os_release(paths.os_release)
    return release.get("ID") == "balena-os" or "META_BALENA_VERSION" in release


def apply_persistent_logging(paths: Paths, persistent: bool) -> str | None:
    """Make the host's journald configuration match ``persistent``; what changed (None: nothing).
    Raises OSError when the drop-in cannot be written or removed."""
    if is_balena_os(paths):
        return None  # config.json persistentLogging, applied by balenaOS at boot
    drop_in: Path = paths.host(DROP_IN)
    if persistent:
        drop_in.parent.mkdir(parents=True, exist_ok=True)
        if write_atomic(drop_in, CONTENT):
            log.info("Persistent logging on: %s written (journald stores to /var/log/journal from its "
                     "next start)", DROP_IN)
            return "written"
        return None
    if drop_in.exists():
        drop_in.unlink()
        log.info("Persistent logging off: %s removed (from journald's next start)", DROP_IN)
        return "removed"
    return None
