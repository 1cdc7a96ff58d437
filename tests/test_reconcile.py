"""The reconcile loop end to end: a real ``python -m supervisor`` in local mode, the real engine and a
loopback registry. Targets go in through ``POST /v2/local/target-state``; the tests watch the engine.

Each test owns a random app id, and the supervisor is started with ``--apps <id>`` so it never
touches the containers of other tests sharing the engine, and ``--no-host-setup`` so it leaves the
machine's ``supervisor0`` network alone. Everything of the app is removed afterwards, pass or fail.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from tests.fixtures.dbus import HOST_STAYS_UP, wait_back_after_power
from tests.fixtures.device import SupervisorProcess, free_port, wait_for
from tests.fixtures.docker import TEST_LABEL
from tests.fixtures.loopback import serve_loopback
from tests.fixtures.registry import Registry

pytestmark = pytest.mark.docker

OWNER_LABEL = "io.pysupervisor.test.owner"
SETTLED = "Finished applying target state"
#: imageId and serviceId of each service (the v2 target keys services by serviceId).
IDS = {"main": (101, 11), "worker": (102, 12), "extra": (103, 13)}


def new_commit() -> str:
    return uuid.uuid4().hex


@dataclass
class LocalDevice:
    """A supervisor process in local mode that manages one test app."""

    sup: SupervisorProcess
    client: docker.DockerClient
    app_id: int
    images: dict[str, str]
    # Container names are engine-wide: a commit of its own keeps this app's apart from other tests'.
    commit: str = field(default_factory=lambda: new_commit())
    release_id: int = 1
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    services: tuple[str, ...] = ("main", "worker")
    extra_apps: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ targets
    def target(self) -> dict[str, Any]:
        services = {}
        for name in self.services:
            image_id, service_id = IDS[name]
            services[str(service_id)] = {
                "serviceName": name,
                "imageId": image_id,
                "image": self.images[name],
                "environment": dict(self.env.get(name, {})),
                "labels": {TEST_LABEL: "1"},
                "running": True,
                # busybox's sleep ignores SIGTERM as PID 1: without this each kill takes 10 s.
                "stop_grace_period": "0s",
            }
        app = {"name": "reconcile-test", "commit": self.commit, "releaseId": self.release_id,
               "services": services, "volumes": {}, "networks": {}}
        return {"local": {"name": "reconcile-device", "config": {},
                          "apps": {str(self.app_id): app, **copy.deepcopy(self.extra_apps)}}}

    def apply(self, target: Mapping[str, Any] | None = None, *, settle: bool = True) -> int:
        """POST the target; with ``settle``, wait until the loop reports it applied. Returns the
        log offset of the POST (what a later wait should look after)."""
        offset = len(self.sup.output())
        response = self.sup.post("/v2/local/target-state", json=target or self.target())
        assert response.status_code == 200, response.text
        if settle:
            self.wait_settled(offset)
        return offset

    def wait_settled(self, offset: int) -> None:
        wait_for(lambda: SETTLED in self.sup.output()[offset:], "the target to be applied", self.sup)

    # ------------------------------------------------------------------ engine
    def containers(self) -> list[dict[str, Any]]:
        flt = {"label": f"io.balena.app-id={self.app_id}"}
        return self.client.api.containers(all=True, filters=flt)

    def by_service(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for entry in self.containers():
            name = entry["Labels"]["io.balena.service-name"]
            assert name not in found, f"two containers for {name}: {self.containers()}"
            found[name] = entry
        return found

    def expected_name(self, service: str) -> str:
        return f"/{service}_{IDS[service][0]}_{self.release_id}_{self.commit}"


def remove_app(client: docker.DockerClient, app_id: int, owner: str | None) -> None:
    """Everything of the test app: containers, networks, volumes, then the test's images (those
    labelled with ``owner``; None leaves images alone, e.g. while another app still uses them)."""
    api = client.api
    flt = {"label": f"io.balena.app-id={app_id}"}
    doomed: list[tuple[Callable[..., Any], str, dict[str, Any]]] = []
    doomed += [(api.remove_container, c["Id"], {"force": True, "v": True})
               for c in api.containers(all=True, filters=flt)]
    doomed += [(api.remove_network, n["Id"], {}) for n in api.networks(filters=flt)]
    doomed += [(api.remove_volume, v["Name"], {"force": True})
               for v in (api.volumes() or {}).get("Volumes") or [] if v["Name"].startswith(f"{app_id}_")]
    if owner is not None:
        doomed += [(api.remove_image, i["Id"], {"force": True})
                   for i in api.images(filters={"label": f"{OWNER_LABEL}={owner}"})]
    for remove, ident, kwargs in doomed:
        with contextlib.suppress(docker.errors.NotFound):
            remove(ident, **kwargs)


@pytest.fixture
def app_owner(docker_client) -> Iterator[tuple[int, str]]:
    """(app id, image owner token) of this test's app; the app is removed afterwards."""
    app_id = random.randint(10**6, 10**9)
    owner = uuid.uuid4().hex
    try:
        yield app_id, owner
    finally:
        remove_app(docker_client, app_id, owner)


def publish(client: docker.DockerClient, make_image, registry: Registry, owner: str, repo: str,
            *, files: Mapping[str, str | bytes] | None = None) -> str:
    """A unique image pushed to the registry and deleted locally, so the supervisor must pull it."""
    token = uuid.uuid4().hex[:12]
    local = f"pysupervisor-test/reconcile-{repo}-{token}:latest"
    image_id = make_image(local, files={"/token": token, **(files or {})}, labels={OWNER_LABEL: owner})
    ref = registry.push(local, f"reconcile-{repo}-{token}")
    client.api.remove_image(image_id, force=True)
    return ref


class RegistryGate:
    """An HTTP proxy in front of the registry that serves only the first half of each big blob
    until :meth:`open` is called, so a test can act while a pull is visibly under way.

    The engine treats 127.0.0.0/8 registries as insecure, so references through the gate
    (``gate.ref(ref)``) pull over plain HTTP like the registry's own.
    """

    BIG = 1024 * 1024  # smaller blobs (manifests, image configs) pass straight through
    PACE_S = 0.01  # per 64 KiB before the hold point

    def __init__(self, upstream: Registry) -> None:
        self.upstream = upstream
        self.opened = threading.Event()
        self.holding = threading.Event()  # set once some blob is held half-way
        self.held_count = 0
        self.server = serve_loopback({"HEAD": lambda h: self._forward(h, body=False),
                                      "GET": lambda h: self._forward(h, body=True)})

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def ref(self, upstream_ref: str) -> str:
        return upstream_ref.replace(self.upstream.host, self.host, 1)

    def open(self) -> None:
        self.opened.set()

    def close(self) -> None:
        self.opened.set()
        self.server.shutdown()
        self.server.server_close()

    def _forward(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        # The engine sends one Accept header per media type: all of them must reach the registry.
        names = ("Accept", "Range", "Authorization")
        joined = {k: ", ".join(handler.headers.get_all(k) or []) for k in names}
        headers = {k: v for k, v in joined.items() if v}
        try:
            upstream = requests.request(
                handler.command, self.upstream.url + handler.path, headers=headers, stream=True,
                allow_redirects=False, timeout=30,
            )
        except requests.RequestException:
            handler.send_error(502)
            return
        with upstream:
            handler.send_response(upstream.status_code)
            for key, value in upstream.headers.items():
                if key.lower() not in ("connection", "transfer-encoding", "keep-alive"):
                    handler.send_header(key, value)
            handler.end_headers()
            if not body:
                return
            size = int(upstream.headers.get("Content-Length") or 0)
            hold_at = size // 2 if "/blobs/" in handler.path and size > self.BIG else None
            sent = 0
            try:
                for chunk in upstream.iter_content(64 * 1024):
                    if hold_at is not None and not self.opened.is_set():
                        time.sleep(self.PACE_S)  # the engine reports progress as bytes trickle in
                    if hold_at is not None and sent + len(chunk) > hold_at and not self.opened.is_set():
                        handler.wfile.write(chunk[: hold_at - sent])
                        handler.wfile.flush()
                        chunk = chunk[hold_at - sent:]
                        sent = hold_at
                        self.held_count += 1
                        self.holding.set()
                        self.opened.wait(120)
                        hold_at = None
                    handler.wfile.write(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the puller went away (a killed supervisor's pull is cancelled)


@pytest.fixture
def gate(registry: Registry) -> Iterator[RegistryGate]:
    proxy = RegistryGate(registry)
    try:
        yield proxy
    finally:
        proxy.close()


def big_file(megabytes: int = 8) -> bytes:
    """Random, so the layer does not compress: the pull moves every byte."""
    return os.urandom(megabytes * 1024 * 1024)


def start_local(start_supervisor, root: Path, app_ids: list[int], **kw: Any) -> SupervisorProcess:
    return start_supervisor(root, "--apps", ",".join(map(str, app_ids)), "--no-host-setup", engine=True, **kw)


OS_VERSION = "balenaOS 6.0.13+rev1"


def fake_host(root: Path) -> None:
    """The host file the supervisor reports from: os-release (addresses come from netlink)."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text(f'ID="balena-os"\nPRETTY_NAME="{OS_VERSION}"\nVARIANT_ID=dev\n')


@pytest.fixture
def device(
    docker_client, make_image, registry, device_root, app_owner, start_supervisor
) -> Iterator[LocalDevice]:
    app_id, owner = app_owner
    images = {name: publish(docker_client, make_image, registry, owner, name) for name in ("main", "worker")}
    fake_host(device_root)
    sup = start_local(start_supervisor, device_root, [app_id])
    dev = LocalDevice(sup=sup, client=docker_client, app_id=app_id, images=images)
    yield dev
    # Dead before the app is removed: a live loop would recreate what the cleanup removes.
    dev.sup.stop(signal.SIGKILL)


@pytest.fixture
def installed(device: LocalDevice) -> LocalDevice:
    device.apply()
    return device


@contextlib.contextmanager
def applied_app(docker_client, make_image, registry, root: Path,  # type: ignore[no-untyped-def]
                device: Callable[..., Any] = LocalDevice, env: dict[str, str] | None = None,
                **fields: Any) -> Iterator[Any]:
    """A supervisor in local mode on a fresh ``root`` with a two-service app (main, worker) applied,
    as ``device(sup=, client=, app_id=, images=, **fields)``; everything of the app removed after.
    ``env``: the supervisor's extra environment (a system bus: tests/fixtures/dbus.py)."""
    app_id, owner = random.randint(10**6, 10**9), uuid.uuid4().hex
    (root / "mnt/boot").mkdir(parents=True)
    fake_host(root)
    sup = None
    try:
        images = {n: publish(docker_client, make_image, registry, owner, n) for n in ("main", "worker")}
        sup = SupervisorProcess(root, free_port(), ["--apps", str(app_id), "--no-host-setup"], env or {})
        sup.wait_ready()
        dev = device(sup=sup, client=docker_client, app_id=app_id, images=images, **fields)
        dev.apply()
        yield dev
    finally:
        if sup is not None:
            sup.stop(signal.SIGKILL)
        remove_app(docker_client, app_id, owner)


@pytest.fixture(scope="module")
def converged(docker_client, make_image, registry, tmp_path_factory) -> Iterator[LocalDevice]:
    """One installed app shared by the tests that only look (or whose changes are refused)."""
    root = tmp_path_factory.mktemp("converged") / "root"
    with applied_app(docker_client, make_image, registry, root) as dev:
        yield dev


# ---------------------------------------------------------------------------- milestone 1
def test_install_pulls_and_runs_both_services_with_the_balena_labels(installed: LocalDevice) -> None:
    dev = installed
    containers = dev.by_service()
    assert set(containers) == {"main", "worker"}
    for name, entry in containers.items():
        assert entry["State"] == "running"
        assert entry["Names"] == [dev.expected_name(name)]
        labels = entry["Labels"]
        assert labels["io.balena.supervised"] == "true"
        assert labels["io.balena.app-id"] == str(dev.app_id)
        assert labels["io.balena.app-uuid"] == str(dev.app_id)  # local mode: the uuid is the app id
        assert labels["io.balena.service-name"] == name
        assert labels["io.balena.service-id"] == str(IDS[name][1])
        assert labels[TEST_LABEL] == "1"
        info = dev.client.api.inspect_container(entry["Id"])
        binds = info["HostConfig"]["Binds"]
        lock_dir = f"{dev.sup.root}/tmp/balena-supervisor/services/{dev.app_id}/{name}"
        assert f"{lock_dir}:/tmp/balena" in binds  # locks live under the --root prefix
        assert dev.client.api.inspect_image(info["Image"])["RepoTags"] == [dev.images[name]]
    assert "Applying target state" in dev.sup.output()


def test_env_change_recreates_only_that_service(installed: LocalDevice) -> None:
    dev = installed
    before = {name: c["Id"] for name, c in dev.by_service().items()}
    dev.env = {"worker": {"MODE": "fast"}}
    dev.apply()
    after = dev.by_service()
    assert after["main"]["Id"] == before["main"]
    assert after["worker"]["Id"] != before["worker"]
    assert all(c["State"] == "running" for c in after.values())
    env = dev.client.api.inspect_container(after["worker"]["Id"])["Config"]["Env"]
    assert "MODE=fast" in env


def test_commit_only_change_renames_without_recreating(installed: LocalDevice) -> None:
    dev = installed
    before = {name: c["Id"] for name, c in dev.by_service().items()}
    dev.commit, dev.release_id = new_commit(), 2
    dev.apply()
    after = dev.by_service()
    assert {name: c["Id"] for name, c in after.items()} == before
    for name, entry in after.items():
        assert entry["Names"] == [dev.expected_name(name)]
        assert entry["State"] == "running"


def test_removing_a_service_removes_its_container(installed: LocalDevice) -> None:
    dev = installed
    worker = dev.by_service()["worker"]["Id"]
    dev.services = ("main",)
    dev.apply()
    assert set(dev.by_service()) == {"main"}
    with pytest.raises(docker.errors.NotFound):
        dev.client.api.inspect_container(worker)


def test_restart_resumes_the_stored_target_without_duplicates(
    installed: LocalDevice, start_supervisor
) -> None:
    """A restarted supervisor adopts the containers it finds (targetStateSet triggers an apply)."""
    dev = installed
    before = {name: c["Id"] for name, c in dev.by_service().items()}
    dev.sup.stop()
    dev.sup = start_local(start_supervisor, dev.sup.root, [dev.app_id])
    dev.wait_settled(0)
    assert {name: c["Id"] for name, c in dev.by_service().items()} == before


def test_v1_update_reapplies_the_stored_target(installed: LocalDevice) -> None:
    dev = installed
    main = dev.by_service()["main"]["Id"]
    dev.client.api.remove_container(main, force=True)
    offset = len(dev.sup.output())
    response = dev.sup.post("/v1/update", json={"force": True})
    assert (response.status_code, response.text) == (204, "")
    dev.wait_settled(offset)
    entry = dev.by_service()["main"]
    assert entry["Id"] != main and entry["State"] == "running"


def test_log_lines_never_carry_the_target_or_secrets(installed: LocalDevice) -> None:
    # Environment values are the target's secrets: they must not reach the log.
    dev = installed
    dev.env = {"main": {"TOKEN": "s3cr3t-value-" + uuid.uuid4().hex}}
    dev.apply()
    assert dev.env["main"]["TOKEN"] not in dev.sup.output()
    assert not re.search(r"Traceback", dev.sup.output())


# ---------------------------------------------------------------------------- milestone 2
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_state_status_reports_the_converged_app(converged: LocalDevice) -> None:
    dev = converged
    body = dev.sup.get("/v2/state/status").json()
    engine = dev.by_service()
    assert body["status"] == "success"
    assert body["appState"] == "applied"
    assert body["overallDownloadProgress"] is None
    assert body["release"] == dev.commit
    containers = sorted(body["containers"], key=lambda c: c["serviceName"])
    assert [list(c) for c in containers] == [
        ["status", "serviceName", "appId", "imageId", "serviceId", "containerId", "createdAt"]] * 2
    for entry, name in zip(containers, ("main", "worker"), strict=True):
        assert entry["serviceName"] == name
        assert entry["status"] == "Running"
        assert (entry["appId"], entry["imageId"], entry["serviceId"]) == (dev.app_id, *IDS[name])
        assert entry["containerId"] == engine[name]["Id"]
        assert ISO_MS.match(entry["createdAt"])
    images = sorted(body["images"], key=lambda i: i["serviceName"])
    summary = [(i["name"], i["serviceName"], i["imageId"], i["status"], i["downloadProgress"])
               for i in images]
    assert summary == [(dev.images[n], n, IDS[n][0], "Downloaded", None) for n in ("main", "worker")]
    for image in images:
        assert list(image) == ["name", "appId", "serviceName", "imageId", "dockerImageId", "status",
                               "downloadProgress"]
        assert image["appId"] == dev.app_id
        assert image["dockerImageId"] == dev.client.api.inspect_image(dev.images[image["serviceName"]])["Id"]


def test_applications_state(converged: LocalDevice) -> None:
    dev = converged
    body = dev.sup.get("/v2/applications/state").json()
    assert body == {
        "reconcile-test": {
            "appId": dev.app_id,
            "appUuid": str(dev.app_id),
            "commit": dev.commit,
            "updateStatus": "done",
            "services": {
                name: {"status": "Running", "image": dev.images[name], "downloadProgress": None,
                       "releaseId": dev.release_id}
                for name in ("main", "worker")
            },
        }
    }


def test_application_state_by_id(converged: LocalDevice) -> None:
    dev = converged
    response = dev.sup.get(f"/v2/applications/{dev.app_id}/state")
    assert response.status_code == 200
    assert response.json() == {
        "commit": dev.commit,
        "local": {str(dev.app_id): {"services": {
            str(IDS[name][0]): {"status": "Running", "releaseId": dev.release_id, "download_progress": None}
            for name in ("main", "worker")
        }}},
    }
    for raw in ("abc", "0", "1.5"):
        response = dev.sup.get(f"/v2/applications/{raw}/state")
        assert (response.status_code, response.json()) == (
            400, {"status": "failed", "message": f"Invalid application ID: {raw}"})
    response = dev.sup.get("/v2/applications/12345/state")
    assert (response.status_code, response.json()) == (
        409, {"status": "failed", "message": "Application ID does not exist: 12345"})


def test_container_id(converged: LocalDevice) -> None:
    dev = converged
    ids = {name: c["Id"] for name, c in dev.by_service().items()}
    assert dev.sup.get("/v2/containerId").json() == {"status": "success", "services": ids}
    for param in ("serviceName", "service"):
        body = dev.sup.get("/v2/containerId", params={param: "worker"}).json()
        assert body == {"status": "success", "containerId": ids["worker"]}
    response = dev.sup.get("/v2/containerId", params={"serviceName": "nope"})  # 503 in the reference
    assert (response.status_code, response.json()) == (
        404, {"status": "failed", "message": "Could not find service with that name"})


def test_v1_device(converged: LocalDevice) -> None:
    dev = converged
    body = dev.sup.get("/v1/device").json()
    from supervisor import __version__
    from supervisor.host.netlink import read_addresses

    # The addresses of the network namespace the supervisor runs in, over netlink (exact values from
    # addresses made in a namespace: tests/test_host_netlink.py).
    ips, macs = read_addresses()
    assert body == {
        "api_port": dev.sup.port,
        "ip_address": " ".join(ips),
        "os_version": OS_VERSION,
        "mac_address": " ".join(macs),
        "supervisor_version": __version__,
        "update_pending": False,
        "update_failed": False,
        "update_downloaded": False,
        "commit": dev.commit,
        "status": "Idle",  # the first service Running, in the legacy word
        "download_progress": None,
    }


def test_progress_is_visible_while_an_image_downloads(
    device: LocalDevice, gate: RegistryGate, docker_client, make_image, registry, app_owner
) -> None:
    dev = device
    _, owner = app_owner
    dev.images["main"] = gate.ref(publish(docker_client, make_image, registry, owner, "big",
                                          files={"/big": big_file()}))
    offset = dev.apply(settle=False)
    wait_for(gate.holding.is_set, "the download to be under way", dev.sup)

    seen: list[Any] = []

    def downloading() -> dict[str, Any] | None:
        body = dev.sup.get("/v2/state/status").json()
        seen.append(body["images"])
        big = [i for i in body["images"] if i["name"] == dev.images["main"] and i["status"] == "Downloading"]
        return body if big and (big[0]["downloadProgress"] or 0) > 0 else None

    status = wait_for(downloading, "a download progress above 0", dev.sup, context=lambda: seen[-3:])
    assert status["appState"] == "applying"
    (big,) = [i for i in status["images"] if i["status"] == "Downloading"]
    assert big["name"] == dev.images["main"] and big["serviceName"] == "main"
    assert 0 < big["downloadProgress"] < 100
    values = [i["downloadProgress"] for i in status["images"] if i["downloadProgress"] is not None]
    assert status["overallDownloadProgress"] == sum(values) / len(values)
    assert status["containers"] == []  # nothing starts before every image of the release is there

    legacy = dev.sup.get("/v1/device").json()
    assert legacy["status"] == "Downloading" and 0 < legacy["download_progress"] < 100
    assert legacy["update_pending"] is True and "commit" not in legacy
    apps = dev.sup.get("/v2/applications/state").json()["reconcile-test"]
    assert apps["updateStatus"] == "downloading"
    assert apps["services"]["main"]["status"] == "Downloading"

    gate.open()
    dev.wait_settled(offset)
    final = dev.sup.get("/v2/state/status").json()
    assert final["appState"] == "applied" and final["overallDownloadProgress"] is None
    running = {c["serviceName"]: c["status"] for c in final["containers"]}
    assert running == {"main": "Running", "worker": "Running"}
    assert dev.sup.get("/v1/device").json()["status"] == "Idle"


def test_endpoints_answer_503_without_an_engine(device_root: Path, start_supervisor) -> None:
    sup = start_supervisor(device_root)  # no engine=True: DOCKER_HOST points nowhere
    for path in ("/v2/state/status", "/v2/containerId", "/v1/device", "/v2/applications/state"):
        response = sup.get(path)
        assert response.status_code == 503, path
        body = response.json()
        assert body["status"] == "failed" and "Docker engine" in body["message"]
    assert sup.get("/v1/healthy").status_code == 200  # unmanaged: healthy while it retries
    assert "Traceback" not in sup.output()


# ---------------------------------------------------------------------------- milestone 3
def kill9(dev: LocalDevice) -> None:
    dev.sup.stop(signal.SIGKILL)


def restart(dev: LocalDevice, start_supervisor) -> None:
    """A new supervisor on the same root (and database), as after a power cut."""
    dev.sup = start_local(start_supervisor, dev.sup.root, [dev.app_id])


def assert_converged(dev: LocalDevice) -> None:
    """Exactly one running container per target service, named for the target release."""
    containers = dev.containers()
    names = sorted(c["Labels"]["io.balena.service-name"] for c in containers)
    assert names == sorted(dev.services), containers
    for name, entry in dev.by_service().items():
        assert entry["State"] == "running"
        assert entry["Names"] == [dev.expected_name(name)]
        env = dev.client.api.inspect_container(entry["Id"])["Config"]["Env"]
        for key, value in dev.env.get(name, {}).items():
            assert f"{key}={value}" in env


def test_kill9_right_after_posting_a_target(installed: LocalDevice, start_supervisor) -> None:
    dev = installed
    dev.env = {"main": {"V": "2"}, "worker": {"V": "2"}}
    dev.commit, dev.release_id = new_commit(), 2
    dev.apply(settle=False)
    kill9(dev)  # the target is stored before the POST answers: the restart must find it
    restart(dev, start_supervisor)
    dev.wait_settled(0)
    assert_converged(dev)


def test_kill9_while_an_image_downloads(
    installed: LocalDevice, gate: RegistryGate, start_supervisor, docker_client, make_image, registry,
    app_owner,
) -> None:
    dev = installed
    _, owner = app_owner
    dev.images["main"] = gate.ref(publish(docker_client, make_image, registry, owner, "big2",
                                          files={"/big": big_file()}))
    dev.commit, dev.release_id = new_commit(), 3
    dev.apply(settle=False)
    wait_for(gate.holding.is_set, "the download to be under way", dev.sup)
    kill9(dev)
    gate.holding.clear()
    restart(dev, start_supervisor)
    wait_for(gate.holding.is_set, "the restarted supervisor to download again", dev.sup)
    # Meanwhile the old release keeps running: download-then-kill touches nothing before the image is in.
    states = {name: c["State"] for name, c in dev.by_service().items()}
    assert states == {"main": "running", "worker": "running"}
    gate.open()
    dev.wait_settled(0)
    assert_converged(dev)


def test_kill9_right_after_the_first_container_kill_and_again_after_restart(
    installed: LocalDevice, start_supervisor
) -> None:
    dev = installed
    dev.env = {"main": {"V": "3"}, "worker": {"V": "3"}}
    offset = dev.apply(settle=False)
    wait_for(lambda: "Killed service" in dev.sup.output()[offset:], "the first container kill",
             dev.sup, interval=0.005)
    kill9(dev)
    assert len(dev.containers()) < 2 or any(c["State"] != "running" for c in dev.containers())
    restart(dev, start_supervisor)
    wait_for(lambda: "Applying target state" in dev.sup.output(), "the restarted apply", dev.sup,
             interval=0.005)
    kill9(dev)  # and once more while it recovers
    restart(dev, start_supervisor)
    dev.wait_settled(0)
    assert_converged(dev)
    lock_dir = dev.sup.root / f"tmp/balena-supervisor/services/{dev.app_id}"
    assert not list(lock_dir.rglob("*updates.lock"))  # the dead runs' locks were taken over and released


def test_missing_image_fails_that_service_backs_off_and_the_rest_proceeds(
    device: LocalDevice, docker_client, make_image, registry, app_owner, start_supervisor,
) -> None:
    dev = device
    _, owner = app_owner
    other_id = random.randint(10**6, 10**9)
    other_image = publish(docker_client, make_image, registry, owner, "other")
    # A second app in the same target, so the supervisor must manage both.
    dev.sup.stop()
    dev.sup = start_local(start_supervisor, dev.sup.root, [dev.app_id, other_id])
    dev.extra_apps = {str(other_id): {
        "name": "other-app", "commit": (other_commit := new_commit()), "releaseId": 9,
        "services": {"21": {"serviceName": "solo", "imageId": 201, "image": other_image, "environment": {},
                            "labels": {TEST_LABEL: "1"}, "running": True, "stop_grace_period": "0s"}},
    }}
    missing = registry.ref(f"reconcile-missing-{uuid.uuid4().hex[:8]}")
    good_worker = dev.images["worker"]
    dev.images["worker"] = missing
    try:
        offset = dev.apply(settle=False)
        scheduled = re.compile(r"Scheduling another update attempt in (\d+)ms due to failure: (.*)")

        def three_retries() -> list[re.Match[str]] | None:
            found = list(scheduled.finditer(dev.sup.output()[offset:]))
            return found if len(found) >= 3 else None

        retries = wait_for(three_retries, "three retries", dev.sup)
        delays = [int(m[1]) for m in retries]
        assert delays[:3] == [1000, 2000, 4000]  # min(2^n x 500 ms, poll interval)
        assert all(missing in m[2] and "'worker'" in m[2] for m in retries)
        assert f"Failed to download image '{missing}'" in dev.sup.output()

        # The rest proceeds: the other app runs, and this app's good image is in.
        other = dev.client.api.containers(filters={"label": f"io.balena.app-id={other_id}"})
        assert [(c["Names"], c["State"]) for c in other] == [([f"/solo_201_9_{other_commit}"], "running")]
        status = dev.sup.get("/v2/state/status").json()
        assert status["appState"] == "applying"
        assert [c["appId"] for c in status["containers"]] == [other_id]  # it reports one app only
        apps = dev.sup.get("/v2/applications/state").json()
        assert apps["other-app"]["updateStatus"] == "done"
        services = apps["reconcile-test"]["services"]
        assert services["main"]["status"] == "Downloaded"
        assert (services["worker"]["status"], services["worker"]["downloadProgress"]) == ("Downloading", 0)
        assert dev.sup.get("/v1/device").json()["update_failed"] is True
        # The release itself waits for every image (download-then-kill, spec §16.4).
        assert dev.containers() == []

        # A fixed target is applied at once: the backoff built up so far does not delay it.
        dev.images["worker"] = good_worker
        fixed = dev.apply(settle=False)
        started = time.monotonic()
        dev.wait_settled(fixed)
        assert time.monotonic() - started < 15
        assert_converged(dev)
        assert dev.sup.get("/v1/device").json()["update_failed"] is False
    finally:
        dev.sup.stop(signal.SIGKILL)  # first, or its loop would recreate what is removed
        remove_app(docker_client, other_id, None)  # its image goes with this test's app


@pytest.mark.parametrize("bad", ["bad-env-name", "bad-image-id", "not-json", "not-an-object"])
def test_an_invalid_target_is_refused_and_nothing_changes(converged: LocalDevice, bad: str) -> None:
    dev = converged
    before = {name: (c["Id"], c["Names"], c["State"]) for name, c in dev.by_service().items()}
    stored = dev.sup.get("/v2/local/target-state").json()
    target = dev.target()
    services = target["local"]["apps"][str(dev.app_id)]["services"]
    offset = len(dev.sup.output())
    if bad == "bad-env-name":
        services[str(IDS["main"][1])]["environment"] = {"NOT VALID": "x"}
    elif bad == "bad-image-id":
        services[str(IDS["worker"][1])]["imageId"] = "x"
    if bad == "not-json":
        response = dev.sup.post("/v2/local/target-state", data="{'local':",
                                headers={"Content-Type": "application/json"})
    elif bad == "not-an-object":
        response = dev.sup.post("/v2/local/target-state", json=["local"])
    else:
        response = dev.sup.post("/v2/local/target-state", json=target)
    assert response.status_code == 400
    assert response.json()["status"] == "failed"
    # A trigger marks the status "applying" before the request answers, and the loop logs
    # "Applying" before it settles: "applied" with no such line means no apply was asked for.
    assert dev.sup.get("/v2/state/status").json()["appState"] == "applied"
    assert "Applying target state" not in dev.sup.output()[offset:]
    assert {name: (c["Id"], c["Names"], c["State"]) for name, c in dev.by_service().items()} == before
    assert dev.sup.get("/v2/local/target-state").json() == stored


def test_a_service_that_requires_a_reboot_gets_one_reboot_once_the_rest_settled(
        device: LocalDevice, host_bus, start_supervisor) -> None:
    """§5.6 / §3.1 step 5: the service is created but not started, the breadcrumb written, and once
    nothing else is left the engine asks logind for the reboot (the fake on a private bus) exactly
    once: the apply ends there instead of asking again every round."""
    bus, fake = host_bus
    fake.configure(login=HOST_STAYS_UP)
    fake.forget()
    dev = device
    dev.sup.stop()
    dev.sup = start_local(start_supervisor, dev.sup.root, [dev.app_id], env=bus.env)
    target = dev.target()
    (worker,) = [s for s in target["local"]["apps"][str(dev.app_id)]["services"].values()
                 if s["serviceName"] == "worker"]
    worker["labels"]["io.balena.update.requires-reboot"] = "1"
    offset = dev.apply(target, settle=False)
    wait_for(lambda: "Reboot requested to apply the target state" in dev.sup.output()[offset:],
             "the reboot request", dev.sup)
    services = dev.by_service()
    assert services["main"]["State"] == "running"
    assert services["worker"]["State"] == "created"  # waits for the reboot
    assert (dev.sup.root / "tmp/balena-supervisor/reboot-after-apply").is_file()
    wait_back_after_power(dev.sup, fake, "Reboot")
    time.sleep(1.5)  # a loop that asked again would have done so by now
    log = dev.sup.output()[offset:]
    assert [(c["member"], c["args"]) for c in fake.calls()] == [("CanReboot", []), ("Reboot", [False])]
    assert "Reboot has been scheduled to apply changes" in log
