"""Configuration: ``config.json`` on the boot partition plus the ``config`` table in SQLite (spec §5).

config.json belongs to the OS and the cloud; we read it once, validate the keys we use, preserve the
ones we do not know, and write it back atomically only when a value changed. Keys of the reference's
``db`` source live in the SQLite ``config`` table as strings.
"""

from __future__ import annotations

import json
import re
import threading
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import remove_orphans, write_atomic
from .db import Database

DEFAULT_LISTEN_PORT = 48484
DEFAULT_POLL_INTERVAL_MS = 900_000  # the code's default; the reference docs say 600000 (spec §15)

_INT_RE = re.compile(r"^-?[0-9]+\.?0*$")


class ConfigError(Exception):
    """A config file or value that cannot be used; ``str()`` is one line naming file and problem."""


def check_int(value: Any, *, positive: bool = False) -> int | None:
    """The reference's ``checkInt``: an int, or a string like ``"42"``/``"42.0"``; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str) and _INT_RE.match(value.strip()):
        result = int(float(value)) if "." in value else int(value)
    else:
        return None
    if positive and result <= 0:
        return None
    return result


_TRUTHY = {"true", "1", "on"}
_FALSEY = {"false", "0", "off"}


def check_truthy(value: Any) -> bool:
    """The reference's ``checkTruthy``: true, 1, '1', 'true', 'on' (case-insensitive)."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in _TRUTHY


def to_bool(value: Any) -> bool | None:
    """A booleanish value, or None when it is neither truthy nor falsey."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUTHY:
        return True
    if text in _FALSEY:
        return False
    return None


# config.json keys we read, with the type each must have (spec §5.2). Numbers are "permissive":
# a JSON number or a numeric string. Unknown keys are preserved untouched.
_CONFIG_JSON_TYPES: dict[str, str] = {
    "uuid": "str",
    "apiEndpoint": "str",
    "apiTimeout": "int",
    "listenPort": "port",
    "deltaEndpoint": "str",
    "apiKey": "str",
    "deviceApiKey": "str",
    "deviceId": "int",
    "registered_at": "int",
    "applicationId": "int",
    "appUpdatePollInterval": "int",
    "bootstrapRetryDelay": "int",
    "hostname": "str",
    "persistentLogging": "bool",
    "initialDeviceName": "str",
    "developmentMode": "bool",
    "logsEndpoint": "str",
    "deviceType": "str",
    "os": "object",
}


def _check_config_json_value(key: str, value: Any) -> str | None:
    """The problem with ``value`` for ``key``, or None when it is acceptable."""
    kind = _CONFIG_JSON_TYPES.get(key)
    if kind is None or value is None:
        return None
    if kind == "str" and not isinstance(value, str):
        return f"key '{key}' must be a string, got {json.dumps(value)}"
    if kind in ("int", "port"):
        number = check_int(value)
        if number is None:
            return f"key '{key}' must be an integer, got {json.dumps(value)}"
        if kind == "port" and not 0 < number < 65536:
            return f"key '{key}' must be a TCP port (1-65535), got {number}"
    if kind == "bool" and to_bool(value) is None:
        return f"key '{key}' must be a boolean, got {json.dumps(value)}"
    if kind == "object" and not isinstance(value, dict):
        return f"key '{key}' must be an object, got {json.dumps(value)}"
    return None


class ConfigJson:
    """config.json: read once, validated, written back atomically (compact JSON) on change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        remove_orphans(path)  # a write cut short by a kill left its temp file on the boot partition
        self.exists, self._data = self._load()

    def _load(self) -> tuple[bool, dict[str, Any]]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return False, {}
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.path}: cannot read: {exc}") from None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{self.path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.path}: must be a JSON object, got {type(data).__name__}")
        for key, value in data.items():
            problem = _check_config_json_value(key, value)
            if problem:
                raise ConfigError(f"{self.path}: {problem}")
        return True, data

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            value = self._data.get(key)
        if value is None:
            return default
        kind = _CONFIG_JSON_TYPES.get(key)
        if kind in ("int", "port"):
            return check_int(value)
        if kind == "bool":
            return to_bool(value)
        return value

    def set(self, **values: Any) -> bool:
        """Set keys (None deletes) and persist; returns whether anything changed on disk."""
        for key, value in values.items():
            problem = _check_config_json_value(key, value)
            if problem:
                raise ConfigError(f"{self.path}: {problem}")
        with self._lock:
            data = dict(self._data)
            for key, value in values.items():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
            if data == self._data and self.exists:
                return False
            changed = write_atomic(self.path, json.dumps(data, separators=(",", ":")))
            self._data, self.exists = data, True
            return changed


@dataclass(frozen=True)
class _DbKey:
    default: Any
    parse: Callable[[str], Any]


def _parse_bool(text: str) -> bool:
    return bool(to_bool(text))


def _parse_int(text: str) -> int | None:
    return check_int(text)


# db-sourced keys (spec §5.2) that the supervisor reads so far.
DB_KEYS: dict[str, _DbKey] = {
    "name": _DbKey("local", str),
    "localMode": _DbKey(False, _parse_bool),
    "uuid": _DbKey(None, str),  # only when there is no config.json to hold it
    "lockOverride": _DbKey(False, _parse_bool),
    "instantUpdates": _DbKey(True, _parse_bool),
    "targetStateSet": _DbKey(False, _parse_bool),
    "pinDevice": _DbKey(None, json.loads),  # {app, commit}, set by a preload (spec §11.2)
    # The apiEndpoint whose initial config report is done (spec §10.2).
    "initialConfigReported": _DbKey("", str),
    # SUPERVISOR_CONNECTIVITY_CHECK (§5.2, §10.7); also set by POST/DELETE /v1/tcp-ping.
    "connectivityCheckEnabled": _DbKey(True, _parse_bool),
    "initialConfigSaved": _DbKey(False, _parse_bool),
    # Device config variables (state/device_config.py VARIABLES); the config.json ones are kept
    # here only on a device without config.json.
    "loggingEnabled": _DbKey(True, _parse_bool),
    "apiRequestTimeout": _DbKey(59000, _parse_int),
    "delta": _DbKey(False, _parse_bool),
    "deltaRequestTimeout": _DbKey(59000, _parse_int),
    "deltaApplyTimeout": _DbKey(0, _parse_int),
    "deltaRetryCount": _DbKey(30, _parse_int),
    "deltaRetryInterval": _DbKey(10000, _parse_int),
    "deltaVersion": _DbKey(2, _parse_int),
    "firewallMode": _DbKey(None, str),
    "hostDiscoverability": _DbKey(True, _parse_bool),
    "hardwareMetrics": _DbKey(True, _parse_bool),
    "appUpdatePollInterval": _DbKey(None, _parse_int),
    "persistentLogging": _DbKey(False, _parse_bool),
}


class Config:
    """The supervisor's config store: config.json keys, db keys, and the computed ones."""

    def __init__(self, config_json: ConfigJson, db: Database) -> None:
        self.json = config_json
        self.db = db

    # db keys --------------------------------------------------------------------------------
    def get_db(self, key: str) -> Any:
        spec = DB_KEYS[key]
        raw = self.db.get_config(key)
        return spec.default if raw is None else spec.parse(raw)

    def set_db(self, **values: Any) -> None:
        encoded: dict[str, str | None] = {}
        for key, value in values.items():
            if key not in DB_KEYS:
                raise KeyError(key)
            if value is None or isinstance(value, str):
                encoded[key] = value
            elif isinstance(value, bool):
                encoded[key] = "true" if value else "false"
            elif isinstance(value, (dict, list)):
                encoded[key] = json.dumps(value)
            else:
                encoded[key] = str(value)
        self.db.set_config(encoded)

    # computed -------------------------------------------------------------------------------
    @property
    def api_endpoint(self) -> str:
        return self.json.get("apiEndpoint", "") or ""

    @property
    def unmanaged(self) -> bool:
        return not self.api_endpoint

    @property
    def local_mode(self) -> bool:
        return self.unmanaged or bool(self.get_db("localMode"))

    @property
    def provisioned(self) -> bool:
        """Registered with the cloud (spec §5.2): uuid, apiEndpoint, registered_at and deviceId."""
        return all((self.uuid, self.api_endpoint, self.json.get("registered_at"), self.json.get("deviceId")))

    @property
    def listen_port(self) -> int:
        return self.json.get("listenPort", DEFAULT_LISTEN_PORT) or DEFAULT_LISTEN_PORT

    @property
    def poll_interval_ms(self) -> int:
        """``appUpdatePollInterval``: the target poll period, and the cap of every backoff."""
        if self.json.exists:
            return self.json.get("appUpdatePollInterval") or DEFAULT_POLL_INTERVAL_MS
        return self.get_db("appUpdatePollInterval") or DEFAULT_POLL_INTERVAL_MS

    @property
    def uuid(self) -> str:
        return self.json.get("uuid") or self.get_db("uuid") or ""

    def initialise(self) -> None:
        """First-start duties (spec §0.2 step 4): a uuid, and a device API key unless unmanaged."""
        if not self.uuid:
            new_uuid = uuidlib.uuid4().hex
            if self.json.exists:
                self.json.set(uuid=new_uuid)
            else:  # no config.json: do not invent one on someone's boot partition
                self.set_db(uuid=new_uuid)
        if not self.unmanaged and not self.json.get("deviceApiKey"):
            self.json.set(deviceApiKey=uuidlib.uuid4().hex)
