"""What a device can learn again after its database was lost (issue #17, balena-supervisor#2196).

The running containers carry what the supervisor injected when it created them (spec §3.4): the device
uuid and the device name at init. On a device whose uuid lives only in the database (no config.json),
a new uuid would change every service's ``BALENA_DEVICE_UUID`` and so recreate every container on the
next apply; reading it back keeps the running apps as they are.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

log = logging.getLogger(__name__)

SUPERVISED = "io.balena.supervised"


def facts_from_containers(apps: Collection[str] | None) -> dict[str, str]:
    """``uuid`` and ``name`` from the env of the supervised containers (of ``apps``, app ids as
    strings, None: all); {} when the engine cannot be asked (the recovery goes on without them)."""
    from .compose.environment import from_array
    from .state.engine import engine_client

    try:
        client = engine_client()
    except Exception as err:  # no engine now: a fresh uuid, containers are recreated on the next apply
        log.warning("Could not read the running containers back after the database recovery: %s", err)
        return {}
    facts: dict[str, str] = {}
    try:
        for entry in client.api.containers(all=True, filters={"label": SUPERVISED}):
            labels = entry.get("Labels") or {}
            if apps is not None and labels.get("io.balena.app-id") not in apps:
                continue
            env = from_array(client.api.inspect_container(entry["Id"])["Config"].get("Env"))
            uuid = env.get("BALENA_DEVICE_UUID") or env.get("RESIN_DEVICE_UUID")
            name = env.get("BALENA_DEVICE_NAME_AT_INIT") or env.get("RESIN_DEVICE_NAME_AT_INIT")
            if uuid and "uuid" not in facts:
                facts["uuid"] = uuid
            if name and "name" not in facts:
                facts["name"] = name
            if len(facts) == 2:
                break
    except Exception as err:
        log.warning("Could not read the running containers back after the database recovery: %s", err)
    finally:
        client.close()
    return facts
