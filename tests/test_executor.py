"""The executor on the real engine and a loopback registry, step by step and end to end with the
pure planner (read -> plan -> execute until settled).

Each test gets a fresh app (random app id and uuid), database and lock root, and reads back only
its own app, so tests sharing the engine with other sessions never touch what is not theirs.
Everything created carries ``TEST_LABEL`` and is removed after the test.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from supervisor.compose import Network, Service, ServiceContext, Volume
from supervisor.db import Database
from supervisor.state.current import App, CurrentState, Image
from supervisor.state.engine import EngineReader, SupervisorNetwork
from supervisor.state.executor import (
    Executor,
    LockRegistry,
    ResourceRecreationAttemptError,
    StepError,
    UpdatesLockedError,
)
from supervisor.state.images import ImageManager, PullProgress, device_registry_auth
from supervisor.state.planner import PlanContext, image_for, plan
from supervisor.state.steps import (
    Cleanup,
    CreateNetwork,
    CreateVolume,
    EnsureSupervisorNetwork,
    Fetch,
    Handover,
    Kill,
    ReleaseLock,
    RemoveNetwork,
    RemoveVolume,
    RequireReboot,
    Restart,
    SaveImage,
    Start,
    Step,
    Stop,
    TakeLock,
    UpdateCommit,
    UpdateMetadata,
    describe,
)
from tests.fixtures.docker import TEST_LABEL
from tests.fixtures.registry import Registry

pytestmark = pytest.mark.docker

LABELS = {TEST_LABEL: "1"}
#: Images a test builds carry this label with a per-test token, so cleanup only ever sees its own.
OWNER_LABEL = "io.pysupervisor.test.owner"


# ----------------------------------------------------------------------------- helpers
@dataclass
class Device:
    """One simulated device: a database, image manager, lock registry, executor and reader."""

    client: docker.DockerClient
    root: Path
    app_id: int
    app_uuid: str
    token: str
    images: ImageManager
    executor: Executor
    reader: EngineReader
    db: Database
    progress: list[tuple[str, int]] = field(default_factory=list)

    # ---------------------------------------------------------------- targets
    def context(self, *, commit: str, release_id: int, image: str | None) -> ServiceContext:
        info = self.images.inspect_by_name(image) if image else None
        return ServiceContext(
            app_id=self.app_id,
            app_uuid=self.app_uuid,
            app_name="executor-test",
            release_id=release_id,
            commit=commit,
            device_uuid="d" * 32,
            device_type="generic-amd64",
            device_arch="amd64",
            device_name="test-device",
            os_version="balenaOS 6.0.0",
            lock_root=str(self.root),
            image_info=info,
        )

    def service(
        self,
        name: str,
        image: str,
        *,
        commit: str = "c1",
        release_id: int = 1,
        image_id: int | None = None,
        service_id: int | None = None,
        environment: Mapping[str, str] | None = None,
        composition: Mapping[str, Any] | None = None,
        running: bool = True,
        labels: Mapping[str, str] | None = None,
    ) -> Service:
        """A target service; ``config.image`` is the engine id once the image is present."""
        wire = {
            "serviceName": name,
            "id": service_id if service_id is not None else _stable_id(name, self.app_id),
            "image_id": image_id if image_id is not None else _stable_id(name, self.app_id) + release_id,
            "image": image,
            "environment": dict(environment or {}),
            "labels": {**LABELS, **(labels or {})},
            "running": running,
            # Busybox's sleep ignores SIGTERM as PID 1: without this every kill takes 10 s.
            "composition": {"stop_grace_period": "0s", **(composition or {})},
        }
        return Service.from_target(wire, self.context(commit=commit, release_id=release_id, image=image))

    def network(self, name: str = "default", cfg: Mapping[str, Any] | None = None) -> Network:
        cfg = dict(cfg or {})
        cfg["labels"] = {**LABELS, **(cfg.get("labels") or {})}
        return Network.from_compose(self.app_id, self.app_uuid, name, cfg)

    def volume(self, name: str = "data", cfg: Mapping[str, Any] | None = None) -> Volume:
        cfg = dict(cfg or {})
        cfg["labels"] = {**LABELS, **(cfg.get("labels") or {})}
        return Volume.from_compose(self.app_id, self.app_uuid, name, cfg)

    def app(self, *services: Service, commit: str = "c1", volumes: tuple[Volume, ...] = ()) -> dict[str, App]:
        app = App(
            app_id=self.app_id,
            app_uuid=self.app_uuid,
            commit=commit,
            services=services,
            networks=(self.network(),),
            volumes=volumes,
        )
        return {self.app_uuid: app}

    # ---------------------------------------------------------------- engine
    def read(self) -> CurrentState:
        return self.reader.read(apps={self.app_uuid})

    def current(self, name: str) -> Service:
        app = self.read().apps[self.app_uuid]
        (svc,) = [s for s in app.services if s.service_name == name]
        return svc

    def containers(self) -> list[dict[str, Any]]:
        return self.client.api.containers(all=True, filters={"label": f"io.balena.app-id={self.app_id}"})

    def inspect(self, name_or_id: str) -> dict[str, Any]:
        return self.client.api.inspect_container(name_or_id)

    def converge(self, target: Callable[[], dict[str, App]], *, max_rounds: int = 25) -> list[list[str]]:
        """read -> plan -> execute_batch until the planner has nothing left; the batches run.

        ``target`` is rebuilt every round: once an image is present the target names it by its
        engine id, as the supervisor's own target builder does.
        """
        batches: list[list[str]] = []
        for _ in range(max_rounds):
            steps = plan(self.read(), target(), PlanContext())
            if not steps:
                return batches
            batches.append([describe(s) for s in steps])
            failed = [r.error for r in self.executor.execute_batch(steps) if r.error is not None]
            assert not failed, f"{failed} after {batches}"
        raise AssertionError(f"no convergence in {max_rounds} rounds: {batches[-4:]}")


def _stable_id(name: str, app_id: int) -> int:
    """An id stable for a service of one test's app, distinct across apps: container names
    (`main_<imageId>_<releaseId>_<commit>`) are engine-wide, shared with concurrent runs."""
    return (app_id % 100_000) * 10_000 + sum(map(ord, name))


def _fast_clock() -> tuple[Callable[[], float], Callable[[float], None]]:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    return (lambda: now[0]), sleep


def make_device(
    client: docker.DockerClient,
    root: Path,
    *,
    auth: Any = None,
    clock: tuple[Callable[[], float], Callable[[float], None]] | None = None,
) -> Device:
    token = uuid.uuid4().hex
    db = Database(root / "database.sqlite")
    progress: list[tuple[str, int]] = []
    images = ImageManager(
        client,
        db,
        auth=auth,
        on_progress=lambda name, pct: progress.append((name, pct)),
        cleanup_filter=lambda entry: (entry.get("Labels") or {}).get(OWNER_LABEL) == token,
    )
    locks = LockRegistry(str(root))
    now, sleep = clock or _fast_clock()
    executor = Executor(
        client,
        db,
        images,
        locks=locks,
        lock_root=str(root),
        device_name="test-device",
        device_type="generic-amd64",
        clock=now,
        sleep=sleep,
        handover_poll_s=0.05,
    )
    # supervisor0 is the machine's business, not a test's (see the ensureSupervisorNetwork test).
    reader = EngineReader(
        client, db, images, locks=locks, supervisor_network=None, volatile=executor.volatile_status
    )
    executor.on_change = reader.invalidate  # as the supervisor wires them
    return Device(
        client=client,
        root=root,
        app_id=random.randint(10**6, 10**9),
        app_uuid=uuid.uuid4().hex,
        token=token,
        images=images,
        executor=executor,
        reader=reader,
        db=db,
        progress=progress,
    )


def forget_app(client: docker.DockerClient, device: Device, cleanup: list) -> None:
    """Queue everything of the device's app for removal (containers first, by the fixture)."""
    api = client.api
    app_filter = {"label": f"io.balena.app-id={device.app_id}"}
    cleanup.extend(c["Id"] for c in api.containers(all=True, filters=app_filter))
    cleanup.extend(n["Id"] for n in api.networks(filters=app_filter))
    volumes = api.volumes(filters={"label": f"io.balena.app-uuid={device.app_uuid}"}) or {}
    cleanup.extend(v["Name"] for v in volumes.get("Volumes") or [])
    owned = api.images(filters={"label": f"{OWNER_LABEL}={device.token}"})
    cleanup.extend(i["Id"] for i in owned)


@pytest.fixture
def device(docker_client, docker_cleanup, tmp_path) -> Iterator[Device]:
    dev = make_device(docker_client, tmp_path)
    yield dev
    forget_app(docker_client, dev, docker_cleanup)
    dev.db.close()


def publish(
    client: docker.DockerClient,
    make_image,
    registry: Registry,
    device: Device,
    repo: str,
    *,
    files: Mapping[str, str] | None = None,
    cmd: list[str] | None = None,
) -> tuple[str, str]:
    """Build a unique image, push it, and delete it from the engine so a fetch must pull it.
    Returns (registry reference, engine id)."""
    token = uuid.uuid4().hex[:12]
    local = f"pysupervisor-test/exec-{repo}-{token}:latest"
    image_id = make_image(
        local,
        files={"/token": token, **(files or {})},
        cmd=cmd,
        labels={OWNER_LABEL: device.token},
    )
    ref = registry.push(local, f"exec-{repo}-{token}")
    client.api.remove_image(image_id, force=True)
    return ref, image_id


def engine_has(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.api.inspect_image(ref)
    except docker.errors.NotFound:
        return False
    return True


# --------------------------------------------------------------------------- fetch
def test_fetch_pulls_with_progress_and_records_the_image(docker_client, make_image, registry, device):
    ref, image_id = publish(
        docker_client, make_image, registry, device, "fetch", files={"/big": "x" * 200_000}
    )
    target = device.service("main", ref)
    assert not engine_has(docker_client, ref)
    seen: list[tuple[int, frozenset[str], dict[str, Any]]] = []

    def on_progress(name: str, percentage: int) -> None:
        (entry,) = [e for e in device.images.status() if e["name"] == name]
        seen.append((percentage, device.images.downloading(), entry))

    device.images.on_progress = on_progress
    device.executor.execute(Fetch(image_for(target), "main"))

    assert docker_client.api.inspect_image(ref)["Id"] == image_id
    values = [percentage for percentage, _, _ in seen]
    assert values[0] == 0 and values[-1] == 100 and len(values) > 2
    assert values == sorted(values)
    for percentage, downloading, entry in seen[:-1]:  # while it downloads
        assert downloading == {ref}
        assert (entry["status"], entry["downloadProgress"]) == ("Downloading", percentage)
    assert seen[-1][1] == frozenset()
    assert (seen[-1][2]["status"], seen[-1][2]["dockerImageId"]) == ("Downloaded", image_id)
    (record,) = device.images.records()
    assert record.name == ref and record.docker_image_id == image_id
    assert record.service_name == "main" and record.app_uuid == device.app_uuid


def test_fetch_of_a_present_image_records_it_without_pulling(docker_client, make_image, registry, device):
    ref, image_id = publish(docker_client, make_image, registry, device, "present")
    docker_client.api.pull(ref)
    device.executor.execute(Fetch(image_for(device.service("main", ref)), "main"))
    assert [r.docker_image_id for r in device.images.records()] == [image_id]
    assert [pct for _, pct in device.progress] == [100]


def test_two_services_fetching_one_image_in_a_batch(docker_client, make_image, registry, device):
    ref, image_id = publish(docker_client, make_image, registry, device, "shared")
    fetches = [Fetch(image_for(device.service(name, ref)), name) for name in ("one", "two")]
    assert all(r.ok for r in device.executor.execute_batch(fetches))
    records = device.images.records()
    assert sorted(r.service_name for r in records) == ["one", "two"]
    assert {r.docker_image_id for r in records} == {image_id}


def test_fetch_of_a_missing_image_fails_naming_the_image(registry, device):
    ref = registry.ref(f"missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(StepError) as caught:
        device.executor.execute(Fetch(image_for(device.service("main", ref)), "main"))
    assert ref in str(caught.value) and "'main'" in str(caught.value)
    assert caught.value.action == "fetch"
    assert device.images.records() == []
    # A failed image backs off instead of hammering the registry.
    with pytest.raises(StepError, match="retrying"):
        device.executor.execute(Fetch(image_for(device.service("main", ref)), "main"))


def test_fetch_from_an_authenticated_registry(
    docker_client, make_image, registry_factory, tmp_path, docker_cleanup, caplog
):
    caplog.set_level(logging.DEBUG)
    device_uuid, api_key = uuid.uuid4().hex, uuid.uuid4().hex
    private = registry_factory(auth=(f"d_{device_uuid}", api_key))
    auth = device_registry_auth(lambda: device_uuid, lambda: api_key, lambda: True)
    unmanaged = device_registry_auth(lambda: device_uuid, lambda: api_key, lambda: False)
    assert unmanaged(private.host) is None

    anonymous = make_device(docker_client, tmp_path / "anonymous")
    authed = make_device(docker_client, tmp_path / "authed", auth=auth)
    authed.app_id, authed.app_uuid, authed.token = anonymous.app_id, anonymous.app_uuid, anonymous.token
    try:
        ref, image_id = publish(docker_client, make_image, private, anonymous, "private")
        fetch = Fetch(image_for(anonymous.service("main", ref)), "main")
        with pytest.raises(StepError) as caught:
            anonymous.executor.execute(fetch)
        assert ref in str(caught.value)
        assert api_key not in str(caught.value)

        authed.executor.execute(fetch)
        assert docker_client.api.inspect_image(ref)["Id"] == image_id
        assert ref in caplog.text and api_key not in caplog.text  # logged, never the password
    finally:
        forget_app(docker_client, anonymous, docker_cleanup)


def test_pull_progress_folds_layers_into_one_rising_percentage():
    progress = PullProgress()
    events = [
        {"status": "Pulling from x", "id": "latest"},
        {"status": "Pulling fs layer", "id": "a"},
        {"status": "Already exists", "id": "b"},
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 50, "total": 100}},
        {"status": "Download complete", "id": "a"},
        {"status": "Extracting", "id": "a", "progressDetail": {"current": 100, "total": 100}},
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 1, "total": 100}},
        {"status": "Pull complete", "id": "a"},
    ]
    seen = []
    for event in events:
        progress.update(event)
        seen.append(progress.percentage)
    assert seen == [0, 0, 50, 62, 75, 99, 99, 99]


# --------------------------------------------------------------------------- containers
def test_start_creates_the_named_labelled_container_on_its_networks(busybox_image, device):
    ex = device.executor
    target = device.service("main", busybox_image, composition={"networks": ["default", "extra"]})
    ex.execute(CreateNetwork(device.network()))
    ex.execute(CreateNetwork(device.network("extra")))

    ex.execute(Start(target))
    ex.execute(Start(target))  # already there and running: nothing new

    (entry,) = device.containers()
    assert entry["Names"] == [f"/main_{target.image_id}_1_c1"]
    info = device.inspect(entry["Id"])
    assert info["State"]["Running"]
    labels = info["Config"]["Labels"]
    assert labels["io.balena.supervised"] == "true"
    assert labels["io.balena.app-id"] == str(device.app_id)
    assert labels["io.balena.app-uuid"] == device.app_uuid
    assert labels["io.balena.service-name"] == "main"
    assert labels["io.balena.service-id"] == str(target.service_id)
    networks = info["NetworkSettings"]["Networks"]
    assert set(networks) == {f"{device.app_uuid}_default", f"{device.app_uuid}_extra"}
    assert "main" in networks[f"{device.app_uuid}_extra"]["Aliases"]
    assert device.current("main").is_equal(target)


def test_stop_restart_and_kill(busybox_image, device):
    target = device.service("main", busybox_image)
    device.executor.execute(CreateNetwork(device.network()))
    device.executor.execute(Start(target))
    first = device.current("main")

    device.executor.execute(Stop(first))
    assert device.current("main").status == "exited"
    device.executor.execute(Stop(first))  # 304: already stopped
    device.executor.execute(Restart(first, target))
    second = device.current("main")
    assert second.container_id != first.container_id and second.status == "Running"

    device.executor.execute(Kill(second))
    assert device.containers() == []
    device.executor.execute(Kill(second))  # 404: already stopped and removed


def test_update_metadata_renames_and_removes_a_vanished_container(busybox_image, device):
    device.executor.execute(CreateNetwork(device.network()))
    device.executor.execute(Start(device.service("main", busybox_image)))
    current = device.current("main")
    newer = device.service("main", busybox_image, commit="c2", release_id=2)

    device.executor.execute(UpdateMetadata(current, newer))

    (entry,) = device.containers()
    assert entry["Id"] == current.container_id
    assert entry["Names"] == [f"/main_{newer.image_id}_2_c2"]
    assert device.current("main").is_equal(newer)
    gone = replace(current, container_id="0" * 64)
    device.executor.execute(UpdateMetadata(gone, newer))


def test_networks_and_volumes_are_created_once_and_removed(device, docker_client):
    ex, api = device.executor, docker_client.api
    net, vol = device.network("backend", {"internal": True}), device.volume("store")
    for _ in range(2):  # the same config again is a no-op
        ex.execute(CreateNetwork(net))
        ex.execute(CreateVolume(vol))
    assert api.inspect_network(net.docker_name)["Internal"] is True
    assert api.inspect_volume(vol.docker_name)["Labels"]["io.balena.app-uuid"] == device.app_uuid

    with pytest.raises(StepError) as caught:
        ex.execute(CreateNetwork(device.network("backend", {"internal": False})))
    assert isinstance(caught.value.__cause__, ResourceRecreationAttemptError)
    assert str(caught.value.__cause__) == (
        f"Trying to create network with name: {net.docker_name}, but a network with that name "
        "and a different configuration already exists"
    )
    with pytest.raises(StepError, match="a volume with that name and a different configuration"):
        ex.execute(CreateVolume(device.volume("store", {"labels": {"other": "x"}})))

    ex.execute(RemoveNetwork(net))
    ex.execute(RemoveVolume(vol))
    assert api.networks(names=[net.docker_name]) == []
    with pytest.raises(docker.errors.NotFound):
        api.inspect_volume(vol.docker_name)
    ex.execute(RemoveVolume(vol))  # already gone


def test_volume_data_survives_a_kill_and_a_start(busybox_image, device, docker_client):
    api = device.client.api
    target = device.service("main", busybox_image, composition={"volumes": ["data:/data"]})
    device.executor.execute_batch([CreateNetwork(device.network()), CreateVolume(device.volume())])
    device.executor.execute(Start(target))
    first = device.current("main")
    exec_id = api.exec_create(first.container_id, ["sh", "-c", "echo kept > /data/file"])["Id"]
    api.exec_start(exec_id)

    device.executor.execute(Kill(first))
    device.executor.execute(Start(target))

    second = device.current("main")
    assert second.container_id != first.container_id
    exec_id = api.exec_create(second.container_id, ["cat", "/data/file"])["Id"]
    assert api.exec_start(exec_id) == b"kept\n"


def test_handover_starts_the_new_then_kills_the_old_on_the_signal(
    busybox_image, docker_client, tmp_path, docker_cleanup
):
    device = make_device(docker_client, tmp_path, clock=(time.monotonic, time.sleep))
    try:
        device.executor.execute(CreateNetwork(device.network()))
        device.executor.execute(Start(device.service("main", busybox_image)))
        old = device.current("main")
        signal = ["sh", "-c", "touch /tmp/balena/handover-complete && exec sleep 100000"]
        new = device.service(
            "main", busybox_image, commit="c2", release_id=2, composition={"command": signal}
        )

        started = time.monotonic()
        device.executor.execute(Handover(old, new, timeout_ms=30_000))

        assert time.monotonic() - started < 15
        (entry,) = device.containers()
        assert entry["Names"] == [f"/main_{new.image_id}_2_c2"] and entry["State"] == "running"
        lock_dir = tmp_path / f"tmp/balena-supervisor/services/{device.app_id}/main"
        assert not (lock_dir / "handover-complete").exists()  # consumed
    finally:
        forget_app(docker_client, device, docker_cleanup)


def test_handover_kills_the_old_once_the_timeout_passes(busybox_image, device):
    device.executor.execute(CreateNetwork(device.network()))
    device.executor.execute(Start(device.service("main", busybox_image)))
    old = device.current("main")
    new = device.service("main", busybox_image, commit="c2", release_id=2, environment={"V": "2"})

    device.executor.execute(Handover(old, new, timeout_ms=60_000))  # a fast clock: no real minute

    (entry,) = device.containers()
    assert entry["Id"] != old.container_id
    assert device.current("main").is_equal(new)


def test_execute_batch_reports_a_failure_and_completes_the_rest(busybox_image, registry, device):
    missing = device.service("broken", registry.ref(f"missing-{uuid.uuid4().hex[:8]}"))
    device.executor.execute(CreateNetwork(device.network()))
    good = device.service("good", busybox_image)
    steps: list[Step] = [Fetch(image_for(missing), "broken"), Start(good), CreateVolume(device.volume())]

    results = device.executor.execute_batch(steps)

    assert [r.ok for r in results] == [False, True, True]
    assert "broken" in str(results[0].error) and missing.image_name in str(results[0].error)
    assert device.current("good").status == "Running"


def test_lock_reboot_and_commit_steps(device):
    ex = device.executor
    lock_dir = device.root / f"tmp/balena-supervisor/services/{device.app_id}/main"
    ex.execute(TakeLock(device.app_id, ("main",)))
    assert sorted(p.name for p in lock_dir.iterdir()) == ["resin-updates.lock", "updates.lock"]
    assert device.read().locks_held == {device.app_id}
    ex.execute(TakeLock(device.app_id, ("main",)))  # held already: fine
    ex.execute(ReleaseLock(device.app_id))
    assert list(lock_dir.iterdir()) == []
    assert device.read().locks_held == frozenset()

    (lock_dir / "resin-updates.lock").touch()  # a user's lock
    with pytest.raises(StepError) as caught:
        ex.execute(TakeLock(device.app_id, ("main",)))
    assert caught.value.locked and isinstance(caught.value.__cause__, UpdatesLockedError)
    assert "Lockfile exists for { appId: " in str(caught.value)
    assert not (lock_dir / "updates.lock").exists()  # all or nothing
    ex.execute(TakeLock(device.app_id, ("main",), force=True))
    ex.execute(ReleaseLock(device.app_id))

    ex.execute(RequireReboot("main"))
    assert (device.root / "tmp/balena-supervisor/reboot-after-apply").is_file()

    ex.execute(UpdateCommit(device.app_id, "abc"))
    ex.execute(UpdateCommit(device.app_id, "def"))
    rows = device.db.query('SELECT "commit" FROM currentCommit WHERE appId = ?', (device.app_id,))
    assert [r["commit"] for r in rows] == ["def"]


def test_ensure_supervisor_network_creates_and_repairs_it(docker_client, device, docker_cleanup):
    api = docker_client.api
    taken = {c.get("Subnet") for n in api.networks() for c in (n.get("IPAM") or {}).get("Config") or []}
    octet = next(o for o in random.sample(range(16, 250), 200) if f"10.213.{o}.0/28" not in taken)
    name = f"pysup-test-{uuid.uuid4().hex[:8]}"
    spec = SupervisorNetwork(
        name=name,
        bridge_name=f"pst{uuid.uuid4().hex[:10]}",
        subnet=f"10.213.{octet}.0/28",
        gateway=f"10.213.{octet}.1",
        labels=LABELS,
    )
    wrong = api.create_network(name, driver="bridge", labels=LABELS)
    docker_cleanup.append(wrong["Id"])
    ex = Executor(
        docker_client, device.db, device.images, lock_root=str(device.root), supervisor_network=spec
    )
    reader = EngineReader(docker_client, device.db, device.images, supervisor_network=spec)
    assert not reader.read(apps=()).supervisor_network_ready

    ex.execute(EnsureSupervisorNetwork())
    ex.execute(EnsureSupervisorNetwork())

    (entry,) = [n for n in api.networks(names=[name]) if n["Name"] == name]
    docker_cleanup.append(entry["Id"])
    assert entry["Id"] != wrong["Id"]
    assert entry["Options"]["com.docker.network.bridge.name"] == spec.bridge_name
    assert entry["IPAM"]["Config"][0] == {"Subnet": spec.subnet, "Gateway": spec.gateway}
    assert reader.read(apps=()).supervisor_network_ready


# --------------------------------------------------------------------------- images
def test_save_image_records_an_engine_image(busybox_image, device, docker_client):
    record = image_for(device.service("main", busybox_image))
    device.executor.execute(SaveImage(replace(record, docker_image_id=None)))
    (saved,) = device.images.records()
    assert saved.docker_image_id == docker_client.api.inspect_image(busybox_image)["Id"]
    assert device.read().available_images == (saved,)


def test_cleanup_removes_dangling_images_but_not_recorded_ones(make_image, device, docker_client):
    base = f"pysupervisor-test/exec-cleanup-{device.token[:8]}"
    owner = {OWNER_LABEL: device.token}
    dangling = make_image(base, files={"/v": "1"}, labels=owner)
    kept = make_image(f"{base}-kept", files={"/v": "2"}, labels=owner)
    # New images take the tags: the first two are dangling now; the second is recorded below.
    make_image(base, files={"/v": "3"}, labels=owner)
    make_image(f"{base}-kept", files={"/v": "4"}, labels=owner)
    device.images.save(
        Image(f"{base}-kept:latest", device.app_id, device.app_uuid, 1, "main", 1, 1, "c", kept)
    )
    assert device.read().cleanup_needed

    device.executor.execute(Cleanup())

    assert not engine_has(docker_client, dangling)
    assert engine_has(docker_client, kept)
    assert not device.read().cleanup_needed


# --------------------------------------------------------------------------- end to end
@dataclass
class Release:
    """A two-service release; ``worker`` depends on ``main``."""

    device: Device
    images: dict[str, str]
    commit: str = "c1"
    release_id: int = 1
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    services: tuple[str, ...] = ("main", "worker")

    def target(self) -> dict[str, App]:
        composition = {
            "main": {"stop_grace_period": "1s"},
            "worker": {"depends_on": ["main"], "stop_grace_period": "1s"},
        }
        services = [
            self.device.service(
                name,
                self.images[name],
                commit=self.commit,
                release_id=self.release_id,
                image_id=_stable_id(name, self.device.app_id),
                environment=self.env.get(name),
                composition=composition[name],
            )
            for name in self.services
        ]
        return self.device.app(*services, commit=self.commit)


@pytest.fixture
def release(docker_client, make_image, registry, device) -> Release:
    images = {
        name: publish(docker_client, make_image, registry, device, name)[0] for name in ("main", "worker")
    }
    rel = Release(device, images)
    device.converge(rel.target)
    return rel


def _started_at(info: Mapping[str, Any]) -> float:
    stamp = info["State"]["StartedAt"]  # RFC 3339 with up to 9 fractional digits
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float(f"0.{fraction or 0}")


def _by_name(device: Device) -> dict[str, dict[str, Any]]:
    return {c["Labels"]["io.balena.service-name"]: c for c in device.containers()}


def test_install_pulls_starts_in_dependency_order_and_settles(release, device):
    containers = _by_name(device)
    assert set(containers) == {"main", "worker"}
    for name, entry in containers.items():
        assert entry["State"] == "running"
        assert entry["Names"] == [f"/{name}_{_stable_id(name, device.app_id)}_1_c1"]
        assert entry["Labels"][TEST_LABEL] == "1"
        assert entry["Labels"]["io.balena.app-uuid"] == device.app_uuid
    started = {name: _started_at(device.inspect(c["Id"])) for name, c in containers.items()}
    assert started["main"] < started["worker"]
    current = device.read()
    app = current.apps[device.app_uuid]
    assert app.commit == "c1"
    assert {i.name for i in current.available_images} == set(release.images.values())
    assert current.locks_held == frozenset() and current.lock_leftovers == frozenset()
    assert plan(current, release.target()) == []


def test_env_change_recreates_only_that_service(release, device):
    before = {name: c["Id"] for name, c in _by_name(device).items()}
    release.env = {"worker": {"MODE": "fast"}}
    batches = device.converge(release.target)
    after = {name: c["Id"] for name, c in _by_name(device).items()}
    assert after["main"] == before["main"]
    assert after["worker"] != before["worker"]
    assert device.inspect(after["worker"])["Config"]["Env"].count("MODE=fast") == 1
    assert not any("fetch" in step for batch in batches for step in batch)


def test_commit_only_change_renames_without_recreating(release, device):
    before = {name: c["Id"] for name, c in _by_name(device).items()}
    release.commit, release.release_id = "c2", 2
    batches = device.converge(release.target)
    containers = _by_name(device)
    assert {name: c["Id"] for name, c in containers.items()} == before
    for name, entry in containers.items():
        assert entry["Names"] == [f"/{name}_{_stable_id(name, device.app_id)}_2_c2"]
    assert ["updateMetadata(main)", "updateMetadata(worker)"] in batches
    assert device.read().apps[device.app_uuid].commit == "c2"
    # The old release's records went; the images stayed, the new records name them.
    assert {(r.commit, r.name) for r in device.images.records()} == {
        ("c2", n) for n in release.images.values()
    }


def test_removed_service_goes_with_its_unused_image(release, device, docker_client):
    worker_id = _by_name(device)["worker"]["Id"]
    release.services = ("main",)
    device.converge(release.target)
    assert set(_by_name(device)) == {"main"}
    with pytest.raises(docker.errors.NotFound):
        device.inspect(worker_id)
    assert not engine_has(docker_client, release.images["worker"])
    assert engine_has(docker_client, release.images["main"])
    assert [r.service_name for r in device.images.records()] == ["main"]


def test_removed_app_leaves_nothing_behind(release, device, docker_client):
    device.converge(dict)
    assert device.containers() == []
    assert docker_client.api.networks(filters={"label": f"io.balena.app-id={device.app_id}"}) == []
    assert device.images.records() == []
    assert device.read().apps == {}


def _app_with(device: Device, *services: Service, commit: str, networks=None, volumes=()) -> dict[str, App]:
    app = App(app_id=device.app_id, app_uuid=device.app_uuid, commit=commit, services=services,
              networks=tuple(networks or (device.network(),)), volumes=tuple(volumes))
    return {device.app_uuid: app}


def test_volume_data_survives_a_release_update(release, device):
    image = release.images["main"]

    def target(commit: str, env: dict[str, str]) -> Callable[[], dict[str, App]]:
        def build() -> dict[str, App]:
            svc = device.service("main", image, commit=commit, environment=env,
                                 composition={"volumes": ["data:/data"]})
            return _app_with(device, svc, commit=commit, volumes=(device.volume("data"),))
        return build

    device.converge(target("c1", {"V": "1"}))
    (first,) = device.containers()
    device.client.containers.get(first["Id"]).exec_run(["sh", "-c", "echo kept > /data/file"])
    device.converge(target("c2", {"V": "2"}))
    (second,) = device.containers()
    assert second["Id"] != first["Id"]  # recreated for the new release
    result = device.client.containers.get(second["Id"]).exec_run(["cat", "/data/file"])
    assert result.output == b"kept\n"


def test_network_config_change_recreates_the_attached_services(release, device, docker_client):
    image = release.images["main"]

    def target(internal: bool) -> Callable[[], dict[str, App]]:
        def build() -> dict[str, App]:
            svc = device.service("main", image)
            net = device.network("default", {"internal": internal})
            return _app_with(device, svc, commit="c1", networks=(net,))
        return build

    device.converge(target(False))
    (before,) = device.containers()
    batches = device.converge(target(True))
    (after,) = device.containers()
    assert after["Id"] != before["Id"]
    assert any("removeNetwork" in step for batch in batches for step in batch)
    (net,) = docker_client.api.networks(filters={"label": f"io.balena.app-id={device.app_id}"})
    assert docker_client.api.inspect_network(net["Id"])["Internal"] is True
    assert after["Id"] in docker_client.api.inspect_network(net["Id"])["Containers"]


def test_bad_create_options_fail_that_service_and_the_rest_proceed(release, device):
    good = device.service("main", release.images["main"])
    bad = device.service("worker", release.images["worker"],
                         composition={"devices": ["/dev/pysupervisor-does-not-exist:/dev/x"]})

    def target() -> dict[str, App]:
        return _app_with(device, good, bad, commit="c1")

    errors: list[str] = []
    for _ in range(8):
        steps = plan(device.read(), target(), PlanContext())
        if not steps:
            break
        errors += [str(r.error) for r in device.executor.execute_batch(steps) if r.error is not None]
    containers = _by_name(device)
    assert containers["main"]["State"] == "running"
    assert "worker" not in containers or containers["worker"]["State"] != "running"
    assert errors and all("worker" in e for e in errors)
