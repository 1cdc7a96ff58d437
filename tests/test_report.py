"""The reported shapes (spec §1.4, §2.3, §2.4) from plain observations, and the scope filtering of
the endpoints that use them (an app-scoped key only sees its own app)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from supervisor.apikeys import KeyInfo
from supervisor.compose import Service
from supervisor.state.reconcile import ApplyStatus
from supervisor.state.report import (
    Observation,
    app_states,
    applications_state,
    container_ids,
    created_at_iso,
    device_images,
    legacy_app_state,
    legacy_apps,
    service_error,
    state_status,
    update_status,
    v1_device,
)
from supervisor.state.target import parse_target_device


def svc(name: str, app_id: int = 1, *, image_id: int = 101, release_id: int = 1, commit: str = "c1",
        status: str = "Running", created: str = "2024-05-01T10:00:00.123456789Z",
        container_id: str | None = None) -> Service:
    return Service(
        app_id=app_id, app_uuid=f"uuid{app_id}", service_name=name, service_id=image_id - 90,
        image_id=image_id, release_id=release_id, commit=commit, config={},
        container_id=container_id or f"{name}-{app_id}-{commit}", status=status, created_at=created,
    )


def img(name: str, app_id: int = 1, *, image_id: int = 101, commit: str = "c1", status: str = "Downloaded",
        progress: int | None = None, service: str = "main", release_id: int = 1) -> dict[str, Any]:
    return {
        "name": name, "appId": app_id, "appUuid": f"uuid{app_id}", "serviceId": image_id - 90,
        "serviceName": service, "imageId": image_id, "releaseId": release_id, "commit": commit,
        "dockerImageId": f"sha256:{name}", "status": status, "downloadProgress": progress,
    }


def target(*apps: tuple[int, str, dict[str, str]]) -> Any:
    """apps: (app id, commit, {service: image})."""
    doc = {"name": "dev", "config": {}, "apps": {
        f"uuid{app_id}": {"id": app_id, "name": f"app{app_id}", "class": "fleet", "releases": {commit: {
            "id": 1, "services": {
                name: {"id": 10 + i, "image_id": 101 + i, "image": image, "environment": {}, "labels": {}}
                for i, (name, image) in enumerate(services.items())
            }}}}
        for app_id, commit, services in apps
    }}
    return parse_target_device(doc)


# ----------------------------------------------------------------------------- helpers
@pytest.mark.parametrize(("stamp", "iso"), [
    ("2024-05-01T10:00:00.123456789Z", "2024-05-01T10:00:00.123Z"),
    ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00.000Z"),
    ("2024-05-01T12:00:00.5+02:00", "2024-05-01T10:00:00.500Z"),
    ("nonsense", None),
    (None, None),
])
def test_created_at_iso(stamp: str | None, iso: str | None) -> None:
    assert created_at_iso(stamp) == iso


def test_update_status_precedence() -> None:
    assert update_status([]) == "done"
    assert update_status([{"status": "Running"}]) == "done"
    assert update_status([{"status": "Installed"}, {"status": "Running"}]) == "applying changes"
    assert update_status([{"status": "Awaiting handover"}]) == "applying changes"
    assert update_status([{"status": "Downloaded"}, {"status": "Installing"}]) == "downloaded"
    assert update_status([{"status": "Downloading", "download_progress": 40},
                          {"status": "Downloaded"}]) == "downloading"
    assert update_status([{"status": "Downloading", "download_progress": 100}]) == "done"
    aborted = [{"status": "Aborted"}, {"status": "Downloading", "download_progress": 3}]
    assert update_status(aborted) == "aborted"


# ------------------------------------------------------------------------ /v2/state/status
def test_state_status_reports_the_first_app_only() -> None:
    obs = Observation(
        services=[svc("main", 2, container_id="m2"), svc("main", 1, container_id="m1")],
        images=[img("a", 2, progress=20), img("b", 1, progress=60), img("c", 2)],
        commits={2: "c2", 1: "c1"},
    )
    body = state_status(obs, applying=True)
    assert body["appState"] == "applying"
    assert body["overallDownloadProgress"] == 40  # every image in scope counts
    assert [c["containerId"] for c in body["containers"]] == ["m2"]
    assert [i["name"] for i in body["images"]] == ["a", "c"]
    assert body["release"] == "c2"
    assert body["containers"][0] == {
        "status": "Running", "serviceName": "main", "appId": 2, "imageId": 101, "serviceId": 11,
        "containerId": "m2", "createdAt": "2024-05-01T10:00:00.123Z",
    }
    assert list(body) == ["status", "appState", "overallDownloadProgress", "containers", "images",
                          "awaitingTarget", "release"]
    assert body["awaitingTarget"] is False


def test_state_status_filters_by_scope_and_omits_an_unknown_release() -> None:
    obs = Observation(services=[svc("main", 2), svc("main", 1)], images=[img("a", 2, progress=50)])
    body = state_status(obs, applying=False, allows=lambda app_id: app_id == 1)
    assert body["appState"] == "applied" and body["overallDownloadProgress"] is None
    assert [c["appId"] for c in body["containers"]] == [1] and body["images"] == []
    assert "release" not in body
    empty = state_status(Observation(), applying=False)
    assert empty == {"status": "success", "appState": "applied", "overallDownloadProgress": None,
                     "containers": [], "images": [], "awaitingTarget": False}
    assert state_status(Observation(), applying=False, awaiting_target=True)["awaitingTarget"] is True


def test_container_ids_last_listed_wins_and_scope() -> None:
    obs = Observation(services=[svc("main", container_id="new"), svc("main", container_id="old"),
                                svc("db", 2, container_id="db")])
    assert container_ids(obs) == {"main": "old", "db": "db"}
    assert container_ids(obs, allows=lambda a: a == 2) == {"db": "db"}


# ----------------------------------------------------------------------- legacy (§2.4)
def test_legacy_apps_orders_numerically_and_reports_handover() -> None:
    obs = Observation(
        services=[
            svc("main", 10, image_id=9, release_id=2, created="2024-05-01T10:00:02Z"),
            svc("main", 10, image_id=9, release_id=1, created="2024-05-01T10:00:01Z"),
            svc("api", 9, image_id=100, status="Installed"),
        ],
        images=[img("x", 10, image_id=11, status="Downloading", progress=30),
                img("y", 10, image_id=9, status="Downloaded")],
    )
    apps = legacy_apps(obs)
    assert list(apps) == ["9", "10"]
    assert list(apps["10"]["services"]) == ["9", "11"]
    services = apps["10"]["services"]
    assert services["9"] == {"status": "Handing over", "releaseId": 1, "download_progress": None}
    assert services["11"] == {"status": "Downloading", "releaseId": 1, "download_progress": 30}
    assert apps["9"]["services"]["100"]["status"] == "Installed"


def test_legacy_app_state() -> None:
    obs = Observation(services=[svc("main", 1), svc("main", 2)], commits={1: "c1"})
    assert legacy_app_state(obs, 1) == {"commit": "c1", "local": {"1": {"services": {
        "101": {"status": "Running", "releaseId": 1, "download_progress": None}}}}}
    assert legacy_app_state(obs, 2) == {"local": {"2": {"services": {
        "101": {"status": "Running", "releaseId": 1, "download_progress": None}}}}}
    assert legacy_app_state(obs, 3) is None


def test_v1_device() -> None:
    volatile = {"api_port": 48484, "ip_address": "", "os_version": None, "mac_address": "AA",
                "supervisor_version": "1.0.0", "update_pending": True, "update_failed": False,
                "update_downloaded": False, "extra": "not reported"}
    obs = Observation(images=[img("x", 5, image_id=3, status="Downloading", progress=42)],
                      services=[svc("main", 5, image_id=7)], commits={5: "c5"})
    assert v1_device(obs, volatile, applying=True) == {
        "api_port": 48484, "ip_address": "", "mac_address": "AA", "supervisor_version": "1.0.0",
        "update_pending": True, "update_failed": False, "update_downloaded": False,
        "status": "Downloading", "download_progress": 42,
    }
    settled = v1_device(Observation(services=[svc("main", 5)], commits={5: "c5"}), volatile, applying=False)
    assert (settled["commit"], settled["status"], settled["download_progress"]) == ("c5", "Idle", None)
    assert "status" not in v1_device(Observation(), volatile, applying=False)


# ------------------------------------------------------------------------ apps report
def test_app_states_merges_images_containers_and_target() -> None:
    tgt = target((1, "c2", {"main": "reg/main:2", "db": "reg/db:2"}))
    obs = Observation(
        services=[svc("main", 1, commit="c1")],
        images=[img("reg/main:1", commit="c1"),
                img("reg/main:2", commit="c2", status="Downloading", progress=5)],
        commits={1: "c1"},
    )
    state = app_states(obs, tgt)
    assert state == {"uuid1": {"release_uuid": "c1", "releases": {
        "c1": {"update_status": "done", "services": {"main": {"image": "reg/main:1", "status": "Running"}}},
        "c2": {"update_status": "downloading", "services": {
            "main": {"image": "reg/main:2", "status": "Downloading", "download_progress": 5},
            "db": {"image": "reg/db:2", "status": "Downloading", "download_progress": 0},
        }},
    }}}


def test_app_states_handover_and_rejected() -> None:
    obs = Observation(
        services=[svc("main", 1, commit="c1", created="2024-05-01T10:00:00Z"),
                  svc("main", 1, commit="c2", created="2024-05-01T10:00:05Z")],
        images=[img("reg/main:1", commit="c1"), img("reg/main:2", commit="c2")],
    )
    releases = app_states(obs)["uuid1"]["releases"]
    assert releases["c1"]["services"]["main"]["status"] == "Handing over"
    assert releases["c2"]["services"]["main"]["status"] == "Awaiting handover"
    assert releases["c2"]["update_status"] == "applying changes"
    rejected = app_states(Observation(), target((1, "c9", {"main": "reg/main:9"})), rejected=["uuid1"])
    assert rejected == {"uuid1": {"releases": {"c9": {"update_status": "rejected", "services": {}}}}}


def test_applications_state_is_keyed_by_name_and_scoped() -> None:
    tgt = target((1, "c1", {"main": "reg/main:1"}), (2, "c7", {"web": "reg/web:7"}))
    obs = Observation(services=[svc("main", 1)], images=[img("reg/main:1:latest", 1)])
    body = applications_state(obs, tgt)
    assert body["app1"] == {"appId": 1, "appUuid": "uuid1", "commit": "c1", "updateStatus": "done",
                            "services": {"main": {"status": "Running", "image": "reg/main:1:latest",
                                                  "downloadProgress": None, "releaseId": 1}}}
    assert body["app2"]["updateStatus"] == "downloading"
    assert body["app2"]["services"]["web"]["status"] == "Downloading"
    assert list(applications_state(obs, tgt, allows=lambda a: a == 2)) == ["app2"]


# ------------------------------------------------------------------- endpoints and scope
class FakeSupervisor:
    """Just what the observation endpoints touch."""

    def __init__(self, obs: Observation, tgt: Any) -> None:
        self.obs, self.tgt = obs, tgt
        self.config = SimpleNamespace(local_mode=False)
        scoped = KeyInfo("scoped", 2, "web", ({"type": "app", "appId": 2},))
        self.api_keys = SimpleNamespace(lookup={"scoped": scoped}.get)
        self.reconciler = SimpleNamespace(status=ApplyStatus, manages=lambda _app, _uuid=None: True)
        self.targets = SimpleNamespace(get_target=lambda _source: self.tgt)
        self.target_source = "local"

    def observe(self) -> Observation:
        return self.obs

    def volatile_state(self) -> dict[str, Any]:
        return {"api_port": 1}


@pytest.fixture
def scoped_client() -> Any:
    from supervisor.api import create_app

    tgt = target((1, "c1", {"main": "reg/main:1"}), (2, "c2", {"web": "reg/web:2"}))
    obs = Observation(services=[svc("main", 1, container_id="m"), svc("web", 2, container_id="w")],
                      images=[img("reg/main:1", 1), img("reg/web:2", 2, service="web", commit="c2")],
                      commits={1: "c1", 2: "c2"})
    return create_app(FakeSupervisor(obs, tgt)).test_client()


def test_an_app_scoped_key_sees_only_its_app(scoped_client) -> None:
    key = {"apikey": "scoped"}
    status = scoped_client.get("/v2/state/status", query_string=key).get_json()
    assert [c["containerId"] for c in status["containers"]] == ["w"] and status["release"] == "c2"
    assert scoped_client.get("/v2/containerId", query_string=key).get_json()["services"] == {"web": "w"}
    response = scoped_client.get("/v2/containerId", query_string={**key, "service": "main"})
    assert response.status_code == 404  # out of scope looks like missing (docs/API.md: 404, not 503)
    assert list(scoped_client.get("/v2/applications/state", query_string=key).get_json()) == ["app2"]
    assert scoped_client.get("/v2/applications/2/state", query_string=key).status_code == 200
    response = scoped_client.get("/v2/applications/1/state", query_string=key)
    assert (response.status_code, response.get_json()["message"]) == (409, "Application ID does not exist: 1")
    assert scoped_client.get("/v2/state/status").status_code == 401


# ------------------------------------------------------------------ apply errors (issue #11)
def _result(step: Any, reason: str | None = None, cause: Exception | None = None) -> Any:
    from supervisor.state.executor import StepError, StepResult

    if reason is None:
        return StepResult(step)
    error = StepError(step, reason)
    error.__cause__ = cause
    return StepResult(step, error)


def _image(service: str = "main") -> Any:
    from supervisor.state.current import Image

    return Image(name="reg/app:1", app_id=1, app_uuid="uuid1", service_id=11, service_name=service,
                 image_id=101, release_id=1, commit="c1")


def test_service_errors_count_in_a_row_and_clear_on_success() -> None:
    from supervisor.state.errors import ServiceErrors
    from supervisor.state.images import ImageDownloadBackoffError
    from supervisor.state.steps import Fetch, TakeLock

    now = [1000.0]
    errors = ServiceErrors(clock=lambda: now[0])
    fetch = Fetch(_image(), "main")
    errors.note([_result(fetch, "manifest unknown")])
    now[0] = 1010.0
    errors.note([_result(fetch, "retrying in 1s", ImageDownloadBackoffError("later"))])  # not an attempt
    (error,) = errors.snapshot().values()
    assert (error.message, error.since, error.retries) == ("manifest unknown", 1000.0, 1)
    assert error.action == "fetch"
    errors.note([_result(fetch, "manifest unknown again")])
    assert errors.snapshot()[(1, "main")].retries == 2 and errors.snapshot()[(1, "main")].since == 1000.0

    errors.note([_result(TakeLock(2), "Lockfile exists")])  # no services named: the whole app
    obs = Observation(services=[svc("db", 2)], errors=errors.snapshot())
    assert service_error(obs, 2, "db", obs.services[0])["message"] == "Lockfile exists"
    body = state_status(obs, applying=True)
    assert body["containers"][0]["error"]["retries"] == 1

    errors.note([_result(fetch)])
    assert (1, "main") not in errors.snapshot() and (2, None) in errors.snapshot()
    errors.clear()
    assert errors.snapshot() == {}


def test_failed_fetch_is_listed_and_v1_device_names_the_step() -> None:
    from supervisor.state.errors import ServiceErrors
    from supervisor.state.steps import Fetch

    errors = ServiceErrors(clock=lambda: 0.5)
    errors.note([_result(Fetch(_image(), "main"), "manifest unknown")])
    obs = Observation(errors=errors.snapshot())
    (image,) = state_status(obs, applying=True)["images"]
    assert image["name"] == "reg/app:1" and image["dockerImageId"] is None
    assert image["error"] == {"message": "manifest unknown", "since": "1970-01-01T00:00:00.500Z",
                              "retries": 1}
    volatile = {"api_port": 1, "supervisor_version": "x", "update_failed": True}
    device = v1_device(obs, volatile, applying=True)
    assert device["status"] == "Failed to download image" and device["error"] == "manifest unknown"
    device = v1_device(Observation(), volatile, applying=True, last_error="engine gone")
    assert device["status"] == "Update failed" and device["error"] == "engine gone"


def test_device_images_once_per_service_and_only_for_apps_on_the_device() -> None:
    rows = [img("a", commit="c1"), img("a", commit="c2"), img("a", commit="c3"),
            img("b", commit="c1", service="worker"), img("gone", 9)]
    current = [svc("main", commit="c2")]
    chosen = device_images(rows, current, {1: "c2"})
    assert sorted((i["name"], i["commit"]) for i in chosen) == [("a", "c2"), ("b", "c1")]
    assert device_images(rows, [], {}) == []
