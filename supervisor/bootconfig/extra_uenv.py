"""``/mnt/boot/extra_uEnv.txt`` of newer Jetson and some i.MX8 boards (spec §5.5 ExtraUEnv).

``HOST_EXTLINUX_fdt`` is the line ``custom_fdt_file=<dtb>``; ``HOST_EXTLINUX_isolcpus`` is the token
``isolcpus=<cpus>`` of ``extra_os_cmdline=``. Any other ``HOST_EXTLINUX_x`` is a boot variable this
backend does not support (changing it is refused). Only used when the file exists.

A write keeps every other line as it is (comments too) and every ``extra_os_cmdline`` token we do
not manage; a managed line whose value goes away is removed. The reference rebuilds the file from
its ``key=value`` lines, which drops comments and unmanaged kernel arguments: here they stay.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import Backend, Options

_LINE = re.compile(r"^\s*(\w+)=(.*)$")
_SUFFIXES = ("-nano", "-nano-emmc", "-nano-2gb-devkit", "-tx2")
_CONTAINS = ("-tx2-nx", "-agx-orin-", "-orin-nx-", "-orin-nano-", "imx8mm-var-som")
_EQUALS = ("iot-gate-imx8plus", "iot-gate-imx8plus-d1d8")
_DART = re.compile(r"imx8mm?-var-dart")
FDT_LINE = "custom_fdt_file"
CMDLINE_LINE = "extra_os_cmdline"
_CMDLINE_KEYS = ("isolcpus",)


class ExtraUEnv(Backend):
    name = "extra_uEnv.txt"
    prefix = "HOST_EXTLINUX_"
    supported_keys = frozenset({"fdt", "isolcpus"})

    def matches(self, device_type: str, os_version: str | None) -> bool:
        known = (
            device_type.endswith(_SUFFIXES) or any(part in device_type for part in _CONTAINS)
            or device_type in _EQUALS or _DART.search(device_type) is not None
        )
        return known and self.path.exists()

    @property
    def path(self) -> Path:
        return self.boot / "extra_uEnv.txt"

    def parse(self, raw: str | None) -> Options:
        options: Options = {}
        for line in (raw or "").splitlines():
            match = _LINE.match(line)
            if match is None:
                continue
            key, value = match.groups()
            if key == FDT_LINE:
                options["fdt"] = value
            elif key == CMDLINE_LINE:
                for token in value.split():
                    name, _, arg = token.partition("=")
                    if name in _CMDLINE_KEYS:
                        options[name] = arg
        return options

    def render(self, options: Mapping[str, Any], raw: str | None) -> str:
        lines: list[str] = []
        extra_tokens: list[str] = []
        for line in (raw or "").splitlines():
            match = _LINE.match(line)
            if match is not None and match.group(1) == FDT_LINE:
                continue
            if match is not None and match.group(1) == CMDLINE_LINE:
                extra_tokens += [t for t in match.group(2).split()
                                 if t.partition("=")[0] not in _CMDLINE_KEYS]
                continue
            lines.append(line)
        if options.get("fdt"):
            lines.append(f"{FDT_LINE}={options['fdt']}")
        managed = [f"{k}={options[k]}" if options[k] else k for k in _CMDLINE_KEYS if k in options]
        if extra_tokens or managed:
            lines.append(f"{CMDLINE_LINE}={' '.join(extra_tokens + managed)}")
        return "".join(f"{line}\n" for line in lines)
