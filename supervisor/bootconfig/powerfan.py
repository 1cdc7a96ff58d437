"""Power and fan modes of Jetson Orin devices (spec §5.5 PowerFanConfig), kept in config.json.

``HOST_CONFIG_power_mode`` is ``os.power.mode`` and ``HOST_CONFIG_fan_profile`` ``os.fan.profile``;
a key absent from the target removes its object; other ``os.*`` keys (``kernel``, ...) are kept.
Values are not validated (documented: power ``low|mid|high|default|<id>``, fan
``quiet|cool|default|<id>``). Only a power mode change needs a reboot. ``raw`` is the config.json
``os`` object; the runtime gives the :class:`~supervisor.config.ConfigJson` that holds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Backend, Options

if TYPE_CHECKING:
    from ..config import ConfigJson

_OPTIONS = {"power_mode": ("power", "mode"), "fan_profile": ("fan", "profile")}


class PowerFan(Backend):
    name = "power/fan"
    prefix = "HOST_CONFIG_"
    supported_keys = frozenset(_OPTIONS)

    def __init__(self, boot: Path, config_json: ConfigJson) -> None:
        super().__init__(boot)
        self.config_json = config_json

    def matches(self, device_type: str, os_version: str | None) -> bool:
        return "-orin-" in device_type

    def is_boot_var(self, env_name: str) -> bool:
        return env_name in {self.prefix + key for key in _OPTIONS}

    @property
    def path(self) -> Path:
        return self.config_json.path

    def read_raw(self) -> dict[str, Any]:
        section = self.config_json.get("os")
        return dict(section) if isinstance(section, Mapping) else {}

    def write_raw(self, raw: dict[str, Any]) -> bool:
        return self.config_json.set(os=raw)

    def parse(self, raw: Mapping[str, Any]) -> Options:
        options: Options = {}
        for key, (section, field) in _OPTIONS.items():
            value = raw.get(section)
            if isinstance(value, Mapping) and value.get(field) is not None:
                options[key] = str(value[field])
        return options

    def render(self, options: Mapping[str, Any], raw: Mapping[str, Any]) -> dict[str, Any]:
        result = dict(raw)
        for key, (section, field) in _OPTIONS.items():
            if key in options:
                result[section] = {field: str(options[key])}
            else:
                result.pop(section, None)
        return result

    def requires_reboot(self, current: Mapping[str, Any], target: Mapping[str, Any]) -> bool:
        return current.get("power_mode") != target.get("power_mode")
