"""``supervisor.client`` against a real ``python -m supervisor`` process: what an app sees.

The first tests need no engine (the supervisor's state engine idles); the ``installed`` ones run a
one-service app on the real engine, scoped with ``--apps`` so nothing else on the engine is touched.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from supervisor import __version__
from supervisor.api.openapi import document
from supervisor.client import (
    ConnectionFailed,
    Locked,
    NotFound,
    SupervisorClient,
    SupervisorError,
    Unauthorized,
)
from supervisor.compose.naming import lock_dir_for
from tests.fixtures.apps import local_target, main_service_app, remove_app, store_managed_target
from tests.fixtures.dbus import HOST_STAYS_UP, wait_back_after_power
from tests.fixtures.device import SupervisorProcess, free_port, global_api_key, wait_for
from tests.fixtures.locks import take_user_lock

# --- configuration from the environment ------------------------------------------------------------

def test_address_and_key_come_from_the_balena_variables(monkeypatch) -> None:
    monkeypatch.setenv("BALENA_SUPERVISOR_ADDRESS", "http://10.114.104.1:48484/")
    monkeypatch.setenv("BALENA_SUPERVISOR_API_KEY", "abc")
    monkeypatch.setenv("RESIN_SUPERVISOR_ADDRESS", "http://resin:1")
    monkeypatch.setenv("RESIN_SUPERVISOR_API_KEY", "old")
    client = SupervisorClient()
    assert (client.address, client.api_key) == ("http://10.114.104.1:48484", "abc")


def test_the_resin_names_still_work(monkeypatch) -> None:
    for name in ("BALENA_SUPERVISOR_ADDRESS", "BALENA_SUPERVISOR_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RESIN_SUPERVISOR_ADDRESS", "http://resin:1")
    monkeypatch.setenv("RESIN_SUPERVISOR_API_KEY", "old")
    client = SupervisorClient()
    assert (client.address, client.api_key) == ("http://resin:1", "old")


def test_explicit_arguments_win_over_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("BALENA_SUPERVISOR_ADDRESS", "http://env:1")
    monkeypatch.setenv("BALENA_SUPERVISOR_API_KEY", "env")
    client = SupervisorClient("http://arg:2", "arg")
    assert (client.address, client.api_key) == ("http://arg:2", "arg")


def test_no_supervisor_listening_is_connection_failed() -> None:
    client = SupervisorClient(f"http://127.0.0.1:{free_port()}", "k", timeout=2)
    with pytest.raises(ConnectionFailed) as err:
        client.version()
    assert err.value.status is None and "cannot reach the supervisor" in err.value.message


# --- auth and typed errors ---------------------------------------------------------------------

def test_missing_and_wrong_keys_are_unauthorized(managed) -> None:
    for key in (None, "0" * 32):
        client = SupervisorClient(managed.url, key)
        assert client.ping() == "OK"  # needs no key
        assert client.healthy() is True
        with pytest.raises(Unauthorized) as err:
            client.version()
        assert (err.value.status, err.value.message) == (401, "Unauthorized")
    assert SupervisorClient(managed.url, managed.key).version() == __version__


def test_regenerate_api_key_switches_the_client_to_the_new_key(managed) -> None:
    client = SupervisorClient(managed.url, managed.key)
    new = client.regenerate_api_key()
    assert new != managed.key and client.api_key == new
    assert client.version() == __version__
    with pytest.raises(Unauthorized):
        SupervisorClient(managed.url, managed.key).version()
    assert new not in managed.output()  # keys never logged, the header's neither


def test_the_document_served_to_the_client_is_the_document(managed) -> None:
    assert SupervisorClient(managed.url, managed.key).openapi() == document()


def test_unknown_route_is_not_found(managed) -> None:
    client = SupervisorClient(managed.url, managed.key)
    with pytest.raises(NotFound) as err:
        client._json("GET", "/v2/nope")
    assert (err.value.status, err.value.message) == (404, "Cannot GET /v2/nope")
    assert err.value.body == {"status": "failed", "message": "Cannot GET /v2/nope"}


def test_other_errors_carry_status_and_message(unmanaged) -> None:
    client = SupervisorClient(unmanaged.url)
    with pytest.raises(SupervisorError) as err:
        client.application_state(123)
    assert type(err.value) is SupervisorError
    assert err.value.status in (409, 503)  # 503 here: this supervisor has no engine
    with pytest.raises(SupervisorError) as err:
        client.device()
    assert err.value.status == 503 and "Docker engine" in err.value.message


# --- endpoints that need no engine ---------------------------------------------------------------

def test_unmanaged_device_needs_no_key(unmanaged) -> None:
    client = SupervisorClient(unmanaged.url)  # no key at all: local mode
    assert client.version() == __version__
    client.blink()
    assert client.update(force=True) is True  # triggered (204)
    assert client.update() is True  # instant updates are on by default
    db = unmanaged.root / "mnt/data/resin-data/balena-supervisor/database.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT OR REPLACE INTO config (key, value) VALUES ('instantUpdates', 'false')")
    assert client.update() is False  # instant updates off, no force: ignored (202)


def test_local_target_round_trip(unmanaged) -> None:
    client = SupervisorClient(unmanaged.url)
    assert client.set_local_target_state({"local": {"name": "client-device", "config": {}, "apps": {}}}) == []
    assert client.set_local_target_state({"local": {"name": "client-device", "apps": {}, "nmae": "x"}}) == [
        "unknown key 'nmae' in local ignored (did you mean 'name'?)"]
    state = client.local_target_state()
    assert state["local"]["name"] == "client-device" and state["local"]["apps"] == {}
    with pytest.raises(SupervisorError) as err:
        client.set_local_target_state({"local": {"apps": {"x": 1}}})
    assert err.value.status == 400 and err.value.body["status"] == "failed"


def test_not_in_local_mode_target_state_is_refused(managed) -> None:
    client = SupervisorClient(managed.url, managed.key)
    with pytest.raises(SupervisorError) as err:
        client.set_local_target_state({"local": {"name": "x", "config": {}, "apps": {}}})
    assert (err.value.status, err.value.message) == (
        400, "Target state can only set when device is in local mode")


def test_stream_logs_starts_with_the_streaming_line_and_hangs_up(unmanaged) -> None:
    logs = SupervisorClient(unmanaged.url).stream_logs()
    assert next(logs) == {"message": "Streaming logs", "isSystem": True}
    logs.close()  # hangs up: the supervisor frees the stream
    assert SupervisorClient(unmanaged.url).version() == __version__


def test_journal_logs_ends_without_follow(unmanaged) -> None:
    lines = list(SupervisorClient(unmanaged.url, timeout=10).journal_logs(count=3, format="short"))
    assert all(isinstance(line, str) for line in lines)


# --- a managed device running one app on the real engine ---------------------------------------------

@dataclass
class Installed:
    sup: SupervisorProcess
    app_id: int
    client: SupervisorClient  # the global key
    scoped: SupervisorClient  # the app's own key

    def lock_file(self) -> Path:
        return Path(lock_dir_for(self.app_id, "main", str(self.sup.root))) / "updates.lock"


@pytest.fixture(scope="module")
def installed(docker_client, make_image, tmp_path_factory, host_bus) -> Iterator[Installed]:
    """A managed device (keys required) whose stored cloud target runs app ``main``, scoped with
    ``--apps``, and the app's scoped key."""
    app_id = random.randint(10**6, 10**9)
    image = f"pysupervisor-test/client-{uuid.uuid4().hex[:12]}:latest"
    make_image(image)
    root = tmp_path_factory.mktemp("client") / "root"
    endpoint = f"http://127.0.0.1:{free_port()}"  # a cloud that refuses connections at once
    app = main_service_app("client-app", image, image_id=801, service_id=81, release_id=3)
    keys = store_managed_target(root, local_target({app_id: app}, "client-device"), endpoint)

    bus, fake = host_bus
    fake.configure(login=HOST_STAYS_UP)  # logind is asked, then fails: the supervisor serves on
    sup = SupervisorProcess(root, free_port(), ["--apps", str(app_id), "--no-host-setup"], bus.env)
    sup.fake = fake  # type: ignore[attr-defined]
    try:
        sup.wait_ready()
        wait_for(lambda: docker_client.api.containers(
            filters={"label": f"io.balena.app-id={app_id}", "status": "running"}), "the app to run", sup)
        sup.wait_applied(global_api_key(root))  # settled: commit stored, install locks released
        yield Installed(sup=sup, app_id=app_id, client=SupervisorClient(sup.url, global_api_key(root)),
                        scoped=SupervisorClient(sup.url, keys[app_id]))
    finally:
        sup.stop(signal.SIGKILL)  # dead before the app goes: a live loop would recreate it
        remove_app(docker_client, app_id)


def _container(docker_client, app_id: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    (entry,) = docker_client.api.containers(all=True, filters={"label": f"io.balena.app-id={app_id}"})
    return entry


def test_reads_of_an_installed_app(installed: Installed, docker_client) -> None:
    client, app_id = installed.client, installed.app_id
    container = _container(docker_client, app_id)
    assert client.container_ids() == {"main": container["Id"]}
    assert client.container_id("main") == container["Id"]
    app = client.v1_app(app_id)
    assert (app["appId"], app["containerId"], app["releaseId"]) == (app_id, container["Id"], 3)
    assert app["env"]["A"] == "1"
    assert not {"BALENA_SUPERVISOR_API_KEY", "RESIN_SUPERVISOR_API_KEY"} & set(app["env"])
    state = client.application_state(app_id)
    assert list(state["local"]) == [str(app_id)]
    assert client.applications_state()["client-app"]["appId"] == app_id
    status = client.state_status()
    assert status["status"] == "success" and [c["serviceName"] for c in status["containers"]] == ["main"]
    assert client.device()["api_port"] == installed.sup.port
    assert client.device_name() == "client-device"


def test_scoped_key_reaches_its_own_app_only(installed: Installed) -> None:
    scoped, app_id, other = installed.scoped, installed.app_id, installed.app_id + 1
    assert scoped.version() == __version__  # any valid key may use the non-app endpoints
    assert scoped.v1_app(app_id)["appId"] == app_id
    assert list(scoped.container_ids()) == ["main"]
    with pytest.raises(Unauthorized) as err:
        scoped.restart_service(other, "main")
    assert (err.value.status, err.value.body) == (401, {"status": "failed", "message": "Unauthorized"})
    with pytest.raises(Unauthorized) as err:
        scoped.v1_app(other)
    assert err.value.message == "Application is not available"
    with pytest.raises(SupervisorError) as err:  # out of scope looks like missing: 409, as the reference
        scoped.application_state(other)
    assert (err.value.status, err.value.message) == (409, f"Application ID does not exist: {other}")


def test_an_app_that_is_not_installed_is_not_found(installed: Installed) -> None:
    client, other = installed.client, installed.app_id + 1
    for action in (client.start_service, client.stop_service):
        with pytest.raises(NotFound) as err:
            action(other, "main")
        assert err.value.status == 404 and err.value.message.startswith("App not found")
    for app_action in (client.restart_app, client.purge_app):  # 503 in the reference
        with pytest.raises(NotFound) as err:
            app_action(other)
        assert err.value.body == {
            "status": "failed", "message": f"Application with ID {other} is not in the current state"}
    with pytest.raises(NotFound) as err:  # 503 in the reference
        client.container_id("nope")
    assert err.value.message == "Could not find service with that name"


def test_stop_and_start_a_service(installed: Installed, docker_client) -> None:
    """A single-container app's one service is the one acted on, whatever the name (as the reference)."""
    client, app_id = installed.client, installed.app_id
    client.stop_service(app_id, "any-name")
    assert _container(docker_client, app_id)["State"] == "exited"
    client.start_service(app_id, "main")
    assert _container(docker_client, app_id)["State"] == "running"


def test_update_lock_is_locked_until_forced(installed: Installed, docker_client) -> None:
    client, app_id = installed.client, installed.app_id
    installed.sup.wait_applied(installed.client.api_key)  # the install's own locks are gone
    lock = take_user_lock(installed.lock_file())  # an app holds its update lock
    try:
        before = _container(docker_client, app_id)["Id"]
        with pytest.raises(Locked) as err:
            client.restart_service(app_id, "main")
        assert err.value.status == 423 and err.value.body["status"] == "failed"
        with pytest.raises(Locked):
            client.restart_app(app_id)
        with pytest.raises(Locked) as err:
            client.reboot()
        assert err.value.body["Data"] == "" and err.value.message == err.value.body["Error"]
        assert _container(docker_client, app_id)["Id"] == before  # nothing was touched
        client.restart_service(app_id, "main", force=True)
        # The new container, not the old one still running before the restart got to it.
        after = wait_for(lambda: _new_running_id(docker_client, app_id, before), "the restarted container")
        assert after != before
    finally:
        lock.unlink(missing_ok=True)
    assert client.reboot() == {"Data": "OK", "Error": None}
    wait_back_after_power(installed.sup, installed.sup.fake, "Reboot")  # type: ignore[attr-defined]


def _running_id(docker_client, app_id: int) -> str | None:  # type: ignore[no-untyped-def]
    entry = _container(docker_client, app_id)
    return entry["Id"] if entry["State"] == "running" else None


def _new_running_id(docker_client, app_id: int, old: str) -> str | None:  # type: ignore[no-untyped-def]
    """The app's one running container once it is not ``old`` (during a restart there may be none, or
    two)."""
    running = docker_client.api.containers(filters={"label": f"io.balena.app-id={app_id}",
                                                    "status": "running"})
    return running[0]["Id"] if len(running) == 1 and running[0]["Id"] != old else None
