"""Where things live on a balenaOS device, relative to a root prefix.

On a device the root is ``/``. ``--root DIR`` prefixes every host path so the supervisor can run on a
dev machine or inside a test's temp directory without touching the real system.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path("/")


def _user_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "pysupervisor"


@dataclass(frozen=True)
class Paths:
    """All host paths the supervisor reads or writes."""

    root: Path
    data_dir: Path

    @classmethod
    def create(cls, root: str | os.PathLike[str] | None = None,
               data_dir: str | os.PathLike[str] | None = None) -> Paths:
        """Resolve the data directory: explicit, else under the root.

        With the default root on a machine that is not a balenaOS device (no ``/mnt/data``), the
        data goes to the user's data directory so ``python -m supervisor`` just works on a laptop.
        """
        root_path = Path(root) if root is not None else DEFAULT_ROOT
        if data_dir is not None:
            data = Path(data_dir)
        elif root is None and not (DEFAULT_ROOT / "mnt/data").is_dir():
            data = _user_data_dir()
        else:
            data = root_path / "mnt/data/resin-data/balena-supervisor"
        return cls(root=root_path.resolve(), data_dir=data.resolve())

    def host(self, path: str) -> Path:
        """A balenaOS host path (absolute, e.g. ``/tmp/x``) under the root prefix."""
        return self.root / path.lstrip("/")

    @property
    def boot(self) -> Path:
        return self.host("/mnt/boot")

    @property
    def config_json(self) -> Path:
        return self.boot / "config.json"

    @property
    def device_type_json(self) -> Path:
        return self.boot / "device-type.json"

    @property
    def os_release(self) -> Path:
        return self.host("/etc/os-release")

    @property
    def state_partition(self) -> Path:
        return self.host("/mnt/state")

    @property
    def apps_json(self) -> Path:
        return self.host("/mnt/data/apps.json")

    @property
    def runtime_dir(self) -> Path:
        """Host ``/tmp/balena-supervisor``: locks and caches that must not survive a reboot."""
        return self.host("/tmp/balena-supervisor")

    @property
    def service_locks(self) -> Path:
        return self.runtime_dir / "services"

    @property
    def vpn_status(self) -> Path:
        return self.host("/run/openvpn/vpn_status")

    @property
    def database(self) -> Path:
        return self.data_dir / "database.sqlite"
