"""Issue #10 §3-§6 end to end: a real ``python -m supervisor`` on the real engine.

* No loop without a brake: a step the engine answers with an error or a 404 costs it a few calls
  per second at most (counted by a proxy in front of the engine's socket, which also forces the
  failures: tests/fixtures/engine_counter.py).
* Locks and force: an apply that keeps failing holds no lock while it backs off, so API actions
  answer at once; ``POST /v1/update {"force":true}`` removes a user lock and ends the backoff.
* A change of mode never deletes data: a local-mode app keeps running, with its volume's data,
  when the device becomes managed and has no target from its cloud yet.
* A stop leaves services running: SIGINT at several points of an update.
"""

from __future__ import annotations

import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.state.locks import is_supervisor_lock
from tests.fixtures.device import MANAGED, global_api_key, wait_for, write_config_json
from tests.fixtures.engine_counter import EngineProxy
from tests.test_reconcile import app_owner, fake_host, publish, start_local  # noqa: F401 - a fixture
from tests.test_update_strategies import LOCKED_LINE, SETTLED, Lab, new_commit

pytestmark = pytest.mark.docker


@pytest.fixture
def proxy() -> Iterator[EngineProxy]:
    # A short path: unix socket paths are limited to 108 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="engine-proxy-") as directory:
        engine = EngineProxy(Path(directory) / "docker.sock").start()
        try:
            yield engine
        finally:
            engine.close()


@pytest.fixture
def lab(docker_client, make_image, registry, device_root, app_owner, start_supervisor,  # noqa: F811
        proxy) -> Iterator[Lab]:
    """A local-mode supervisor whose engine calls go through ``proxy``; services main and worker."""
    app_id, owner = app_owner
    fake_host(device_root)
    sup = start_local(start_supervisor, device_root, [app_id], env={"DOCKER_HOST": proxy.docker_host})
    image = publish(docker_client, make_image, registry, owner, "main")
    lab = Lab(sup=sup, client=docker_client, app_id=app_id, images={"main": image, "worker": image},
              services=("main", "worker"))
    yield lab
    lab.sup.stop(signal.SIGKILL)  # dead before the app goes: a live loop would recreate it


def per_second(calls: list[tuple[float, str, str]], start: float, seconds: int) -> list[int]:
    return [sum(1 for t, _, _ in calls if start + i <= t < start + i + 1) for i in range(seconds)]


# ------------------------------------------------------------------------------ §3 brake
@pytest.mark.parametrize("status", [404, 500])
def test_a_step_the_engine_refuses_costs_it_a_few_calls_per_second(lab: Lab, proxy: EngineProxy,
                                                                  status: int) -> None:
    """Removing the app's network answered 404 (the supervisor takes it as gone, and plans it
    again) or 500 (a failed step): either way the loop backs off instead of spinning (a 404 loop
    spun at every 200 ms; the issue saw ~170 calls a second)."""
    lab.apply()
    proxy.fail("DELETE", r"^/networks/", status, "forced by the test")
    body = lab.target()
    body["local"]["apps"] = {}  # the app goes, and its network with it
    assert lab.sup.post("/v2/local/target-state", json=body).status_code == 200
    first = wait_for(lambda: [t for t, m, p in proxy.calls() if m == "DELETE" and "/networks/" in p],
                     "the first network removal", lab.sup)[0]
    wait_for(lambda: time.monotonic() > first + 10.5, "10 s of the stuck loop", timeout=30)
    counts = per_second(proxy.calls(), first, 10)
    deletes = [p for t, m, p in proxy.calls(first, first + 10) if m == "DELETE"]
    routes = Counter(f"{m} {p}" for _, m, p in proxy.calls(first, first + 10))
    assert sum(counts) <= 60 and max(counts) <= 20, (counts, routes.most_common(5))
    assert 2 <= len(deletes) <= 6, deletes  # retried, with backoff: 1 s, 2 s, 4 s, ...
    # Idle afterwards too: the retries get rarer, never faster.
    assert sum(counts[5:]) <= sum(counts[:5]), counts


# ------------------------------------------------------------------------------ §4 locks and force
def fail_worker_creation(lab: Lab, proxy: EngineProxy) -> int:
    """A new release whose worker the engine refuses to create: takeLock, kill worker, then the
    start fails on every attempt. The log offset of the apply."""
    lab.apply()
    proxy.fail("POST", r"^/containers/create\?name=worker_", 500, "forced by the test")
    lab.env = {"worker": {"VERSION": "2"}}
    lab.commit = new_commit()
    offset = lab.apply(settle=False)
    wait_for(lambda: lab.sup.output()[offset:].count("Scheduling another update attempt") >= 2,
             "the apply to fail twice", lab.sup)
    return offset


@pytest.mark.parametrize("force", [False, True])
def test_actions_are_not_stuck_behind_a_failing_apply(lab: Lab, proxy: EngineProxy, force: bool) -> None:
    fail_worker_creation(lab, proxy)
    old = lab.one("main")["Id"]
    started = time.monotonic()
    response = lab.sup.post(f"/v2/applications/{lab.app_id}/restart-service",
                            json={"serviceName": "main", "force": force}, timeout=30)
    assert (response.status_code, response.text) == (200, "OK")  # was 423 after 10 s
    assert time.monotonic() - started < 8
    assert lab.one("main")["Id"] != old and lab.one("main")["State"] == "running"


def test_force_on_an_action_deletes_the_user_lock_while_an_apply_fails(lab: Lab, proxy: EngineProxy) -> None:
    offset = fail_worker_creation(lab, proxy)
    wait_for(lambda: lab.sup.output()[offset:].count("Scheduling another update attempt") >= 3,
             "a third failure (after the locks were let go)", lab.sup)
    lab.take_lock("main")
    response = lab.sup.post(f"/v2/applications/{lab.app_id}/restart-service",
                            json={"serviceName": "main"}, timeout=30)
    assert response.status_code == 423
    response = lab.sup.post(f"/v2/applications/{lab.app_id}/restart-service",
                            json={"serviceName": "main", "force": True}, timeout=30)
    assert (response.status_code, response.text) == (200, "OK")
    lock = lab.lock_dir("main") / "updates.lock"
    # The user's lock is gone; the file may be the supervisor's own again (its next round retries
    # the worker's update under the app's locks).
    assert not lock.exists() or is_supervisor_lock(lock)


def test_a_forced_update_removes_the_user_lock_and_ends_the_backoff(lab: Lab) -> None:
    lab.apply()
    old = lab.one("main")["Id"]
    lab.take_lock("main")
    lab.env = {"main": {"VERSION": "2"}}
    lab.commit = new_commit()
    offset = lab.apply(settle=False)
    wait_for(lambda: f"{LOCKED_LINE} 4s" in lab.sup.output()[offset:], "the locked backoff to grow", lab.sup)
    forced = len(lab.sup.output())
    response = lab.sup.post("/v1/update", json={"force": True})
    assert response.status_code == 204
    # The backoff now runs 4 s, 8 s, 16 s... while locked: 25 s is over when the force is ignored.
    wait_for(lambda: SETTLED in lab.sup.output()[forced:], "the forced update", lab.sup, timeout=25)
    assert not (lab.lock_dir("main") / "updates.lock").exists()
    assert lab.one("main")["Id"] != old and lab.one("main")["State"] == "running"
    assert "Overriding the update lock of service main" in lab.sup.output()[forced:]


# ------------------------------------------------------------------------------ §5 mode change
def test_a_device_becoming_managed_keeps_its_apps_and_data_until_its_cloud_sends_a_target(
    lab: Lab, proxy: EngineProxy, start_supervisor, docker_client
) -> None:
    lab.volumes = {"main": ["data:/data"]}
    lab.apply()
    lab.exec("main", "sh", "-c", "echo precious > /data/file")
    before = {c["Id"] for c in lab.containers()}
    app_filter = {"label": f"io.balena.app-id={lab.app_id}"}
    networks = {n["Name"] for n in docker_client.api.networks(filters=app_filter)}
    assert lab.sup.stop() == 0
    root = lab.sup.root
    endpoint = "http://127.0.0.1:9"  # a cloud nobody answers for
    write_config_json(root, {**MANAGED, "apiEndpoint": endpoint})
    lab.sup = start_local(start_supervisor, root, [lab.app_id], env={"DOCKER_HOST": proxy.docker_host})
    wait_for(lambda: "Not applying anything: no target received from the cloud" in lab.sup.output(),
             "the hold to be logged", lab.sup)
    headers = {"Authorization": f"Bearer {global_api_key(root)}"}
    status = lab.sup.get("/v2/state/status", headers=headers).json()
    assert status["awaitingTarget"] is True and status["appState"] == "applied"
    # Asked to apply, it still holds: containers, image, network, volume and its data all stay.
    assert lab.sup.post("/v1/update", json={"force": True}, headers=headers).status_code == 204
    lab.sup.wait_applied(global_api_key(root))
    assert {c["Id"] for c in lab.containers()} == before
    assert all(c["State"] == "running" for c in lab.containers())
    assert lab.image_present(lab.images["main"])
    assert {n["Name"] for n in docker_client.api.networks(filters=app_filter)} == networks
    assert lab.exec("main", "cat", "/data/file") == "precious\n"
    assert lab.sup.output().count("Not applying anything") == 1  # said once
    assert "Removing volume" not in lab.sup.output()

    # The cloud's first target (stored as the binder stores it) drops the app: now it goes, and
    # the log says why its volume is removed.
    store_cloud_target(root, endpoint, apps={})
    offset = len(lab.sup.output())
    assert lab.sup.post("/v1/update", json={}, headers=headers).status_code == 204
    wait_for(lambda: SETTLED in lab.sup.output()[offset:], "the cloud target to be applied", lab.sup)
    assert lab.containers() == []
    assert f"Removing volume data of app {lab.app_id}: the target no longer has the app" in lab.sup.output()
    status = lab.sup.get("/v2/state/status", headers=headers).json()
    assert status["awaitingTarget"] is False


def store_cloud_target(root: Path, endpoint: str, apps: dict) -> None:
    """What the cloud binder does with a target it fetched: store it for its apiEndpoint."""
    from supervisor.db import Database
    from supervisor.state.store import TargetStore
    from supervisor.state.target import from_v2_local

    db = Database(root / "mnt/data/resin-data/balena-supervisor/database.sqlite")
    try:
        device = from_v2_local({"local": {"name": "cloud-device", "config": {}, "apps": apps}},
                               current_name="cloud-device")
        TargetStore(db).set_target(device, endpoint)
    finally:
        db.close()


# ------------------------------------------------------------------------------ §6 graceful stop
STOP_POINTS = {
    "locks taken": "Taking update locks for app",
    "kill under way": "Killing service",
    "service killed": "Killed service",
    "download under way": "Downloading image",
}


@pytest.mark.parametrize("point", list(STOP_POINTS))
def test_sigint_during_an_update_leaves_every_service_running(lab: Lab, publish_image, point: str) -> None:
    lab.services = ("main",)
    lab.grace = "2s"  # busybox ignores SIGTERM as PID 1: each kill takes this long
    lab.apply()
    if point == "download under way":
        lab.new_release(main=publish_image())
    else:
        lab.env = {"main": {"VERSION": "2"}}
        lab.commit = new_commit()
    offset = lab.apply(settle=False)
    wait_for(lambda: STOP_POINTS[point] in lab.sup.output()[offset:], point, lab.sup, interval=0.01)
    assert lab.sup.stop(signal.SIGINT, timeout=90) == 0
    log = lab.sup.output()
    running = lab.running("main")
    assert len(running) == 1, (lab.containers(), log[offset:])
    lines = log.rstrip("\n").splitlines()
    assert lines[-1].endswith("Supervisor stopped"), lines[-5:]  # after every thread's last word


@pytest.fixture
def publish_image(docker_client, make_image, registry, app_owner):  # noqa: F811
    _app_id, owner = app_owner
    return lambda: publish(docker_client, make_image, registry, owner, "main")

