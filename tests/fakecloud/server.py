"""A faithful fake of the balena API's device-facing routes (cloud-api.md), over the SQLite store.

Real routes answer as the real server does: status codes, error body shapes per route (§0.3),
weak ETags and 304s (§2.5), the all-or-nothing state PATCH (§3), tags (§4), OData (§6), registry
tokens (§7), ``/ping`` and ``/connectivity-check`` (§12). Paths under ``/_fake/`` are the fake's
own control routes for tests (the real server 404s them): create apps, releases, keys and
variables, inject faults, read what devices sent.

Fault injection (``POST /_fake/faults``): ``kind`` is ``reset`` (close the connection without an
answer), ``slow`` (``delay`` seconds, then answer normally), ``status`` (answer ``status`` with
``body``), ``429`` (``Retry-After: retry_after``, body ``"Too Many Requests"`` as §0.6) or
``malformed`` (200 with a truncated JSON body); limited to ``method``/``path`` (a regex), for
``count`` requests or until ``until`` (epoch seconds). Revoking a key (``POST /_fake/keys/revoke``)
expires it, which the real server treats exactly like no key. The log stream (§5.1) has a module of
its own (``logstream.py``): it reads its body as it arrives instead of whole.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import socket
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import odata
from .state import (
    IMAGE_INSTALL_STATUSES,
    METRIC_FIELDS,
    UPDATE_STATUSES,
    FieldTooLong,
    SchemaError,
    build_state,
    is_fresh,
    normalise_device_fields,
    parse_report_device,
    to_json_bytes,
    weak_etag,
)
from .store import DEVICE_TYPES, Store, haiku_name, random_key

BODY_LIMIT = 512 * 1024  # body-parser's '512kb' (§0.4)
_UUID_RE = re.compile(r"^[a-f0-9]{32}([a-f0-9]{30})?$")
_JSON_TYPE = re.compile(r"^application/(json|[^;]*\+json|csp-report)\s*(;|$)", re.I)
_TAG_KEY_BAD = re.compile(r"\s|^io\.(resin|balena)\.")
_CONFIG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_:]*$")
_LOG_STREAM = re.compile(r"/device/v2/[^/]+/log-stream/?", re.I)


class Reply(Exception):  # noqa: N818 - control flow, not an error
    """Answer now with ``status``, ``body`` (bytes) and headers."""

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status)
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers or {}


def empty(status: int) -> Reply:
    return Reply(status)


def json_reply(status: int, value: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, to_json_bytes(value), "application/json; charset=utf-8", headers)


def text_reply(status: int, text: str) -> Reply:
    """``res.send(<string>)``: HTML-escaped text/html."""
    return Reply(status, html.escape(text, quote=False).encode(), "text/html; charset=utf-8")


API_KEY_REQUIRED = json_reply(401, {"error": "API key required"})


def _html_error(status: int, message: str) -> Reply:
    """Express's default error page (body-parser errors, §0.3)."""
    page = (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Error</title>\n'
        f"</head>\n<body>\n<pre>{html.escape(message)}</pre>\n</body>\n</html>\n"
    )
    return Reply(status, page.encode(), "text/html; charset=utf-8")


class Request:
    """One parsed request; ``body`` is the JSON body (``{}`` unless the type is JSON, §0.4)."""

    def __init__(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        # The request line as sent: http.server collapses a leading "//", which the real server 404s.
        target = handler.requestline.split(" ")[1] if handler.requestline.count(" ") >= 2 else handler.path
        raw_path, _, query = target.partition("?")  # not urlsplit: "//x" is not a host here
        self.method = handler.command
        self.raw_path = raw_path
        self.path = unquote(raw_path)
        self.url = target
        self.query = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        self.headers = handler.headers
        self.raw = raw
        self.is_json = bool(_JSON_TYPE.match(handler.headers.get("Content-Type", "")))
        self.kind = "other"  # the route's name, for the request log
        self.uuid: str | None = None  # the device the request is about, for the request log

    def json(self) -> Any:
        if not self.is_json or not self.raw:
            return {}
        try:
            value = json.loads(self.raw)
        except ValueError:
            raise _html_error(400, "SyntaxError: Unexpected token in JSON") from None
        if not isinstance(value, dict | list):  # strict mode: an object or an array only
            raise _html_error(400, "SyntaxError: strict mode")
        return value


class FakeApi:
    """The routes; one instance per server process."""

    def __init__(
        self, store: Store, *, metrics_throttle_s: float = 60.0, log_unknown_delay_s: float = 55.0
    ) -> None:
        from .logstream import LogStreams

        self.store = store
        self.metrics_throttle_s = metrics_throttle_s
        self.log_streams = LogStreams(self, log_unknown_delay_s)
        self.routes: list[tuple[str, re.Pattern[str], str, Callable[..., None]]] = []
        for method, pattern, kind, fn in (
            ("GET", r"/ping", "ping", self.ping),
            ("*", r"/connectivity-check", "connectivity", self.connectivity),
            ("POST", r"/device/register", "register", self.register),
            ("POST", r"/api-key/device/([^/]+)/device-key", "key_exchange", self.device_key),
            ("GET", r"/device/v3/([^/]+)/state", "state_get", self.state_get),
            ("PATCH", r"/device/v3/state", "state_patch", self.state_patch),
            ("PATCH", r"/device/v3/tags", "tags_patch", self.tags_patch),
            ("GET", r"/auth/v1/token", "token", self.token),
            ("POST", r"/device/v2/([^/]+)/log-stream", "log_stream", self.log_stream_refused),
            ("*", r"/v[67]/.*", "odata", self.odata),
        ):
            self.routes.append((method, re.compile(f"{pattern}/?", re.I), kind, fn))

    # ------------------------------------------------------------------------------ credentials
    def _key_row(self, key: str | None) -> Any:
        if not key:
            return None
        return self.store.one("SELECT * FROM api_key WHERE key = ? AND expired = 0", (key,))

    def caller(self, req: Request) -> Any:
        """§0.2: ``apikey`` query parameter, then ``Authorization: Bearer <key>`` (two words)."""
        row = self._key_row(req.query.get("apikey"))
        if row is not None:
            return row
        parts = req.headers.get("Authorization", "").split(" ")
        if len(parts) == 2 and parts[0].lower() == "bearer":
            return self._key_row(parts[1])
        return None

    def _device(self, uuid: str) -> Any:
        return self.store.one("SELECT * FROM device WHERE uuid = ?", (uuid,))

    @staticmethod
    def _sees_device(caller: Any, device: Any) -> bool:
        if caller["role"] == "user":
            return True
        return caller["role"] == "device-api-key" and caller["device"] == device["id"]

    # ------------------------------------------------------------------------------ misc routes
    def ping(self, req: Request) -> None:
        raise Reply(200, b"OK", "text/plain; charset=utf-8")

    def connectivity(self, req: Request) -> None:
        raise empty(204)

    # ------------------------------------------------------------------------------ provisioning
    def register(self, req: Request) -> None:
        """§1.1: checks in the order user -> application -> device_type -> uuid -> duplicates."""
        caller = self.caller(req)
        if caller is None:
            raise API_KEY_REQUIRED
        body = req.json()
        if not isinstance(body, dict):
            raise empty(400)
        for field, kinds in (
            ("user", (int, str)),
            ("application", (int, str)),
            ("device_type", (str,)),
            ("uuid", (str,)),
            ("api_key", (str,)),
            ("supervisor_version", (str,)),
            ("os_version", (str,)),
            ("os_variant", (str,)),
            ("mac_address", (str,)),
        ):
            value = body.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
                raise empty(400)  # zod
        user = body.get("user")
        if user is not None and not re.fullmatch(r"\d+", str(user)):
            raise json_reply(400, "User ID must be a valid integer")
        app = body.get("application")
        if app is None or not re.fullmatch(r"\d+", str(app)):
            raise json_reply(400, "Application ID must be a valid integer")
        device_type = body.get("device_type")
        if not device_type:
            raise json_reply(400, "Device type must be specified")
        if device_type not in DEVICE_TYPES:
            raise json_reply(404, f"Unknown device type {device_type}")
        uuid = body.get("uuid")
        if uuid is None:
            raise json_reply(400, "UUID must be specified")
        if uuid == "":
            uuid = secrets.token_hex(16)  # an empty uuid: the server generates one
        if self._device(uuid) is not None:
            raise text_reply(409, '"uuid" must be unique.')
        api_key = body.get("api_key") or random_key()
        if self._key_row(api_key) is not None or self.store.one(
            "SELECT 1 FROM api_key WHERE key = ?", (api_key,)
        ):
            raise json_reply(409, '"key" must be unique.')
        application = self.store.one("SELECT * FROM application WHERE id = ?", (int(app),))
        if (
            application is None
            or caller["role"] not in ("user", "provisioning-api-key")
            or (caller["role"] == "provisioning-api-key" and caller["application"] != application["id"])
        ):
            raise empty(401)  # device.create not permitted (§1.1)
        if not _UUID_RE.match(uuid):
            raise json_reply(400, "Device UUID must be a 32 or 62 character long lower case hex string.")
        fields = {k: body[k] for k in ("supervisor_version", "os_version", "mac_address") if body.get(k)}
        if body.get("os_variant") in ("dev", "prod"):
            fields["os_variant"] = body["os_variant"]
        with self.store.tx() as conn:
            device_id = conn.execute(
                "INSERT INTO device (uuid, application, device_type, device_name, fields, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (uuid, application["id"], device_type, haiku_name(), json.dumps(fields), time.time()),
            ).lastrowid
            conn.execute(
                "INSERT INTO api_key (key, role, device) VALUES (?, 'device-api-key', ?)",
                (api_key, device_id),
            )
        raise json_reply(201, {"id": device_id, "uuid": uuid, "api_key": api_key})

    def device_key(self, req: Request, raw_id: str) -> None:
        """§1.2: only a user may create a key for a device on open-balena."""
        match = re.match(r"\s*[+-]?\d+", raw_id)
        if match is None:
            raise text_reply(400, "Device id must be a number")
        body = req.json()
        if not isinstance(body, dict):
            raise empty(400)
        for field in ("apiKey", "name", "description", "expiryDate"):
            if body.get(field) is not None and not isinstance(body[field], str):
                raise empty(400)
        caller = self.caller(req)
        if caller is None or caller["role"] == "provisioning-api-key":
            raise empty(401)  # no device read permission at all
        device = self.store.one("SELECT * FROM device WHERE id = ?", (int(match[0]),))
        if device is None or not self._sees_device(caller, device):
            raise text_reply(500, "No device found to associate with the api key")
        if caller["role"] != "user":
            raise empty(401)  # create-device-api-key not permitted
        key = body.get("apiKey") or random_key()
        if self.store.one("SELECT 1 FROM api_key WHERE key = ?", (key,)):
            raise json_reply(409, '"key" must be unique.')
        self.store.create_key("device-api-key", device=device["id"], key=key)
        raise json_reply(200, key)

    def log_stream_refused(self, req: Request, uuid: str) -> None:
        """Only reached when the handler did not stream (it always does): the checks alone."""
        self.log_streams.check(req, uuid)
        raise empty(400)

    # ------------------------------------------------------------------------------ target state
    def state_get(self, req: Request, uuid: str) -> None:
        req.uuid = uuid
        device = self._device(uuid)
        if device is None:
            raise empty(304)  # unknown device: 304 without an ETag (§2.1)
        caller = self.caller(req)
        if caller is None or not self._sees_device(caller, device):
            raise empty(401)
        with self.store.tx() as conn:
            body = to_json_bytes(build_state(conn, device))
            if caller["role"] == "device-api-key":  # the heartbeat (§10), 304s included
                conn.execute(
                    "UPDATE device SET api_heartbeat_state = 'online', last_heartbeat = ? WHERE id = ?",
                    (time.time(), device["id"]),
                )
        etag = weak_etag(body)
        if is_fresh(req.headers.get("If-None-Match"), req.headers.get("Cache-Control"), etag):
            raise Reply(304, b"", None, {"ETag": etag})
        raise Reply(200, body, "application/json; charset=utf-8", {"ETag": etag})

    def _listed_devices(self, req: Request, body: Any) -> list[Any]:
        """Step 1 of the PATCH routes: the body's uuids whose values are objects; 401 when none
        or any is unknown (§3.1)."""
        uuids = [k for k, v in body.items() if isinstance(v, dict)] if isinstance(body, dict) else []
        if not uuids:
            raise empty(401)
        devices = [self._device(u) for u in uuids]
        req.uuid = uuids[0]
        if any(d is None for d in devices):
            raise empty(401)
        return devices

    def state_patch(self, req: Request) -> None:
        body = req.json()
        devices = self._listed_devices(req, body)
        caller = self.caller(req)
        if caller is None:
            raise API_KEY_REQUIRED
        try:
            if not isinstance(body, dict):
                raise SchemaError
            parsed = {k: parse_report_device(v) for k, v in body.items()}
        except SchemaError:
            raise empty(400) from None
        if all(not v for v in parsed.values()):
            raise empty(200)  # nothing to write: no checks, no write
        if not all(self._sees_device(caller, d) for d in devices):
            raise empty(401)
        with self.store.tx() as conn:
            for device in devices:
                report = parsed[device["uuid"]]
                self._verify_apps(conn, device, report.get("apps") or {})
                try:
                    self._write_report(conn, device, report)
                except FieldTooLong as exc:
                    raise json_reply(400, str(exc)) from None
        raise empty(200)

    def _verify_apps(self, conn: Any, device: Any, apps: dict[str, Any]) -> None:
        """§3.5: every reported release is a successful release of that app, and the reported
        images map one-to-one onto images of those releases; any miss is a 401."""
        for app_uuid, app in apps.items():
            application = conn.execute("SELECT * FROM application WHERE uuid = ?", (app_uuid,)).fetchone()
            if application is None or application["id"] != device["application"]:
                raise empty(401)
            commits = set(app.get("releases") or {})
            if "release_uuid" in app:
                commits.add(app["release_uuid"])
            release_ids = []
            for commit in commits:
                row = conn.execute(
                    "SELECT id FROM release WHERE application = ? AND \"commit\" = ? AND status = 'success'",
                    (application["id"], commit),
                ).fetchone()
                if row is None:
                    raise empty(401)
                release_ids.append(row["id"])
            reported = [
                svc["image"]
                for rel in (app.get("releases") or {}).values()
                for svc in (rel.get("services") or {}).values()
            ]
            if not reported:
                continue
            marks = ",".join("?" * len(release_ids))
            images = conn.execute(f"SELECT * FROM image WHERE release IN ({marks})", release_ids).fetchall()
            matched = set()
            for image in reported:
                location, _, digest = image.partition("@")
                for row in images:
                    if row["location"].lower() == location.lower() and (row["content_hash"] or "") == digest:
                        matched.add((image, row["id"]))
            if len(matched) != len(reported):
                raise empty(401)

    def _write_report(self, conn: Any, device: Any, report: dict[str, Any]) -> None:
        now = time.time()
        fields = normalise_device_fields({k: v for k, v in report.items() if k != "apps"})
        metrics = {k: fields.pop(k) for k in METRIC_FIELDS if k in fields}
        stored = json.loads(device["fields"])
        if metrics and (device["metrics_at"] is None or now - device["metrics_at"] > self.metrics_throttle_s):
            stored.update(metrics)
            conn.execute("UPDATE device SET metrics_at = ? WHERE id = ?", (now, device["id"]))
        stored.update(fields)
        apps = report.get("apps")
        if apps is not None:
            own = next((a for u, a in apps.items()), None)
            if own is not None:
                running = own.get("release_uuid")
                if running is not None:
                    stored["is_running__release"] = running
                statuses = [
                    r["update_status"] for r in (own.get("releases") or {}).values() if "update_status" in r
                ]
                if statuses:
                    stored["update_status"] = min(statuses, key=UPDATE_STATUSES.index)
            self._image_installs(conn, device, apps, now)
        state = json.loads(device["state"])
        state.update(report)  # what the device has told so far (its reports are shallow diffs)
        conn.execute(
            "UPDATE device SET fields = ?, state = ? WHERE id = ?",
            (json.dumps(stored), json.dumps(state), device["id"]),
        )
        conn.execute(
            "INSERT INTO report (uuid, at, body) VALUES (?, ?, ?)", (device["uuid"], now, json.dumps(report))
        )

    def _image_installs(self, conn: Any, device: Any, apps: dict[str, Any], now: float) -> None:
        seen = set()
        for app in apps.values():
            for commit, rel in (app.get("releases") or {}).items():
                release = conn.execute('SELECT id FROM release WHERE "commit" = ?', (commit,)).fetchone()
                for svc in (rel.get("services") or {}).values():
                    location, _, digest = svc["image"].partition("@")
                    image = conn.execute(
                        "SELECT id FROM image WHERE lower(location) = ? AND coalesce(content_hash, '') = ? "
                        "AND release = ?",
                        (location.lower(), digest, release["id"]),
                    ).fetchone()
                    if image is None:
                        continue
                    seen.add(image["id"])
                    status = svc.get("status") if svc.get("status") in IMAGE_INSTALL_STATUSES else None
                    conn.execute(
                        "INSERT INTO image_install (device, image, release, status, download_progress, "
                        "install_date) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device, image) DO UPDATE SET "
                        "release = excluded.release, status = coalesce(excluded.status, status), "
                        "download_progress = excluded.download_progress",
                        (device["id"], image["id"], release["id"], status, svc.get("download_progress"), now),
                    )
        rows = conn.execute(
            "SELECT id, image FROM image_install WHERE device = ?", (device["id"],)
        ).fetchall()
        for row in rows:
            if row["image"] not in seen:
                conn.execute(
                    "UPDATE image_install SET status = 'deleted', download_progress = NULL WHERE id = ?",
                    (row["id"],),
                )

    # ------------------------------------------------------------------------------ tags
    def tags_patch(self, req: Request) -> None:
        body = req.json()
        devices = self._listed_devices(req, body)
        caller = self.caller(req)
        if caller is None:
            raise API_KEY_REQUIRED
        for tags in body.values():
            if not isinstance(tags, dict):
                raise empty(400)
            for key, value in tags.items():
                if not isinstance(value, str) or _TAG_KEY_BAD.search(key):
                    raise empty(400)
        if all(not body[d["uuid"]] for d in devices):
            raise json_reply(400, "No tags were sent to be updated.")
        if not all(self._sees_device(caller, d) for d in devices):
            raise empty(401)
        with self.store.tx() as conn:
            for device in devices:
                for key, value in body[device["uuid"]].items():
                    if not 0 < len(key) <= 100:
                        raise json_reply(
                            400,
                            "It is necessary that each device tag has a tag key that has a "
                            "Length (Type) that is greater than 0 and is less than or equal to 100.",
                        )
                    if len(value) > 10000:
                        raise json_reply(
                            400,
                            "It is necessary that each device tag has a value that has a "
                            "Length (Type) that is less than or equal to 10000.",
                        )
                    conn.execute(
                        "INSERT INTO device_tag (device, tag_key, value) VALUES (?, ?, ?) "
                        "ON CONFLICT (device, tag_key) DO UPDATE SET value = excluded.value",
                        (device["id"], key, value),
                    )
        raise empty(200)

    # ------------------------------------------------------------------------------ registry token
    def token(self, req: Request) -> None:
        """§7: basic auth ``d_<uuid>``:key; 401 only for credentials given but unknown."""
        import base64

        auth = req.headers.get("Authorization", "")
        subject = ""
        access = []
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                raise empty(401) from None
            row = self._key_row(password)
            if row is None:
                raise empty(401)
            if user.startswith("d_") and row["role"] == "device-api-key":
                device = self._device(user[2:])
                if device is not None and device["id"] == row["device"]:
                    subject = user
        scopes = parse_qs(urlsplit(req.url).query).get("scope", [])
        for scope in scopes:
            match = re.fullmatch(
                r"repository:([^:@]+)(?::[a-z0-9]+|@sha256:[a-f0-9]+)?:((?:push|pull)(?:,(?:push|pull))*)",
                scope,
            )
            if match:
                access.append(
                    {
                        "type": "repository",
                        "name": match[1],
                        "actions": ["pull"] if "pull" in match[2] else [],
                    }
                )
        payload = base64.urlsafe_b64encode(to_json_bytes({"sub": subject, "access": access})).decode()
        raise json_reply(200, {"token": f"e30.{payload.rstrip('=')}.fake"})

    # ------------------------------------------------------------------------------ OData
    def _rows(self, resource: str, caller: Any) -> list[dict[str, Any]] | None:
        """Rows of ``resource`` visible to ``caller``; None when it has no permission at all."""
        if caller is None or caller["role"] == "provisioning-api-key":
            return None
        user = caller["role"] == "user"
        own = caller["device"]
        own_app = None
        if not user:
            row = self.store.one("SELECT application FROM device WHERE id = ?", (own,))
            own_app = row["application"] if row else None
        if resource == "device":
            rows = self.store.query(
                "SELECT * FROM device" + ("" if user else " WHERE id = ?"), () if user else (own,)
            )
            out = []
            for r in rows:
                fields = json.loads(r["fields"])
                running = fields.pop("is_running__release", None)
                rel = (
                    self.store.one('SELECT id FROM release WHERE "commit" = ?', (running,))
                    if running
                    else None
                )
                out.append(
                    {
                        "id": r["id"],
                        "uuid": r["uuid"],
                        "device_name": r["device_name"],
                        "belongs_to__application": {"__id": r["application"]},
                        "is_pinned_on__release": None
                        if r["is_pinned_on__release"] is None
                        else {"__id": r["is_pinned_on__release"]},
                        "is_running__release": {"__id": rel["id"]} if rel else None,
                        "api_heartbeat_state": r["api_heartbeat_state"],
                        "device_type": r["device_type"],
                        **fields,
                    }
                )
            return out
        if resource == "device_tag":
            rows = self.store.query(
                "SELECT * FROM device_tag" + ("" if user else " WHERE device = ?"), () if user else (own,)
            )
            return [
                {"id": r["id"], "device": {"__id": r["device"]}, "tag_key": r["tag_key"], "value": r["value"]}
                for r in rows
            ]
        if resource == "device_config_variable":
            rows = self.store.query(
                "SELECT * FROM var WHERE kind = 'device_config'" + ("" if user else " AND owner = ?"),
                () if user else (str(own),),
            )
            return [
                {"id": r["id"], "device": {"__id": int(r["owner"])}, "name": r["name"], "value": r["value"]}
                for r in rows
            ]
        if resource == "release":
            rows = self.store.query(
                "SELECT * FROM release" + ("" if user else " WHERE application = ?"),
                () if user else (own_app,),
            )
            return [
                {
                    "id": r["id"],
                    "commit": r["commit"],
                    "status": r["status"],
                    "belongs_to__application": {"__id": r["application"]},
                }
                for r in rows
            ]
        if resource == "application":
            rows = self.store.query(
                "SELECT * FROM application" + ("" if user else " WHERE id = ?"), () if user else (own_app,)
            )
            return [
                {
                    "id": r["id"],
                    "uuid": r["uuid"],
                    "app_name": r["app_name"],
                    "is_host": bool(r["is_host"]),
                    "is_of__class": r["class"],
                }
                for r in rows
            ]
        return None

    def _related(self, caller: Any) -> Callable[[str, dict[str, Any]], list[dict[str, Any]] | None]:
        def related(field: str, row: dict[str, Any]) -> list[dict[str, Any]] | None:
            targets = {
                "belongs_to__application": "application",
                "is_pinned_on__release": "release",
                "is_running__release": "release",
                "device": "device",
            }
            if field in targets:
                ref = row.get(field)
                rows = self._rows(targets[field], caller) or []
                return [r for r in rows if ref is not None and r["id"] == ref.get("__id")]
            if field == "device_tag" and "uuid" in row:
                return [r for r in self._rows("device_tag", caller) or [] if r["device"]["__id"] == row["id"]]
            return None

        return related

    def odata(self, req: Request) -> None:
        try:
            resource, key = odata.parse_resource_path(req.path)
        except odata.Malformed:
            raise json_reply(400, f"Malformed url: '{req.url}'") from None
        caller = self.caller(req)
        if req.method == "GET":
            rows = self._rows(resource, caller)
            if rows is None:
                raise empty(401)
            try:
                result = odata.evaluate(rows, key, req.query, self._related(caller))
            except odata.Malformed:
                raise json_reply(400, f"Malformed url: '{req.url}'") from None
            raise json_reply(200, {"d": result}, {"Cache-Control": "no-cache"})
        body = req.json()
        if req.method == "POST" and resource == "device_config_variable" and key is None:
            self._create_config_var(caller, body)
        if req.method == "POST" and resource == "device_tag" and key is None:
            self._create_tag(caller, body)
        if req.method == "PATCH" and resource == "device" and isinstance(key, int):
            self._patch_device(caller, key, body)
        raise empty(401)

    def _own_device_id(self, caller: Any, body: Any) -> int:
        if caller is None or caller["role"] not in ("device-api-key", "user") or not isinstance(body, dict):
            raise empty(401)
        device = body.get("device")
        if isinstance(device, dict):
            device = device.get("__id")
        if not isinstance(device, int) or isinstance(device, bool):
            raise json_reply(400, '"device" cannot be null')
        if caller["role"] == "device-api-key" and caller["device"] != device:
            raise empty(401)
        return device

    def _create_config_var(self, caller: Any, body: Any) -> None:
        """§6.5: name and value rules, 409 on a duplicate, 201 with the created row."""
        device = self._own_device_id(caller, body)
        name, value = body.get("name"), body.get("value")
        if not isinstance(name, str) or not isinstance(value, str):
            raise json_reply(
                400, '"name" cannot be null' if not isinstance(name, str) else '"value" cannot be null'
            )
        if not _CONFIG_NAME.match(name):
            raise json_reply(
                400,
                "Configuration variable names can only contain alphanumeric characters, "
                "underscores or a colon",
            )
        if name in ("RESIN", "BALENA", "USER"):
            raise json_reply(400, "Configuration variables RESIN, BALENA, USER are reserved")
        if not name.startswith(("RESIN_", "BALENA_")):
            raise json_reply(
                400,
                "Configuration variables must be part of one of the following namespaces: RESIN_, BALENA_",
            )
        if "\r" in value or "\n" in value:
            raise json_reply(400, "Variable values cannot contain line break characters")
        if len(value) > 100_000:
            raise json_reply(
                400,
                "It is necessary that each device config variable has a value that has a "
                "Length (Type) that is less than or equal to 100000.",
            )
        if self.store.one(
            "SELECT 1 FROM var WHERE kind = 'device_config' AND owner = ? AND name = ?", (str(device), name)
        ):
            raise json_reply(409, '"device" and "name" must be unique.')
        with self.store.tx() as conn:
            var_id = conn.execute(
                "INSERT INTO var (kind, owner, name, value) VALUES ('device_config', ?, ?, ?)",
                (str(device), name, value),
            ).lastrowid
        raise json_reply(
            201,
            {"id": var_id, "device": {"__id": device}, "name": name, "value": value},
            {"Location": f"/v7/device_config_variable({var_id})"},
        )

    def _create_tag(self, caller: Any, body: Any) -> None:
        device = self._own_device_id(caller, body)
        key, value = body.get("tag_key"), body.get("value")
        if not isinstance(key, str) or not isinstance(value, str):
            raise json_reply(400, '"tag_key" cannot be null')
        if self.store.one("SELECT 1 FROM device_tag WHERE device = ? AND tag_key = ?", (device, key)):
            raise json_reply(409, '"device" and "tag_key" must be unique.')
        with self.store.tx() as conn:
            tag_id = conn.execute(
                "INSERT INTO device_tag (device, tag_key, value) VALUES (?, ?, ?)", (device, key, value)
            ).lastrowid
        raise json_reply(201, {"id": tag_id, "device": {"__id": device}, "tag_key": key, "value": value})

    def _patch_device(self, caller: Any, device_id: int, body: Any) -> None:
        """§6.4: a device key patches its own device (another id: 200, nothing changes)."""
        if caller is None or caller["role"] not in ("device-api-key", "user"):
            raise empty(401)
        if not isinstance(body, dict) or not body:
            raise json_reply(400, "No fields to update")
        if caller["role"] == "device-api-key" and caller["device"] != device_id:
            raise empty(200)
        device = self.store.one("SELECT * FROM device WHERE id = ?", (device_id,))
        if device is None:
            raise empty(200)
        updates: dict[str, Any] = {}
        if "device_name" in body:
            name = body["device_name"]
            if not isinstance(name, str):
                raise json_reply(400, f'"device_name" is not a string: {json.dumps(name)}')
            if "\r" in name or "\n" in name:
                raise json_reply(400, "Device name cannot contain any newline characters.")
            if len(name) > 255:
                raise json_reply(400, f'"device_name" longer than 255 characters ({len(name)})')
            updates["device_name"] = name
        if "is_pinned_on__release" in body:
            rel_id = body["is_pinned_on__release"]
            release = self.store.one("SELECT * FROM release WHERE id = ?", (rel_id,)) if rel_id else None
            if rel_id is not None and (
                release is None
                or release["status"] != "success"
                or release["application"] != device["application"]
            ):
                raise json_reply(
                    400,
                    "It is necessary that each release that is pinned to a device, has a status "
                    'that is equal to "success" and belongs to an application1 that the device '
                    "belongs to.",
                )
            updates["is_pinned_on__release"] = rel_id
        if updates:
            with self.store.tx() as conn:
                sets = ", ".join(f"{k} = ?" for k in updates)
                conn.execute(f"UPDATE device SET {sets} WHERE id = ?", (*updates.values(), device_id))
        raise empty(200)

    # ------------------------------------------------------------------------------ dispatch
    def _route(self, req: Request) -> tuple[Callable[..., None], tuple[str, ...]] | None:
        if "//" in req.raw_path:
            return None
        for method, pattern, kind, fn in self.routes:
            match = pattern.fullmatch(req.path)
            if match and (method in ("*", req.method)):
                req.kind = kind
                return fn, match.groups()
        return None

    def classify(self, req: Request) -> None:
        """Name the request's route for the log (faults answer before dispatch)."""
        self._route(req)
        if req.kind in ("state_get", "log_stream"):
            req.uuid = req.path.split("/")[3]

    def dispatch(self, req: Request) -> None:
        """Run the route; it always ends by raising :class:`Reply`."""
        route = self._route(req)
        if route is not None:
            fn, groups = route
            fn(req, *groups)
        raise empty(404)


def _fault(store: Store, method: str, path: str) -> Any:
    """The first active fault for this request (and count it down)."""
    now = time.time()
    with store.tx() as conn:
        for row in conn.execute("SELECT * FROM fault ORDER BY id").fetchall():
            if row["until"] is not None and now > row["until"]:
                conn.execute("DELETE FROM fault WHERE id = ?", (row["id"],))
                continue
            if row["method"] and row["method"].upper() != method:
                continue
            if row["path"] and not re.search(row["path"], path):
                continue
            if row["remaining"] is not None:
                if row["remaining"] <= 1:
                    conn.execute("DELETE FROM fault WHERE id = ?", (row["id"],))
                else:
                    conn.execute("UPDATE fault SET remaining = remaining - 1 WHERE id = ?", (row["id"],))
            return row
    return None


def make_handler(api: FakeApi, admin: Callable[[Request], None]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args: Any) -> None:
            pass

        def _read_body(self) -> bytes | None:
            """The body; None (and the rest discarded) when over the limit."""
            length = int(self.headers.get("Content-Length") or 0)
            if length > BODY_LIMIT:
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 65536))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                return None
            return self.rfile.read(length) if length else b""

        def _handle(self) -> None:
            if self.command == "POST" and _LOG_STREAM.fullmatch(self.path.partition("?")[0]):
                self._log_stream()
                return
            raw = self._read_body()
            req = Request(self, raw or b"")
            reply: Reply
            try:
                if req.path.startswith("/_fake/"):
                    admin(req)
                    raise empty(404)
                api.classify(req)
                fault = _fault(api.store, req.method, req.path)
                if fault is not None:
                    if fault["kind"] == "reset":
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if fault["kind"] == "slow":
                        time.sleep(fault["delay"] or 0)
                    elif fault["kind"] == "429":
                        raise json_reply(
                            429, "Too Many Requests", {"Retry-After": str(fault["retry_after"] or 1)}
                        )
                    elif fault["kind"] == "status":
                        raise Reply(
                            fault["status"] or 500,
                            (fault["body"] or "").encode(),
                            "application/json; charset=utf-8" if fault["body"] else None,
                        )
                    elif fault["kind"] == "malformed":
                        raise Reply(
                            200,
                            b'{"truncated": [',
                            "application/json; charset=utf-8",
                            {"ETag": 'W/"f-malformed"'},
                        )
                if raw is None and req.is_json:
                    raise _html_error(413, "PayloadTooLargeError: request entity too large")
                api.dispatch(req)
                reply = empty(404)
            except Reply as answer:
                reply = answer
            except Exception as exc:  # a bug in the fake: a 500 that says so
                reply = json_reply(500, f"fake server error: {exc!r}")
            # Logged before the answer goes out: a client holding the answer finds the request in
            # the log (logged after, a test's read raced the log: the class of issue #10 §1).
            if not req.path.startswith("/_fake/"):
                api.store.log_request(
                    req.method,
                    req.path,
                    req.kind,
                    reply.status,
                    len(raw or b""),
                    len(reply.body),
                    req.uuid,
                    req.url.partition("?")[2],
                )
            self._send(reply)

        def _log_stream(self) -> None:
            """§5.1: checks, then the body read (and stored) as it arrives; see logstream.py."""
            req = Request(self, b"")
            api.classify(req)
            uuid = req.uuid or ""
            status, bytes_in = 0, 0
            try:
                fault = _fault(api.store, req.method, req.path)
                if fault is not None and fault["kind"] == "reset":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault is not None and fault["kind"] == "slow":
                    time.sleep(fault["delay"] or 0)
                if fault is not None and fault["kind"] in ("status", "429"):
                    is_429 = fault["kind"] == "429"
                    retry = {"Retry-After": str(fault["retry_after"] or 1)} if is_429 else None
                    raise Reply(
                        fault["status"] or 429,
                        (fault["body"] or "").encode(),
                        "application/json; charset=utf-8" if fault["body"] else None,
                        retry,
                    )
                api.log_streams.check(req, uuid)
                status, bytes_in = api.log_streams.receive(self, req, uuid, fault)
            except Reply as answer:  # refused before the body: answer at once and drop the connection
                status = answer.status
                self.close_connection = True
                answer.headers["Connection"] = "close"
                self._send(answer)
            finally:
                api.store.log_request(req.method, req.path, req.kind, status, bytes_in, 0, uuid)

        def _send(self, reply: Reply) -> None:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.content_type and reply.status != 304:
                self.send_header("Content-Type", reply.content_type)
            if reply.status not in (204, 304):
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if reply.status not in (204, 304):
                self.wfile.write(reply.body)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle  # noqa: N815

    return Handler


class FakeApiServer(ThreadingHTTPServer):
    api: FakeApi
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def serve(
    store: Store, host: str, port: int, *, metrics_throttle_s: float = 60.0, log_unknown_delay_s: float = 55.0
) -> FakeApiServer:
    from .admin import Admin

    api = FakeApi(store, metrics_throttle_s=metrics_throttle_s, log_unknown_delay_s=log_unknown_delay_s)
    server = FakeApiServer((host, port), make_handler(api, Admin(store, api.log_streams)))
    server.api = api
    return server
