"""kill -9 in the middle of every kind of step (issue #17), on the real engine.

The supervisor talks to the engine through :class:`tests.fixtures.engine_proxy.EngineProxy`, which
lets the step's request reach the engine (its effect happens) and never relays the answer: the step is
in flight when the test sends SIGKILL. Steps without an engine request (taking and releasing the update
locks, writing config.json) are killed the moment their log line appears. Then a new supervisor starts
on the same device and must converge: the target's release running, exactly one container per service,
no lock file left behind, the stored target intact, the database sound and no torn file.

20 runs spread over the step kinds: fetch (a pull from a loopback registry), delta apply (the
``docker load`` of an image rebuilt from a delta, against the delta server of
tests/test_delta_update.py), create, start, kill, remove, rename, network create/remove, volume
create/remove, app removal, lock take/release and a config write (a config variable stored in
config.json); the second run of a kind catches the second service's request of the batch. Volumes
are removed by a purge (§1.4): the planner keeps the volumes of an app that stays, and a removed
app's only on a managed device.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from supervisor.atomic import writer_alive
from tests.fixtures.device import SupervisorProcess, wait_for, write_config_json
from tests.fixtures.docker import TEST_LABEL
from tests.fixtures.engine_proxy import EngineProxy
from tests.test_delta_update import TOKEN, publish_releases, remove_images, start_delta_server
from tests.test_reconcile import OWNER_LABEL, SETTLED, remove_app, start_local

pytestmark = pytest.mark.docker

DB = "mnt/data/resin-data/balena-supervisor/database.sqlite"
SERVICES = ("main", "worker")

# (id, engine request held: (method, path regex) or the log line to kill at, transition, skip)
CASES: list[tuple[str, tuple[str, str] | str, str, int]] = [
    ("fetch", ("POST", r"/images/create"), "pull", 0),
    ("delta-apply", ("POST", r"/images/load"), "delta", 0),
    ("create", ("POST", r"/containers/create"), "env", 0),
    ("create-2nd", ("POST", r"/containers/create"), "env", 1),
    ("start", ("POST", r"/containers/[^/]+/start"), "env", 0),
    ("kill", ("POST", r"/containers/[^/]+/stop"), "env", 0),
    ("kill-2nd", ("POST", r"/containers/[^/]+/stop"), "env", 1),
    ("remove", ("DELETE", r"/containers/[^/]+"), "env", 0),
    ("rename", ("POST", r"/containers/[^/]+/rename"), "commit", 0),
    ("rename-2nd", ("POST", r"/containers/[^/]+/rename"), "commit", 1),
    ("network-create", ("POST", r"/networks/create"), "add-network", 0),
    ("network-remove", ("DELETE", r"/networks/[^/]+"), "drop-network", 0),
    ("volume-create", ("POST", r"/volumes/create"), "add-volume", 0),
    ("volume-remove", ("DELETE", r"/volumes/[^/]+"), "purge", 0),
    ("app-remove-network", ("DELETE", r"/networks/[^/]+"), "remove-app", 0),
    ("app-remove", ("POST", r"/containers/[^/]+/stop"), "remove-app", 0),
    ("take-lock", "Taking update locks for app", "env", 0),
    ("release-lock", "Releasing update locks for app", "env", 0),
    ("release-lock-volume", "Releasing update locks for app", "add-volume", 0),
    ("config-write", "Applying configuration change", "config", 0),
]
#: The config variable the config-write run changes (stored in config.json, spec §5.3).
POLL_VAR, POLL_KEY, POLL_MS = "SUPERVISOR_POLL_INTERVAL", "appUpdatePollInterval", 654321


def target(app_id: int, image: str, *, release: int, env: str = "1", networks: dict[str, Any] | None = None,
           volumes: dict[str, Any] | None = None, images: dict[str, str] | None = None,
           removed: bool = False, config: dict[str, str] | None = None) -> dict[str, Any]:
    services = {
        str(11 + i): {"serviceName": name, "imageId": 101 + i, "image": (images or {}).get(name, image),
                      "environment": {"RELEASE": env}, "labels": {TEST_LABEL: "1"}, "running": True,
                      "stop_grace_period": "0s"}
        for i, name in enumerate(SERVICES)
    }
    # Hex with letters: an all-digit commit reads back from a container name as ids (compose/naming.py).
    app = {"name": "killtest", "commit": f"c0ffee{release:026x}", "releaseId": release, "services": services,
           "networks": networks or {}, "volumes": volumes or {}}
    return {"local": {"name": "kill-device", "config": config or {},
                      "apps": {} if removed else {str(app_id): app}}}


Target = dict[str, Any]


def transition(kind: str, app_id: int, image: str, pulled: str | None,
               delta: tuple[str, str] | None = None) -> tuple[Target, Target]:
    """(the release running before the kill, the target being applied when it comes)."""
    if kind == "pull":
        assert pulled is not None
        return target(app_id, image, release=1), target(app_id, image, release=2, images={"main": pulled})
    if kind == "delta":  # main: release 1 of the delta pair, then release 2 by delta
        assert delta is not None
        on = {"SUPERVISOR_DELTA": "1", "SUPERVISOR_DELTA_RETRY_INTERVAL": "200"}
        return (target(app_id, image, release=1, images={"main": delta[0]}, config=on),
                target(app_id, image, release=2, images={"main": delta[1]}, config=on))
    if kind == "config":
        return target(app_id, image, release=1), target(app_id, image, release=2,
                                                        config={POLL_VAR: str(POLL_MS)})
    if kind == "env":
        return target(app_id, image, release=1), target(app_id, image, release=2, env="2")
    if kind == "commit":
        return target(app_id, image, release=1), target(app_id, image, release=2)
    if kind == "add-network":
        return target(app_id, image, release=1), target(app_id, image, release=2, networks={"extra": {}})
    if kind == "drop-network":
        return target(app_id, image, release=1, networks={"extra": {}}), target(app_id, image, release=2)
    if kind == "add-volume":
        return target(app_id, image, release=1), target(app_id, image, release=2, env="2",
                                                        volumes={"data": {}})
    if kind == "purge":  # the planner keeps a kept app's volumes; a purge removes them (§1.4), then
        same = target(app_id, image, release=1, volumes={"data": {}})  # recreates them: same target
        return same, same
    assert kind == "remove-app"
    return (target(app_id, image, release=1, volumes={"data": {}}),
            target(app_id, image, release=2, removed=True))


def kill_in_flight(sup: SupervisorProcess, proxy: EngineProxy, at: tuple[str, str] | str, skip: int,
                   body: dict[str, Any], purge: int | None = None) -> None:
    """Post ``body`` (or purge app ``purge``: its request only returns when done, so it is sent from a
    thread) and SIGKILL the supervisor while the step ``at`` names is in flight."""

    def purge_app() -> None:
        with contextlib.suppress(Exception):  # the supervisor dies while it answers
            sup.post(f"/v2/applications/{purge}/purge", json={})

    def send() -> None:
        if purge is None:
            assert sup.post("/v2/local/target-state", json=body).status_code == 200
        else:
            threading.Thread(target=purge_app, daemon=True).start()

    if isinstance(at, tuple):
        held = proxy.hold(*at, skip=skip)
        send()
        wait_for(held.is_set, f"the held request {at}", sup, context=lambda: proxy.seen[-5:])
    else:
        before = sup.output().count(at)
        send()
        deadline = time.monotonic() + 60
        while sup.output().count(at) == before:  # tight: the lock step is short
            assert time.monotonic() < deadline, f"no {at!r} in:\n{sup.output()[-4000:]}"
            time.sleep(0.002)
    sup.stop(signal.SIGKILL)
    proxy.disarm()



def assert_converged(sup: SupervisorProcess, client: Any, root: Path, app_id: int, body: Target) -> None:
    api = client.api
    app = body["local"]["apps"].get(str(app_id))
    containers = api.containers(all=True, filters={"label": f"io.balena.app-id={app_id}"})
    names = sorted(c["Labels"]["io.balena.service-name"] for c in containers)
    if app is None:  # the app was removed: nothing of it is left but its volumes (local mode keeps them)
        assert containers == []
        assert api.networks(filters={"label": f"io.balena.app-id={app_id}"}) == []
    else:
        assert names == sorted(SERVICES), f"one container per service, got {names}"
        for container in containers:
            assert container["State"] == "running"
            assert container["Names"][0].endswith(app["commit"])
            service = next(svc for svc in app["services"].values()
                           if svc["serviceName"] == container["Labels"]["io.balena.service-name"])
            assert container["ImageID"] == api.inspect_image(service["image"])["Id"]
            env = api.inspect_container(container["Id"])["Config"]["Env"]
            assert f"RELEASE={app['services']['11']['environment']['RELEASE']}" in env
        networks = {n["Name"] for n in api.networks(filters={"label": f"io.balena.app-id={app_id}"})}
        assert networks == {f"{app_id}_{name}" for name in ("default", *app["networks"])}
        volumes = {v["Name"] for v in (api.volumes() or {}).get("Volumes") or []
                   if v["Name"].startswith(f"{app_id}_")}
        assert volumes == {f"{app_id}_{name}" for name in app["volumes"]}
    # The stored target is the one posted, whole.
    stored_local = sup.get("/v2/local/target-state").json()["state"]["local"]
    stored = stored_local["apps"]
    assert set(stored) == set(body["local"]["apps"])
    if app is not None:
        assert stored[str(app_id)]["commit"] == app["commit"]
    for name, value in body["local"]["config"].items():
        assert stored_local["config"].get(name) == value
    # config.json parses, and a config variable it stores has the target's value.
    if (root / "mnt/boot/config.json").exists():
        config_json = json.loads((root / "mnt/boot/config.json").read_text())
        if POLL_VAR in body["local"]["config"]:
            assert config_json[POLL_KEY] == POLL_MS
    # No orphaned lock, no torn file, a sound database.
    lock_dir = root / f"tmp/balena-supervisor/services/{app_id}"
    locks = [p for p in lock_dir.rglob("*") if p.is_file()] if lock_dir.exists() else []
    assert locks == [], f"lock files left: {locks}"
    # A temp file whose writer still runs is a write under way (the positions are written while the
    # services log), not a torn one: only those of dead writers count (``.<name>.<pid>.<random>.tmp``).
    torn = [p for p in root.rglob(".*.tmp") if not writer_alive(p)]
    assert torn == [], f"temp files of an interrupted write left: {torn}"
    with contextlib.closing(sqlite3.connect(root / DB)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.mark.parametrize(("at", "kind", "skip"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_kill_9_in_flight_then_restart_converges(request, start_supervisor, device_root: Path, make_image,
                                                 docker_client, tmp_path: Path, at, kind: str,
                                                 skip: int) -> None:
    app_id, owner = random.randint(10**6, 10**9), uuid.uuid4().hex
    owners: list[str] = []
    image = f"pysupervisor-test/kill-{uuid.uuid4().hex[:10]}:latest"
    make_image(image, labels={OWNER_LABEL: owner})
    pulled = None
    if kind == "pull":
        registry = request.getfixturevalue("registry")
        local = f"pysupervisor-test/kill-pulled-{uuid.uuid4().hex[:10]}:latest"
        make_image(local, files={"/pulled": "yes"}, labels={OWNER_LABEL: owner})
        pulled = registry.push(local, f"kill-{uuid.uuid4().hex[:10]}")
        for ref in (pulled, local):
            docker_client.api.remove_image(ref)
    delta = server = None
    if kind == "delta":  # release 1 only in the registry (pulled first), release 2 by delta from it
        rel = publish_releases(docker_client, make_image, request.getfixturevalue("registry"), keep_v1=False)
        owners.append(rel.owner)
        delta = (rel.v1, rel.v2)
        server, url, _ = start_delta_server(tmp_path / "delta-cache")
        write_config_json(device_root, {"deltaEndpoint": url, "deviceApiKey": TOKEN})
    if kind == "config":
        write_config_json(device_root, {})  # config.json holds the variable (spec §5.3)
    before, after = transition(kind, app_id, image, pulled, delta)
    proxy = EngineProxy(tmp_path / "engine.sock")
    try:
        sup = start_local(start_supervisor, device_root, [app_id], env={"DOCKER_HOST": proxy.docker_host})
        assert sup.post("/v2/local/target-state", json=before).status_code == 200
        wait_for(lambda: SETTLED in sup.output(), "the first release", sup, timeout=120)
        kill_in_flight(sup, proxy, at, skip, after, purge=app_id if kind == "purge" else None)

        again = start_local(start_supervisor, device_root, [app_id])
        wait_for(lambda: SETTLED in again.output(), "the apply after the restart", again, timeout=120)
        assert_converged(again, docker_client, device_root, app_id, after)
        # Settled for good: a further apply changes nothing.
        assert again.post("/v1/update", json={}).status_code in (200, 204)
        wait_for(lambda: again.output().count(SETTLED) >= 2, "a second, empty apply", again)
        assert_converged(again, docker_client, device_root, app_id, after)
        if kind == "delta":  # the kill came in the delta's apply, not before it
            assert "Applied delta for image" in again.output() or "falling back" in again.output()
    finally:
        proxy.close()
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
        remove_app(docker_client, app_id, owner)
        for other in owners:
            remove_images(docker_client, other)
