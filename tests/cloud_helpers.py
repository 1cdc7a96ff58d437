"""Shared set-up for the cloud binder tests: a fleet in the fake API and a device root that
belongs to it (config.json as balenaOS writes it for a fresh device)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from tests.fakecloud.client import FakeCloud
from tests.fixtures.device import write_config_json

#: Every binder interval x 0.01 (supervisor/cloud/timing.py): with appUpdatePollInterval 200000 ms
#: the device polls every 2 s (+ up to 0.6 s jitter), reports at most every 0.1 s.
TIME_SCALE = "0.01"
POLL_MS = 200_000
POLL_S = POLL_MS / 1000 * float(TIME_SCALE)
DEVICE_TYPE = "generic-amd64"


def fleet(api: FakeCloud, name: str = "fleet", app_id: int | None = None) -> dict[str, Any]:
    app = api.create_application(name, DEVICE_TYPE, app_id)
    app["provisioning_key"] = api.provisioning_key(app["id"])
    return app


def fresh_device(root: Path, api: FakeCloud, app: dict[str, Any], **extra: Any) -> Path:
    """A device root with a config.json holding a provisioning key (not registered yet)."""
    (root / "mnt/boot").mkdir(parents=True, exist_ok=True)
    (root / "mnt/boot/device-type.json").write_text(json.dumps({"slug": DEVICE_TYPE, "arch": "amd64"}))
    config = {
        "apiEndpoint": api.url,
        "applicationId": app["id"],
        "apiKey": app["provisioning_key"],
        "deviceType": DEVICE_TYPE,
        "appUpdatePollInterval": POLL_MS,
        "bootstrapRetryDelay": 30000,
        **extra,
    }
    return write_config_json(root, config)


def env(**extra: str) -> dict[str, str]:
    return {"PYSUPERVISOR_CLOUD_TIME_SCALE": TIME_SCALE, **extra}


def config_json(root: Path) -> dict[str, Any]:
    return json.loads((root / "mnt/boot/config.json").read_text())


def db_config(root: Path, key: str) -> str | None:
    with sqlite3.connect(root / "mnt/data/resin-data/balena-supervisor/database.sqlite") as conn:
        row = conn.execute("SELECT value FROM config WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def set_db_config(root: Path, key: str, value: str) -> None:
    with sqlite3.connect(root / "mnt/data/resin-data/balena-supervisor/database.sqlite") as conn:
        conn.execute(
            "INSERT INTO config (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = ?",
            (key, value, value),
        )
