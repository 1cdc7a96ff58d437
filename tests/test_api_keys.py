"""API keys on the device endpoints of issue #5 (spec §1.2) and request bodies (spec §1.1), over
real HTTP; and, on a managed device running two apps on the real engine, every endpoint whose scope
check names an app, with a key of the other app and with the app's own. Scoped keys injected into
real containers are covered in tests/test_api_device.py."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from supervisor.compose.naming import lock_dir_for
from tests.fixtures.apps import local_target, main_service_app, remove_app, store_managed_target
from tests.fixtures.device import SupervisorProcess, free_port, global_api_key, wait_for, write_config_json
from tests.fixtures.docker import TEST_LABEL
from tests.fixtures.locks import take_user_lock

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


def test_host_config_takes_a_form_body_with_brackets(device_root: Path, start_supervisor) -> None:
    """Forms are parsed as the reference's extended ``qs`` parser does, so ``network[hostname]``
    carries the nested object host-config needs; a flat form without it is a 400."""
    write_config_json(device_root, {"uuid": "0123456789abcdef" * 2})
    sup = start_supervisor(device_root)
    response = requests.patch(sup.url + "/v1/device/host-config",
                              data={"network[hostname]": "formhost"}, timeout=10)
    assert response.status_code == 200, response.text
    assert json.loads((device_root / "mnt/boot/config.json").read_text())["hostname"] == "formhost"
    response = requests.patch(sup.url + "/v1/device/host-config", data={"force": "true"}, timeout=10)
    assert response.status_code == 400


# ------------------------------------------------------------------- app scope (spec §1.2-1.3)
@dataclass
class TwoApps:
    """A managed device running two single-service apps, with each app's scoped key."""

    sup: SupervisorProcess
    client: docker.DockerClient
    first: int
    second: int
    keys: dict[int, str]
    global_key: str

    def container(self, app_id: int) -> dict[str, Any]:
        (entry,) = self.client.api.containers(all=True, filters={"label": f"io.balena.app-id={app_id}"})
        return entry

    def call(self, method: str, path: str, body: Any, key: str) -> requests.Response:
        return requests.request(method, self.sup.url + path, json=body, timeout=30,
                                headers={"Authorization": f"Bearer {key}"})


@pytest.fixture(scope="module")
def two_apps(docker_client, make_image, tmp_path_factory) -> Iterator[TwoApps]:
    first, second = random.sample(range(10**6, 10**9), 2)
    image = f"pysupervisor-test/scope-{uuid.uuid4().hex[:12]}:latest"
    make_image(image)
    root = tmp_path_factory.mktemp("scope") / "root"
    target = local_target({first: main_service_app("scope-first", image, image_id=701, service_id=71),
                           second: main_service_app("scope-second", image, image_id=702, service_id=72)},
                          "scope-device")
    keys = store_managed_target(root, target, f"http://127.0.0.1:{free_port()}")
    sup = SupervisorProcess(root, free_port(), ["--apps", f"{first},{second}", "--no-host-setup"], {})
    try:
        sup.wait_ready()
        wait_for(lambda: all(docker_client.api.containers(filters={
            "label": f"io.balena.app-id={app_id}", "status": "running"}) for app_id in (first, second)),
            "both apps to run", sup)
        sup.wait_applied(global_api_key(root))  # settled: commits stored, install locks released
        yield TwoApps(sup=sup, client=docker_client, first=first, second=second, keys=keys,
                      global_key=global_api_key(root))
    finally:
        sup.stop(signal.SIGKILL)  # dead before the apps go: a live loop would recreate them
        for app_id in (first, second):
            remove_app(docker_client, app_id, volumes=True)


UNAUTHORIZED_JSON = (401, {"status": "failed", "message": "Unauthorized"})
UNAUTHORIZED_TEXT = (401, "Unauthorized")
#: Every endpoint whose §1.3 scope check names an app: (method, path, body, out-of-scope answer,
#: in-scope status while the app's update lock is held). ``{app}`` is the app's id. A text answer
#: is a str, a JSON one a dict; the locking actions answer 423 in scope, so nothing is touched.
SCOPED = [
    ("POST", "/v1/restart", {"appId": "{app}"}, UNAUTHORIZED_JSON, 423),
    ("POST", "/v1/purge", {"appId": "{app}"}, UNAUTHORIZED_JSON, 423),
    ("POST", "/v1/apps/{app}/stop", {}, UNAUTHORIZED_TEXT, 423),
    ("POST", "/v1/apps/{app}/start", {}, UNAUTHORIZED_TEXT, 200),
    ("GET", "/v1/apps/{app}", None, (401, {"status": "failed", "message": "Application is not available"}),
     200),
    ("POST", "/v2/applications/{app}/restart-service", {"serviceName": "main"}, UNAUTHORIZED_JSON, 423),
    ("POST", "/v2/applications/{app}/stop-service", {"serviceName": "main"}, UNAUTHORIZED_JSON, 423),
    ("POST", "/v2/applications/{app}/start-service", {"serviceName": "main"}, UNAUTHORIZED_JSON, 200),
    ("POST", "/v2/applications/{app}/purge", {}, UNAUTHORIZED_JSON, 423),
    ("POST", "/v2/applications/{app}/restart", {}, UNAUTHORIZED_JSON, 423),
    ("GET", "/v2/applications/{app}/state", None,
     (409, {"status": "failed", "message": "Application ID does not exist: {app}"}), 200),
]


def _fill(value: Any, app_id: int) -> Any:
    if isinstance(value, str):
        return value.replace("{app}", str(app_id))
    if isinstance(value, dict):
        return {k: _fill(v, app_id) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_fill(v, app_id) for v in value)
    return value


@pytest.fixture
def first_locked(two_apps: TwoApps) -> Iterator[TwoApps]:
    """The first app's service holds its update lock: an action that passes the scope check stops
    at the lock (423) and leaves the app as it was."""
    two_apps.sup.wait_applied(two_apps.global_key)  # the install's own locks are gone
    lock = take_user_lock(Path(lock_dir_for(two_apps.first, "main", str(two_apps.sup.root))) / "updates.lock")
    before = two_apps.container(two_apps.first)
    try:
        yield two_apps
    finally:
        lock.unlink(missing_ok=True)
    after = two_apps.container(two_apps.first)
    assert (after["Id"], after["State"]) == (before["Id"], "running")


@pytest.mark.docker
@pytest.mark.parametrize(("method", "path", "body", "refused", "allowed"), SCOPED,
                         ids=[f"{m} {p}" for m, p, *_ in SCOPED])
def test_a_key_of_another_app_is_refused_and_the_apps_own_key_passes(
    first_locked: TwoApps, method: str, path: str, body: Any, refused: tuple[int, Any], allowed: int
) -> None:
    dev, app_id = first_locked, first_locked.first
    url, data = _fill(path, app_id), _fill(body, app_id)
    response = dev.call(method, url, data, dev.keys[dev.second])
    status, expected = _fill(refused, app_id)
    if isinstance(expected, str):
        assert response.headers["Content-Type"].startswith("text/plain")
        assert (response.status_code, response.text) == (status, expected)
    else:
        assert (response.status_code, response.json()) == (status, expected)

    response = dev.call(method, url, data, dev.keys[app_id])
    assert response.status_code == allowed, response.text
    if allowed == 423:
        assert response.json()["status"] == "failed" and "lock" in response.json()["message"].lower()
    elif path == "/v1/apps/{app}":
        assert response.json()["appId"] == app_id
    elif path == "/v1/apps/{app}/start":
        assert response.json() == {"containerId": dev.container(app_id)["Id"]}
    elif path.endswith("/state"):
        assert list(response.json()["local"]) == [str(app_id)]
    else:
        assert response.text == "OK"


@pytest.mark.docker
def test_listings_show_only_the_apps_in_the_keys_scope(two_apps: TwoApps) -> None:
    dev = two_apps
    names = {dev.first: "scope-first", dev.second: "scope-second"}
    for app_id, key in dev.keys.items():
        get = lambda path, key=key: dev.call("GET", path, None, key).json()  # noqa: E731
        assert set(get("/v2/applications/state")) == {names[app_id]}
        status = get("/v2/state/status")
        assert [c["appId"] for c in status["containers"]] == [app_id]
        assert {img["appId"] for img in status["images"]} == {app_id}
        assert get("/v2/containerId")["services"] == {"main": dev.container(app_id)["Id"]}
    everything = dev.call("GET", "/v2/applications/state", None, dev.global_key).json()
    assert set(everything) == set(names.values())


@pytest.mark.docker
def test_cleanup_volumes_with_a_scoped_key_spares_the_other_apps_volumes(two_apps: TwoApps) -> None:
    dev, api = two_apps, two_apps.client.api
    orphans = {app_id: f"{app_id}_orphan" for app_id in (dev.first, dev.second)}
    try:
        for name in orphans.values():
            api.create_volume(name, labels={"io.balena.supervised": "true", TEST_LABEL: "1"})

        def present() -> set[str]:
            return {v["Name"] for v in (api.volumes() or {}).get("Volumes") or []}

        response = dev.call("GET", "/v2/cleanup-volumes", None, dev.keys[dev.second])
        assert (response.status_code, response.json()) == (200, {"status": "success"})
        assert orphans[dev.second] not in present()
        assert orphans[dev.first] in present()  # the other app's: out of the key's scope
        response = dev.call("GET", "/v2/cleanup-volumes", None, dev.keys[dev.first])
        assert (response.status_code, response.json()) == (200, {"status": "success"})
        assert orphans[dev.first] not in present()
    finally:
        for name in orphans.values():
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_volume(name, force=True)
