"""SQLite storage with a versioned schema (spec §12).

Table and column names are the reference's, so a database can be read by either implementation.
One connection, serialised by a lock: the supervisor writes rarely, and a single writer avoids
``database is locked`` surprises between subsystem threads. WAL with ``synchronous=FULL`` keeps
committed transactions across power loss.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Each entry moves the schema from version N to N+1; never edit one that has shipped.
MIGRATIONS: list[str] = [
    # 1: the reference's final schema (after its migration M00012)
    """
    CREATE TABLE config (key TEXT PRIMARY KEY NOT NULL, value TEXT);
    CREATE TABLE deviceConfig (targetValues TEXT NOT NULL DEFAULT '{}');
    INSERT INTO deviceConfig (targetValues) VALUES ('{}');
    CREATE TABLE app (
        id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, releaseId INTEGER, "commit" TEXT,
        appId INTEGER, services TEXT, networks TEXT, volumes TEXT, source TEXT,
        uuid TEXT UNIQUE, class TEXT DEFAULT 'fleet', isHost INTEGER DEFAULT 0,
        rejected INTEGER DEFAULT 0
    );
    CREATE TABLE image (
        id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, appId INTEGER, serviceId INTEGER,
        serviceName TEXT, imageId INTEGER, releaseId INTEGER, dockerImageId TEXT,
        appUuid TEXT, "commit" TEXT
    );
    CREATE TABLE apiSecret (
        id INTEGER PRIMARY KEY AUTOINCREMENT, appId INTEGER, key TEXT, scopes TEXT,
        serviceName TEXT, UNIQUE (appId, serviceName)
    );
    CREATE TABLE currentCommit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, appId INTEGER NOT NULL UNIQUE, "commit" TEXT NOT NULL
    );
    CREATE TABLE engineSnapshot (snapshot TEXT, timestamp TEXT);
    CREATE TABLE logsChannelSecret (backend TEXT, secret TEXT);
    """,
]


def is_disk_full(err: BaseException) -> bool:
    """A write that failed for want of space: ``ENOSPC``/``EDQUOT`` from a file write, or SQLite's
    ``SQLITE_FULL`` ("database or disk is full")."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(err, sqlite3.Error):
        return getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(err)
    return False


class DatabaseDamaged(Exception):
    """The database file cannot be used: not SQLite, truncated, or failing its integrity check."""


class Database:
    """The supervisor's SQLite database; all access is serialised through one lock.

    ``recover``: a damaged file (garbage, truncated, failing ``PRAGMA quick_check``; the case of
    balena-supervisor#2196, where the reference crash-loops) is moved aside as
    ``database.sqlite.damaged-<UTC time>`` (with its ``-wal``/``-shm``) and a new database is started;
    :attr:`recovered` then says what was found. Without it, :class:`DatabaseDamaged` is raised.
    """

    def __init__(self, path: str | Path, *, recover: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        #: (what was wrong, where the damaged file was kept) after a recovery at open, else None.
        self.recovered: tuple[str, Path] | None = None
        try:
            self._open()
        except DatabaseDamaged as err:
            if not recover:
                raise
            self.recovered = (str(err), self._set_aside())
            self._open()

    def _open(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = None
        if size is not None and size < 100:  # smaller than SQLite's header: a truncated file
            raise DatabaseDamaged(f"truncated to {size} bytes")
        self._conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30
        )
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            if size is not None:
                # Milliseconds for a supervisor's database; catches truncation past the header.
                problems = [row[0] for row in self._conn.execute("PRAGMA quick_check(3)")]
                if problems != ["ok"]:
                    raise DatabaseDamaged("; ".join(problems))
            self.migrate()
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise DatabaseDamaged(str(err)) from err
        except DatabaseDamaged:
            self._conn.close()
            raise

    def _set_aside(self) -> Path:
        """Move the damaged file (and its WAL/shm) aside, never deleting it: it may be recoverable."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                os.replace(source, f"{kept}{suffix}")
        return kept

    @property
    def schema_version(self) -> int:
        return self._conn.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        """Apply the pending migrations, each in its own transaction with its version bump."""
        with self._lock:
            version = self.schema_version
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path}: schema version {version} is newer than this supervisor "
                    f"knows ({len(MIGRATIONS)}); refusing to touch it"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                # executescript commits first, so wrap the script and the bump in one BEGIN..COMMIT
                self._conn.executescript(
                    f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
                )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; rolled back on any exception."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                # SQLITE_FULL (a full disk) may have rolled the transaction back already, and a failed
                # COMMIT leaves it open: end it either way, so the next transaction can begin.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: tuple[Any, ...] | Mapping[str, Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # the config table ------------------------------------------------------------------------
    def get_config(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM config WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def set_config(self, values: Mapping[str, str | None]) -> None:
        """Upsert (None deletes) in one transaction; unchanged values are not rewritten."""
        with self.transaction() as conn:
            for key, value in values.items():
                row = conn.execute("SELECT value FROM config WHERE key = ?", (key,)).fetchone()
                if value is None:
                    if row is not None:
                        conn.execute("DELETE FROM config WHERE key = ?", (key,))
                elif row is None:
                    conn.execute("INSERT INTO config (key, value) VALUES (?, ?)", (key, value))
                elif row["value"] != value:
                    conn.execute("UPDATE config SET value = ? WHERE key = ?", (value, key))
