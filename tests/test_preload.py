"""Preloaded apps (spec §11.2, §0.2 loadInitialState) through a real supervisor process."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from tests.fixtures.device import global_api_key, write_config_json

APPS_JSON: dict[str, Any] = {
    "config": {"RESIN_SUPERVISOR_POLL_INTERVAL": "90000", "BALENA_SUPERVISOR_DELTA": "1"},
    "apps": {
        "myapp": {
            "id": 1234,
            "name": "superapp",
            "class": "fleet",
            "releases": {
                "abcdef": {
                    "id": 1,
                    "services": {
                        "someservice": {
                            "id": 5, "image_id": 6, "image": "registry2.resin.io/superapp/abcdef",
                            "environment": {"FOO": "bar"}, "labels": {}, "running": True,
                        },
                    },
                    "volumes": {},
                    "networks": {},
                },
            },
        },
    },
}

LEGACY_APPS_JSON = [{
    "appId": 1234, "name": "legacy", "commit": "0123abc", "imageId": "registry2.resin.io/legacy/0123abc",
    "env": {"FOO": "bar", "RESIN_SECRET": "hidden"}, "config": {"RESIN_APP_RESTART_POLICY": "on-failure"},
}]

PROVISIONED = {
    "uuid": "d" * 32, "apiEndpoint": "https://api.example", "registered_at": 1700000000, "deviceId": 42,
}


def _db(root: Path) -> sqlite3.Connection:
    return sqlite3.connect(root / "mnt/data/resin-data/balena-supervisor/database.sqlite")


def _write_apps_json(root: Path, doc: Any) -> Path:
    path = root / "mnt/data/apps.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _target(sup, **params: str) -> dict[str, Any]:
    response = sup.get("/v2/local/target-state", params=params)
    assert response.status_code == 200, response.text
    return response.json()["state"]["local"]


def test_v3_apps_json_is_preloaded_and_consumed(device_root: Path, start_supervisor) -> None:
    path = _write_apps_json(device_root, APPS_JSON)
    sup = start_supervisor(device_root)

    local = _target(sup)
    app = local["apps"]["1234"]
    assert app["appUuid"] == "myapp" and app["commit"] == "abcdef" and app["releaseId"] == 1
    assert app["source"] == "local"  # unmanaged: local mode
    (service,) = app["services"]
    assert service["serviceName"] == "someservice"
    assert service["image"].startswith("registry2.resin.io/superapp/abcdef")
    assert service["environment"] == {"FOO": "bar"}
    assert local["config"]["SUPERVISOR_POLL_INTERVAL"] == "90000"
    assert local["config"]["SUPERVISOR_DELTA"] == "1"

    assert json.loads(path.read_text()) == {}
    backup = path.with_name("apps.json.preloaded")
    assert json.loads(backup.read_text()) == APPS_JSON
    with _db(device_root) as conn:
        assert conn.execute("SELECT value FROM config WHERE key = 'targetStateSet'").fetchone() == ("true",)
        assert conn.execute("SELECT value FROM config WHERE key = 'pinDevice'").fetchone() is None
    assert "Preloading 1 app(s)" in sup.output()


def test_legacy_array_is_converted(device_root: Path, start_supervisor) -> None:
    _write_apps_json(device_root, LEGACY_APPS_JSON)
    sup = start_supervisor(device_root)

    app = _target(sup)["apps"]["1234"]
    assert app["appUuid"] == "user-app" and app["commit"] == "0123abc" and app["releaseId"] == 1
    (service,) = app["services"]
    assert service["serviceName"] == "main"
    assert service["environment"] == {"FOO": "bar"}
    assert service["composition"]["restart"] == "on-failure"
    assert app["volumes"] == [{"name": "resin-data", "config": {}}]


def test_second_start_does_not_reload(device_root: Path, start_supervisor) -> None:
    write_config_json(device_root, PROVISIONED)
    _write_apps_json(device_root, APPS_JSON)
    sup = start_supervisor(device_root)
    key = global_api_key(device_root)
    first = _target(sup, apikey=key)
    assert first["apps"]["1234"]["source"] == "https://api.example"  # managed: the cloud's target
    sup.stop()

    # A provisioned device whose target is set ignores a new apps.json.
    other = json.loads(json.dumps(APPS_JSON))
    other["apps"]["myapp"]["releases"] = {"fedcba": other["apps"]["myapp"]["releases"]["abcdef"]}
    path = _write_apps_json(device_root, other)
    again = start_supervisor(device_root)
    assert _target(again, apikey=key) == first
    assert json.loads(path.read_text()) == other
    assert json.loads(path.with_name("apps.json.preloaded").read_text()) == APPS_JSON


def test_existing_backup_is_not_overwritten(device_root: Path, start_supervisor) -> None:
    path = _write_apps_json(device_root, APPS_JSON)
    backup = path.with_name("apps.json.preloaded")
    backup.write_text('{"original": true}')
    sup = start_supervisor(device_root)

    assert "1234" in _target(sup)["apps"]
    assert backup.read_text() == '{"original": true}'
    assert json.loads(path.read_text()) == {}


def test_empty_apps_json_loads_nothing(device_root: Path, start_supervisor) -> None:
    path = _write_apps_json(device_root, {"config": {}, "apps": {}})
    sup = start_supervisor(device_root)

    assert _target(sup)["apps"] == {}
    assert not path.with_name("apps.json.preloaded").exists()
    with _db(device_root) as conn:
        assert conn.execute("SELECT value FROM config WHERE key = 'targetStateSet'").fetchone() is None


def test_apps_json_directory_is_skipped(device_root: Path, start_supervisor) -> None:
    (device_root / "mnt/data/apps.json").mkdir(parents=True)
    sup = start_supervisor(device_root)
    assert _target(sup)["apps"] == {}
    assert "apps.json" not in sup.output()


def _assert_refused(device_root: Path, start_supervisor, content: str, problem: str) -> None:
    path = _write_apps_json(device_root, content)
    sup = start_supervisor(device_root)

    assert sup.get("/ping").status_code == 200
    assert _target(sup)["apps"] == {}
    log = sup.output()
    assert str(path) in log and problem in log, log
    assert path.read_text() == content
    assert not path.with_name("apps.json.preloaded").exists()
    with _db(device_root) as conn:
        assert conn.execute("SELECT count(*) FROM app").fetchone() == (0,)
        assert conn.execute("SELECT value FROM config WHERE key = 'targetStateSet'").fetchone() is None


def test_invalid_json_keeps_running(device_root: Path, start_supervisor) -> None:
    _assert_refused(device_root, start_supervisor, '{"apps": ', "not valid JSON")


def test_invalid_content_keeps_running(device_root: Path, start_supervisor) -> None:
    bad = json.loads(json.dumps(APPS_JSON))
    bad["apps"]["myapp"]["releases"] = {}  # a preloaded app needs a release
    _assert_refused(device_root, start_supervisor, json.dumps(bad), "Invalid apps.json")


def test_a_value_the_engine_would_refuse_is_not_preloaded(device_root: Path, start_supervisor) -> None:
    """The same gate as POST /v2/local/target-state (state/admission.py), with the file's own path."""
    bad = json.loads(json.dumps(APPS_JSON))
    service = bad["apps"]["myapp"]["releases"]["abcdef"]["services"]["someservice"]
    service["composition"] = {"ports": ["99999:80"]}
    where = "apps.myapp.releases.abcdef.services.someservice.composition.ports[0]"
    _assert_refused(device_root, start_supervisor, json.dumps(bad),
                    f"Invalid apps.json: {where}: port 99999 is out of range 0-65535")


def test_preload_warnings_are_logged(device_root: Path, start_supervisor) -> None:
    doc = json.loads(json.dumps(APPS_JSON))
    service = doc["apps"]["myapp"]["releases"]["abcdef"]["services"]["someservice"]
    service["composition"] = {"restrt": "no"}
    _write_apps_json(device_root, doc)
    sup = start_supervisor(device_root)
    assert "someservice" in _target(sup)["apps"]["1234"]["services"][0]["serviceName"]
    assert ("unknown key 'restrt' in apps.myapp.releases.abcdef.services.someservice.composition ignored "
            "(did you mean 'restart'?)") in sup.output()


def test_pin_device_is_stored(device_root: Path, start_supervisor) -> None:
    _write_apps_json(device_root, {**APPS_JSON, "pinDevice": True})
    sup = start_supervisor(device_root)

    assert "1234" in _target(sup)["apps"]
    with _db(device_root) as conn:
        (value,) = conn.execute("SELECT value FROM config WHERE key = 'pinDevice'").fetchone()
    assert json.loads(value) == {"app": 1234, "commit": "abcdef"}
