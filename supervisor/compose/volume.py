"""App volumes: compose config, engine create body, inspect read-back and comparison (§3.7)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import labels as label_utils
from .naming import parse_volume_name, volume_name

DEFAULT_LABELS = {"io.balena.supervised": "true"}
_SUPERVISOR_LABELS = frozenset({"io.resin.supervised", "io.balena.supervised", "io.balena.app-uuid"})


@dataclass(eq=False)
class Volume:
    """One app volume; `config` holds driver, driverOpts and labels."""

    name: str
    app_id: int
    app_uuid: str | None
    config: dict[str, Any]

    @property
    def docker_name(self) -> str:
        """`<appId>_<name>`."""
        return volume_name(self.app_id, self.name)

    @classmethod
    def from_compose(
        cls, app_id: int, app_uuid: str, name: str, compose_cfg: Mapping[str, Any] | None
    ) -> Volume:
        """Normalise a target volume definition (driver `local` by default)."""
        cfg = dict(compose_cfg or {})
        vol_labels = {**label_utils.normalise(cfg.get("labels")), **DEFAULT_LABELS}
        if app_uuid:
            vol_labels["io.balena.app-uuid"] = app_uuid
        config = {
            "driver": cfg.get("driver") or "local",
            "driverOpts": {str(k): str(v) for k, v in (cfg.get("driver_opts") or {}).items()},
            "labels": vol_labels,
        }
        return cls(name=name, app_id=app_id, app_uuid=app_uuid, config=config)

    @classmethod
    def from_docker(cls, inspect: Mapping[str, Any]) -> Volume:
        """Read an engine volume back."""
        app_id, name = parse_volume_name(str(inspect.get("Name") or ""))
        vol_labels = dict(inspect.get("Labels") or {})
        config = {
            "driver": inspect.get("Driver"),
            "driverOpts": dict(inspect.get("Options") or {}),
            "labels": vol_labels,
        }
        return cls(name=name, app_id=app_id, app_uuid=vol_labels.get("io.balena.app-uuid"), config=config)

    def create_body(self) -> dict[str, Any]:
        """The POST /volumes/create body (`client.api.create_volume(name, driver, driver_opts,
        labels)` takes the same values)."""
        return {
            "Name": self.docker_name,
            "Labels": dict(self.config["labels"]),
            "Driver": self.config["driver"],
            "DriverOpts": dict(self.config["driverOpts"]),
        }

    def is_equal_config(self, target: Volume) -> bool:
        """Same driver, options and labels, the supervisor's own labels aside."""
        return (
            self.config["driver"] == target.config["driver"]
            and self.config["driverOpts"] == target.config["driverOpts"]
            and _user_labels(self.config["labels"]) == _user_labels(target.config["labels"])
        )


def _user_labels(labels: Mapping[str, str]) -> dict[str, str]:
    normalised = label_utils.normalise(labels)
    return {k: v for k, v in normalised.items() if k not in _SUPERVISOR_LABELS}
