"""App networks: compose config, engine create body, inspect read-back and comparison (§3.7)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import labels as label_utils
from .errors import ComposeError
from .naming import network_name, parse_network_name
from .validation import check_int

log = logging.getLogger(__name__)

IPAM_CONFIG_LABEL = "io.balena.private.ipam.config"
SUPERVISED_LABEL = "io.balena.supervised"

# (compose key, config key, engine key). The engine calls aux addresses AuxiliaryAddresses.
_POOL_KEYS = (
    ("subnet", "subnet", "Subnet"),
    ("gateway", "gateway", "Gateway"),
    ("ip_range", "ipRange", "IPRange"),
    ("aux_addresses", "auxAddress", "AuxiliaryAddresses"),
)


@dataclass(eq=False)
class Network:
    """One app network; `config` holds driver, ipam, enableIPv6, internal, labels, options, configOnly."""

    name: str
    app_id: int | None
    app_uuid: str | None
    config: dict[str, Any]

    @property
    def docker_name(self) -> str:
        """`<appUuid>_<name>` (or `<appId>_<name>` for a legacy network with no uuid)."""
        return network_name(self.app_uuid if self.app_uuid else str(self.app_id), self.name)

    @classmethod
    def from_compose(
        cls, app_id: int, app_uuid: str, name: str, compose_cfg: Mapping[str, Any] | None
    ) -> Network:
        """Normalise a target network definition, with the reference's defaults."""
        cfg = dict(compose_cfg or {})
        ipam = dict(cfg.get("ipam") or {})
        pools = []
        for entry in ipam.get("config") or []:
            pools.append({key: entry[src] for src, key, _ in _POOL_KEYS if entry.get(src)})
        if any(not p.get("subnet") or not p.get("gateway") for p in pools):
            # Said once to the user when the target is admitted (compose/rules.py); this runs every round.
            log.debug(
                "Network IPAM config entries must have both a subnet and gateway defined."
                " Your network might not work properly otherwise."
            )
        net_labels = {
            "io.balena.app-id": str(app_id),
            **label_utils.normalise(cfg.get("labels")),
        }
        if pools:
            net_labels[IPAM_CONFIG_LABEL] = "true"
        config = {
            "driver": cfg.get("driver") or "bridge",
            "ipam": {
                "driver": ipam.get("driver") or "default",
                "config": pools,
                "options": dict(ipam.get("options") or {}),
            },
            "enableIPv6": bool(cfg.get("enable_ipv6") or False),
            "internal": bool(cfg.get("internal") or False),
            "labels": net_labels,
            "options": {str(k): str(v) for k, v in (cfg.get("driver_opts") or {}).items()},
            "configOnly": bool(cfg.get("config_only") or False),
        }
        return cls(name=name, app_id=app_id, app_uuid=app_uuid, config=config)

    @classmethod
    def from_docker(cls, inspect: Mapping[str, Any]) -> Network:
        """Read an engine network back (labels without the supervised marker)."""
        raw_labels = inspect.get("Labels") or {}
        label_app_id = check_int(raw_labels.get("io.balena.app-id"))
        parsed = parse_network_name(str(inspect.get("Name") or ""), label_app_id)
        if parsed.app_id is None:
            raise ComposeError(f"Could not read app id from network: {inspect.get('Name')}")
        ipam = inspect.get("IPAM") or {}
        pools = []
        for entry in ipam.get("Config") or []:
            pool = {key: entry[engine] for _, key, engine in _POOL_KEYS if entry.get(engine)}
            if "auxAddress" not in pool and entry.get("AuxAddress"):
                pool["auxAddress"] = entry["AuxAddress"]
            pools.append(pool)
        net_labels = label_utils.normalise(raw_labels)
        net_labels.pop(SUPERVISED_LABEL, None)
        config = {
            "driver": inspect.get("Driver"),
            "ipam": {
                "driver": ipam.get("Driver") or "default",
                "config": pools,
                "options": dict(ipam.get("Options") or {}),
            },
            "enableIPv6": bool(inspect.get("EnableIPv6")),
            "internal": bool(inspect.get("Internal")),
            "labels": net_labels,
            "options": dict(inspect.get("Options") or {}),
            "configOnly": bool(inspect.get("ConfigOnly")),
        }
        return cls(name=parsed.name, app_id=parsed.app_id, app_uuid=parsed.app_uuid, config=config)

    def create_body(self) -> dict[str, Any]:
        """The POST /networks/create body (raw Engine API JSON; the SDK cannot send ConfigOnly)."""
        ipam = self.config["ipam"]
        return {
            "Name": self.docker_name,
            "Driver": self.config["driver"],
            "CheckDuplicate": True,
            "Options": dict(self.config["options"]),
            "IPAM": {
                "Driver": ipam["driver"],
                "Config": [
                    {engine: pool[key] for _, key, engine in _POOL_KEYS if pool.get(key)}
                    for pool in ipam["config"]
                ],
                "Options": dict(ipam["options"]),
            },
            "EnableIPv6": self.config["enableIPv6"],
            "Internal": self.config["internal"],
            "Labels": {SUPERVISED_LABEL: "true", **self.config["labels"]},
            "ConfigOnly": self.config["configOnly"],
        }

    def is_equal_config(self, target: Network) -> bool:
        """Deep equality, ignoring engine-chosen ipam pools when the target sets none, and the driver
        of config-only targets."""
        current = copy.deepcopy(self.config)
        if not target.config["ipam"]["config"]:
            current["ipam"]["config"] = []
        if target.config["configOnly"]:
            current["driver"] = target.config["driver"]
        return current == target.config
