"""Target state building and state-report checking, as the real API does them (cloud-api.md §2-§4).

Pure functions over rows read from :class:`~tests.fakecloud.store.Store`; the HTTP layer
(``server.py``) decides status codes and bodies.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sqlite3
from typing import Any

DEFAULT_SUPERVISOR_POLL_INTERVAL = 600_000  # ms; the server clamps RESIN_SUPERVISOR_POLL_INTERVAL to it
UPDATE_STATUSES = ("rejected", "aborted", "downloading", "downloaded", "applying changes", "done")
IMAGE_INSTALL_STATUSES = frozenset(
    (
        "Downloading",
        "Downloaded",
        "Installing",
        "Installed",
        "Starting",
        "Running",
        "Idle",
        "Handing over",
        "Awaiting handover",
        "Stopping",
        "Stopped",
        "exited",
        "Deleting",
        "deleted",
        "Dead",
        "paused",
        "restarting",
        "removing",
        "configuring",
        "Unknown",
    )
)
METRIC_FIELDS = (
    "memory_usage",
    "memory_total",
    "storage_usage",
    "storage_total",
    "cpu_temp",
    "cpu_usage",
    "storage_block_device",
)
INT_MAX = 2**31 - 1


def to_json_bytes(value: Any) -> bytes:
    """``JSON.stringify``: compact, non-ASCII kept as UTF-8."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def weak_etag(body: bytes) -> str:
    """Express's default weak ETag (§2.5): ``W/"<len hex>-<27 chars of base64(sha1)>"``."""
    digest = base64.b64encode(hashlib.sha1(body).digest()).decode()[:27]
    return f'W/"{len(body):x}-{digest}"'


def is_fresh(if_none_match: str | None, cache_control: str | None, etag: str) -> bool:
    """Express ``req.fresh`` for a GET: weak comparison, ``*``, ``Cache-Control: no-cache`` (§2.5)."""
    if not if_none_match:
        return False
    if cache_control and re.search(r"(?:^|,)\s*no-cache\s*(?:,|$)", cache_control):
        return False
    if if_none_match.strip() == "*":
        return True
    bare = etag[2:] if etag.startswith("W/") else etag
    return any(token in (etag, bare, f"W/{bare}") for token in (t.strip() for t in if_none_match.split(",")))


def js_parse_int(text: str | None) -> int | None:
    """``parseInt``: leading whitespace, optional sign, leading digits; None for NaN."""
    match = re.match(r"\s*([+-]?\d+)", text or "")
    return int(match[1]) if match else None


def _vars(conn: sqlite3.Connection, kind: str, owner: Any) -> dict[str, str]:
    rows = conn.execute(
        "SELECT name, value FROM var WHERE kind = ? AND owner = ? ORDER BY id", (kind, str(owner))
    ).fetchall()
    return {r["name"]: r["value"] for r in rows}


def device_config(conn: sqlite3.Connection, device: sqlite3.Row) -> dict[str, str]:
    """§2.4: app config vars overlaid by device config vars, ``*_UI*`` and log-to-display removed,
    ``RESIN_SUPERVISOR_POLL_INTERVAL`` always present and clamped to >= 600000 (``"NaN"`` if not
    a number; ``BALENA_`` is not clamped)."""
    merged = {
        **_vars(conn, "app_config", device["application"]),
        **_vars(conn, "device_config", device["id"]),
    }
    config = {k: v for k, v in merged.items() if not re.match(r"^(BALENA|RESIN)_UI", k)}
    config.pop("RESIN_HOST_LOG_TO_DISPLAY", None)
    raw = config.get("RESIN_SUPERVISOR_POLL_INTERVAL")
    parsed = js_parse_int(raw) if raw is not None else 0
    config["RESIN_SUPERVISOR_POLL_INTERVAL"] = (
        "NaN" if parsed is None else str(max(parsed, DEFAULT_SUPERVISOR_POLL_INTERVAL))
    )
    return config


def target_release_id(conn: sqlite3.Connection, device: sqlite3.Row) -> int | None:
    """``should_be_running__release``: the pinned release, else the application's target."""
    if device["is_pinned_on__release"] is not None:
        return device["is_pinned_on__release"]
    app = conn.execute(
        "SELECT target_release FROM application WHERE id = ?", (device["application"],)
    ).fetchone()
    return app["target_release"] if app else None


def _release_state(
    conn: sqlite3.Connection, release: sqlite3.Row, device: sqlite3.Row, config: dict[str, str]
) -> dict[str, Any]:
    try:
        composition = json.loads(release["composition"] or "{}")
        if not isinstance(composition, dict):
            composition = {}
    except ValueError:
        composition = {}
    compose_services = composition.get("services") or {}
    services: dict[str, Any] = {}
    rows = conn.execute(
        "SELECT image.*, service.service_name, service.id AS service_id FROM image "
        "JOIN service ON service.id = image.service WHERE image.release = ? ORDER BY image.id",
        (release["id"],),
    ).fetchall()
    app_env = _vars(conn, "app_env", device["application"])
    device_env = _vars(conn, "device_env", device["id"])
    for row in rows:
        name = row["service_name"]
        env = {
            **json.loads(row["environment"]),
            **app_env,
            **_vars(conn, "service_env", row["service_id"]),
            **device_env,
            **_vars(conn, "device_service_env", f"{device['id']}:{row['service_id']}"),
        }
        labels = dict(json.loads(row["labels"]))
        # Two update config vars become labels when the io.resin.* label is missing (§2.3).
        for var, label in (
            ("RESIN_SUPERVISOR_UPDATE_STRATEGY", "io.resin.update.strategy"),
            ("RESIN_SUPERVISOR_HANDOVER_TIMEOUT", "io.resin.update.handover-timeout"),
        ):
            if var in config and label not in labels:
                labels[label] = config[var]
        location = row["location"] + (f"@{row['content_hash']}" if row["content_hash"] else "")
        svc: dict[str, Any] = {
            "id": row["service_id"],
            "image_id": row["id"],
            "image": location.lower(),
            "environment": env,
            "labels": labels,
        }
        if row["contract"] is not None:
            svc["contract"] = json.loads(row["contract"])
        if name in compose_services:
            svc["composition"] = {k: v for k, v in compose_services[name].items() if k != "build"}
        services[name] = svc
    state: dict[str, Any] = {"id": release["id"]}
    if services:
        state["services"] = services
    if "networks" in composition:
        state["networks"] = composition["networks"]
    if "volumes" in composition:
        state["volumes"] = composition["volumes"]
    return state


def build_state(conn: sqlite3.Connection, device: sqlite3.Row) -> dict[str, Any]:
    """The v3 target state of one device (§2.2): only the device's own application (the fake has no
    supervisor or host-OS apps)."""
    app = conn.execute("SELECT * FROM application WHERE id = ?", (device["application"],)).fetchone()
    config = device_config(conn, device)
    app_state: dict[str, Any] = {
        "id": app["id"],
        "name": app["app_name"],
        "is_host": bool(app["is_host"]),
        "class": app["class"],
    }
    release_id = target_release_id(conn, device)
    if release_id is not None:
        release = conn.execute("SELECT * FROM release WHERE id = ?", (release_id,)).fetchone()
        if release is not None:
            app_state["releases"] = {release["commit"]: _release_state(conn, release, device, config)}
    return {
        device["uuid"]: {"name": device["device_name"], "apps": {app["uuid"]: app_state}, "config": config}
    }


# ----------------------------------------------------------------------------- state PATCH schema
class SchemaError(ValueError):
    """The zod schema is violated: an empty 400."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_DEVICE_FIELDS: dict[str, tuple[str, bool]] = {  # name -> (type, nullable), §3.2
    "status": ("str", False),
    "os_version": ("str", True),
    "os_variant": ("str", True),
    "supervisor_version": ("str", False),
    "provisioning_progress": ("num", True),
    "provisioning_state": ("str", True),
    "ip_address": ("str", False),
    "mac_address": ("str", False),
    "api_port": ("num", False),
    "api_secret": ("str", True),
    "memory_usage": ("num", True),
    "memory_total": ("num", True),
    "storage_usage": ("num", True),
    "storage_total": ("num", True),
    "cpu_temp": ("num", True),
    "cpu_usage": ("num", True),
    "storage_block_device": ("str", True),
    "cpu_id": ("str", True),
    "is_undervolted": ("bool", False),
    "is_online": ("bool", False),
}


def _check(value: Any, kind: str, nullable: bool) -> None:
    if value is None:
        if not nullable:
            raise SchemaError
        return
    ok = {"str": isinstance(value, str), "num": _is_number(value), "bool": isinstance(value, bool)}[kind]
    if not ok:
        raise SchemaError


def _record(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SchemaError
    return value


def parse_report_device(value: Any) -> dict[str, Any]:
    """The zod-parsed device object: unknown keys stripped, types checked (else SchemaError)."""
    out: dict[str, Any] = {}
    for key, item in _record(value).items():
        if key in _DEVICE_FIELDS:
            _check(item, *_DEVICE_FIELDS[key])
            out[key] = item
        elif key == "apps":
            apps = {}
            for app_uuid, app in _record(item).items():
                parsed: dict[str, Any] = {}
                for akey, aval in _record(app).items():
                    if akey == "release_uuid":
                        _check(aval, "str", False)
                        parsed[akey] = aval
                    elif akey == "releases":
                        releases = {}
                        for commit, rel in _record(aval).items():
                            prel: dict[str, Any] = {}
                            for rkey, rval in _record(rel).items():
                                if rkey == "update_status":
                                    if rval not in UPDATE_STATUSES:
                                        raise SchemaError
                                    prel[rkey] = rval
                                elif rkey == "services":
                                    prel[rkey] = {n: _service(s) for n, s in _record(rval).items()}
                            releases[commit] = prel
                        parsed[akey] = releases
                apps[app_uuid] = parsed
            out["apps"] = apps
    return out


def _service(value: Any) -> dict[str, Any]:
    svc = _record(value)
    if "image" not in svc:
        raise SchemaError
    _check(svc["image"], "str", False)
    out = {"image": svc["image"]}
    if "status" in svc:
        _check(svc["status"], "str", False)
        out["status"] = svc["status"]
    if "download_progress" in svc:
        _check(svc["download_progress"], "num", True)
        out["download_progress"] = svc["download_progress"]
    return out


class FieldTooLong(ValueError):
    """A DB validation failure: 400 with a JSON-string message."""


def _cut_at_space(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rfind(" ")
    return text[:cut] if cut > 0 else text[:limit]


def normalise_device_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """§3.3: truncation, os_variant and cpu_id rules, integer columns, metric clamping."""
    out = dict(fields)
    for key, limit in (("status", 50), ("os_version", 70), ("supervisor_version", 20), ("api_secret", 64)):
        if isinstance(out.get(key), str):
            out[key] = out[key][:limit]
    for key, limit in (("ip_address", 2000), ("mac_address", 900)):
        if isinstance(out.get(key), str):
            out[key] = _cut_at_space(out[key], limit)
    if "os_variant" in out and out["os_variant"] not in ("dev", "prod", None):
        del out["os_variant"]
    if isinstance(out.get("cpu_id"), str):
        if any(not 0x20 <= ord(ch) <= 0x7E for ch in out["cpu_id"]):
            del out["cpu_id"]
        else:
            out["cpu_id"] = out["cpu_id"].lower()
    for key in ("provisioning_state", "storage_block_device"):
        if isinstance(out.get(key), str) and len(out[key]) > 255:
            raise FieldTooLong(f'"{key}" longer than 255 characters ({len(out[key])})')
    for key in ("provisioning_progress", "api_port"):
        if _is_number(out.get(key)):
            out[key] = int(out[key])
    for key in METRIC_FIELDS:
        if _is_number(out.get(key)) and out[key] > INT_MAX:
            out[key] = INT_MAX
    return out
