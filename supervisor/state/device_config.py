"""Device config variables (spec §5.3): name normalisation and the defaults table.

The target ``config`` section arrives with ``BALENA_``/``RESIN_``/unprefixed names; the stored form
(``deviceConfig.targetValues``) has the prefix stripped and only the names something acts on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: Supervisor config variables (name without prefix) -> default value, as strings (§5.3 table).
DEFAULTS: dict[str, str] = {
    "SUPERVISOR_POLL_INTERVAL": "900000",
    "SUPERVISOR_INSTANT_UPDATE_TRIGGER": "true",
    "SUPERVISOR_LOCAL_MODE": "false",
    "SUPERVISOR_CONNECTIVITY_CHECK": "true",
    "SUPERVISOR_LOG_CONTROL": "true",
    "SUPERVISOR_API_REQUEST_TIMEOUT": "59000",
    "SUPERVISOR_DELTA": "false",
    "SUPERVISOR_DELTA_REQUEST_TIMEOUT": "59000",
    "SUPERVISOR_DELTA_APPLY_TIMEOUT": "0",
    "SUPERVISOR_DELTA_RETRY_COUNT": "30",
    "SUPERVISOR_DELTA_RETRY_INTERVAL": "10000",
    "SUPERVISOR_DELTA_VERSION": "2",
    "SUPERVISOR_OVERRIDE_LOCK": "false",
    "SUPERVISOR_PERSISTENT_LOGGING": "false",
    "HOST_FIREWALL_MODE": "off",
    "HOST_DISCOVERABILITY": "true",
    "SUPERVISOR_HARDWARE_METRICS": "true",
    "SUPERVISOR_VPN_CONTROL": "true",
}

_KNOWN = set(DEFAULTS) | {"OVERRIDE_LOCK"}
# Names some boot-config backend recognises (kept whatever the device type, as the reference does).
_BOOT_CONFIG = re.compile(
    r"^(HOST_CONFIG_|HOST_EXTLINUX_|HOST_ODMDATA_)|^(HOST_CONFIGFS_ssdt|HOST_SPLASH_image)$"
)
_PREFIX_RANK = {"BALENA_": 2, "RESIN_": 1, "": 0}


def format_config_keys(config: Mapping[str, str]) -> dict[str, str]:
    """Strip prefixes (BALENA_ beats RESIN_ beats none) and keep only names that are acted on."""
    chosen: dict[str, tuple[int, str]] = {}
    for key, value in config.items():
        prefix = next((p for p in ("BALENA_", "RESIN_") if key.startswith(p)), "")
        name = key[len(prefix):]
        rank = _PREFIX_RANK[prefix]
        if name not in chosen or rank > chosen[name][0]:
            chosen[name] = (rank, value)
    result = {
        name: value for name, (_rank, value) in chosen.items()
        if name in _KNOWN or _BOOT_CONFIG.search(name)
    }
    if "OVERRIDE_LOCK" in result:  # the legacy name (§2.5.3)
        result.setdefault("SUPERVISOR_OVERRIDE_LOCK", result["OVERRIDE_LOCK"])
        del result["OVERRIDE_LOCK"]
    return result


def with_defaults(target: Mapping[str, str], *, unmanaged: bool) -> dict[str, str]:
    """The target config as ``getTarget`` reads it: defaults filled in (§5.3)."""
    result = {**DEFAULTS, **target}
    if unmanaged and "SUPERVISOR_LOCAL_MODE" not in target:
        result["SUPERVISOR_LOCAL_MODE"] = "true"
    return result
