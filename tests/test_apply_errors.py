"""Apply errors reach the API (issue #11), on the real engine and a loopback registry: a fetch of an
image that does not exist, a container that cannot start, a refused update lock and a crash-looping
container are each visible in ``/v2/state/status``, ``/v2/applications/state`` and ``/v1/device``;
``/v2/state/status`` lists each image of the device once, and nothing of an app that was removed."""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.device import SupervisorProcess, wait_for
from tests.fixtures.docker import TEST_LABEL
from tests.test_reconcile import OWNER_LABEL, SETTLED, remove_app, start_local

pytestmark = pytest.mark.docker

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _service(name: str, image: str, image_id: int, **extra: Any) -> dict[str, Any]:
    return {"serviceName": name, "imageId": image_id, "image": image, "environment": {},
            "labels": {TEST_LABEL: "1"}, "running": True, "stop_grace_period": "0s", **extra}


def _target(app_id: int, services: dict[str, dict[str, Any]], commit: str | None = None) -> dict[str, Any]:
    app = {"name": "errors-test", "commit": commit or uuid.uuid4().hex, "releaseId": 1,
           "services": {str(10 + i): svc for i, svc in enumerate(services.values())},
           "volumes": {}, "networks": {}}
    return {"local": {"name": "errors-device", "config": {}, "apps": {str(app_id): app}}}


def _apply(sup: SupervisorProcess, target: dict[str, Any]) -> None:
    response = sup.post("/v2/local/target-state", json=target)
    assert response.status_code == 200, response.text


def _service_error(sup: SupervisorProcess, service: str) -> dict[str, Any] | None:
    body = sup.get("/v2/applications/state").json()
    app = body.get("errors-test") or {}
    return (app.get("services") or {}).get(service, {}).get("error")


def _failed_device(sup: SupervisorProcess) -> dict[str, Any]:
    """``/v1/device`` once it reports the failed update: the loop notes a step's error (what
    ``/v2/applications/state`` shows) just before it counts the round as failed (``update_failed``)."""
    return wait_for(lambda: (d := sup.get("/v1/device").json())["update_failed"] is True and d,
                    "/v1/device to report the failed update", sup,
                    context=lambda: sup.get("/v1/device").json())


@pytest.fixture
def app_owner(docker_client) -> Iterator[tuple[int, str]]:
    """(app id, image owner token) of this test's app; the app is removed afterwards."""
    app_id, owner = random.randint(10**6, 10**9), uuid.uuid4().hex
    try:
        yield app_id, owner
    finally:
        remove_app(docker_client, app_id, owner)


@pytest.fixture
def local_image(make_image, app_owner) -> str:
    _, owner = app_owner
    name = f"pysupervisor-test/errors-{uuid.uuid4().hex[:10]}:latest"
    make_image(name, labels={OWNER_LABEL: owner})
    return name


def test_a_failed_fetch_says_why_everywhere(start_supervisor, device_root: Path, registry, app_owner) -> None:
    app_id, _ = app_owner
    sup = start_local(start_supervisor, device_root, [app_id])
    missing = registry.ref(f"errors-missing-{uuid.uuid4().hex[:10]}")
    _apply(sup, _target(app_id, {"main": _service("main", missing, 101)}))

    error = wait_for(lambda: _service_error(sup, "main"), "the fetch error in /v2/applications/state", sup)
    assert "manifest unknown" in error["message"] and missing in error["message"]
    assert ISO.match(error["since"]) and error["retries"] >= 1
    app = sup.get("/v2/applications/state").json()["errors-test"]
    assert app["services"]["main"]["status"] == "Downloading"  # the reference's string, and now why

    status = sup.get("/v2/state/status").json()
    assert status["appState"] == "applying"
    (image,) = status["images"]
    assert image["name"] == missing and image["serviceName"] == "main"
    assert "manifest unknown" in image["error"]["message"]

    device = _failed_device(sup)
    assert device["update_failed"] is True
    assert device["status"] == "Failed to download image"
    assert "manifest unknown" in device["error"]

    # Retries are counted, the first failure's time is kept.
    later = wait_for(lambda: (e := _service_error(sup, "main")) and e["retries"] >= 2 and e,
                     "a second fetch attempt", sup)
    assert later["since"] == error["since"] and "manifest unknown" in later["message"]


def test_a_failed_start_says_why(start_supervisor, device_root: Path, local_image: str, app_owner) -> None:
    app_id, _ = app_owner
    sup = start_local(start_supervisor, device_root, [app_id])
    broken = _service("main", local_image, 101, command=["/no/such/binary"])
    _apply(sup, _target(app_id, {"main": broken}))

    error = wait_for(lambda: _service_error(sup, "main"), "the start error", sup)
    assert "/no/such/binary" in error["message"]
    status = sup.get("/v2/state/status").json()
    assert status["appState"] == "applying"
    (container,) = status["containers"]
    assert container["status"] != "Running" and "/no/such/binary" in container["error"]["message"]
    device = _failed_device(sup)
    assert device["update_failed"] is True and device["status"] == "Failed to start service"
    assert "/no/such/binary" in device["error"]

    # Fixed: the error goes, the app is applied.
    offset = len(sup.output())
    _apply(sup, _target(app_id, {"main": _service("main", local_image, 101)}))
    wait_for(lambda: SETTLED in sup.output()[offset:], "the fixed target to be applied", sup)
    status = sup.get("/v2/state/status").json()
    assert status["appState"] == "applied" and "error" not in status["containers"][0]
    assert _service_error(sup, "main") is None
    device = sup.get("/v1/device").json()
    assert device["update_failed"] is False and device["status"] == "Idle" and "error" not in device


def test_a_refused_update_lock_says_why(start_supervisor, device_root: Path, local_image: str,
                                        app_owner) -> None:
    app_id, _ = app_owner
    sup = start_local(start_supervisor, device_root, [app_id])
    offset = len(sup.output())
    _apply(sup, _target(app_id, {"main": _service("main", local_image, 101)}))
    wait_for(lambda: SETTLED in sup.output()[offset:], "the first release", sup)

    lock = device_root / f"tmp/balena-supervisor/services/{app_id}/main/updates.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text("held by the app\n")  # what `lockfile /tmp/balena/updates.lock` leaves
    _apply(sup, _target(app_id, {"main": _service("main", local_image, 101, environment={"V": "2"})}))

    error = wait_for(lambda: _service_error(sup, "main"), "the lock error", sup)
    assert "Lockfile exists" in error["message"]
    (container,) = sup.get("/v2/state/status").json()["containers"]
    assert container["status"] == "Running" and "Lockfile exists" in container["error"]["message"]
    device = _failed_device(sup)
    assert device["update_failed"] is True and device["status"] == "Updates locked"

    offset = len(sup.output())
    lock.unlink()
    wait_for(lambda: SETTLED in sup.output()[offset:], "the update once the lock is gone", sup, timeout=120)
    assert _service_error(sup, "main") is None


def test_a_crash_looping_container_is_restarting_not_running(start_supervisor, device_root: Path,
                                                             local_image: str, app_owner) -> None:
    app_id, _ = app_owner
    sup = start_local(start_supervisor, device_root, [app_id])
    crashing = _service("main", local_image, 101, command=["sh", "-c", "echo boom; exit 3"],
                        restart="always")
    _apply(sup, _target(app_id, {"main": crashing}))

    def restarting() -> dict[str, Any] | None:
        body = sup.get("/v2/state/status").json()
        found = [c for c in body["containers"] if c["status"] == "Restarting"]
        return body if found else None

    status = wait_for(restarting, "the container to be reported Restarting", sup)
    assert status["appState"] == "applying"  # not applied while it crashes
    (container,) = status["containers"]
    assert "exited with code 3" in container["error"]["message"]

    error = wait_for(lambda: (e := _service_error(sup, "main")) and e["retries"] >= 2 and e,
                     "the restart count to rise", sup)
    assert "exited with code 3" in error["message"] and ISO.match(error["since"])
    # Between two crashes the engine shows the container running for a moment: wait for the state
    # the loop spends its time in, as a client polling would see it.
    wait_for(lambda: sup.get("/v2/applications/state").json()["errors-test"]["services"]["main"]["status"]
             in ("Restarting", "exited"), "/v2/applications/state to say Restarting", sup)

    device = wait_for(lambda: (d := sup.get("/v1/device").json())["status"] == "Restarting" and d,
                      "/v1/device to say Restarting", sup)
    assert "exited with code 3" in device["error"]


def test_images_are_listed_once_and_go_with_their_app(start_supervisor, device_root: Path,
                                                      local_image: str, make_image, app_owner) -> None:
    app_id, owner = app_owner
    other = f"pysupervisor-test/errors-other-{uuid.uuid4().hex[:10]}:latest"
    make_image(other, labels={OWNER_LABEL: owner}, files={"/other": "1"})
    sup = start_local(start_supervisor, device_root, [app_id])

    commit = ""
    for release in range(4):  # the same two images in four releases: a row per release in the table
        commit = uuid.uuid4().hex
        offset = len(sup.output())
        _apply(sup, _target(app_id, {
            "main": _service("main", local_image, 101, environment={"R": str(release)}),
            "worker": _service("worker", other, 102),
        }, commit))
        wait_for(lambda o=offset: SETTLED in sup.output()[o:], f"release {release}", sup)

    status = sup.get("/v2/state/status").json()
    assert sorted((i["serviceName"], i["name"]) for i in status["images"]) == [
        ("main", local_image), ("worker", other)]
    assert status["release"] == commit
    assert sup.get("/v1/device").json()["commit"] == commit

    offset = len(sup.output())
    _apply(sup, {"local": {"name": "errors-device", "config": {}, "apps": {}}})
    wait_for(lambda: SETTLED in sup.output()[offset:], "the app's removal", sup)
    status = sup.get("/v2/state/status").json()
    assert status["containers"] == [] and status["images"] == [] and "release" not in status
    device = sup.get("/v1/device").json()
    assert "commit" not in device and "status" not in device


def test_a_supervisor_api_service_reaches_the_api_without_host_setup(
        start_supervisor, device_root: Path, local_image: str, app_owner, docker_client) -> None:
    """Under ``--no-host-setup`` there is no supervisor0: the service reaches the API through the host's
    address on its own network (``host.docker.internal``, mapped to ``host-gateway``); the API listens on
    every address, as by default."""
    app_id, _ = app_owner
    # The fixture's 127.0.0.1 is not reachable from a container: listen everywhere (the default).
    sup = start_supervisor(device_root, "--apps", str(app_id), "--no-host-setup", "--host", "0.0.0.0",
                           engine=True)
    poll = ('while true; do wget -q -O - "$BALENA_SUPERVISOR_ADDRESS/v2/applications/state'
            '?apikey=$BALENA_SUPERVISOR_API_KEY" && echo; sleep 1; done')
    service = _service("main", local_image, 101, command=["sh", "-c", poll],
                       labels={TEST_LABEL: "1", "io.balena.features.supervisor-api": "1"})
    offset = len(sup.output())
    _apply(sup, _target(app_id, {"main": service}))
    wait_for(lambda: SETTLED in sup.output()[offset:], "the service to start", sup)

    (entry,) = docker_client.api.containers(filters={"label": f"io.balena.app-id={app_id}"})
    inspect = docker_client.api.inspect_container(entry["Id"])
    env = dict(item.split("=", 1) for item in inspect["Config"]["Env"])
    assert env["BALENA_SUPERVISOR_HOST"] == "host.docker.internal"
    assert env["BALENA_SUPERVISOR_ADDRESS"] == f"http://host.docker.internal:{sup.port}"
    assert "supervisor0" not in inspect["NetworkSettings"]["Networks"]

    def answered() -> bool:
        return '"errors-test"' in docker_client.api.logs(entry["Id"]).decode(errors="replace")

    wait_for(answered, "the service's request to the supervisor API", sup,
             context=lambda: docker_client.api.logs(entry["Id"])[-500:])
    assert sup.get("/v2/state/status").json()["appState"] == "applied"  # no restart loop, no backoff
