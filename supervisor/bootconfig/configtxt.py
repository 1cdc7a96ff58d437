"""``/mnt/boot/config.txt`` of Raspberry Pi class devices (spec §5.5 ConfigTxt).

Read: comments, blank lines and lines that are not ``key=value`` (conditional sections such as
``[pi4]``, with a warning) are skipped. ``dtparam`` lines are split on commas: a *base* param
(``audio``, ``spi``, ``i2c*``) is global wherever it appears, any other one belongs to the
``dtoverlay`` before it (or is global when no overlay is open). Overlays come back as
``"name,param,param"``.

Write: the reference rewrites the file **whole from the target**, so comments, section headers and
unparsable lines are **dropped** on the first change, exactly as the reference drops them; a target
equal to the file leaves it untouched, comments included. Scalars first in target order
(``initramfs <file>`` without ``=``), then each overlay as ``dtoverlay=<name>`` followed by one
``dtparam=<p>`` line per param.

Deliberate difference: the reference pushes the whole ``dtparam`` line once per base param
(``dtparam=i2c_arm=on,spi=on`` reads as that line twice); here each param is kept once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import Backend, Options

log = logging.getLogger(__name__)

ARRAY_KEYS = frozenset({"dtparam", "dtoverlay", "device_tree_param", "device_tree_overlay", "gpio"})
FORBIDDEN_KEYS = frozenset({
    "disable_commandline_tags", "cmdline", "kernel", "kernel_address", "kernel_old", "ramfsfile",
    "ramfsaddr", "initramfs", "device_tree_address", "init_emmc_clock", "avoid_safe_mode",
    "power_mode", "fan_profile",
})
BASE_PARAMS = frozenset({
    "audio", "spi", "i2c", "i2c_arm", "i2c_vc", "i2c_baudrate", "i2c_arm_baudrate", "i2c_vc_baudrate",
})
DEVICE_TYPES = frozenset({
    "fincm3", "rt-rpi-300", "243390-rpi3", "nebra-hnt", "revpi-connect", "revpi-connect-s",
    "revpi-core-3", "revpi-connect-4",
})
#: Owned by the power/fan backend (config.json), never written to config.txt.
_POWER_FAN = frozenset({"power_mode", "fan_profile"})

_KEY_VALUE = re.compile(r"^([^=]+)=(.*)$")
_INITRAMFS = re.compile(r"^(initramfs) (.+)")


def _is_base_param(param: str) -> bool:
    return param.split("=", 1)[0] in BASE_PARAMS


class ConfigTxt(Backend):
    name = "config.txt"
    prefix = "HOST_CONFIG_"
    supported_keys = None
    forbidden_keys = FORBIDDEN_KEYS
    array_keys = ARRAY_KEYS

    def matches(self, device_type: str, os_version: str | None) -> bool:
        return device_type in DEVICE_TYPES or device_type.startswith("raspberry")

    def is_boot_var(self, env_name: str) -> bool:
        return super().is_boot_var(env_name) and self.option_name(env_name) not in _POWER_FAN

    @property
    def path(self) -> Path:
        return self.boot / "config.txt"

    def _warn_once(self, line: str) -> None:
        """The reference's warning, once per line and process: the file is read every round."""
        warned: set[str] = self.__dict__.setdefault("_warned", set())
        if line not in warned and len(warned) < 256:
            warned.add(line)
            log.warning("Could not parse config.txt entry: %s. Ignoring.", line)

    def parse(self, raw: str | None) -> Options:
        if raw is None:
            return {}
        conf: Options = {}
        base: list[str] = []
        overlays: list[tuple[str, list[str]]] = []  # ("", params) is an empty `dtoverlay=`
        for line in raw.splitlines():
            stripped = line.lstrip()
            if not stripped or stripped.startswith("#"):
                continue
            match = _KEY_VALUE.match(line)
            if match is None:
                initramfs = _INITRAMFS.match(line)
                if initramfs is not None:
                    conf["initramfs"] = initramfs.group(2)
                else:
                    self._warn_once(line)
                continue
            key, value = match.groups()
            if key == "dtparam":
                for param in value.split(","):
                    if _is_base_param(param) or not overlays:
                        base.append(param)
                    else:
                        overlays[-1][1].append(param)
            elif key == "dtoverlay":
                name, *params = value.split(",")
                overlays.append((name, params))
            elif key in ARRAY_KEYS:
                conf.setdefault(key, []).append(value)
            else:
                conf[key] = value
        for name, params in overlays:
            if name == "":
                base.extend(params)
            else:
                conf.setdefault("dtoverlay", []).append(",".join([name, *params]))
        if base:
            conf["dtparam"] = base
        return conf

    def render(self, options: Mapping[str, Any], raw: str | None) -> str:
        lines: list[str] = []
        for key, value in options.items():
            if key == "dtoverlay" or key in _POWER_FAN:
                continue
            if key == "initramfs":
                lines.append(f"initramfs {value}")
            elif isinstance(value, list):
                lines.extend(f"{key}={entry}" for entry in value)
            else:
                lines.append(f"{key}={value}")
        for entry in options.get("dtoverlay") or ():
            name, *params = entry.split(",")
            lines.append(f"dtoverlay={name}")
            lines.extend(f"dtparam={param}" for param in params)
        return "\n".join(lines) + "\n"

    def ensure_required(self, device_type: str, options: Options) -> Options:
        """The balenaFin cannot boot without its overlay."""
        if device_type != "fincm3":
            return options
        overlays = [o for o in options.get("dtoverlay") or [] if o]
        if "balena-fin" not in overlays:
            overlays.append("balena-fin")
        return {**options, "dtoverlay": overlays}
