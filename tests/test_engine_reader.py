"""Reading the real engine back into the planner's CurrentState: what the executor created must
compare equal to its target, images are the DB rows the engine has, and one read costs one list
call per resource kind plus an inspect per supervised container only, and only for containers
whose listing changed since the last read.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import pytest

from supervisor.state.current import Image
from supervisor.state.executor import SUPERVISOR_LOCK_UID
from supervisor.state.planner import image_for
from supervisor.state.steps import CreateNetwork, CreateVolume, Start
from tests.test_executor import LABELS, OWNER_LABEL, Device, forget_app, make_device

pytestmark = pytest.mark.docker


@pytest.fixture
def device(docker_client, docker_cleanup, tmp_path) -> Iterator[Device]:
    dev = make_device(docker_client, tmp_path)
    yield dev
    forget_app(docker_client, dev, docker_cleanup)
    dev.db.close()


def _count_gets(monkeypatch, api) -> list[str]:
    """Record the path of every GET the SDK sends from now on (version prefix dropped)."""
    calls: list[str] = []
    original = api._get

    def counting_get(url: str, *args, **kwargs):
        calls.append(re.sub(r"^.*?/v[\d.]+", "", url))
        return original(url, *args, **kwargs)

    monkeypatch.setattr(api, "_get", counting_get)
    return calls


def deploy(device: Device, busybox_image: str):
    """An app with two services, an extra network and a volume, created by the executor."""
    networks = (device.network(), device.network("backend", {"internal": True}))
    volume = device.volume("data", {"driver_opts": {"type": "tmpfs", "device": "tmpfs"}})
    services = (
        device.service("main", busybox_image, composition={"networks": ["default", "backend"]}),
        device.service(
            "db",
            busybox_image,
            environment={"SECRET": "x"},
            composition={"networks": ["backend"], "volumes": ["data:/data"], "ports": ["127.0.0.1::80"]},
        ),
    )
    batch = [CreateNetwork(n) for n in networks] + [CreateVolume(volume)]
    assert all(r.ok for r in device.executor.execute_batch(batch))
    assert all(r.ok for r in device.executor.execute_batch([Start(s) for s in services]))
    return services, networks, volume


def test_created_components_read_back_equal_to_their_targets(busybox_image, device):
    services, networks, volume = deploy(device, busybox_image)

    state = device.read()

    app = state.apps[device.app_uuid]
    assert app.app_id == device.app_id and app.app_uuid == device.app_uuid
    current = {s.service_name: s for s in app.services}
    for target in services:
        svc = current[target.service_name]
        assert svc.is_equal(target), svc.config_diff(target)
        assert svc.status == "Running"
        assert svc.container_id and len(svc.container_id) == 64
        assert re.match(r"\d{4}-\d\d-\d\dT", svc.created_at)
        assert (svc.image_id, svc.release_id, svc.commit) == (target.image_id, 1, "c1")
    read_networks = {n.name: n for n in app.networks}
    assert set(read_networks) == {"default", "backend"}
    for target in networks:
        assert read_networks[target.name].is_equal_config(target)
    (read_volume,) = app.volumes
    assert read_volume.name == "data" and read_volume.is_equal_config(volume)
    assert state.container_ids_for(app) == {s: current[s].container_id for s in ("main", "db")}


def test_statuses_of_stopped_and_never_started_containers(busybox_image, device, docker_client):
    device.executor.execute(CreateNetwork(device.network()))
    idle = device.service("idle", busybox_image, running=False)
    done = device.service("done", busybox_image, composition={"command": ["true"], "restart": "no"})
    device.executor.execute_batch([Start(idle), Start(done)])
    (done_entry,) = [c for c in device.containers() if c["Labels"]["io.balena.service-name"] == "done"]
    docker_client.api.wait(done_entry["Id"], timeout=30)

    current = {s.service_name: s for s in device.read().apps[device.app_uuid].services}

    assert current["idle"].status == "Installed" and current["idle"].is_equal(idle)
    assert current["done"].status == "exited"
    assert current["done"].config["running"] is False


def test_available_images_are_the_db_rows_the_engine_has(busybox_image, device, docker_client):
    engine_id = docker_client.api.inspect_image(busybox_image)["Id"]
    by_tag = image_for(device.service("main", busybox_image))
    by_id = replace(
        by_tag, name="pysupervisor-test/renamed:gone", service_name="other", docker_image_id=engine_id
    )
    missing = replace(
        by_tag, name="pysupervisor-test/never:there", service_name="ghost", docker_image_id=None
    )
    for record in (replace(by_tag, docker_image_id=None), by_id, missing):
        device.images.save(record)

    available = device.read().available_images

    assert sorted(available, key=lambda i: i.service_name) == [
        replace(by_tag, docker_image_id=engine_id),  # found by name: the engine id is filled in
        by_id,
    ]
    assert len(device.images.records()) == 3


def test_one_read_lists_each_kind_once_and_inspects_only_supervised_containers(
    busybox_image, device, docker_client, docker_cleanup, monkeypatch
):
    deploy(device, busybox_image)
    plain = docker_client.api.create_container(busybox_image, labels=LABELS)
    docker_cleanup.append(plain["Id"])
    api = docker_client.api
    calls = _count_gets(monkeypatch, api)
    device.read()
    monkeypatch.undo()

    inspect = re.compile(r"^/containers/([0-9a-f]{64})/json$")
    inspected = {m[1] for c in calls if (m := inspect.match(c))}
    lists = Counter(c for c in calls if not inspect.match(c))
    assert lists == {"/containers/json": 1, "/networks": 1, "/volumes": 1, "/images/json": 1}
    assert len(calls) == 4 + len(inspected)  # nothing else, and no container inspected twice
    supervised = {c["Id"] for c in api.containers(all=True, filters={"label": "io.balena.supervised"})} | {
        c["Id"] for c in api.containers(all=True, filters={"label": "io.resin.supervised"})
    }
    assert {c["Id"] for c in device.containers()} <= inspected
    assert plain["Id"] not in inspected
    assert inspected <= supervised


def test_legacy_and_malformed_supervised_containers(busybox_image, device, docker_client, docker_cleanup):
    api = docker_client.api
    legacy_labels = {
        **LABELS,
        "io.resin.supervised": "true",
        "io.resin.app-id": str(device.app_id),
        "io.resin.service-id": "7",
        "io.resin.service-name": "legacy",
    }
    legacy = api.create_container(
        busybox_image, labels=legacy_labels, name=f"legacy_3_4_old{device.token[:8]}"
    )
    docker_cleanup.append(legacy["Id"])
    broken_labels = {**LABELS, "io.balena.supervised": "true"}  # no app id: cannot be read back
    broken = api.create_container(busybox_image, labels=broken_labels)
    docker_cleanup.append(broken["Id"])

    state = device.reader.read(apps={str(device.app_id)})

    app = state.apps[str(device.app_id)]
    (svc,) = app.services
    assert (svc.service_name, svc.service_id, svc.image_id, svc.release_id) == ("legacy", 7, 3, 4)
    assert svc.status == "Installed"


def test_objects_wearing_the_apps_labels_under_foreign_names_are_not_the_apps(
    busybox_image, device, docker_client, docker_cleanup
):
    """Issue #10 §3: names are matched whole. A supervised volume ``x<appId>_data``, a network
    labelled with the app's id but named for another app or uuid, and a container labelled as the
    app's service ``main`` but named otherwise are someone else's: the app does not contain them."""
    services, networks, volume = deploy(device, busybox_image)
    api = docker_client.api
    app_id = device.app_id
    supervised = {**LABELS, "io.balena.supervised": "true", "io.balena.app-uuid": device.app_uuid}
    for name in (f"x{app_id}_data", f"0{app_id}_data", f"my{app_id}_data"):
        docker_cleanup.append(api.create_volume(name, labels=supervised)["Name"])
    net_labels = {**LABELS, "io.balena.supervised": "true", "io.balena.app-id": str(app_id)}
    for name in (f"f{app_id}_default", f"{app_id + 1}_default", f"{device.app_uuid}x_default"):
        docker_cleanup.append(api.create_network(name, labels=net_labels)["Id"])
    main_labels = {**LABELS, **services[0].config["labels"]}
    for name in ("xmain_1_2_c", "main-copy_1_2_c", "main_01_2_c"):
        foreign = api.create_container(busybox_image, labels=main_labels, name=f"{name}{device.token[:8]}")
        docker_cleanup.append(foreign["Id"])

    for state in (device.read(), device.reader.read(apps={device.app_uuid}, uuids={app_id: device.app_uuid})):
        app = state.apps[device.app_uuid]
        assert sorted(n.docker_name for n in app.networks) == sorted(n.docker_name for n in networks)
        assert [v.docker_name for v in app.volumes] == [volume.docker_name]
        assert sorted(s.service_name for s in app.services) == ["db", "main"]
        assert len(app.services) == 2
        assert len(state.apps) == 1


def test_locks_downloads_and_volatile_statuses(busybox_image, device):
    device.executor.execute(CreateNetwork(device.network()))
    device.executor.execute(Start(device.service("main", busybox_image)))
    lock_dir = device.root / f"tmp/balena-supervisor/services/{device.app_id}/main"
    lock_dir.mkdir(parents=True, exist_ok=True)
    (lock_dir / "updates.lock").touch()
    os.chown(lock_dir / "updates.lock", SUPERVISOR_LOCK_UID, SUPERVISOR_LOCK_UID)

    (svc,) = device.read().apps[device.app_uuid].services
    device.executor._volatile[svc.container_id] = "Stopping"
    state = device.read()

    assert state.lock_leftovers == {device.app_id}
    assert state.locks_held == frozenset()
    assert state.apps[device.app_uuid].services[0].status == "Stopping"
    assert state.downloading == frozenset()


def test_current_commit_comes_from_the_database(busybox_image, device):
    device.executor.execute(CreateNetwork(device.network()))
    device.executor.update_commit(device.app_id, "abcdef")
    assert device.read().apps[device.app_uuid].commit == "abcdef"


def test_records_survive_a_new_manager(device, busybox_image):
    record = Image(busybox_image, device.app_id, device.app_uuid, 1, "main", 2, 3, "c", "sha256:x")
    device.images.save(record)
    device.images.save(replace(record, docker_image_id="sha256:y"))  # same metadata: updated
    assert device.images.records() == [replace(record, docker_image_id="sha256:y")]
    device.images.forget(record)
    assert device.images.records() == []


def test_an_unchanged_engine_is_read_with_list_calls_only(busybox_image, device, docker_client, monkeypatch):
    services, _, _ = deploy(device, busybox_image)
    first = device.read()
    calls = _count_gets(monkeypatch, docker_client.api)
    again = device.read()
    assert sorted(calls) == ["/containers/json", "/images/json", "/networks", "/volumes"]
    assert again.apps[device.app_uuid].services == first.apps[device.app_uuid].services

    # What changes on an existing container shows in its listing and is read again at once.
    main = device.current("main")
    docker_client.api.stop(main.container_id, timeout=0)
    docker_client.api.rename(main.container_id, f"renamed-{device.token[:8]}")
    calls.clear()
    state = device.read()
    # Renamed out of the supervisor's names: not ours any more, which the listing alone tells.
    assert f"/containers/{main.container_id}/json" not in calls and len(calls) == 4
    assert {s.service_name for s in state.apps[device.app_uuid].services} == {"db"}
    docker_client.api.rename(main.container_id, main.container_name())
    calls.clear()
    assert device.current("main").status == "exited"
    assert f"/containers/{main.container_id}/json" in calls  # stopped since its cached read

    # docker update (not in the listing) is seen once the cached read is old enough.
    db = device.current("db")
    docker_client.api.update_container(db.container_id, restart_policy={"Name": "no"})
    assert device.current("db").config["restart"] == "always"  # cached: the listing looks the same
    device.reader._cache.max_age = 0
    assert device.current("db").config["restart"] == "no"


def test_an_executed_step_invalidates_the_cached_reads(busybox_image, device, docker_client, monkeypatch):
    deploy(device, busybox_image)
    device.read()
    device.executor.execute(CreateVolume(device.volume("more")))
    calls = _count_gets(monkeypatch, docker_client.api)
    device.read()
    assert sum(1 for c in calls if re.match(r"^/containers/[0-9a-f]{64}/json$", c)) == 2


def test_image_info_is_resolved_through_the_last_listing(busybox_image, device, docker_client, monkeypatch):
    images = device.images
    images.listing()
    calls = _count_gets(monkeypatch, docker_client.api)
    info = images.image_info(busybox_image)
    assert info is not None and info["Id"] == docker_client.api.inspect_image(busybox_image)["Id"]
    calls.clear()
    assert images.image_info(busybox_image) is info  # no API call: name -> id -> cached inspect
    assert calls == []

    # A tag moved to another image is followed from the next listing on.
    other = docker_client.api.commit(
        docker_client.api.create_container(busybox_image, labels=LABELS)["Id"],
        conf={"Labels": {**LABELS, OWNER_LABEL: device.token}},
    )["Id"]
    moved = f"pysupervisor-test/moved-{device.token[:8]}:v1"
    repo, _, tag = moved.rpartition(":")
    docker_client.api.tag(busybox_image, repo, tag)
    images.listing()
    assert images.image_info(moved)["Id"] == info["Id"]
    docker_client.api.tag(other, repo, tag, force=True)
    images.listing()
    assert images.image_info(moved)["Id"] == other
    assert images.image_info("pysupervisor-test/never-there:v1") is None
