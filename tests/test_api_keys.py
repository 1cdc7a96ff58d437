"""API keys on the device endpoints of issue #5 (spec §1.2) and request bodies (spec §1.1), over
real HTTP. Scoped keys injected into real containers are covered in tests/test_api_device.py."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import requests

from tests.fixtures.device import SupervisorProcess, global_api_key, write_config_json

#: (method, path, json body) of every endpoint this issue adds.
ENDPOINTS = [
    ("GET", "/v1/apps/1", None),
    ("GET", "/v1/device/host-config", None),
    ("PATCH", "/v1/device/host-config", {"network": {"hostname": "x"}}),
    ("GET", "/v2/local/device-info", None),
    ("GET", "/v2/local/logs", None),
    ("GET", "/v2/device/name", None),
    ("GET", "/v2/device/tags", None),
    ("PATCH", "/v2/device/tags", {"a": "b"}),
    ("GET", "/v2/device/vpn", None),
    ("GET", "/v2/cleanup-volumes", None),
    ("POST", "/v2/journal-logs", {"count": 1}),
]
IDS = [f"{m} {p}" for m, p, _ in ENDPOINTS]


def _call(sup: SupervisorProcess, method: str, path: str, body, **kw) -> requests.Response:
    # stream=True: /v2/local/logs never ends; only the status line and headers are read.
    return requests.request(method, sup.url + path, json=body, timeout=10, stream=True, **kw)


@pytest.fixture
def managed(device_root: Path, start_supervisor) -> SupervisorProcess:
    write_config_json(device_root, {"uuid": "b" * 32, "apiEndpoint": "https://api.example",
                                    "deviceApiKey": "d" * 32})
    sup = start_supervisor(device_root)
    sup.key = global_api_key(device_root)
    return sup


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=IDS)
def test_missing_or_wrong_key_is_401(managed: SupervisorProcess, method: str, path: str, body) -> None:
    for kw in ({}, {"params": {"apikey": "0" * 32}}, {"headers": {"Authorization": "Bearer " + "1" * 32}}):
        with _call(managed, method, path, body, **kw) as response:
            assert (response.status_code, response.text) == (401, "Unauthorized"), kw


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=IDS)
def test_global_key_passes(managed: SupervisorProcess, method: str, path: str, body) -> None:
    with _call(managed, method, path, body, headers={"Authorization": f"ApiKey {managed.key}"}) as response:
        assert response.status_code != 401, response.text


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=IDS)
def test_app_scoped_key_reaches_the_endpoints_that_are_not_about_an_app(
    managed: SupervisorProcess, method: str, path: str, body
) -> None:
    """A key scoped to app 5 may call every non-app endpoint (spec §1.2); ``/v1/apps/1`` is another
    app's, so it is refused there."""
    db = managed.root / "mnt/data/resin-data/balena-supervisor/database.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO apiSecret (appId, serviceName, key, scopes) VALUES (?, ?, ?, ?)",
                     (5, "main", "5" * 32, json.dumps([{"type": "app", "appId": 5}])))
    with _call(managed, method, path, body, params={"apikey": "5" * 32}) as response:
        if path == "/v1/apps/1":
            assert response.status_code == 401
            assert response.json() == {"status": "failed", "message": "Application is not available"}
        else:
            assert response.status_code != 401, response.text


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS, ids=IDS)
def test_local_mode_needs_no_key(device_root: Path, start_supervisor, method: str, path: str, body) -> None:
    sup = start_supervisor(device_root)  # no config.json: unmanaged, so local mode
    with _call(sup, method, path, body) as response:
        assert response.status_code != 401, response.text


def test_ping_and_healthy_never_need_a_key(managed: SupervisorProcess) -> None:
    assert managed.get("/ping").status_code == 200
    assert managed.get("/v1/healthy").status_code == 200


# ---------------------------------------------------------------------------------- bodies
def test_body_over_10_mb_is_413_with_a_clear_message(device_root: Path, start_supervisor) -> None:
    sup = start_supervisor(device_root)
    big = json.dumps({"a": "x" * (10 * 1024 * 1024)})
    response = requests.patch(sup.url + "/v2/device/tags", data=big,
                              headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 413
    assert response.json() == {"status": "failed", "message": "Request body too large: the limit is 10 MB"}
    # just under the limit is fine
    ok = json.dumps({"a": "x" * (10 * 1024 * 1024 - 100)})
    response = requests.patch(sup.url + "/v2/device/tags", data=ok,
                              headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 202


@pytest.mark.parametrize(("method", "path"), [
    ("PATCH", "/v1/device/host-config"), ("PATCH", "/v2/device/tags"), ("POST", "/v2/journal-logs"),
])
def test_invalid_json_is_400_not_503(device_root: Path, start_supervisor, method: str, path: str) -> None:
    sup = start_supervisor(device_root)
    response = requests.request(method, sup.url + path, data="{broken",
                                headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400
    assert response.json()["status"] == "failed"


def test_host_config_form_body_is_400(device_root: Path, start_supervisor) -> None:
    """Form bodies are parsed (PATCH /v2/device/tags and /v2/journal-logs take them, see their
    tests), but host-config needs the nested ``network`` object that a form cannot carry."""
    sup = start_supervisor(device_root)
    response = requests.patch(sup.url + "/v1/device/host-config", data={"force": "true"}, timeout=10)
    assert response.status_code == 400
    assert "'network' must exist" in response.text
