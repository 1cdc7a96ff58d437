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
