"""What every boot-config backend is (spec §5.5): a table of env names, a pure parse/render pair,
and the I/O edge that reads and writes the boot partition.

A backend's *options* are the file's settings as ``{key: str | list[str]}`` (``HOST_CONFIG_gpu_mem``
is option ``gpu_mem``). ``parse(raw)`` and ``render(options, raw)`` are pure: ``raw`` is what the
backend stores (file text, bytes, a config.json section), and ``render`` returns the new raw value
given the old one (some formats keep lines they do not manage). Whether the device must change is
decided on ``parse(render(target, raw))`` against ``parse(raw)``: what the file would say after the
write, so a target the format cannot express exactly never makes the loop write forever.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..atomic import write_atomic

log = logging.getLogger(__name__)

Options = dict[str, Any]  # str, or list[str] for array keys


class BootConfigError(Exception):
    """A boot config file that cannot be read or a target that cannot be written."""


class BlacklistedConfigError(BootConfigError):
    """A target changes a key the backend must not touch (the reference's exact message)."""

    def __init__(self, key: str, env_name: str = "") -> None:
        super().__init__(f"Attempt to change blacklisted config value {key}")
        self.key = key
        self.env_name = env_name or key


def env_array(value: list[str]) -> str:
    """An array option in env form: the JSON array without its brackets (``"a","b"``)."""
    return json.dumps(value, separators=(",", ":"))[1:-1]


class Backend:
    """One boot-config format. Subclasses set the class attributes and override the pure core."""

    #: Short name for logs.
    name = "backend"
    #: Env prefix after the BALENA_/RESIN_ strip.
    prefix = ""
    #: Keys the supervisor may change; ``None`` means every key but ``forbidden``.
    supported_keys: frozenset[str] | None = frozenset()
    forbidden_keys: frozenset[str] = frozenset()
    array_keys: frozenset[str] = frozenset()

    def __init__(self, boot: Path) -> None:
        self.boot = boot

    # ------------------------------------------------------------------ env names and values
    def matches(self, device_type: str, os_version: str | None) -> bool:  # pragma: no cover
        raise NotImplementedError

    def is_boot_var(self, env_name: str) -> bool:
        return env_name.startswith(self.prefix)

    def option_name(self, env_name: str) -> str:
        return env_name[len(self.prefix):]

    def env_name(self, option: str) -> str:
        return self.prefix + option

    def supported(self, key: str) -> bool:
        if self.supported_keys is None:
            return key not in self.forbidden_keys
        return key in self.supported_keys

    def to_options(self, env: Mapping[str, str]) -> Options:
        """The env variables this backend recognises, as options (array keys parsed)."""
        options: Options = {}
        for name, value in env.items():
            if not self.is_boot_var(name):
                continue
            key = self.option_name(name)
            text = "" if value is None else str(value)
            if key in self.array_keys:
                options[key] = _env_list(text)
            else:
                options[key] = text
        return options

    def to_env(self, options: Mapping[str, Any]) -> dict[str, str]:
        return {
            self.env_name(key): env_array(value) if isinstance(value, list) else str(value)
            for key, value in options.items()
        }

    # ------------------------------------------------------------------ pure core
    def parse(self, raw: Any) -> Options:  # pragma: no cover
        raise NotImplementedError

    def render(self, options: Mapping[str, Any], raw: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    def ensure_required(self, device_type: str, options: Options) -> Options:
        """Options the device cannot boot without (config.txt on fincm3)."""
        return options

    def requires_reboot(self, current: Mapping[str, Any], target: Mapping[str, Any]) -> bool:
        """Whether going from ``current`` to ``target`` only takes effect after a reboot."""
        return True

    # ------------------------------------------------------------------ I/O edge
    @property
    def path(self) -> Path:  # pragma: no cover
        raise NotImplementedError

    def read_raw(self) -> Any:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def write_raw(self, raw: Any) -> bool:
        """Atomically (same-directory temp, fsync, rename, fsync dir); False when unchanged."""
        return write_atomic(self.path, raw)

    def read(self) -> Options:
        return self.parse(self.read_raw())

    def write(self, options: Mapping[str, Any]) -> bool:
        raw = self.read_raw()
        new = self.render(options, raw)
        if new == raw:
            return False
        return self.write_raw(new)


_QUOTED_LIST = re.compile(r'^\s*"')


def _env_list(value: str) -> list[str]:
    """``"a","b"`` -> ["a", "b"]; anything else is a one-element list (spec §5.5)."""
    text = value.strip()
    if not _QUOTED_LIST.match(text):
        return [text]
    try:
        parsed = json.loads(f"[{text}]")
    except ValueError as err:
        raise BootConfigError(f"cannot parse the list {value!r}: {err}") from None
    if not all(isinstance(item, str) for item in parsed):
        raise BootConfigError(f"the list {value!r} must hold strings only")
    return parsed
