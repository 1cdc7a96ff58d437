"""The fake balena API's data, in SQLite so the server can be stopped and restarted mid-test.

Tables follow the real model's resource and field names (cloud-api.md §2, §6) where a device sees
them: ``application``, ``release``, ``image`` (one row per release service), ``device``,
``api_key``, ``device_tag``, ``image_install`` and one ``var`` table for every kind of
environment/config variable. The rest (``report``, ``request_log``, ``fault``, ``device_log``: every
line a log stream delivered, §5.1) is the fake's own:
what tests read back and how they inject faults.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS application (
    id INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT UNIQUE NOT NULL, app_name TEXT NOT NULL,
    is_host INTEGER NOT NULL DEFAULT 0, class TEXT NOT NULL DEFAULT 'fleet',
    device_type TEXT NOT NULL, target_release INTEGER);
CREATE TABLE IF NOT EXISTS release (
    id INTEGER PRIMARY KEY AUTOINCREMENT, application INTEGER NOT NULL, "commit" TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'success', composition TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS service (
    id INTEGER PRIMARY KEY AUTOINCREMENT, application INTEGER NOT NULL, service_name TEXT NOT NULL,
    UNIQUE (application, service_name));
CREATE TABLE IF NOT EXISTS image (
    id INTEGER PRIMARY KEY AUTOINCREMENT, release INTEGER NOT NULL, service INTEGER NOT NULL,
    location TEXT NOT NULL, content_hash TEXT, environment TEXT NOT NULL DEFAULT '{}',
    labels TEXT NOT NULL DEFAULT '{}', contract TEXT);
CREATE TABLE IF NOT EXISTS device (
    id INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT UNIQUE NOT NULL, application INTEGER NOT NULL,
    device_type TEXT NOT NULL, device_name TEXT NOT NULL, is_pinned_on__release INTEGER,
    api_heartbeat_state TEXT NOT NULL DEFAULT 'unknown', last_heartbeat REAL,
    fields TEXT NOT NULL DEFAULT '{}', state TEXT NOT NULL DEFAULT '{}', metrics_at REAL,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS api_key (
    key TEXT PRIMARY KEY, role TEXT NOT NULL, device INTEGER, application INTEGER,
    expired INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS device_tag (
    id INTEGER PRIMARY KEY AUTOINCREMENT, device INTEGER NOT NULL, tag_key TEXT NOT NULL,
    value TEXT NOT NULL, UNIQUE (device, tag_key));
CREATE TABLE IF NOT EXISTS var (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, owner TEXT NOT NULL, name TEXT NOT NULL,
    value TEXT NOT NULL, UNIQUE (kind, owner, name));
CREATE TABLE IF NOT EXISTS image_install (
    id INTEGER PRIMARY KEY AUTOINCREMENT, device INTEGER NOT NULL, image INTEGER NOT NULL,
    release INTEGER, status TEXT, download_progress REAL, install_date REAL,
    UNIQUE (device, image));
CREATE TABLE IF NOT EXISTS report (
    id INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT NOT NULL, at REAL NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS request_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, method TEXT NOT NULL, path TEXT NOT NULL,
    kind TEXT NOT NULL, status INTEGER NOT NULL, bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL,
    uuid TEXT, query TEXT);
CREATE TABLE IF NOT EXISTS device_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, uuid TEXT NOT NULL, stream INTEGER NOT NULL,
    received_at REAL NOT NULL, message TEXT NOT NULL, timestamp NOT NULL,
    is_system INTEGER NOT NULL, is_stderr INTEGER NOT NULL, service_id);
CREATE TABLE IF NOT EXISTS fault (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, method TEXT, path TEXT,
    remaining INTEGER, until REAL, status INTEGER, delay REAL, retry_after TEXT, body TEXT);
"""

#: Device types the fake knows (slug -> arch); register answers 404 for any other (§1.1).
DEVICE_TYPES = {
    "raspberrypi4-64": "aarch64",
    "raspberrypi3": "armv7hf",
    "generic-amd64": "amd64",
    "intel-nuc": "amd64",
    "qemux86-64": "amd64",
    "generic-aarch64": "aarch64",
    "jetson-nano": "aarch64",
}

_HAIKU_A = ("quiet", "misty", "bold", "green", "late", "still", "young", "red")
_HAIKU_B = ("lake", "forest", "river", "hill", "moon", "field", "sun", "leaf")


def random_key() -> str:
    """A 32-character alphanumeric key, as the server's ``randomstring.generate()`` (§0.2)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(32))


def haiku_name() -> str:
    return f"{secrets.choice(_HAIKU_A)}-{secrets.choice(_HAIKU_B)}"


class Store:
    """One connection behind one lock: the fake is small, and a single writer never sees BUSY."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction: all of it is written or none (the state PATCH is all or nothing)."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute(sql, args).fetchall()

    def one(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        rows = self.query(sql, args)
        return rows[0] if rows else None

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    # ---------------------------------------------------------------------------- admin helpers
    def create_application(
        self,
        name: str,
        device_type: str = "generic-amd64",
        *,
        app_class: str = "fleet",
        uuid: str | None = None,
        app_id: int | None = None,
    ) -> dict[str, Any]:
        app_uuid = uuid or secrets.token_hex(16)
        with self.tx() as conn:
            cur = conn.execute(
                "INSERT INTO application (id, uuid, app_name, class, device_type) VALUES (?, ?, ?, ?, ?)",
                (app_id, app_uuid, name, app_class, device_type),
            )
        return {"id": cur.lastrowid, "uuid": app_uuid}

    def create_key(
        self, role: str, *, application: int | None = None, device: int | None = None, key: str | None = None
    ) -> str:
        key = key or random_key()
        with self.tx() as conn:
            conn.execute(
                "INSERT INTO api_key (key, role, device, application) VALUES (?, ?, ?, ?)",
                (key, role, device, application),
            )
        return key

    def create_release(
        self,
        application: int,
        services: dict[str, dict[str, Any]],
        *,
        commit: str | None = None,
        status: str = "success",
        networks: dict | None = None,
        volumes: dict | None = None,
        make_target: bool = True,
    ) -> dict[str, Any]:
        """``services``: name -> {image (location[@hash]), environment?, labels?, composition?,
        contract?}. The composition stored is ``{services: {name: composition}, networks?, volumes?}``."""
        commit = commit or secrets.token_hex(16)
        composition: dict[str, Any] = {"services": {n: s.get("composition", {}) for n, s in services.items()}}
        if networks is not None:
            composition["networks"] = networks
        if volumes is not None:
            composition["volumes"] = volumes
        with self.tx() as conn:
            rel = conn.execute(
                'INSERT INTO release (application, "commit", status, composition) VALUES (?, ?, ?, ?)',
                (application, commit, status, json.dumps(composition)),
            ).lastrowid
            images = {}
            for name, svc in services.items():
                conn.execute(
                    "INSERT OR IGNORE INTO service (application, service_name) VALUES (?, ?)",
                    (application, name),
                )
                (service_id,) = conn.execute(
                    "SELECT id FROM service WHERE application = ? AND service_name = ?", (application, name)
                ).fetchone()
                location, _, digest = svc["image"].partition("@")
                images[name] = conn.execute(
                    "INSERT INTO image (release, service, location, content_hash, environment, labels, "
                    "contract) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        rel,
                        service_id,
                        location,
                        digest or None,
                        json.dumps(svc.get("environment") or {}),
                        json.dumps(svc.get("labels") or {}),
                        json.dumps(svc["contract"]) if svc.get("contract") is not None else None,
                    ),
                ).lastrowid
            if make_target and status == "success":
                conn.execute("UPDATE application SET target_release = ? WHERE id = ?", (rel, application))
        return {"id": rel, "commit": commit, "images": images}

    def log_request(
        self,
        method: str,
        path: str,
        kind: str,
        status: int,
        bytes_in: int,
        bytes_out: int,
        uuid: str | None,
        query: str = "",
    ) -> None:
        with self.tx() as conn:
            conn.execute(
                "INSERT INTO request_log (at, method, path, kind, status, bytes_in, bytes_out, uuid, query) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), method, path, kind, status, bytes_in, bytes_out, uuid, query),
            )

    def create_device(
        self,
        application: int,
        uuid: str,
        api_key: str,
        *,
        device_id: int | None = None,
        device_name: str | None = None,
        device_type: str = "generic-amd64",
    ) -> int:
        """A device as if it had registered (for tests of an already provisioned device)."""
        with self.tx() as conn:
            new_id = conn.execute(
                "INSERT INTO device (id, uuid, application, device_type, device_name, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (device_id, uuid, application, device_type, device_name or haiku_name(), time.time()),
            ).lastrowid
            conn.execute(
                "INSERT INTO api_key (key, role, device) VALUES (?, 'device-api-key', ?)", (api_key, new_id)
            )
        return new_id
