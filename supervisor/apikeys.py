"""API keys (spec §1.2): the global (cloud) key and per-service scoped keys, in ``apiSecret``.

Keys are 32 lowercase hex characters (a UUIDv4 without dashes), like the reference. A presented key is
compared with every stored key in constant time, so response timing tells nothing about a key's prefix.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .db import Database

GLOBAL_SCOPE: list[dict[str, Any]] = [{"type": "global"}]

# Scheme name case-insensitive; the key itself is \w+ (ASCII, like JavaScript's \w).
_AUTH_HEADER = re.compile(r"^(?i:ApiKey|Bearer) (\w+)$", re.ASCII)


class KeyNotFoundError(LookupError):
    """The key to regenerate is not a stored key."""


def generate_key() -> str:
    return uuid.uuid4().hex


def key_from_request(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
    """The presented key: the ``apikey`` query parameter (exact name), else the Authorization header."""
    key = query.get("apikey")
    if key is not None:
        return key
    match = _AUTH_HEADER.match(headers.get("Authorization", ""))
    return match.group(1) if match else None


@dataclass(frozen=True)
class KeyInfo:
    key: str
    app_id: int
    service_name: str | None
    scopes: tuple[dict[str, Any], ...]

    @property
    def is_global(self) -> bool:
        return any(scope.get("type") == "global" for scope in self.scopes)

    def allows_app(self, app_id: int) -> bool:
        """Scope check: a global scope matches everything, an app scope its own app."""
        return any(
            scope.get("type") == "global"
            or (scope.get("type") == "app" and scope.get("appId") == app_id)
            for scope in self.scopes
        )


class ApiKeys:
    """Create, look up and regenerate keys."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _rows(self) -> list[KeyInfo]:
        return [
            KeyInfo(row["key"], row["appId"], row["serviceName"], tuple(json.loads(row["scopes"])))
            for row in self.db.query("SELECT key, appId, serviceName, scopes FROM apiSecret")
        ]

    def lookup(self, presented: str) -> KeyInfo | None:
        """The stored key equal to ``presented``; every row is compared, in constant time."""
        import hmac  # here, not at start: it loads OpenSSL (4 MB), and only a request with a key needs it

        found = None
        candidate = presented.encode()
        for info in self._rows():
            if hmac.compare_digest(candidate, info.key.encode()):
                found = info
        return found

    def _ensure(self, app_id: int, service_name: str | None, scopes: list[dict[str, Any]]) -> str:
        wanted = json.dumps(scopes, separators=(",", ":"))
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT key, scopes FROM apiSecret WHERE appId = ? AND serviceName IS ?",
                (app_id, service_name),
            ).fetchone()
            if row is not None and json.loads(row["scopes"]) == scopes:
                return row["key"]
            if row is not None:  # same owner, different scopes: a new key (spec §1.2)
                conn.execute(
                    "DELETE FROM apiSecret WHERE appId = ? AND serviceName IS ?",
                    (app_id, service_name),
                )
            key = generate_key()
            conn.execute(
                "INSERT INTO apiSecret (appId, serviceName, key, scopes) VALUES (?, ?, ?, ?)",
                (app_id, service_name, key, wanted),
            )
            return key

    def global_key(self) -> str:
        """The global key, created on first use."""
        return self._ensure(0, None, GLOBAL_SCOPE)

    def scoped_key(self, app_id: int, service_name: str) -> str:
        """The key injected into a service with the supervisor-api feature."""
        return self._ensure(app_id, service_name, [{"type": "app", "appId": app_id}])

    def regenerate(self, presented: str) -> str:
        """Replace the stored key equal to ``presented`` with a new one, keeping its scopes."""
        info = self.lookup(presented)
        if info is None:
            raise KeyNotFoundError("API key not found")
        new_key = generate_key()
        with self.db.transaction() as conn:
            conn.execute("UPDATE apiSecret SET key = ? WHERE key = ?", (new_key, info.key))
        return new_key
