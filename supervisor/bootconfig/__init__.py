"""Boot-config backends (spec §5.5): one module per format, each a :class:`~.base.Backend` with
``matches(device_type, os_version)``, a pure ``parse``/``render`` pair, its supported keys and
``requires_reboot``. This module lists them and decides, for a target config in env form, what
each matching backend has to write.

Rules shared by every backend (spec §5.4 step 3):

* A target value for a key the backend does not support (``HOST_CONFIG_kernel``,
  ``HOST_EXTLINUX_rootwait``, ...) that differs from the device's is refused with
  ``Attempt to change blacklisted config value <key>`` and nothing at all is written.
* Deliberate difference: an unsupported key the target does not name keeps the device's value
  (the reference drops it on the next full rewrite, e.g. config.txt's ``initramfs`` line, which
  the device needs to boot and which the supervisor is not allowed to change).
* A backend needs writing when the file would read differently after the write
  (``parse(render(target, raw)) != parse(raw)``); writes are atomic and skipped when unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import Backend, BlacklistedConfigError, BootConfigError, Options, env_array
from .configtxt import ConfigTxt
from .extlinux import Extlinux
from .extra_uenv import ExtraUEnv
from .odmdata import Odmdata
from .powerfan import PowerFan
from .splash import SplashImage

if TYPE_CHECKING:
    from ..config import ConfigJson

log = logging.getLogger(__name__)

__all__ = [
    "Backend", "BlacklistedConfigError", "BootChange", "BootConfig", "BootConfigError", "Options",
    "env_array", "is_boot_var", "required_change",
]

#: One instance of each backend, for name checks only (no I/O): a name any backend recognises is
#: kept in the stored target whatever the device type (spec §5.3).
_NAME_CHECKS: tuple[Backend, ...] = (
    ConfigTxt(Path("/")), Extlinux(Path("/")), ExtraUEnv(Path("/")), Odmdata(Path("/"), Path("/")),
    SplashImage(Path("/")), PowerFan(Path("/"), None),  # type: ignore[arg-type]
)


def is_boot_var(env_name: str) -> bool:
    return env_name == "HOST_CONFIGFS_ssdt" or any(b.is_boot_var(env_name) for b in _NAME_CHECKS)


@dataclass(frozen=True)
class BootChange:
    """What one backend must write: ``target`` options (rendered over the file's raw value)."""

    backend: Backend
    current: Options
    target: Options
    reboot: bool


def required_change(backend: Backend, device_type: str, raw: Any,
                    target_env: Mapping[str, str]) -> BootChange | None:
    """The change ``target_env`` asks of ``backend`` (None: nothing to write). Pure.

    Raises :class:`BlacklistedConfigError` for a changed unsupported key."""
    current = backend.parse(raw)
    target = backend.ensure_required(device_type, backend.to_options(target_env))
    for key, value in target.items():
        if not backend.supported(key) and current.get(key) != value:
            raise BlacklistedConfigError(key, backend.env_name(key))
    for key, value in current.items():
        if not backend.supported(key) and key not in target:
            target[key] = value
    after = backend.parse(backend.render(target, raw))
    if after == current:
        return None
    return BootChange(backend, current, target, backend.requires_reboot(current, after))


class BootConfig:
    """The backends that match this device, and their I/O."""

    def __init__(self, boot: Path, root: Path, config_json: ConfigJson, device_type: str,
                 os_version: str | None) -> None:
        self.device_type = device_type
        candidates: list[Backend] = [
            Extlinux(boot), ExtraUEnv(boot), ConfigTxt(boot), Odmdata(boot, root), SplashImage(boot),
            PowerFan(boot, config_json),
        ]
        self.backends = [b for b in candidates if b.matches(device_type, os_version)]

    def initialise(self) -> None:
        for backend in self.backends:
            if isinstance(backend, SplashImage):
                try:
                    backend.initialise()
                except OSError as err:
                    log.error("Could not keep the default splash image: %s", err)

    def current_env(self) -> dict[str, str]:
        """The device's boot config in env form (``HOST_CONFIG_x``...), every matching backend."""
        env: dict[str, str] = {}
        for backend in self.backends:
            try:
                env.update(backend.to_env(backend.read()))
            except (BootConfigError, OSError) as err:
                log.error("Could not read the %s boot config: %s", backend.name, err)
        return env

    def changes(self, target_env: Mapping[str, str]) -> list[BootChange]:
        """What each backend must write for ``target_env``; raises before anything is written."""
        changes = []
        for backend in self.backends:
            change = required_change(backend, self.device_type, backend.read_raw(), target_env)
            if change is not None:
                changes.append(change)
        return changes

    def apply(self, target_env: Mapping[str, str]) -> list[str]:
        """Write every backend that needs it (all checks pass first); the names written."""
        written = []
        for change in self.changes(target_env):
            if change.backend.write(change.target):
                written.append(change.backend.name)
        return written
