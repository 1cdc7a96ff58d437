"""Issue #10 §2 over real HTTP: a target the engine would refuse is 400, naming the field as the
user wrote it, and changes nothing on a device running an app on the real engine.

One supervisor process (local mode, ``--apps <id> --no-host-setup``) runs a two-service app with a
named volume and a network. Each bad body is POSTed, then the stored target is applied again
(``POST /v1/update``) and the loop allowed to settle, so a refusal that had slipped through would
have time to do its damage; the containers (same ids, still running), the volume and the stored
target must be exactly as before. Before this gate each of these bodies was accepted (200) and took
services down.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.device import free_port, wait_for
from tests.test_admission import MUTATION, judge
from tests.test_admission import v2_body as pure_body
from tests.test_reconcile import SETTLED, LocalDevice, applied_app

pytestmark = pytest.mark.docker


@dataclass
class VolumeDevice(LocalDevice):
    """The reconcile tests' device, with a named volume and a network used by ``main``."""

    def target(self) -> dict[str, Any]:
        body = super().target()
        app = body["local"]["apps"][str(self.app_id)]
        app["volumes"] = {"data": {}}
        app["networks"] = {"front": {}}
        for service in app["services"].values():
            if service["serviceName"] == "main":
                service.update(volumes=["data:/data"], networks=["front"])
        return body

    def service_body(self, target: dict[str, Any] | None = None) -> dict[str, Any]:
        """The v2 entry of service ``main`` in ``target`` (a copy of this device's target)."""
        body = target if target is not None else self.target()
        services = body["local"]["apps"][str(self.app_id)]["services"]
        return next(s for s in services.values() if s["serviceName"] == "main")


@pytest.fixture(scope="module")
def running(docker_client, make_image, registry, tmp_path_factory) -> Iterator[VolumeDevice]:
    root = tmp_path_factory.mktemp("refusals") / "root"
    with applied_app(docker_client, make_image, registry, root, device=VolumeDevice) as dev:
        yield dev


def snapshot(dev: VolumeDevice) -> dict[str, Any]:
    api = dev.client.api
    containers = {name: (entry["Id"], entry["State"]) for name, entry in dev.by_service().items()}
    volume = api.inspect_volume(f"{dev.app_id}_data")
    return {
        "containers": containers,
        "volume": (volume["Name"], volume["CreatedAt"]),
        "target": dev.sup.get("/v2/local/target-state").json(),
    }


def assert_unchanged(dev: VolumeDevice, before: dict[str, Any]) -> None:
    """Apply the stored target again and let the loop settle: nothing may have moved."""
    offset = len(dev.sup.output())
    assert dev.sup.post("/v1/update", json={}).status_code == 204
    dev.wait_settled(offset)
    after = snapshot(dev)
    assert after == before
    assert all(state == "running" for _, state in after["containers"].values())


def refused(dev: VolumeDevice, **request: Any) -> str:
    before = snapshot(dev)
    response = dev.sup.post("/v2/local/target-state", **request)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status"] == "failed"
    assert_unchanged(dev, before)
    return body["message"]


# ------------------------------------------------------------------------ bodies of the wrong shape
WRONG_SHAPES = [
    ("no body", {}, "body is empty"),
    ("empty JSON body", {"data": b"", "headers": {"Content-Type": "application/json"}}, "body is empty"),
    ("{}", {"json": {}}, "local: is required"),
    ('{"apps":{}}', {"json": {"apps": {}}}, "local: is required"),
    ('{"local":{}}', {"json": {"local": {}}}, "local.apps: is required"),
    ("array", {"json": [{"local": {"apps": {}}}]}, "expected object, got array"),
    ("string", {"json": "local"}, "expected object, got string"),
    ("apps of the wrong type", {"json": {"local": {"apps": []}}}, "local.apps: expected object, got array"),
    ("form-encoded", {"data": {"local[apps]": ""}}, "application/x-www-form-urlencoded"),
    (
        "text/plain",
        {"data": '{"local":{"apps":{}}}', "headers": {"Content-Type": "text/plain"}},
        "got text/plain",
    ),
    (
        "invalid JSON",
        {"data": '{"local": {"apps": {}', "headers": {"Content-Type": "application/json"}},
        "Invalid JSON body: Expecting",
    ),
]


@pytest.mark.parametrize(("name", "request_kw", "says"), WRONG_SHAPES, ids=[w[0] for w in WRONG_SHAPES])
def test_a_body_that_is_not_a_local_target_is_refused_and_kills_nothing(
    running: VolumeDevice, name: str, request_kw: dict[str, Any], says: str
) -> None:
    assert says in refused(running, **request_kw)


# ------------------------------------------------------------------------ values the engine refuses
def _with(dev: VolumeDevice, change: Any) -> dict[str, Any]:
    target = dev.target()
    change(target, dev.service_body(target), target["local"]["apps"][str(dev.app_id)])
    return target


BAD_VALUES = [
    (
        "port out of range",
        lambda t, s, a: s.update(ports=["99999:80"]),
        "services.main.ports[0]: port 99999 is out of range 0-65535",
    ),
    (
        "restart policy",
        lambda t, s, a: s.update(restart="sometimes"),
        "services.main.restart: restart policy 'sometimes' is not one of",
    ),
    (
        "memory unit",
        lambda t, s, a: s.update(mem_limit="1.5g"),
        "services.main.mem_limit: invalid size '1.5g'",
    ),
    ("cpus", lambda t, s, a: s.update(cpus="lots"), "services.main.cpus"),
    (
        "ulimits",
        lambda t, s, a: s.update(ulimits={"nofile": {"soft": 20, "hard": 10}}),
        "services.main.ulimits.nofile: soft limit 20 is above hard limit 10",
    ),
    (
        "depends_on a missing service",
        lambda t, s, a: s.update(depends_on=["cache"]),
        "services.main.depends_on[0]: service 'cache' is not a service of this release",
    ),
    (
        "undeclared volume",
        lambda t, s, a: s.update(volumes=["logs:/logs"]),
        "services.main.volumes[0]: volume 'logs' is not declared in the release's volumes (declared: data)",
    ),
    (
        "undeclared network",
        lambda t, s, a: s.update(networks=["back"]),
        "services.main.networks[0]: network 'back' is not declared",
    ),
    ("device spec", lambda t, s, a: s.update(devices=["ttyUSB0"]), "services.main.devices[0]: device path"),
    ("capability", lambda t, s, a: s.update(cap_add=["SYS_ADMINN"]), "did you mean 'SYS_ADMIN'"),
    ("sysctl", lambda t, s, a: s.update(sysctls={"vm.swappiness": "10"}), "is not namespaced"),
    (
        "5 MB environment",
        lambda t, s, a: s["environment"].update(BIG="x" * 5_000_000),
        "services.main.environment.BIG: variable 'BIG' is 5000005 bytes; the kernel passes at most 131072",
    ),
    (
        "environment over ARG_MAX",
        lambda t, s, a: s["environment"].update({f"V{i}": "x" * 100_000 for i in range(30)}),
        "ARG_MAX 2097152",
    ),
    ("label set", lambda t, s, a: s["labels"].update(big="y" * 200_000), "services.main.labels.big"),
    (
        "misspelt services",
        lambda t, s, a: a.update(servics=a.pop("services")),
        "services: is required ({} for a release without services) (found 'servics')",
    ),
    (
        "services without a commit",
        lambda t, s, a: a.update(comit=a.pop("commit")),
        ".commit: is required when the app has services",
    ),
    ("missing image", lambda t, s, a: s.pop("image"), "services.main.image: is required"),
    ("bad image reference", lambda t, s, a: s.update(image="Not An Image"), "services.main.image: invalid"),
    ("bad imageId", lambda t, s, a: s.update(imageId="one"), "services.main.imageId: must be an integer"),
]


@pytest.mark.parametrize(("name", "change", "says"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_a_value_the_engine_would_refuse_is_400_naming_the_field_and_kills_nothing(
    running: VolumeDevice, name: str, change: Any, says: str
) -> None:
    assert says in refused(running, json=_with(running, change))


# ------------------------------------------------------------------ what the device holds outside the target
def test_a_device_the_host_lacks_is_refused_and_one_it_has_is_created(running: VolumeDevice) -> None:
    """Device paths are looked up under the supervisor's host root (--root: the test's root stands
    for the host; a symlink to the real /dev/null is a device node there)."""
    dev = running
    (dev.sup.root / "dev").mkdir(exist_ok=True)
    with contextlib.suppress(FileExistsError):
        (dev.sup.root / "dev/null").symlink_to("/dev/null")
    (dev.sup.root / "dev/plain-file").write_text("")
    absent = _with(dev, lambda t, s, a: s.update(devices=["/dev/pysupervisor-absent:/dev/x"]))
    assert refused(dev, json=absent) == (
        "Invalid target state: services.main.devices[0]: device /dev/pysupervisor-absent does not exist on "
        "the host"
    )
    plain = _with(dev, lambda t, s, a: s.update(devices=["/dev/null", "/dev/plain-file"]))
    assert refused(dev, json=plain) == (
        "Invalid target state: services.main.devices[1]: /dev/plain-file on the host is not a device node"
    )
    offset = dev.apply(_with(dev, lambda t, s, a: s.update(devices=["/dev/null:/dev/host-null"])))
    assert "Failed" not in dev.sup.output()[offset:]
    main = dev.client.api.inspect_container(dev.by_service()["main"]["Id"])
    assert [d["PathInContainer"] for d in main["HostConfig"]["Devices"]] == ["/dev/host-null"]
    dev.apply()  # back to the plain target for the other tests


def test_a_subnet_overlapping_a_network_outside_the_target_is_refused(
    running: VolumeDevice, docker_cleanup: list[Any]
) -> None:
    """The engine refuses the second network ("Pool overlaps with other one on this address space");
    the app's own networks are not 'outside' (the release's network is recreated or kept)."""
    import docker.types

    dev = running
    prefix = free_subnet(dev.client)
    foreign = dev.client.api.create_network(
        f"pysupervisor-foreign-{uuid.uuid4().hex[:8]}",
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=prefix + "0/24")]),
        labels={"io.pysupervisor.test": "1"},
    )
    docker_cleanup.append(foreign["Id"])
    pool = {"subnet": prefix + "128/25", "gateway": prefix + "129"}
    target = _with(dev, lambda t, s, a: a["networks"].update(front={"ipam": {"config": [pool]}}))
    says = refused(dev, json=target)
    assert says.startswith(
        f"Invalid target state: networks.front.ipam.config[0].subnet: {prefix}128/25 overlaps "
        f"{prefix}0/24 of the engine's network 'pysupervisor-foreign-"
    ), says


def test_a_host_port_a_container_outside_the_target_holds_is_refused(
    running: VolumeDevice, busybox_image: str, docker_cleanup: list[Any]
) -> None:
    dev = running
    port = free_port()
    api = dev.client.api
    name = f"pysupervisor-port-holder-{uuid.uuid4().hex[:8]}"
    holder = api.create_container(
        busybox_image, name=name, labels={"io.pysupervisor.test": "1"}, ports=[80],
        host_config=api.create_host_config(port_bindings={80: port}),
    )
    docker_cleanup.append(holder["Id"])
    api.start(holder["Id"])
    says = refused(dev, json=_with(dev, lambda t, s, a: s.update(ports=[f"{port}:80"])))
    assert says == (
        f"Invalid target state: services.main.ports[0]: host port {port}/tcp is already published by "
        f"container '{name}', which is not this target's (the engine refuses: port is already allocated)"
    )
    # Another protocol, or once the holder is gone, the same port is the target's to take.
    dev.apply(_with(dev, lambda t, s, a: s.update(ports=[f"{port}:80/udp"])))
    api.remove_container(holder["Id"], force=True)
    dev.apply(_with(dev, lambda t, s, a: s.update(ports=[f"{port}:80"])))
    assert dev.by_service()["main"]["Ports"][0]["PublicPort"] == port


def test_a_host_port_the_apps_own_container_holds_is_admitted(running: VolumeDevice) -> None:
    """The port is held by the container this target replaces: not a conflict."""
    dev = running
    port = free_port()
    dev.apply(_with(dev, lambda t, s, a: s.update(ports=[f"{port}:80"])))
    before = dev.by_service()["main"]["Id"]
    dev.apply(_with(dev, lambda t, s, a: s.update(ports=[f"{port}:80"], environment={"CHANGED": "1"})))
    main = dev.by_service()["main"]
    assert main["Id"] != before and main["Ports"][0]["PublicPort"] == port
    dev.apply()


# ------------------------------------------------------------------------------ accepted, never silently
def test_unknown_keys_are_applied_with_warnings_and_logged_once(running: VolumeDevice) -> None:
    dev = running
    before = snapshot(dev)
    target = _with(dev, lambda t, s, a: s.update(restrt="no", bogusField=1))
    offset = len(dev.sup.output())
    for _ in range(2):
        response = dev.sup.post("/v2/local/target-state", json=target)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "status": "success",
            "message": "OK",
            "warnings": [
                "unknown key 'restrt' in services.main ignored (did you mean 'restart'?)",
                "unknown key 'bogusField' in services.main ignored",
            ],
        }
    dev.wait_settled(offset)
    log = dev.sup.output()[offset:]
    assert log.count("unknown key 'restrt' in services.main ignored") == 1
    assert log.count("unknown key 'bogusField' in services.main ignored") == 1
    # The ignored keys change nothing that runs: same containers, same volume.
    assert {k: v for k, v in snapshot(dev).items() if k != "target"} == {
        k: v for k, v in before.items() if k != "target"
    }
    dev.apply()  # back to the plain target for the other tests


# ---------------------------------------------------------------------- property, on the real engine
def _engine_create(client: docker.DockerClient, body: dict[str, Any], image: str) -> None:
    """Create (not start) every network, volume and container the admitted ``body`` stands for, on
    the real engine, under throwaway names; everything is removed again."""
    from supervisor.state.admission import placeholder_context, validate_local
    from supervisor.state.planner import target_apps

    api = client.api
    device, _ = validate_local(body, current_name="dev")

    def context(app: Any, svc: Any) -> Any:
        return placeholder_context(app, "dev")

    created: list[tuple[str, str]] = []
    try:
        for app in target_apps(device, context).values():
            for net in app.networks:
                spec = net.create_body()
                spec["Labels"] = {**(spec.get("Labels") or {}), "io.pysupervisor.test": "1"}
                created.append(("network", api.create_network(**_network_kwargs(spec))["Id"]))
            for vol in app.volumes:
                spec = vol.create_body()
                api.create_volume(
                    spec["Name"],
                    driver=spec.get("Driver"),
                    driver_opts=spec.get("DriverOpts"),
                    labels={**(spec.get("Labels") or {}), "io.pysupervisor.test": "1"},
                )
                created.append(("volume", spec["Name"]))
            ids: dict[str, str] = {}
            for svc in sorted(app.services, key=lambda s: 0 if s.service_name == "db" else 1):
                create, _extra = svc.create_body(device_name="dev", container_ids=ids)
                create["Image"] = image
                create["Labels"]["io.pysupervisor.test"] = "1"
                container = api.create_container_from_config(
                    create, name=f"{svc.container_name()}-{uuid.uuid4().hex[:6]}"
                )
                ids[svc.service_name] = container["Id"]
                created.append(("container", container["Id"]))
    finally:
        removers = {
            "container": lambda i: api.remove_container(i, force=True, v=True),
            "network": api.remove_network,
            "volume": lambda i: api.remove_volume(i, force=True),
        }
        for kind, ident in reversed(created):
            with contextlib.suppress(docker.errors.NotFound):
                removers[kind](ident)


def _network_kwargs(spec: dict[str, Any]) -> dict[str, Any]:
    import docker.types

    ipam = spec.get("IPAM") or {}
    pools = [
        docker.types.IPAMPool(
            subnet=p.get("Subnet"),
            gateway=p.get("Gateway"),
            iprange=p.get("IPRange"),
            aux_addresses=p.get("AuxiliaryAddresses"),
        )
        for p in ipam.get("Config") or []
    ]
    return {
        "name": spec["Name"],
        "driver": spec.get("Driver"),
        "options": spec.get("Options"),
        "ipam": docker.types.IPAMConfig(
            driver=ipam.get("Driver") or "default", pool_configs=pools, options=ipam.get("Options")
        ),
        "check_duplicate": True,
        "internal": spec.get("Internal", False),
        "labels": spec.get("Labels"),
        "enable_ipv6": spec.get("EnableIPv6", False),
    }


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(MUTATION, min_size=1, max_size=3))
def test_random_targets_are_created_by_the_engine_or_refused_over_http(
    running: VolumeDevice, busybox_image: str, mutations: list[tuple[str, Any]]
) -> None:
    """Admitted: the engine creates every object (an app uuid of its own, a free subnet). Refused:
    the supervisor answers 400 with the same message the pure gate gives, and nothing moves."""
    subnet = free_subnet(running.client)
    body = json.loads(json.dumps(pure_body(**dict(mutations)), default=str).replace("10.77.0.", subnet))
    body["local"]["apps"] = {str(random.randint(10**9, 2 * 10**9)): body["local"]["apps"]["1011"]}
    judge(copy.deepcopy(body))  # the pure property first (docker-py's builders)
    message = refusal_message(body)  # with this machine's CPU count, as the supervisor judges
    if message is None:
        _engine_create(running.client, body, busybox_image)
    else:
        assert refused(running, json=body) == message


def free_subnet(client: docker.DockerClient) -> str:
    """The prefix ``10.x.y.`` of a /24 no network on the (shared) engine uses."""
    import ipaddress

    used = [
        ipaddress.ip_network(pool["Subnet"], strict=False)
        for net in client.api.networks()
        for pool in ((net.get("IPAM") or {}).get("Config") or [])
        if pool.get("Subnet")
    ]
    while True:
        prefix = f"10.{random.randint(100, 250)}.{random.randint(0, 250)}."
        candidate = ipaddress.ip_network(prefix + "0/24")
        if not any(candidate.overlaps(net) for net in used if net.version == 4):
            return prefix


def refusal_message(body: Any) -> str | None:
    from supervisor.state.admission import validate_local
    from supervisor.state.target import TargetStateError

    try:
        validate_local(copy.deepcopy(body), current_name="dev")
    except TargetStateError as err:
        return str(err)
    return None


# ------------------------------------------------------------------------------- the empty app set
def test_the_explicit_empty_app_set_removes_every_app(
    docker_client, make_image, registry, tmp_path: Path
) -> None:
    with applied_app(docker_client, make_image, registry, tmp_path / "root", device=VolumeDevice) as dev:
        assert dev.containers()
        offset = len(dev.sup.output())
        response = dev.sup.post("/v2/local/target-state", json={"local": {"apps": {}}})
        assert response.status_code == 200, response.text
        wait_for(
            lambda: SETTLED in dev.sup.output()[offset:] and not dev.containers(),
            "every container of the app to be removed",
            dev.sup,
        )
