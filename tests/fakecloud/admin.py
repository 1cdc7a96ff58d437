"""The fake's control routes (``/_fake/...``): what a test does as the fleet owner, and how it reads
back what devices sent. Not part of the real API (which 404s these paths)."""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING

from .server import Reply, Request, empty, json_reply
from .store import Store

if TYPE_CHECKING:
    from .logstream import LogStreams


class Admin:
    def __init__(self, store: Store, log_streams: LogStreams | None = None) -> None:
        self.store = store
        self.log_streams = log_streams

    def __call__(self, req: Request) -> None:
        path = req.path[len("/_fake") :].rstrip("/")
        body = req.json() if req.raw else {}
        route = f"{req.method} {path}"
        s = self.store
        if route == "POST /applications":
            raise json_reply(
                201,
                s.create_application(
                    body["name"],
                    body.get("device_type", "generic-amd64"),
                    app_class=body.get("class", "fleet"),
                    uuid=body.get("uuid"),
                    app_id=body.get("id"),
                ),
            )
        match = re.fullmatch(r"PATCH /applications/(\d+)", route)
        if match:
            with s.tx() as conn:
                conn.execute(
                    "UPDATE application SET target_release = ? WHERE id = ?",
                    (body.get("target_release"), int(match[1])),
                )
            raise empty(200)
        if route == "POST /devices":
            device_id = s.create_device(
                body["application"],
                body["uuid"],
                body["api_key"],
                device_id=body.get("id"),
                device_name=body.get("device_name"),
            )
            raise json_reply(201, {"id": device_id})
        if route == "POST /keys":
            raise json_reply(
                201,
                {
                    "key": s.create_key(
                        body["role"],
                        application=body.get("application"),
                        device=body.get("device"),
                        key=body.get("key"),
                    )
                },
            )
        if route == "POST /keys/revoke":
            with s.tx() as conn:
                if "device" in body:
                    conn.execute("UPDATE api_key SET expired = 1 WHERE device = ?", (body["device"],))
                else:
                    conn.execute("UPDATE api_key SET expired = 1 WHERE key = ?", (body["key"],))
            raise empty(200)
        if route == "POST /releases":
            raise json_reply(
                201,
                s.create_release(
                    body["application"],
                    body["services"],
                    commit=body.get("commit"),
                    status=body.get("status", "success"),
                    networks=body.get("networks"),
                    volumes=body.get("volumes"),
                    make_target=body.get("make_target", True),
                ),
            )
        if route == "POST /vars":
            with s.tx() as conn:
                conn.execute(
                    "INSERT INTO var (kind, owner, name, value) VALUES (?, ?, ?, ?) ON CONFLICT "
                    "(kind, owner, name) DO UPDATE SET value = excluded.value",
                    (body["kind"], str(body["owner"]), body["name"], body["value"]),
                )
            raise empty(200)
        if route == "DELETE /vars":
            with s.tx() as conn:
                conn.execute(
                    "DELETE FROM var WHERE kind = ? AND owner = ? AND name = ?",
                    (body["kind"], str(body["owner"]), body["name"]),
                )
            raise empty(200)
        if route == "POST /faults":
            until = body.get("until")
            if until is None and body.get("seconds") is not None:
                until = time.time() + float(body["seconds"])
            with s.tx() as conn:
                fault_id = conn.execute(
                    "INSERT INTO fault (kind, method, path, remaining, until, status, delay, retry_after, "
                    "body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        body["kind"],
                        body.get("method"),
                        body.get("path"),
                        body.get("count"),
                        until,
                        body.get("status"),
                        body.get("delay"),
                        body.get("retry_after"),
                        body.get("body"),
                    ),
                ).lastrowid
            raise json_reply(201, {"id": fault_id})
        if route == "DELETE /faults":
            with s.tx() as conn:
                conn.execute("DELETE FROM fault")
            raise empty(200)
        if route == "GET /devices":
            out = []
            for row in s.query("SELECT * FROM device ORDER BY id"):
                tags = {
                    t["tag_key"]: t["value"]
                    for t in s.query("SELECT * FROM device_tag WHERE device = ?", (row["id"],))
                }
                config = {
                    v["name"]: v["value"]
                    for v in s.query(
                        "SELECT * FROM var WHERE kind = 'device_config' AND owner = ?", (str(row["id"]),)
                    )
                }
                installs = [
                    dict(r) for r in s.query("SELECT * FROM image_install WHERE device = ?", (row["id"],))
                ]
                out.append(
                    {
                        **{
                            k: row[k]
                            for k in (
                                "id",
                                "uuid",
                                "application",
                                "device_name",
                                "device_type",
                                "is_pinned_on__release",
                                "api_heartbeat_state",
                                "last_heartbeat",
                            )
                        },
                        "fields": json.loads(row["fields"]),
                        "state": json.loads(row["state"]),
                        "tags": tags,
                        "config": config,
                        "image_installs": installs,
                        "keys": [
                            k["key"]
                            for k in s.query("SELECT key FROM api_key WHERE device = ?", (row["id"],))
                        ],
                    }
                )
            raise json_reply(200, out)
        if route == "GET /reports":
            rows = s.query(
                "SELECT * FROM report WHERE id > ? AND (? IS NULL OR uuid = ?) ORDER BY id",
                (int(req.query.get("after", 0)), req.query.get("uuid"), req.query.get("uuid")),
            )
            raise json_reply(
                200,
                [
                    {"id": r["id"], "uuid": r["uuid"], "at": r["at"], "body": json.loads(r["body"])}
                    for r in rows
                ],
            )
        if route == "GET /requests":
            rows = s.query(
                "SELECT * FROM request_log WHERE id > ? ORDER BY id", (int(req.query.get("after", 0)),)
            )
            raise json_reply(200, [dict(r) for r in rows])
        if route == "GET /logs":
            # Every stored log-stream line (§5.1) after id ``after``, oldest first; ``stream`` tells
            # one request from the next (a reconnect starts a new one).
            rows = s.query(
                "SELECT * FROM device_log WHERE id > ? AND (? IS NULL OR uuid = ?) ORDER BY id LIMIT ?",
                (
                    int(req.query.get("after", 0)),
                    req.query.get("uuid"),
                    req.query.get("uuid"),
                    int(req.query.get("limit", 1_000_000)),
                ),
            )
            out = []
            for r in rows:
                line = {
                    "id": r["id"],
                    "uuid": r["uuid"],
                    "stream": r["stream"],
                    "receivedAt": r["received_at"],
                    "message": r["message"],
                    "timestamp": r["timestamp"],
                    "isSystem": bool(r["is_system"]),
                    "isStdErr": bool(r["is_stderr"]),
                }
                if r["service_id"] is not None:
                    line["serviceId"] = r["service_id"]
                out.append(line)
            raise json_reply(200, out)
        if route == "GET /log-counts":
            # A summary of the stored service lines (§5.1) after id ``after``, for benchmarks that
            # would not fetch every line: per ``serviceId`` the count, and over ``seq`` (the second
            # word of the message as an integer: lines the test printed as ``<name> <n> ...``) the
            # distinct count, min and max; the ``receivedAt`` range; the system lines and the sum of
            # their ``Warning: Suppressed <N> message(s)`` counts; ``lastId`` to resume from.
            after, uuid = int(req.query.get("after", 0)), req.query.get("uuid")
            top = s.one("SELECT max(id) AS last FROM device_log")  # one bound: rows keep coming in
            last = max(after, top["last"] or 0) if top else after
            where = "id > ? AND id <= ? AND (? IS NULL OR uuid = ?)"
            rows = s.query(
                "SELECT service_id, count(*) AS n, count(DISTINCT seq) AS d, min(seq) AS lo, max(seq) AS hi, "
                "min(received_at) AS t0, max(received_at) AS t1 FROM (SELECT service_id, received_at, "
                "CAST(substr(message, instr(message, ' ') + 1) AS INTEGER) AS seq FROM device_log "
                f"WHERE {where} AND is_system = 0) GROUP BY service_id",
                (after, last, uuid, uuid),
            )
            system = s.one(
                "SELECT count(*) AS n, sum(CASE WHEN message LIKE 'Warning: Suppressed %' "
                "THEN CAST(substr(message, 21) AS INTEGER) ELSE 0 END) AS suppressed FROM device_log "
                f"WHERE {where} AND is_system = 1",
                (after, last, uuid, uuid),
            )
            raise json_reply(
                200,
                {
                    "services": [
                        {"serviceId": r["service_id"], "lines": r["n"], "distinct": r["d"], "min": r["lo"],
                         "max": r["hi"], "firstAt": r["t0"], "lastAt": r["t1"]}
                        for r in rows
                    ],
                    "system": system["n"] if system else 0,
                    "suppressed": (system["suppressed"] or 0) if system else 0,
                    "lastId": last,
                },
            )
        if route == "GET /log-streams":
            streams = self.log_streams
            if streams is None:
                raise json_reply(200, {"open": 0, "opened": 0})
            with streams.lock:
                raise json_reply(200, {"open": len(streams.open), "opened": streams.opened})
        if route == "GET /stats":
            rows = s.query(
                "SELECT kind, status, count(*) AS n, sum(bytes_in) AS bytes_in, sum(bytes_out) AS bytes_out "
                "FROM request_log WHERE at >= ? AND at < ? GROUP BY kind, status",
                (float(req.query.get("since", 0)), float(req.query.get("until", 1e12))),
            )
            raise json_reply(200, [dict(r) for r in rows])
        raise Reply(404, b"", None)
