"""``/mnt/boot/extlinux/extlinux.conf`` of older Jetson images (spec §5.5 Extlinux).

Only ``jetson-*`` devices whose os-release ``META_BALENA_VERSION`` is below 2.47.0 (later images
keep extlinux on a read-only partition and use ``extra_uEnv.txt``). Options: ``isolcpus`` (a token
of the default label's ``APPEND``) and ``fdt`` (its ``FDT`` directive).

The file is a list of ``DIRECTIVE value`` lines; ``MENU X`` counts as the directive ``MENU X``;
lines before the first ``LABEL`` are globals and ``DEFAULT`` names the label we edit. As the
reference, a write serialises the parsed directives, so comments and blank lines are **dropped**
(and a repeated directive keeps its last value); the ``APPEND`` tokens we do not manage
(``${cbootargs}``, ``root=...``) keep their order, the managed ones go to the end. An absent
``fdt`` leaves ``FDT`` as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import Backend, BootConfigError, Options

READ_ONLY_SINCE = (2, 47, 0)
_LINE = re.compile(r"^\s*(\w+)\s?(.*)$")
_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)\.(\d+)")
_APPEND_KEYS = ("isolcpus",)


class ExtLinuxEnvError(BootConfigError):
    pass


@dataclass
class ExtlinuxFile:
    globals: dict[str, str] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)

    def default_entry(self) -> dict[str, str]:
        label = self.globals.get("DEFAULT")
        if not label:
            raise BootConfigError("Could not find default entry for extlinux.conf file")
        entry = self.labels.get(label)
        if entry is None:
            raise BootConfigError(f"Cannot find label entry (label: {label}) for extlinux.conf file")
        return entry

    def dumps(self) -> str:
        lines = [f"{d} {v}" for d, v in self.globals.items()]
        for label, directives in self.labels.items():
            lines.append(f"LABEL {label}")
            lines.extend(f"{d} {v}" for d, v in directives.items())
        return "".join(f"{line}\n" for line in lines)


def parse_file(text: str) -> ExtlinuxFile:
    result = ExtlinuxFile()
    current: dict[str, str] | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        directive, value = match.group(1).upper(), match.group(2).strip()
        if directive == "MENU":
            first, _, rest = value.partition(" ")
            directive, value = f"MENU {first.upper()}", rest
        if directive == "LABEL":
            current = result.labels.setdefault(value, {})
        elif current is None:
            result.globals[directive] = value
        else:
            current[directive] = value
    return result


def parse_append(value: str) -> dict[str, str]:
    """``APPEND`` tokens as ``{key: value}`` (bare flags ``''``); ``a=b=c`` is an error."""
    result: dict[str, str] = {}
    for token in value.split(" "):
        if not token:
            continue
        parts = token.split("=")
        if len(parts) > 2:
            raise BootConfigError(f"Unable to parse invalid value: {token}")
        result.setdefault(parts[0], parts[1] if len(parts) == 2 else "")
    return result


def meta_version(text: str | None) -> tuple[int, int, int] | None:
    match = _VERSION.match(text or "")
    return tuple(int(g) for g in match.groups()) if match else None  # type: ignore[return-value]


class Extlinux(Backend):
    name = "extlinux"
    prefix = "HOST_EXTLINUX_"
    supported_keys = frozenset({"isolcpus", "fdt"})

    def matches(self, device_type: str, os_version: str | None) -> bool:
        version = meta_version(os_version)
        return device_type.startswith("jetson-") and version is not None and version < READ_ONLY_SINCE

    @property
    def path(self) -> Path:
        return self.boot / "extlinux" / "extlinux.conf"

    def read_raw(self) -> str:
        raw = super().read_raw()
        if raw is None:
            raise ExtLinuxEnvError("Could not find extlinux file. Device is possibly bricked")
        return raw

    def parse(self, raw: str) -> Options:
        entry = parse_file(raw).default_entry()
        if "APPEND" not in entry:
            raise BootConfigError("Could not find APPEND directive in default extlinux.conf boot entry")
        append = parse_append(entry["APPEND"])
        options: Options = {k: append[k] for k in _APPEND_KEYS if k in append}
        if entry.get("FDT"):
            options["fdt"] = entry["FDT"]
        return options

    def render(self, options: Mapping[str, Any], raw: str) -> str:
        parsed = parse_file(raw)
        entry = parsed.default_entry()
        fdt = options.get("fdt")
        if fdt:
            entry["FDT"] = str(fdt)
        tokens = [t for t in entry.get("APPEND", "").split(" ")
                  if t and t.split("=", 1)[0] not in _APPEND_KEYS]
        for key in _APPEND_KEYS:
            if key not in options:
                continue
            value = str(options[key])
            if "=" in value:
                raise BootConfigError(f"One of the values being set contains an invalid character: "
                                      f"[ value: {value}, key: {key} ]")
            tokens.append(f"{key}={value}" if value else key)
        entry["APPEND"] = " ".join(tokens)
        return parsed.dumps()
