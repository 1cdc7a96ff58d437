"""Preloaded apps (spec §11.2): a device image can ship ``/mnt/data/apps.json`` so the device runs
its apps before it ever reaches the cloud. The images themselves are side-loaded into the engine;
the reconcile loop records them when it finds them there instead of pulling.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..atomic import write_atomic
from .admission import validate_preload
from .device_config import format_config_keys
from .store import TargetStore
from .target import AppsJsonParseError

log = logging.getLogger("supervisor")

BACKUP_SUFFIX = ".preloaded"


def load_apps_json(
    path: Path,
    *,
    store: TargetStore,
    source: str,
    current_name: str,
    set_pin: Callable[[dict[str, Any]], None],
) -> bool:
    """Store the target preloaded in ``path``; True when one was stored (the caller then applies it).

    Never raises for a bad file: a device with a broken preload must still serve its API, so the
    problem is logged (naming the file) and nothing is stored or moved, leaving it for inspection.
    """
    try:
        raw = path.read_bytes()
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.EISDIR):
            return False  # nothing preloaded: the normal case
        log.error("Could not read preloaded apps from %s: %s", path, err.strerror or err)
        return False
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        log.error("Invalid preloaded apps file %s: not valid JSON (%s)", path, err)
        return False
    try:
        # The same gate as every other target (state/admission.py): nothing the engine would refuse.
        preload, warnings = validate_preload(doc, current_name=current_name)
    except AppsJsonParseError as err:
        log.error("Invalid preloaded apps file %s: %s", path, err)
        return False
    for warning in warnings:
        log.warning("Preloaded apps file %s: %s", path, warning)
    if preload.is_empty:
        return False  # already consumed ({}), or deliberately empty

    log.info("Preloading %d app(s) from %s", len(preload.device.apps), path)
    device = dataclasses.replace(
        preload.device, config=merged_config(store.target_config(), preload.device.config)
    )
    store.set_target(device, source)

    # Consume the file so a later start (or a re-provisioning) does not load it again; the first
    # original is kept as the backup, a later one never overwrites it.
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    if not backup.exists():
        os.rename(path, backup)
    write_atomic(path, "{}")

    pin = preload.pin_target()
    if pin is not None:
        set_pin(pin)
        log.info("Device pinned to the preloaded release")
    return True


def merged_config(current: Mapping[str, str], preloaded: Mapping[str, str]) -> dict[str, str]:
    """The file's variables (names formatted, §5.3) over the current target config, so a
    preload only overrides what it names."""
    return {**current, **format_config_keys(preloaded)}
