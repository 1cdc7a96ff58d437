"""POST/GET /v2/local/target-state over real HTTP: validation, persistence, local-mode rule."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.fixtures.device import write_config_json

TARGET = {
    "local": {
        "name": "my-device",
        "config": {"RESIN_SUPERVISOR_POLL_INTERVAL": "60000", "BALENA_SUPERVISOR_DELTA": "1", "JUNK": "x"},
        "apps": {
            "1011": {
                "name": "app1",
                "commit": "abcdef",
                "releaseId": 7,
                "services": {
                    "23": {
                        "serviceName": "main", "imageId": 12, "image": "registry.local/main",
                        "environment": {"A": "1"}, "labels": {"io.resin.features.dbus": "1"},
                        "running": True, "restart": "always", "ports": ["80:80"],
                    },
                },
                "volumes": {"data": {}},
                "networks": {},
            }
        },
    }
}


def test_set_and_get_local_target(device_root: Path, start_supervisor) -> None:
    sup = start_supervisor(device_root)
    response = sup.post("/v2/local/target-state", json=TARGET)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "success", "message": "OK"}

    state = sup.get("/v2/local/target-state").json()
    assert state["status"] == "success"
    local = state["state"]["local"]
    assert local["name"] == "my-device"
    assert local["config"]["SUPERVISOR_POLL_INTERVAL"] == "60000"
    assert local["config"]["SUPERVISOR_DELTA"] == "1"
    assert local["config"]["SUPERVISOR_OVERRIDE_LOCK"] == "false"  # defaults filled in
    assert "JUNK" not in local["config"]
    app = local["apps"]["1011"]
    assert app["appUuid"] == "1011" and app["commit"] == "abcdef" and app["releaseId"] == 7
    (service,) = app["services"]
    assert service["serviceName"] == "main"
    assert service["image"] == "registry.local/main:latest"
    assert service["labels"] == {"io.balena.features.dbus": "1"}
    assert service["composition"] == {"restart": "always", "ports": ["80:80"]}

    # the target survives a restart
    sup.stop()
    again = start_supervisor(device_root)
    assert again.get("/v2/local/target-state").json() == state


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda t: t["local"]["apps"]["1011"]["services"]["23"].update(environment={"A B": "1"}),
         "environment"),
        (lambda t: t["local"]["apps"]["1011"]["services"]["23"].update(imageId="x"), "services.main.imageId"),
        (lambda t: t["local"].update(name="two\nlines"), "name"),
        (lambda t: t["local"]["apps"].update({"abc": {}}), "abc"),
    ],
)
def test_invalid_target_is_400_naming_the_field_and_keeps_the_old_one(
    device_root: Path, start_supervisor, mutate, field: str
) -> None:
    import copy

    sup = start_supervisor(device_root)
    assert sup.post("/v2/local/target-state", json=TARGET).status_code == 200
    before = sup.get("/v2/local/target-state").json()
    bad = copy.deepcopy(TARGET)
    mutate(bad)
    response = sup.post("/v2/local/target-state", json=bad)
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "failed" and field in body["message"]
    assert sup.get("/v2/local/target-state").json() == before


def test_malformed_json_is_400(device_root: Path, start_supervisor) -> None:
    sup = start_supervisor(device_root)
    response = sup.post("/v2/local/target-state", data="{nope",
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["status"] == "failed"


def test_not_in_local_mode_is_400(device_root: Path, start_supervisor) -> None:
    write_config_json(device_root, {"uuid": "c" * 32, "apiEndpoint": "https://api.example"})
    sup = start_supervisor(device_root)
    db = device_root / "mnt/data/resin-data/balena-supervisor/database.sqlite"
    with sqlite3.connect(db) as conn:
        (key,) = conn.execute("SELECT key FROM apiSecret WHERE appId = 0").fetchone()
    response = sup.post("/v2/local/target-state", json=TARGET, params={"apikey": key})
    assert response.status_code == 400
    assert response.json() == {
        "status": "failed", "message": "Target state can only set when device is in local mode"}
