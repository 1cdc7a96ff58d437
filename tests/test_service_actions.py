"""The service-action endpoints (spec §1.3-1.4, §4.4) over real HTTP, on a real engine: restart,
stop/start, purge, reboot and shutdown, with and without an app holding its update lock.

One module-wide supervisor in local mode manages a two-service app (``main`` with a named volume,
``worker``); every test leaves it installed, running and unlocked. The v1 single-container endpoints
get an app of their own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from supervisor.state.actions import (
    APP_NOT_FOUND,
    SERVICE_NOT_FOUND,
    V2_SERVICE_ENDPOINT_ERROR,
)
from tests.fixtures.dbus import HOST_STAYS_UP, wait_back_after_power
from tests.test_reconcile import applied_app, wait_for
from tests.test_update_strategies import (  # noqa: F401 - fixtures used here
    Lab,
    app_owner,
    lab,
)

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def shared(docker_client, make_image, registry, tmp_path_factory, host_bus) -> Iterator[Lab]:
    """On a private system bus whose logind (tests/fixtures/fakehostd.py) records a reboot and then
    fails it, so the supervisor comes back and serves the next test."""
    bus, fake = host_bus
    fake.configure(login=HOST_STAYS_UP)
    root = tmp_path_factory.mktemp("actions") / "root"
    with applied_app(docker_client, make_image, registry, root, Lab, services=("main", "worker"),
                     volumes={"main": ["data:/data"]}, env=bus.env) as app:
        app.fake = fake  # type: ignore[attr-defined]
        yield app


@pytest.fixture
def app(shared: Lab) -> Iterator[Lab]:
    """The shared app, installed and running; any user lock a test took is gone afterwards."""
    for name in shared.services:
        wait_for(lambda name=name: shared.running(name), f"{name} to run", shared.sup)
    yield shared
    for name in shared.services:
        for lock in ("updates.lock", "resin-updates.lock"):
            (shared.lock_dir(name) / lock).unlink(missing_ok=True)
    offset = len(shared.sup.output())
    shared.sup.post("/v1/update", json={"force": True})
    shared.wait_settled(offset)


def ids(dev: Lab) -> dict[str, str]:
    return {c["Labels"]["io.balena.service-name"]: c["Id"] for c in dev.containers()}


def states(dev: Lab) -> dict[str, str]:
    return {c["Labels"]["io.balena.service-name"]: c["State"] for c in dev.containers()}


# ------------------------------------------------------------------------------ locked: 423
LOCKED_JSON = [
    ("/v1/restart", True),
    ("/v2/applications/{app}/restart", False),
    ("/v2/applications/{app}/restart-service", False),
    ("/v2/applications/{app}/stop-service", False),
    ("/v1/purge", True),
    ("/v2/applications/{app}/purge", False),
]


def test_every_action_that_stops_a_service_answers_423_while_a_service_is_locked(app: Lab) -> None:
    before = ids(app)
    app.take_lock("main")
    message = f"Lockfile exists for {{ appId: {app.app_id}, service: main }}"
    for path, v1 in LOCKED_JSON:
        body = {"appId": app.app_id} if v1 else {"serviceName": "worker"}  # the app is locked as a whole
        response = app.sup.post(path.format(app=app.app_id), json=body)
        assert response.status_code == 423, (path, response.text)
        assert response.json() == {"status": "failed", "message": message}, path
    for path in ("/v1/reboot", "/v1/shutdown"):
        response = app.sup.post(path, json={})
        assert (response.status_code, response.json()) == (423, {"Data": "", "Error": message}), path
    assert ids(app) == before and set(states(app).values()) == {"running"}  # nothing was touched
    assert (app.lock_dir("main") / "updates.lock").exists()
    assert not (app.lock_dir("worker") / "updates.lock").exists()  # no supervisor lock left behind
    assert not [c for c in app.fake.calls() if c["member"] in ("Reboot", "PowerOff")]  # type: ignore[attr-defined]

    # start never locks (§1.4): it answers 200 even now.
    response = app.sup.post(f"/v2/applications/{app.app_id}/start-service", json={"serviceName": "worker"})
    assert (response.status_code, response.text) == (200, "OK")


def test_force_restarts_a_locked_service_at_once_and_removes_the_lock(app: Lab) -> None:
    before = ids(app)
    app.take_lock("main")
    response = app.sup.post(f"/v2/applications/{app.app_id}/restart-service",
                            json={"serviceName": "main", "force": True})
    assert (response.status_code, response.text) == (200, "OK")
    after = ids(app)
    assert after["main"] != before["main"] and after["worker"] == before["worker"]
    assert states(app) == {"main": "running", "worker": "running"}
    assert app.lock_files() == []  # the user's lock was overridden and the supervisor's released


def test_force_reboot_while_locked_answers_202(app: Lab) -> None:
    app.take_lock("worker", "/tmp/resin/resin-updates.lock")
    app.fake.forget()  # type: ignore[attr-defined]
    response = app.sup.post("/v1/reboot", json={"force": True})
    assert (response.status_code, response.json()) == (202, {"Data": "OK", "Error": None})
    wait_back_after_power(app.sup, app.fake, "Reboot")  # type: ignore[attr-defined]
    assert "Rebooting" in app.sup.output()
    assert app.lock_files() == []


# ------------------------------------------------------------------------------ the actions
def test_restart_recreates_every_container_of_the_app(app: Lab) -> None:
    before = ids(app)
    response = app.sup.post("/v1/restart", json={"appId": app.app_id})
    assert (response.status_code, response.text) == (200, "OK")
    after = ids(app)
    assert set(after) == {"main", "worker"}
    assert all(after[name] != before[name] for name in after)
    assert states(app) == {"main": "running", "worker": "running"}

    response = app.sup.post(f"/v2/applications/{app.app_id}/restart", json={})
    assert (response.status_code, response.text) == (200, "OK")
    assert ids(app)["main"] != after["main"]
    assert app.lock_files() == []


def test_stop_and_start_one_service(app: Lab) -> None:
    worker = ids(app)["worker"]
    response = app.sup.post(f"/v2/applications/{app.app_id}/stop-service", json={"serviceName": "worker"})
    assert (response.status_code, response.text) == (200, "OK")
    assert states(app) == {"main": "running", "worker": "exited"}
    assert ids(app)["worker"] == worker  # stopped, not removed
    offset = len(app.sup.output())
    app.sup.post("/v1/update", json={"force": True})
    app.wait_settled(offset)
    assert states(app)["worker"] == "exited"  # the state engine leaves a stopped service alone

    image_id = int(app.client.api.inspect_container(worker)["Name"].split("_")[1])  # <service>_<imageId>_...
    response = app.sup.post(f"/v2/applications/{app.app_id}/start-service", json={"imageId": image_id})
    assert (response.status_code, response.text) == (200, "OK")
    assert states(app) == {"main": "running", "worker": "running"}
    assert ids(app)["worker"] == worker


def test_purge_empties_the_apps_volumes(app: Lab) -> None:
    app.exec("main", "sh", "-c", "echo precious > /data/file")
    assert app.exec("main", "cat", "/data/file") == "precious\n"
    volume = f"{app.app_id}_data"
    response = app.sup.post("/v1/purge", json={"appId": app.app_id})
    assert (response.status_code, response.json()) == (200, {"Data": "OK", "Error": ""})
    assert states(app) == {"main": "running", "worker": "running"}
    assert app.exec("main", "ls", "/data") == ""  # a new, empty volume
    assert app.client.api.inspect_volume(volume)["Labels"]["io.balena.supervised"] == "true"
    assert "Purging data for app" in app.sup.output() and "Purged data" in app.sup.output()

    response = app.sup.post(f"/v2/applications/{app.app_id}/purge", json={})
    assert (response.status_code, response.text) == (200, "OK")


def test_shutdown_asks_logind(app: Lab) -> None:
    app.fake.forget()  # type: ignore[attr-defined]
    response = app.sup.post("/v1/shutdown")
    assert (response.status_code, response.json()) == (202, {"Data": "OK", "Error": None})
    wait_back_after_power(app.sup, app.fake, "PowerOff")  # type: ignore[attr-defined]
    assert [(c["member"], c["args"]) for c in app.fake.calls()] == [  # type: ignore[attr-defined]
        ("CanPowerOff", []), ("PowerOff", [False])]


def test_a_host_os_update_blocks_reboot_unless_forced(app: Lab) -> None:
    breadcrumb = app.sup.root / "mnt/state/rollback-health-breadcrumb"
    breadcrumb.parent.mkdir(parents=True, exist_ok=True)
    breadcrumb.touch()
    try:
        for path in ("/v1/reboot", "/v1/shutdown"):
            response = app.sup.post(path, json={})
            assert response.status_code == 423
            assert response.json() == {"Data": "", "Error": "Waiting for Host OS update to finish"}
        app.fake.forget()  # type: ignore[attr-defined]
        response = app.sup.post("/v1/reboot", json={"force": True})
        assert (response.status_code, response.json()) == (202, {"Data": "OK", "Error": None})
        wait_back_after_power(app.sup, app.fake, "Reboot")  # type: ignore[attr-defined]
    finally:
        breadcrumb.unlink()


# ------------------------------------------------------------------------------ bad requests
def test_bad_requests_answer_as_the_reference(app: Lab) -> None:
    post, app_id = app.sup.post, app.app_id
    cases = [
        (post("/v1/restart", json={}), 400, "Missing app id"),
        (post("/v1/purge", json={"appId": "x"}), 400, "Invalid or missing appId"),
        (post("/v1/apps/abc/stop"), 400, "Invalid app id"),
        (post(f"/v2/applications/{app_id}/restart-service", json={}), 400, V2_SERVICE_ENDPOINT_ERROR),
        (post(f"/v2/applications/{app_id}/stop-service", json={"serviceName": "x"}), 404, SERVICE_NOT_FOUND),
        (post("/v2/applications/424242/start-service", json={"serviceName": "main"}), 404, APP_NOT_FOUND),
        # v1: a multi-container app has no single service to act on
        (post(f"/v1/apps/{app_id}/stop"), 400, V2_SERVICE_ENDPOINT_ERROR),
    ]
    for response, status, text in cases:
        assert (response.status_code, response.text) == (status, text)
        assert response.headers["Content-Type"].startswith("text/plain")
    for path, message in (("/v2/applications/abc/purge", "Missing app id"),
                          ("/v2/applications/abc/restart", "Missing app id"),
                          ("/v2/applications/abc/stop-service", "Invalid app id")):
        response = post(path, json={})
        assert (response.status_code, response.json()) == (400, {"status": "failed", "message": message})
    # Not installed: 404 with the reference's message (it answers 503; docs/API.md).
    for path, body in (("/v1/restart", {"appId": 424242}), ("/v1/purge", {"appId": "424242"}),
                       ("/v2/applications/424242/restart", {}), ("/v2/applications/424242/purge", {})):
        response = post(path, json=body)
        assert (response.status_code, response.json()) == (404, {
            "status": "failed", "message": "Application with ID 424242 is not in the current state"}), path
    # An app id is a positive integer: 0 and negatives get the endpoint's invalid-id answer.
    for bad in (0, -3):
        for response, message in ((post("/v1/restart", json={"appId": bad}), "Missing app id"),
                                  (post("/v1/purge", json={"appId": str(bad)}), "Invalid or missing appId"),
                                  (post(f"/v1/apps/{bad}/stop"), "Invalid app id")):
            assert (response.status_code, response.text) == (400, message)
        for path, message in ((f"/v2/applications/{bad}/restart", "Missing app id"),
                              (f"/v2/applications/{bad}/purge", "Missing app id"),
                              (f"/v2/applications/{bad}/start-service", "Invalid app id")):
            response = post(path, json={"serviceName": "main"})
            assert (response.status_code, response.json()) == (400, {"status": "failed", "message": message})
    assert states(app) == {"main": "running", "worker": "running"}


# ------------------------------------------------------------------------------ v1, single container
def test_v1_stop_and_start_answer_the_container_id(lab: Lab) -> None:  # noqa: F811
    lab.apply()
    container = lab.one("main")["Id"]
    response = lab.sup.post(f"/v1/apps/{lab.app_id}/stop")
    assert (response.status_code, response.json()) == (200, {"containerId": container})
    assert lab.one("main")["State"] == "exited"
    response = lab.sup.post(f"/v1/apps/{lab.app_id}/start")
    assert (response.status_code, response.json()) == (200, {"containerId": container})
    assert lab.one("main")["State"] == "running"

    lab.take_lock("main")
    response = lab.sup.post(f"/v1/apps/{lab.app_id}/stop", json={})
    assert response.status_code == 423
    assert lab.one("main")["State"] == "running"
    started = time.monotonic()
    response = lab.sup.post(f"/v1/apps/{lab.app_id}/stop", data={"force": "true"})  # a form body works too
    assert (response.status_code, response.json()) == (200, {"containerId": container})
    assert time.monotonic() - started < 15
    assert lab.one("main")["State"] == "exited"
    assert lab.lock_files() == []
