"""The running supervisor: builds every layer from settings and owns their start/stop order.

Layers (docs/ARCHITECTURE.md): storage (paths, config, SQLite) -> subsystems (each its own thread)
-> the API server on top. Nothing here is global, so tests can run several supervisors at once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .apikeys import ApiKeys
from .config import Config, ConfigJson
from .db import Database
from .paths import Paths
from .state.device_config import with_defaults
from .state.store import LOCAL_SOURCE, TargetStore
from .state.target import from_v2_local, thaw
from .subsystem import Subsystem

log = logging.getLogger("supervisor")

DEFAULT_BLINK_SECONDS = 15.0


@dataclass(frozen=True)
class Settings:
    """What the command line and environment decide; everything else comes from config files."""

    root: str | None = None
    data_dir: str | None = None
    port: int | None = None
    host: str = "0.0.0.0"
    led: str | None = None
    blink_seconds: float = DEFAULT_BLINK_SECONDS
    api_threads: int = 8


def default_led_spec(paths: Paths) -> str:
    """The reference reads ``LED_FILE`` (default the first kernel LED) and falls back to no LED."""
    led_file = os.environ.get("LED_FILE")
    if led_file:
        return f"file:{led_file}"
    kernel_led = paths.host("/sys/class/leds/led0/brightness")
    return f"file:{kernel_led}" if kernel_led.exists() else "none"


class Supervisor:
    """One device supervisor. Raises ``ConfigError`` (one-line message) for unusable config."""

    def __init__(self, settings: Settings) -> None:
        from hw.led import make_led

        from .api import create_app
        from .api.server import ApiServer
        from .blink import Blinker

        self.settings = settings
        self.paths = Paths.create(settings.root, settings.data_dir)
        self.config = Config(ConfigJson(self.paths.config_json), Database(self.paths.database))
        self.config.initialise()
        self.api_keys = ApiKeys(self.config.db)
        self.api_keys.global_key()
        self.targets = TargetStore(self.config.db)
        if self.config.unmanaged:
            log.info("Starting up in unmanaged mode, activating local mode")

        led = make_led(settings.led or default_led_spec(self.paths))
        self.blinker = Blinker(led, duration=settings.blink_seconds)
        self.subsystems: list[Subsystem] = [self.blinker]

        self.app = create_app(self)
        port = settings.port if settings.port is not None else self.config.listen_port
        self.server = ApiServer(self.app, settings.host, port, threads=settings.api_threads)

    # lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        for subsystem in self.subsystems:
            subsystem.start()
        self.server.start()
        log.info("Supervisor started (uuid %s, %s)", self.config.uuid,
                 "unmanaged" if self.config.unmanaged else "managed")

    def stop(self) -> None:
        """Stop accepting requests first, then the subsystems, then close storage."""
        self.server.stop()
        for subsystem in reversed(self.subsystems):
            if not subsystem.stop(timeout=1.0):
                log.warning("%s did not stop in time", subsystem.name)
        self.config.db.close()

    # what the API calls ------------------------------------------------------------------------
    def health(self) -> list[tuple[bool, str]]:
        checks = [subsystem.health() for subsystem in self.subsystems]
        checks.append((self.server.alive(), "api"))
        return checks

    def blink(self) -> None:
        self.blinker.blink()

    def regenerate_api_key(self, presented: str) -> str:
        new_key = self.api_keys.regenerate(presented)
        log.info("API key regenerated")  # never the key itself
        return new_key

    @property
    def target_source(self) -> str:
        """Whose target the engine follows: local mode's, or the cloud's (keyed by apiEndpoint)."""
        return LOCAL_SOURCE if self.config.local_mode else self.config.api_endpoint

    def set_local_target(self, body: dict) -> None:
        """POST /v2/local/target-state: validate the whole v2 body, then store it in one transaction."""
        device = from_v2_local(body, current_name=self.config.get_db("name"))
        self.targets.set_target(device, LOCAL_SOURCE)
        log.info("Local target state set (%d apps)", len(device.apps))

    def local_target_view(self) -> dict:
        """GET /v2/local/target-state: the target as the engine sees it (spec §1.4)."""
        device = self.targets.get_target(self.target_source)
        apps = {}
        for app in device.apps.values():
            release = app.release
            volumes = release.volumes.items() if release else ()
            networks = release.networks.items() if release else ()
            services = [
                {"serviceName": name, "serviceId": svc.id, "imageId": svc.image_id, "appId": app.id,
                 "appUuid": app.uuid, "releaseId": release.id, "commit": release.commit,
                 **{k: v for k, v in svc.to_v3().items() if k not in ("id", "image_id")}}
                for name, svc in (release.services.items() if release else ())
            ]
            apps[str(app.id)] = {
                "appId": app.id, "appUuid": app.uuid, "appName": app.name,
                "commit": release.commit if release else None,
                "releaseId": release.id if release else None,
                "source": self.target_source, "isHost": app.is_host,
                "services": services,
                "volumes": [{"name": n, "config": thaw(c)} for n, c in volumes],
                "networks": [{"name": n, "config": thaw(c)} for n, c in networks],
            }
        config = with_defaults(self.targets.target_config(), unmanaged=self.config.unmanaged)
        return {"local": {"name": device.name, "config": config, "apps": apps}}
