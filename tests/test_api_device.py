"""The device endpoints of issue #5 over real HTTP (spec §1.3-1.4, §6): host-config, device info,
name, vpn, tags (against a fake balena API on loopback), and, on the real engine, ``/v1/apps/:appId``,
``/v2/cleanup-volumes`` and per-service scoped keys end to end."""

from __future__ import annotations

import contextlib
import json
import random
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from supervisor.cleanup import orphaned_volumes
from tests.fakecloud.client import FakeCloud
from tests.fixtures.device import SupervisorProcess, free_port, global_api_key, wait_for, write_config_json
from tests.fixtures.docker import TEST_LABEL
from tests.fixtures.locks import take_user_lock

HOST_CONFIG = "/v1/device/host-config"


def _db(root: Path) -> sqlite3.Connection:
    return sqlite3.connect(root / "mnt/data/resin-data/balena-supervisor/database.sqlite")


def _proxy_dir(root: Path) -> Path:
    return root / "mnt/boot/system-proxy"


# ------------------------------------------------------------------------------- host-config
@pytest.fixture
def device(device_root: Path, start_supervisor) -> SupervisorProcess:
    (device_root / "etc").mkdir()
    (device_root / "etc/hostname").write_text("balena-host\n")
    return start_supervisor(device_root)


def test_host_config_without_proxy(device: SupervisorProcess) -> None:
    response = device.get(HOST_CONFIG)
    assert response.status_code == 200
    assert response.json() == {"network": {"hostname": "balena-host"}}


FULL_PROXY = {
    "type": "socks5", "ip": "example.org", "port": "1080", "login": "foo", "password": "bar",
    "dns": "1.2.3.4:54", "noProxy": ["152.10.30.4", "253.1.1.0/16"],
}

REDSOCKS = (
    "base {\n\tlog_debug = off;\n\tlog_info = on;\n\tlog = stderr;\n\tdaemon = off;\n"
    "\tredirector = iptables;\n}\n\n"
    "redsocks {\n\ttype = socks5;\n\tip = example.org;\n\tport = 1080;\n\tlogin = \"foo\";\n"
    "\tpassword = \"bar\";\n\tlocal_ip = 127.0.0.1;\n\tlocal_port = 12345;\n}\n\n"
    "dnsu2t {\n\tremote_ip = 1.2.3.4;\n\tremote_port = 54;\n\tlocal_ip = 127.0.0.1;\n\tlocal_port = 53;\n}\n"
)


def _patch(sup: SupervisorProcess, body: Any, **kw: Any) -> requests.Response:
    return requests.patch(sup.url + HOST_CONFIG, json=body, timeout=10, **kw)


def test_patch_proxy_writes_the_boot_files_and_get_reads_them_back(device: SupervisorProcess) -> None:
    response = _patch(device, {"network": {"proxy": FULL_PROXY}})
    assert (response.status_code, response.text) == (200, "OK")
    proxy_dir = _proxy_dir(device.root)
    assert (proxy_dir / "redsocks.conf").read_text() == REDSOCKS
    assert (proxy_dir / "no_proxy").read_text() == "152.10.30.4\n253.1.1.0/16"  # no trailing newline
    assert not [p for p in proxy_dir.iterdir() if p.name.startswith(".")]  # no temp files left
    assert device.get(HOST_CONFIG).json() == {"network": {"hostname": "balena-host", "proxy": {
        "type": "socks5", "ip": "example.org", "port": 1080, "login": "foo", "password": "bar",
        "dns": "1.2.3.4:54", "noProxy": ["152.10.30.4", "253.1.1.0/16"]}}}


def test_patch_merges_over_the_current_proxy_and_empty_clears_it(device: SupervisorProcess) -> None:
    assert _patch(device, {"network": {"proxy": FULL_PROXY}}).status_code == 200
    # A field-level patch: the rest of the proxy stays; dns false drops the dnsu2t block.
    assert _patch(device, {"network": {"proxy": {"login": "alice", "dns": False}}}).status_code == 200
    proxy = device.get(HOST_CONFIG).json()["network"]["proxy"]
    assert proxy == {"type": "socks5", "ip": "example.org", "port": 1080, "login": "alice",
                     "password": "bar", "noProxy": ["152.10.30.4", "253.1.1.0/16"]}
    assert "dnsu2t" not in (_proxy_dir(device.root) / "redsocks.conf").read_text()
    # dns true is the default resolver
    assert _patch(device, {"network": {"proxy": {"dns": True}}}).status_code == 200
    assert device.get(HOST_CONFIG).json()["network"]["proxy"]["dns"] == "8.8.8.8:53"
    # noProxy alone leaves the proxy alone; [] deletes the no_proxy file
    assert _patch(device, {"network": {"proxy": {"noProxy": []}}}).status_code == 200
    assert not (_proxy_dir(device.root) / "no_proxy").exists()
    assert device.get(HOST_CONFIG).json()["network"]["proxy"]["ip"] == "example.org"
    # {} clears the proxy: no redsocks.conf, no proxy in GET
    assert _patch(device, {"network": {"proxy": {}}}).status_code == 200
    assert not (_proxy_dir(device.root) / "redsocks.conf").exists()
    assert device.get(HOST_CONFIG).json() == {"network": {"hostname": "balena-host"}}


def test_get_reports_an_invalid_redsocks_block_as_an_empty_proxy(device: SupervisorProcess) -> None:
    proxy_dir = _proxy_dir(device.root)
    proxy_dir.mkdir(parents=True)
    (proxy_dir / "redsocks.conf").write_text("redsocks {\n\ttype = carrier-pigeon;\n}\n")
    assert device.get(HOST_CONFIG).json()["network"]["proxy"] == {}
    (proxy_dir / "no_proxy").write_text("10.0.0.0/8\n\nlocal\n")
    assert device.get(HOST_CONFIG).json()["network"]["proxy"] == {"noProxy": ["10.0.0.0/8", "local"]}
    # a password with a brace and quotes survives parsing
    (proxy_dir / "redsocks.conf").write_text(
        'redsocks {\n\ttype = http-connect;\n\tip = 10.0.0.1;\n\tport = 8080;\n\tpassword = "p}w";\n}\n')
    assert device.get(HOST_CONFIG).json()["network"]["proxy"]["password"] == "p}w"


def test_patch_hostname_goes_to_config_json(device_root: Path, start_supervisor) -> None:
    write_config_json(device_root, {"uuid": "0123456789abcdef" * 2})
    sup = start_supervisor(device_root)
    assert _patch(sup, {"network": {"hostname": "newname"}}).status_code == 200
    config = json.loads((device_root / "mnt/boot/config.json").read_text())
    assert config["hostname"] == "newname" and config["uuid"] == "0123456789abcdef" * 2
    assert _patch(sup, {"network": {"hostname": ""}}).status_code == 200  # "" = the uuid's first 7
    assert json.loads((device_root / "mnt/boot/config.json").read_text())["hostname"] == "0123456"


@pytest.mark.parametrize(("body", "says"), [
    ({}, "'network' must exist"),
    ({"network": "x"}, "network must be an object"),
    ({"network": {"hostname": 5}}, "network.hostname"),
    ({"network": {"proxy": {"type": "socks5", "ip": "a", "port": "80", "dns": "nope"}}}, "dns"),
    ({"network": {"proxy": {"type": "socks5", "ip": "a", "port": 80, "noProxy": "x"}}}, "noProxy"),
    ({"network": {"proxy": {"type": "gopher", "ip": "a", "port": 80}}}, "needs a type"),
    ({"network": {"proxy": {"type": "socks5", "ip": "a", "port": -1}}}, "port"),
    ({"network": {"proxy": {"login": "only"}}}, "needs a type"),
    ({"network": {"proxy": "socks5://x"}}, "network.proxy must be an object"),
])
def test_invalid_patch_is_400_text_and_writes_nothing(device: SupervisorProcess, body, says: str) -> None:
    response = _patch(device, body)
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text.startswith("Could not parse host config input to a valid format:\n")
    assert says in response.text
    assert not _proxy_dir(device.root).exists() or not any(_proxy_dir(device.root).iterdir())


def test_patch_respects_update_locks_unless_forced(device: SupervisorProcess) -> None:
    """An app with a user-held lock makes the PATCH 423 (text); force deletes the lock (spec §4.3)."""
    target = {"local": {"name": "d", "config": {}, "apps": {"1201": {
        "name": "a", "commit": "c" * 32, "releaseId": 1,
        "services": {"1": {"serviceName": "main", "imageId": 1, "image": "img",
                           "environment": {}, "labels": {}}}}}}}
    assert device.post("/v2/local/target-state", json=target).status_code == 200
    lock = take_user_lock(device.root / "tmp/balena-supervisor/services/1201/main/updates.lock")
    response = _patch(device, {"network": {"proxy": FULL_PROXY}})
    assert response.status_code == 423
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "1201" in response.text
    assert not (_proxy_dir(device.root) / "redsocks.conf").exists()
    assert lock.exists()

    response = _patch(device, {"network": {"proxy": FULL_PROXY}, "force": True})
    assert (response.status_code, response.text) == (200, "OK")
    assert (_proxy_dir(device.root) / "redsocks.conf").read_text() == REDSOCKS
    assert not lock.exists()


# ------------------------------------------------------------------ device-info, name, vpn
def test_device_info(device_root: Path, start_supervisor) -> None:
    (device_root / "mnt/boot/device-type.json").write_text(json.dumps({"slug": "raspberrypi4-64",
                                                                       "arch": "aarch64"}))
    sup = start_supervisor(device_root)
    response = sup.get("/v2/local/device-info")
    assert response.status_code == 200
    assert response.json() == {"status": "success",
                               "info": {"arch": "aarch64", "deviceType": "raspberrypi4-64"}}


def test_device_name_is_the_target_name(device: SupervisorProcess) -> None:
    assert device.get("/v2/device/name").json() == {"status": "success", "deviceName": "local"}
    target = {"local": {"name": "kitchen-sensor", "config": {}, "apps": {}}}
    assert device.post("/v2/local/target-state", json=target).status_code == 200
    assert device.get("/v2/device/name").json() == {"status": "success", "deviceName": "kitchen-sensor"}


def test_vpn(device: SupervisorProcess) -> None:
    assert device.get("/v2/device/vpn").json() == {"status": "success",
                                                   "vpn": {"enabled": True, "connected": False}}
    status_dir = device.root / "run/openvpn/vpn_status"
    status_dir.mkdir(parents=True)
    (status_dir / "active").write_text("")
    target = {"local": {"name": "d", "config": {"SUPERVISOR_VPN_CONTROL": "false"}, "apps": {}}}
    assert device.post("/v2/local/target-state", json=target).status_code == 200
    assert device.get("/v2/device/vpn").json() == {"status": "success",
                                                   "vpn": {"enabled": False, "connected": True}}


# --------------------------------------------------------------------------------- tags
DEVICE_KEY = "f" * 32
UUID = "a1" * 16


@pytest.fixture
def cloud_device(device_root: Path, start_supervisor, fake_api: FakeCloud):
    """A provisioned device (id 77) with two tags in the fake API, next to another device's."""
    app = fake_api.create_application("tagfleet")
    fake_api.create_device(app["id"], UUID, DEVICE_KEY, id=77)
    fake_api.create_device(app["id"], "b2" * 16, "e" * 32, id=78)
    for uuid_, key, tags in ((UUID, DEVICE_KEY, {"room": "kitchen", "floor": "2"}), ("b2" * 16, "e" * 32,
                                                                                      {"other": "x"})):
        assert requests.patch(f"{fake_api.url}/device/v3/tags", json={uuid_: tags}, timeout=10,
                              headers={"Authorization": f"Bearer {key}"}).status_code == 200
    write_config_json(device_root, {"uuid": UUID, "apiEndpoint": fake_api.url, "deviceApiKey": DEVICE_KEY,
                                    "deviceId": 77, "registered_at": 1700000000})
    sup = start_supervisor(device_root, env={"PYSUPERVISOR_CLOUD_TIME_SCALE": "0.01"})
    sup.key = global_api_key(device_root)
    return sup


def _tag_requests(fake_api: FakeCloud, method: str) -> list[dict[str, Any]]:
    return [r for r in fake_api.requests() if r["kind"] in ("odata", "tags_patch") and r["method"] == method]


def test_get_tags_asks_the_balena_api(cloud_device: SupervisorProcess, fake_api: FakeCloud) -> None:
    response = wait_for_status(cloud_device, "/v2/device/tags", cloud_device.key)
    assert response.status_code == 200
    assert sorted(response.json()["tags"], key=lambda t: t["name"]) == [
        {"id": 2, "name": "floor", "value": "2"}, {"id": 1, "name": "room", "value": "kitchen"}]
    sent = [r for r in _tag_requests(fake_api, "GET") if r["path"] == "/v7/device_tag"]
    assert sent and sent[0]["query"] == "%24select=id%2Ctag_key%2Cvalue&%24filter=device+eq+77"


def wait_for_status(sup: SupervisorProcess, path: str, key: str, timeout: float = 60) -> requests.Response:
    """The answer once the device is provisioned and ready (409 before)."""
    deadline = time.monotonic() + timeout
    while True:
        response = sup.get(path, params={"apikey": key})
        if response.status_code != 409 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_get_tags_is_500_when_the_api_fails(cloud_device: SupervisorProcess, fake_api: FakeCloud) -> None:
    wait_for_status(cloud_device, "/v2/device/tags", cloud_device.key)
    time.sleep(0.2)  # the list fetched first is fresh for 0.1 s (10 s x the test time scale)
    fake_api.fault("status", path="^/v7/device_tag", status=502)
    response = cloud_device.get("/v2/device/tags", params={"apikey": cloud_device.key})
    assert response.status_code == 500
    assert response.json() == {"status": "failed", "message": "The balena API answered 502"}
    assert DEVICE_KEY not in cloud_device.output()


def test_get_tags_without_a_cloud_is_409(device: SupervisorProcess) -> None:
    """Unmanaged: no cloud to ask. A client-visible state, not a failure (the reference answers 500)."""
    response = device.get("/v2/device/tags")
    assert (response.status_code, response.json()) == (409, {
        "status": "failed", "message": "Device tags are kept by the balena cloud: this device is unmanaged"})


def test_get_tags_not_provisioned_is_409(device_root: Path, start_supervisor, fake_api: FakeCloud) -> None:
    write_config_json(device_root, {"uuid": UUID, "apiEndpoint": fake_api.url, "deviceApiKey": DEVICE_KEY})
    sup = start_supervisor(device_root)  # no deviceId and no provisioning key: never provisioned
    response = sup.get("/v2/device/tags", params={"apikey": global_api_key(device_root)})
    assert (response.status_code, response.json()) == (409, {
        "status": "failed", "message": "The device is not provisioned yet (no deviceId)"})
    assert [r for r in fake_api.requests() if r["kind"] != "ping"] == []


def test_patch_tags_stores_and_reports_them(cloud_device: SupervisorProcess, fake_api: FakeCloud) -> None:
    wait_for_status(cloud_device, "/v2/device/tags", cloud_device.key)
    response = requests.patch(cloud_device.url + "/v2/device/tags", json={"room": "attic", "new": "1"},
                              params={"apikey": cloud_device.key}, timeout=10)
    assert (response.status_code, response.json()) == (202, {"status": "success"})
    wait_for(lambda: fake_api.device(UUID)["tags"] == {"room": "attic", "floor": "2", "new": "1"},
             "the tags reported", cloud_device, timeout=20)
    assert fake_api.device("b2" * 16)["tags"] == {"other": "x"}
    # The fake stores the tags before it logs the request (just before its answer): wait for the log.
    patches = wait_for(lambda: len(found := _tag_requests(fake_api, "PATCH")) >= 3 and found,
                       "the device's tags request in the fake's log", cloud_device,
                       context=lambda: _tag_requests(fake_api, "PATCH"))
    setup_a, setup_b, sent = patches  # the fixture's two, then the device's one
    assert sent["path"] == "/device/v3/tags" and sent["status"] == 200 and sent["uuid"] == UUID

    def device_tags() -> dict[str, str]:  # the binder's list, updated once the cloud has answered
        tags = cloud_device.get("/v2/device/tags", params={"apikey": cloud_device.key}).json()["tags"]
        return {t["name"]: t["value"] for t in tags}

    wait_for(lambda: device_tags() == {"room": "attic", "floor": "2", "new": "1"}, "the device's tags",
             cloud_device, context=device_tags)
    with _db(cloud_device.root) as conn:
        (target,) = conn.execute("SELECT value FROM config WHERE key = 'targetTags'").fetchone()
    assert json.loads(target) == {"room": "attic", "new": "1"}


@pytest.mark.parametrize(("body", "message"), [
    ([["a", "b"]], "Invalid tags body, must be an object like `{[tagKey: string]: string}`"),
    ("just text", "Invalid tags body, must be an object like `{[tagKey: string]: string}`"),
    ({"a": 1}, "Invalid tags body, must be an object like `{[tagKey: string]: string}`"),
    ({"a b": "x"}, "Tag keys cannot contain whitespace"),
    ({"tab\tkey": "x"}, "Tag keys cannot contain whitespace"),
])
def test_patch_tags_validation(device: SupervisorProcess, body, message: str) -> None:
    response = requests.patch(device.url + "/v2/device/tags", json=body, timeout=10)
    assert response.status_code == 400
    assert response.json() == {"status": "failed", "message": message}


def test_patch_tags_accepts_a_form_body(device: SupervisorProcess) -> None:
    response = requests.patch(device.url + "/v2/device/tags", data={"room": "cellar"}, timeout=10)
    assert response.status_code == 202
    with _db(device.root) as conn:
        (target,) = conn.execute("SELECT value FROM config WHERE key = 'targetTags'").fetchone()
    assert json.loads(target) == {"room": "cellar"}


# ----------------------------------------------------------------- cleanup (pure selection)
def test_orphaned_volume_selection() -> None:
    sup = {"io.balena.supervised": "true"}
    volumes = [{"Name": "1_old", "Labels": sup}, {"Name": "1_used", "Labels": sup},
               {"Name": "1_target", "Labels": sup}, {"Name": "1_mine", "Labels": {}},
               {"Name": "2_old", "Labels": sup}, {"Name": "weird", "Labels": sup}]
    containers = [{"Mounts": [{"Type": "volume", "Name": "1_used"}, {"Type": "bind", "Name": "1_old"}]}]
    assert orphaned_volumes(volumes, containers, {"1_target"}, lambda app: app == 1) == ["1_old"]


# ======================================================= on the engine: apps, volumes, keys
API_LABEL = "io.balena.features.supervisor-api"


@dataclass
class Device:
    sup: SupervisorProcess
    client: docker.DockerClient
    single: int  # one service ("main", with the supervisor-api label and a volume "data")
    multi: int  # two services ("one" with the label, "two")
    image_id: str
    commit: str

    def container(self, app_id: int, service: str) -> dict[str, Any]:
        flt = {"label": [f"io.balena.app-id={app_id}", f"io.balena.service-name={service}"]}
        (entry,) = self.client.api.containers(all=True, filters=flt)
        return self.client.api.inspect_container(entry["Id"])

    def env(self, app_id: int, service: str) -> dict[str, str]:
        pairs = (item.partition("=") for item in self.container(app_id, service)["Config"]["Env"])
        return {k: v for k, _, v in pairs}

    def get(self, path: str, key: str | None = None) -> requests.Response:
        return self.sup.get(path, params={"apikey": key} if key else None)


def _service(sid: int, name: str, image: str, labels: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"id": sid, "image_id": sid + 100, "image": image, "environment": {"FOO": f"{name}-env"},
            "labels": {TEST_LABEL: "1", **labels}, "running": True,
            "composition": {"stop_grace_period": "0s", **extra}}


def _remove_apps(client: docker.DockerClient, app_ids: list[int]) -> None:
    api = client.api
    for app_id in app_ids:
        for entry in api.containers(all=True, filters={"label": f"io.balena.app-id={app_id}"}):
            api.remove_container(entry["Id"], force=True, v=True)
        for net in api.networks(filters={"label": f"io.balena.app-id={app_id}"}):
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_network(net["Id"])
        for vol in (api.volumes() or {}).get("Volumes") or []:
            if vol["Name"].startswith(f"{app_id}_"):
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_volume(vol["Name"], force=True)


@pytest.fixture(scope="module")
def engine_device(docker_client, make_image, tmp_path_factory) -> Iterator[Device]:
    """A managed (not local-mode) device whose apps came from apps.json, so API keys are enforced
    and services with the supervisor-api label carry their own scoped keys."""
    single, multi = random.sample(range(10**6, 10**9), 2)
    commit = uuid.uuid4().hex
    image = f"pysupervisor-test/device-api-{commit[:12]}:latest"
    image_id = make_image(image)
    root = tmp_path_factory.mktemp("engine-device") / "root"
    (root / "mnt/boot").mkdir(parents=True)
    write_config_json(root, {"uuid": "c3" * 16, "apiEndpoint": "http://127.0.0.1:9",
                             "deviceApiKey": "9" * 32})
    apps = {
        uuid.uuid4().hex: {"id": single, "name": "single", "class": "fleet", "releases": {commit: {
            # host networking: the feature would attach bridge services to supervisor0, which a
            # test engine does not have (--no-host-setup)
            "id": 1, "services": {"main": _service(1, "main", image, {API_LABEL: "1"},
                                                   volumes=["data:/data"], network_mode="host")},
            "volumes": {"data": {"labels": {TEST_LABEL: "1"}}}, "networks": {}}}},
        uuid.uuid4().hex: {"id": multi, "name": "multi", "class": "fleet", "releases": {commit: {
            "id": 2, "services": {"one": _service(2, "one", image, {API_LABEL: "1"}, network_mode="host"),
                                  "two": _service(3, "two", image, {})},
            "volumes": {}, "networks": {}}}},
    }
    apps_json = root / "mnt/data/apps.json"
    apps_json.parent.mkdir(parents=True)
    apps_json.write_text(json.dumps({"config": {}, "apps": apps}))
    sup = SupervisorProcess(root, free_port(), ["--apps", f"{single},{multi}", "--no-host-setup"], {})
    try:
        sup.wait_ready()
        dev = Device(sup=sup, client=docker_client, single=single, multi=multi, image_id=image_id,
                     commit=commit)
        deadline = time.monotonic() + 90
        while True:
            running = [c for app in (single, multi) for c in docker_client.api.containers(
                filters={"label": f"io.balena.app-id={app}"})]
            if len(running) == 3:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"apps not running after 90 s:\n{sup.output()[-6000:]}")
            time.sleep(0.2)
        dev.global_key = global_api_key(root)  # type: ignore[attr-defined]
        sup.wait_applied(dev.global_key)  # the commits are stored once the apply settles, after the starts
        yield dev
    finally:
        sup.stop(signal.SIGKILL)
        _remove_apps(docker_client, [single, multi])


@pytest.mark.docker
def test_v1_app_of_a_single_container_app(engine_device: Device) -> None:
    dev = engine_device
    response = dev.get(f"/v1/apps/{dev.single}", dev.global_key)
    assert response.status_code == 200, response.text
    body = response.json()
    container = dev.container(dev.single, "main")
    assert list(body) == ["appId", "commit", "containerId", "env", "imageId", "releaseId"]
    assert body["appId"] == dev.single and body["releaseId"] == 1 and body["commit"] == dev.commit
    assert body["containerId"] == container["Id"]
    assert body["imageId"] == dev.image_id
    assert body["env"]["FOO"] == "main-env"
    # the container has its scoped key, the answer never shows it
    assert "BALENA_SUPERVISOR_API_KEY" in dev.env(dev.single, "main")
    for private in ("BALENA_SUPERVISOR_API_KEY", "RESIN_SUPERVISOR_API_KEY", "BALENA_API_KEY",
                    "RESIN_API_KEY"):
        assert private not in body["env"]


@pytest.mark.docker
def test_v1_app_errors(engine_device: Device) -> None:
    dev = engine_device
    multi = dev.get(f"/v1/apps/{dev.multi}", dev.global_key)
    assert (multi.status_code, multi.text) == (
        400, "Some v1 endpoints are only allowed on single-container apps")
    missing = dev.get("/v1/apps/4242", dev.global_key)
    assert (missing.status_code, missing.text) == (400, "App not found")
    bad = dev.get("/v1/apps/abc", dev.global_key)
    assert (bad.status_code, bad.text) == (400, "Missing app id")
    assert dev.get(f"/v1/apps/{dev.single}").status_code == 401
    assert dev.get(f"/v1/apps/{dev.single}", "0" * 32).status_code == 401


@pytest.mark.docker
def test_scoped_keys_end_to_end(engine_device: Device) -> None:
    """Each service with the supervisor-api label gets a key scoped to its app: it reaches its own
    app, not the other one, and every endpoint that is not about an app."""
    dev = engine_device
    single_key = dev.env(dev.single, "main")["BALENA_SUPERVISOR_API_KEY"]
    multi_key = dev.env(dev.multi, "one")["BALENA_SUPERVISOR_API_KEY"]
    assert dev.env(dev.single, "main")["RESIN_SUPERVISOR_API_KEY"] == single_key
    assert "BALENA_SUPERVISOR_API_KEY" not in dev.env(dev.multi, "two")
    assert len({single_key, multi_key, dev.global_key}) == 3

    assert dev.get(f"/v1/apps/{dev.single}", single_key).status_code == 200
    denied = dev.get(f"/v1/apps/{dev.single}", multi_key)
    assert (denied.status_code, denied.json()) == (401, {"status": "failed",
                                                         "message": "Application is not available"})
    for path in ("/v2/device/name", "/v2/device/vpn", HOST_CONFIG, "/v2/version"):
        assert dev.get(path, single_key).status_code == 200, path
    # scope filters what the listing endpoints show
    ids = dev.get("/v2/containerId", single_key).json()["services"]
    assert set(ids) == {"main"}


@pytest.mark.docker
def test_cleanup_volumes_removes_only_orphans_in_scope(engine_device: Device) -> None:
    dev = engine_device
    api = dev.client.api
    other_app = random.randint(10**6, 10**9)  # not managed by this supervisor (--apps)
    supervised = {"io.balena.supervised": "true", TEST_LABEL: "1"}
    names = {
        "single_old": f"{dev.single}_old", "multi_old": f"{dev.multi}_old",
        "unsupervised": f"{dev.single}_mine", "other": f"{other_app}_old",
    }
    try:
        for key, name in names.items():
            api.create_volume(name, labels=supervised if key != "unsupervised" else {TEST_LABEL: "1"})

        def present() -> set[str]:
            return {v["Name"] for v in (api.volumes() or {}).get("Volumes") or []}

        multi_key = dev.env(dev.multi, "one")["BALENA_SUPERVISOR_API_KEY"]
        response = dev.get("/v2/cleanup-volumes", multi_key)
        assert (response.status_code, response.json()) == (200, {"status": "success"})
        assert names["multi_old"] not in present()
        assert names["single_old"] in present()  # another app's: out of the key's scope

        response = dev.get("/v2/cleanup-volumes", dev.global_key)
        assert (response.status_code, response.json()) == (200, {"status": "success"})
        left = present()
        assert names["single_old"] not in left
        assert f"{dev.single}_data" in left  # in the target and mounted
        assert names["unsupervised"] in left  # not the supervisor's
        assert names["other"] in left  # an app this supervisor does not manage
        assert dev.get("/v2/cleanup-volumes").status_code == 401
    finally:
        for name in names.values():
            with contextlib.suppress(docker.errors.NotFound):
                api.remove_volume(name, force=True)


@pytest.mark.docker
def test_regenerate_a_scoped_key(engine_device: Device) -> None:
    """Last in the module: it changes the app's key. The old key stops working at once, the new one
    keeps the app's scope, and the container gets it with the next apply."""
    dev = engine_device
    old = dev.env(dev.single, "main")["BALENA_SUPERVISOR_API_KEY"]
    response = dev.sup.post("/v1/regenerate-api-key", params={"apikey": old})
    assert response.status_code == 200
    new = response.text
    assert len(new) == 32 and new != old
    assert dev.get(f"/v1/apps/{dev.single}", old).status_code == 401
    assert dev.get(f"/v1/apps/{dev.single}", new).status_code == 200
    assert dev.get(f"/v1/apps/{dev.multi}", new).status_code == 401
    assert dev.get("/v2/version", dev.global_key).status_code == 200  # the global key is untouched

    update = dev.sup.post("/v1/update", json={"force": True}, params={"apikey": dev.global_key})
    assert update.status_code == 204
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if dev.env(dev.single, "main").get("BALENA_SUPERVISOR_API_KEY") == new:
                break
        except (ValueError, docker.errors.NotFound):  # between remove and create
            pass
        time.sleep(0.2)
    else:
        pytest.fail(f"the container never got the new key:\n{dev.sup.output()[-4000:]}")
