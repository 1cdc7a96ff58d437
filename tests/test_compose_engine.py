"""Round trips through the real Docker engine: target -> create body -> container -> read back.

A container created from a target must compare equal to that same target once read back, or the
supervisor would recreate it on every pass. Every object carries the test label and is removed by
the `docker_cleanup` fixture (tests/fixtures/docker.py), pass or fail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import re
import socket
import uuid
from collections.abc import Mapping
from typing import Any

import docker
import docker.errors
import pytest

from supervisor.compose import Network, Service, ServiceContext, Volume
from supervisor.compose.endpoints import connect_kwargs
from tests.fixtures.docker import TEST_LABEL
from tests.test_admission import ACCEPTED

pytestmark = pytest.mark.docker

LABELS = {TEST_LABEL: "1"}
IMAGE_TAG = "pysupervisor-test/compose:latest"


@pytest.fixture(scope="module")
def image_info(docker_client, make_image) -> dict:
    """A busybox image with its own env, labels and working dir, to exercise the image fallbacks."""
    make_image(
        IMAGE_TAG,
        env={"IMAGE_VAR": "from-image", "PORT": "1"},
        labels={"io.resin.image-label": "x", "org.example": "image"},
        workdir="/tmp",
    )
    return docker_client.api.inspect_image(IMAGE_TAG)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class Deployer:
    """Creates what a target needs, the way the executor will, and remembers it for cleanup."""

    def __init__(self, client: docker.DockerClient, cleanup: list, ctx: ServiceContext) -> None:
        self.api = client.api
        self.cleanup = cleanup
        self.ctx = ctx

    def network(self, name: str, compose: Mapping[str, Any] | None = None) -> Network:
        compose = dict(compose or {})
        compose["labels"] = {**LABELS, **(compose.get("labels") or {})}
        net = Network.from_compose(self.ctx.app_id, self.ctx.app_uuid, name, compose)
        response = self.api._post_json(self.api._url("/networks/create"), data=net.create_body())
        self.cleanup.append(self.api._result(response, json=True)["Id"])
        return net

    def volume(self, name: str, compose: Mapping[str, Any] | None = None) -> Volume:
        compose = dict(compose or {})
        compose["labels"] = {**LABELS, **(compose.get("labels") or {})}
        vol = Volume.from_compose(self.ctx.app_id, self.ctx.app_uuid, name, compose)
        body = vol.create_body()
        self.api.create_volume(
            body["Name"], driver=body["Driver"], driver_opts=body["DriverOpts"], labels=body["Labels"]
        )
        self.cleanup.append(body["Name"])
        return vol

    def target(self, name: str, composition: Mapping[str, Any] | None = None, **top: Any) -> Service:
        svc = {
            "serviceName": name,
            "id": random.randint(1, 10**6),
            "image_id": random.randint(1, 10**6),
            "image": IMAGE_TAG,
            "environment": top.pop("environment", {}),
            "labels": {**LABELS, **top.pop("labels", {})},
            "running": True,
            "composition": dict(composition or {}),
            **top,
        }
        return Service.from_target(svc, self.ctx)

    def create(self, target: Service, *, start: bool = True, container_ids=None) -> str:
        body, extra = target.create_body(device_name="test-device", container_ids=container_ids or {})
        container_id = self.api.create_container_from_config(body, name=target.container_name())["Id"]
        self.cleanup.append(container_id)
        for network, endpoint in extra:
            self.api.connect_container_to_network(container_id, network, **connect_kwargs(endpoint))
        if start:
            self.api.start(container_id)
        return container_id

    def read_back(self, container_id: str) -> Service:
        return Service.from_container(self.api.inspect_container(container_id))

    def round_trip(self, target: Service, **kwargs: Any) -> Service:
        current = self.read_back(self.create(target, **kwargs))
        ids = kwargs.get("container_ids") or {}
        assert current.config_diff(target, ids) == {}
        assert current.is_equal(target, ids)
        return current


@pytest.fixture
def deployer(docker_client, docker_cleanup, image_info, tmp_path) -> Deployer:
    ctx = ServiceContext(
        app_id=random.randint(10**6, 10**7),
        app_uuid=uuid.uuid4().hex,
        app_name="compose-test",
        release_id=random.randint(1, 10**6),
        commit=uuid.uuid4().hex,
        device_uuid=uuid.uuid4().hex,
        device_type="generic-amd64",
        device_arch="amd64",
        device_name="test-device",
        os_version="balenaOS 6.0.0",
        hostname=socket.gethostname(),
        lock_root=str(tmp_path),
        image_info=image_info,
    )
    return Deployer(docker_client, docker_cleanup, ctx)


def changed_env(deployer: Deployer, current: Service, name: str, composition, **top) -> None:
    """Rebuilt with the same ids the target still compares equal; one changed variable does not."""
    ids = {"id": current.service_id, "image_id": current.image_id}
    env = dict(top.pop("environment", {}))
    same = deployer.target(name, composition, environment=dict(env), **ids, **top)
    assert current.is_equal(same)
    other = deployer.target(name, composition, environment={**env, "CHANGED": "yes"}, **ids, **top)
    assert not current.is_equal_config(other)
    assert not current.is_equal(other)
    assert set(current.config_diff(other)) == {"environment"}


# --------------------------------------------------------------------------- services


def test_plain_service(deployer, image_info):
    deployer.network("default")
    target = deployer.target("plain")
    current = deployer.round_trip(target)
    assert current.status == "Running"
    assert current.config["image"] == image_info["Id"]
    assert current.config["environment"]["IMAGE_VAR"] == "from-image"
    assert current.config["labels"]["io.balena.image-label"] == "x"
    assert current.container_id and current.service_name == "plain"
    changed_env(deployer, current, "plain", {})


def test_created_but_not_started(deployer):
    deployer.network("default")
    target = deployer.target("idle")
    current = deployer.read_back(deployer.create(target, start=False))
    assert current.status == "Installed"
    assert current.is_equal_except_running(target)
    assert not current.is_equal(target)
    idle_target = dataclasses.replace(target, config={**target.config, "running": False})
    assert current.is_equal(idle_target)


def test_ports_env_labels(deployer):
    deployer.network("default")
    web, dns = free_port(), free_port()
    composition = {
        "ports": [f"{web}:80", f"127.0.0.1:{dns}:53/udp", "9000"],
        "environment": {"FROM_COMPOSITION": "1", "PORT": "overridden-by-top"},
        "labels": {"com.example.composition": "c"},
        "command": "sleep 100000",
    }
    top = {
        "environment": {"PORT": "80", "MULTI": "line1\nline2", "EQUALS": "a=b"},
        "labels": {"com.example.top": "t", "io.resin.legacy": "1"},
    }
    target = deployer.target("ports", composition, **dict(top))
    current = deployer.round_trip(target)
    assert current.config["environment"]["PORT"] == "80"
    assert current.config["labels"]["io.balena.legacy"] == "1"
    assert len(current.config["portMaps"]) == 3
    changed_env(deployer, current, "ports", composition, **dict(top))


def test_volumes_named_anonymous_tmpfs(deployer):
    deployer.network("default")
    deployer.volume("data")
    deployer.volume("other", {"driver_opts": {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}})
    composition = {
        "volumes": [
            "data:/data",
            "/anon",
            {"type": "volume", "source": "other", "target": "/other", "read_only": True},
            {"type": "tmpfs", "target": "/long-tmpfs"},
            "/host/bind:/refused",
        ],
        "tmpfs": ["/run/short", "/run/sized:size=65536"],
    }
    target = deployer.target("vols", composition)
    current = deployer.round_trip(target)
    assert f"{deployer.ctx.app_id}_data:/data" in current.config["volumes"]
    assert not any("/refused" in str(v) for v in current.config["volumes"])
    assert current.has_volume("data") and current.has_volume("other")
    changed_env(deployer, current, "vols", composition)


def test_healthcheck_limits_and_host_options(deployer):
    deployer.network("default")
    composition = {
        "healthcheck": {
            "test": ["CMD", "true"],
            "interval": "30s",
            "timeout": "5s",
            "start_period": "1s",
            "retries": 2,
        },
        "ulimits": {"nofile": {"soft": 1024, "hard": 2048}, "nproc": 512},
        "sysctls": {"net.core.somaxconn": 1024},
        "cap_add": ["NET_ADMIN", "SYS_PTRACE"],
        "cap_drop": ["MKNOD"],
        "devices": ["/dev/null:/dev/xnull"],
        "dns": ["8.8.8.8", "1.1.1.1"],
        "dns_search": "example.com",
        "dns_opt": ["ndots:2"],
        "extra_hosts": ["db.local=10.0.0.9"],
        "security_opt": ["no-new-privileges:true", "label=disable"],
        "group_add": ["100"],
        "restart": "unless-stopped",
        "stop_signal": "SIGINT",
        "stop_grace_period": "1m30s",
        "working_dir": "/tmp/",
        "user": "0",
        "mem_limit": "64m",
        "shm_size": "32m",
        "cpu_shares": 512,
        "oom_score_adj": 100,
        "cpus": "0.5",
        "pids_limit": 200,
        "domainname": "example.org",
        "hostname": "hc-host",
        "init": True,
        "tty": False,
        "read_only": True,
    }
    target = deployer.target("hc", composition)
    current = deployer.round_trip(target)
    assert current.config["healthcheck"]["interval"] == 30_000_000_000
    assert current.config["ulimits"]["nofile"] == {"soft": 1024, "hard": 2048}
    changed_env(deployer, current, "hc", composition)


def _with_free_ports(value: Any) -> Any:
    """An ACCEPTED ports value with its fixed host ports swapped for free ones (a shared engine)."""
    text = json.dumps(value)
    for start, end in re.findall(r"(80[0-9][0-9])-(80[0-9][0-9])", text):
        first = free_ports(int(end) - int(start) + 1)
        text = text.replace(f"{start}-{end}", f"{first}-{first + int(end) - int(start)}")
    for port in sorted(set(re.findall(r"80[0-9][0-9]", text))):
        text = text.replace(port, str(free_port()))
    return json.loads(text)


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive free TCP ports."""
    for _ in range(50):
        first = free_port()
        with contextlib.ExitStack() as stack:
            try:
                for offset in range(1, count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("", first + offset))
            except OSError:
                continue
        return first
    raise AssertionError(f"no {count} consecutive free ports")


@pytest.mark.parametrize(("field", "value"), ACCEPTED, ids=[f"{a[0]}={a[1]!r}"[:60] for a in ACCEPTED])
def test_every_admitted_compose_value_is_created_and_reads_back_equal(deployer, field, value):
    """What admission takes (tests/test_admission.py ACCEPTED) the engine creates, and the container
    compares equal to its target: no refusal at create, no recreation every round."""
    deployer.network("default")
    if field == "ports":
        value = _with_free_ports(value)
        if "::1" in json.dumps(value) and not socket.has_ipv6:
            pytest.skip("no IPv6 on this host")
    target = deployer.target("compose-value", {field: value, "command": "sleep 100000"})
    deployer.round_trip(target)


def test_extra_networks_with_aliases_and_static_address(deployer):
    deployer.network("front")
    back = None
    for third in random.sample(range(1, 250), 20):
        subnet = f"10.213.{third}.0/24"
        try:
            back = deployer.network(
                "back", {"ipam": {"config": [{"subnet": subnet, "gateway": f"10.213.{third}.1"}]}}
            )
            break
        except docker.errors.APIError:
            continue
    assert back is not None, "no free subnet for the test network"
    address = back.config["ipam"]["config"][0]["subnet"].replace(".0/24", ".10")
    composition = {
        "networks": {
            "front": {"aliases": ["web", "www"]},
            "back": {"aliases": ["api-internal"], "ipv4_address": address},
        }
    }
    target = deployer.target("nets", composition)
    current = deployer.round_trip(target)
    front_name = f"{deployer.ctx.app_uuid}_front"
    back_name = f"{deployer.ctx.app_uuid}_back"
    assert current.config["networkMode"] == front_name
    assert set(current.config["networks"][front_name]["aliases"]) >= {"web", "www", "nets"}
    assert current.config["networks"][back_name]["ipv4Address"] == address
    changed_env(deployer, current, "nets", composition)
    # a different static address is a different config
    moved = deployer.target(
        "nets",
        {"networks": {"front": {"aliases": ["web", "www"]}, "back": {"ipv4_address": address[:-1] + "1"}}},
        id=current.service_id,
        image_id=current.image_id,
    )
    assert not current.is_equal_config(moved)


def test_network_mode_host(deployer):
    target = deployer.target("hostnet", {"network_mode": "host"})
    current = deployer.round_trip(target)
    assert current.config["networkMode"] == "host"
    assert current.config["hostname"] == socket.gethostname()
    changed_env(deployer, current, "hostnet", {"network_mode": "host"})


def test_network_mode_service(deployer):
    deployer.network("default")
    main_id = deployer.create(deployer.target("main"))
    ids = {"main": main_id}
    target = deployer.target("sidecar", {"network_mode": "service:main"})
    assert target.depends_on == ["main"]
    current = deployer.round_trip(target, container_ids=ids)
    assert current.config["networkMode"] == f"container:{main_id}"
    assert not current.is_equal_config(target, {"main": "0" * 64})


def test_reference_shaped_container_compares_equal(deployer, image_info):
    """A container created with the body the reference supervisor sends (string Entrypoint, empty
    restart name for `no`, no Init, Healthcheck without timings) reads back equal to our target."""
    deployer.network("default")
    ctx = deployer.ctx
    target = deployer.target("legacy", {"restart": "no", "ports": [f"{free_port()}:80"]})
    ours, _ = target.create_body(device_name="test-device")
    lock = ctx.service_lock_dir("legacy")
    body = {
        "Tty": True,
        "Cmd": ["sleep", "100000"],
        "Volumes": {},
        "Entrypoint": "",
        "Env": ours["Env"],
        "ExposedPorts": ours["ExposedPorts"],
        "Image": image_info["Id"],
        "Labels": ours["Labels"],
        "NetworkingConfig": ours["NetworkingConfig"],
        "StopSignal": "SIGTERM",
        "Domainname": "",
        "Hostname": "",
        "MacAddress": "",
        "User": "",
        "WorkingDir": "/tmp",
        "HostConfig": {
            "CapAdd": [],
            "CapDrop": [],
            "Binds": [f"{lock}:/tmp/resin", f"{lock}:/tmp/balena"],
            "Mounts": [],
            "CgroupParent": "",
            "Devices": [],
            "DeviceRequests": [],
            "Dns": [],
            "DnsOptions": [],
            "DnsSearch": [],
            "PortBindings": ours["HostConfig"]["PortBindings"],
            "ExtraHosts": [],
            "GroupAdd": [],
            "NetworkMode": ours["HostConfig"]["NetworkMode"],
            "PidMode": "",
            "PidsLimit": 0,
            "SecurityOpt": [],
            "Sysctls": {},
            "Ulimits": [],
            "RestartPolicy": {"Name": "", "MaximumRetryCount": 0},
            "CpuShares": 0,
            "CpuQuota": 0,
            "CpusetCpus": "",
            "Memory": 0,
            "MemoryReservation": 0,
            "OomKillDisable": False,
            "OomScoreAdj": 0,
            "Privileged": False,
            "ReadonlyRootfs": False,
            "ShmSize": 67108864,
            "Tmpfs": {},
            "UsernsMode": "",
            "NanoCpus": 0,
            "IpcMode": "shareable",
        },
        "Healthcheck": {"Test": ["NONE"]},
        "StopTimeout": 10,
    }
    container_id = deployer.api.create_container_from_config(body, name=target.container_name())["Id"]
    deployer.cleanup.append(container_id)
    deployer.api.start(container_id)
    current = deployer.read_back(container_id)
    assert current.config_diff(target) == {}
    assert current.is_equal(target)


# --------------------------------------------------------------------------- networks and volumes


def read_network(deployer: Deployer, net: Network) -> Network:
    return Network.from_docker(deployer.api.inspect_network(net.docker_name))


@pytest.mark.parametrize(
    "compose",
    [
        {},
        {"internal": True, "driver_opts": {"com.docker.network.bridge.enable_icc": "false"}},
        {"labels": {"io.resin.features.x": "1", "com.example": "y"}},
        {"config_only": True, "ipam": {"config": [{"subnet": "10.214.77.0/24", "gateway": "10.214.77.1"}]}},
    ],
)
def test_network_round_trip(deployer, compose):
    net = deployer.network("rt", compose)
    current = read_network(deployer, net)
    assert (current.name, current.app_id, current.app_uuid) == (
        "rt",
        deployer.ctx.app_id,
        deployer.ctx.app_uuid,
    )
    assert current.is_equal_config(net)
    changed = Network.from_compose(
        deployer.ctx.app_id, deployer.ctx.app_uuid, "rt", {**compose, "labels": {**LABELS, "changed": "1"}}
    )
    assert not current.is_equal_config(changed)


def test_network_round_trip_with_ipam(deployer):
    net = None
    for third in random.sample(range(1, 250), 20):
        pool = {
            "subnet": f"10.215.{third}.0/24",
            "gateway": f"10.215.{third}.1",
            "ip_range": f"10.215.{third}.128/25",
        }
        with contextlib.suppress(docker.errors.APIError):
            net = deployer.network("ipam", {"ipam": {"config": [pool], "options": {}}})
            break
    assert net is not None, "no free subnet for the test network"
    current = read_network(deployer, net)
    assert current.config["labels"]["io.balena.private.ipam.config"] == "true"
    assert current.is_equal_config(net)
    plain = Network.from_compose(deployer.ctx.app_id, deployer.ctx.app_uuid, "ipam", {"labels": LABELS})
    assert not current.is_equal_config(plain)


@pytest.mark.parametrize(
    "compose",
    [
        {},
        {"driver_opts": {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}, "labels": {"io.resin.y": "2"}},
    ],
)
def test_volume_round_trip(deployer, docker_client, compose):
    vol = deployer.volume("rt", compose)
    current = Volume.from_docker(docker_client.api.inspect_volume(vol.docker_name))
    assert (current.name, current.app_id, current.app_uuid) == (
        "rt",
        deployer.ctx.app_id,
        deployer.ctx.app_uuid,
    )
    assert current.is_equal_config(vol)
    changed = Volume.from_compose(
        deployer.ctx.app_id, deployer.ctx.app_uuid, "rt", {**compose, "labels": {**LABELS, "changed": "1"}}
    )
    assert not current.is_equal_config(changed)
