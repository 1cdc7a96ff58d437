"""The stored target state (spec §2.2 "setTarget"): the ``app`` and ``deviceConfig`` tables.

A target is written in ONE transaction before anything is applied, so a crash at any point
leaves either the previous target or the new one, and the reconcile loop resumes from it.
Rows use the reference's columns, so either implementation can read the other's database.
"""

from __future__ import annotations

import json
from typing import Any

from ..db import Database
from .device_config import format_config_keys
from .target import TargetApp, TargetDevice, parse_target_device, thaw

LOCAL_SOURCE = "local"
#: Config key: the sources (``'local'``, apiEndpoints) a target has been stored for, a JSON list.
RECEIVED_KEY = "targetReceivedFrom"
#: The boolean a cloud target's storing used to set beside RECEIVED_KEY; read once, folded into it.
LEGACY_CLOUD_RECEIVED_KEY = "cloudTargetReceived"


def _service_row(app: TargetApp, name: str, service: Any) -> dict[str, Any]:
    release = app.release
    assert release is not None
    return {
        **service.to_v3(),
        "appId": app.id,
        "appUuid": app.uuid,
        "releaseId": release.id,
        "commit": release.commit,
        "imageId": service.image_id,
        "serviceId": service.id,
        "serviceName": name,
    }


def _app_from_row(row: Any) -> tuple[str, dict[str, Any]]:
    """Rebuild the v3 wire form of one app row (releases only when commit and releaseId are set)."""
    app: dict[str, Any] = {"id": row["appId"], "name": row["name"] or "", "class": row["class"] or "fleet"}
    if row["isHost"]:
        app["is_host"] = True
    if row["commit"] and row["releaseId"] is not None:
        services = {}
        for svc in json.loads(row["services"] or "[]"):
            name = svc["serviceName"]
            services[name] = {key: svc[key] for key in (
                "id", "image_id", "image", "environment", "labels", "running", "contract", "composition",
            ) if key in svc}
        app["releases"] = {row["commit"]: {
            "id": row["releaseId"],
            "services": services,
            "volumes": json.loads(row["volumes"] or "{}"),
            "networks": json.loads(row["networks"] or "{}"),
        }}
    return row["uuid"], app


def _sources(raw: str | None) -> list[str]:
    try:
        value = json.loads(raw) if raw else []
    except ValueError:
        return []
    return [s for s in value if isinstance(s, str)] if isinstance(value, list) else []


def _mark_received(conn: Any, source: str) -> None:
    """Add ``source`` to RECEIVED_KEY, inside the caller's transaction."""
    row = conn.execute("SELECT value FROM config WHERE key = ?", (RECEIVED_KEY,)).fetchone()
    sources = _sources(row["value"] if row else None)
    if source not in sources:
        conn.execute(
            "INSERT INTO config (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (RECEIVED_KEY, json.dumps(sorted([*sources, source]))),
        )


class TargetStore:
    """Read and write the target state in SQLite."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def set_target(self, device: TargetDevice, source: str) -> None:
        """Store ``device`` as the target of ``source`` (``'local'`` or the apiEndpoint), and mark
        ``source`` as one a target was received from (:meth:`received`), in one transaction.

        This is how the cloud binder makes a managed device start applying: until a target of its
        apiEndpoint is stored, the state engine changes nothing on the device (issue #10 §5)."""
        config = format_config_keys(device.config)
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO config (key, value) VALUES ('name', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (device.name,),
            )
            conn.execute("UPDATE deviceConfig SET targetValues = ?", (json.dumps(config, sort_keys=True),))
            wanted = set(device.apps)
            for (uuid,) in conn.execute("SELECT uuid FROM app WHERE source = ?", (source,)).fetchall():
                if uuid not in wanted:
                    conn.execute("DELETE FROM app WHERE uuid = ?", (uuid,))
            for uuid, app in device.apps.items():
                release = app.release
                items = release.services.items() if release else ()
                services = [_service_row(app, name, svc) for name, svc in items]
                values = {
                    "appId": app.id, "uuid": uuid, "source": source, "isHost": int(app.is_host),
                    "rejected": 0, "class": app.app_class, "name": app.name,
                    "releaseId": release.id if release else None,
                    "commit": release.commit if release else None,
                    "services": json.dumps(services),
                    "networks": json.dumps(thaw(release.networks) if release else {}),
                    "volumes": json.dumps(thaw(release.volumes) if release else {}),
                }
                columns = ", ".join(f'"{c}"' for c in values)
                updates = ", ".join(f'"{c}" = excluded."{c}"' for c in values if c != "uuid")
                conn.execute(
                    f"INSERT INTO app ({columns}) VALUES ({', '.join('?' * len(values))}) "
                    f"ON CONFLICT(uuid) DO UPDATE SET {updates}",
                    tuple(values.values()),
                )
            conn.execute(
                "INSERT INTO config (key, value) VALUES ('targetStateSet', 'true') "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
            )
            _mark_received(conn, source)

    def received(self, source: str) -> bool:
        """Whether a target of ``source`` has ever been stored. A database written before the flag
        existed counts a source with app rows as received; one written while a cloud target also set
        ``cloudTargetReceived`` has it folded into the list for the cloud ``source`` (then deleted)."""
        if source != LOCAL_SOURCE:
            self._fold_legacy_flag(source)
        if source in _sources(self.db.get_config(RECEIVED_KEY)):
            return True
        return bool(self.db.query("SELECT 1 FROM app WHERE source = ? LIMIT 1", (source,)))

    def _fold_legacy_flag(self, source: str) -> None:
        if self.db.get_config(LEGACY_CLOUD_RECEIVED_KEY) is None:  # read only: this runs every round
            return
        with self.db.transaction() as conn:
            key = LEGACY_CLOUD_RECEIVED_KEY
            row = conn.execute("SELECT value FROM config WHERE key = ?", (key,)).fetchone()
            if row is None:
                return
            conn.execute("DELETE FROM config WHERE key = ?", (key,))
            if row["value"] == "true":
                _mark_received(conn, source)

    def set_target_config(self, values: dict[str, str], *, initial_saved: bool = False) -> None:
        """Store only the target config (formatted, §5.3); with ``initial_saved`` also mark the
        first-run save done (§5.4.5), in the same transaction."""
        config = format_config_keys(values)
        with self.db.transaction() as conn:
            conn.execute("UPDATE deviceConfig SET targetValues = ?", (json.dumps(config, sort_keys=True),))
            if initial_saved:
                conn.execute(
                    "INSERT INTO config (key, value) VALUES ('initialConfigSaved', 'true') "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
                )

    def get_target(self, source: str) -> TargetDevice:
        """The stored target of ``source`` (plus every non-fleet app, as the reference reads it)."""
        rows = self.db.query(
            'SELECT * FROM app WHERE source = ? OR class != \'fleet\' ORDER BY id', (source,)
        )
        name = self.db.get_config("name") or "local"
        (config_row,) = self.db.query("SELECT targetValues FROM deviceConfig LIMIT 1")
        apps = dict(_app_from_row(row) for row in rows)
        return parse_target_device(
            {"name": name, "config": json.loads(config_row["targetValues"] or "{}"), "apps": apps}
        )

    def target_config(self) -> dict[str, str]:
        (row,) = self.db.query("SELECT targetValues FROM deviceConfig LIMIT 1")
        return json.loads(row["targetValues"] or "{}")
