"""The admission gate (supervisor/state/admission.py, supervisor/compose/rules.py), pure part.

Every refusal names the field as the user wrote it; every admitted target can be built into the
container bodies the executor sends, and those bodies pass docker-py's own builders. The property
tests at the end try random targets and random mutations of valid ones (the real-engine part of that
property is in tests/test_target_refusals.py).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.compose import rules
from supervisor.state.admission import WarningLog, validate, validate_local, validate_preload
from supervisor.state.target import AppsJsonParseError, TargetStateError

DEVICE = "0123456789abcdef0123456789abcdef"
APP = "aaaabbbbccccddddeeeeffff00001111"
COMMIT = "2f1e0c9b4a7d4e2b8c3d5e6f7a8b9c0d"


def v2_body(**web: Any) -> dict[str, Any]:
    """Two services (web, db), a volume and a network with a subnet; ``web`` gets extra keys."""
    return {
        "local": {
            "name": "dev",
            "config": {},
            "apps": {
                "1011": {
                    "name": "app",
                    "commit": "c0ffee",
                    "releaseId": 1,
                    "services": {
                        "1": {
                            "serviceName": "web",
                            "imageId": 1,
                            "image": "busybox",
                            "environment": {},
                            "labels": {},
                            "ports": ["8080:80"],
                            "volumes": ["data:/data"],
                            "networks": ["front"],
                            "depends_on": ["db"],
                            **web,
                        },
                        "2": {
                            "serviceName": "db",
                            "imageId": 2,
                            "image": "busybox",
                            "environment": {},
                            "labels": {},
                        },
                    },
                    "volumes": {"data": {}},
                    "networks": {
                        "front": {"ipam": {"config": [{"subnet": "10.77.0.0/24", "gateway": "10.77.0.1"}]}}
                    },
                }
            },
        }
    }


def refusal(body: Any) -> TargetStateError:
    with pytest.raises(TargetStateError) as info:
        validate_local(body, current_name="dev", cpus=2)
    return info.value


def test_the_base_target_is_admitted_without_warnings() -> None:
    device, warnings = validate_local(v2_body(), current_name="dev", cpus=2)
    assert warnings == [] and set(device.apps["1011"].services) == {"web", "db"}


# Each (field of services.web, value, where the message points, what it says): values the engine or the
# kernel refuses at create or start time; before this gate each was stored and took the service down.
REFUSED = [
    ("ports", ["99999:80"], "services.web.ports[0]", "port 99999 is out of range 0-65535"),
    ("ports", ["8080:70000"], "services.web.ports[0]", "port 70000 is out of range 0-65535"),
    ("ports", ["80:80/sctpx"], "services.web.ports[0]", "protocol 'sctpx' is not 'tcp' or 'udp'"),
    ("ports", ["300.1.1.1:80:80"], "services.web.ports[0]", "not a valid host IP address"),
    ("ports", ["90-80:90-80"], "services.web.ports[0]", "ends before it starts"),
    ("ports", ["8000-8002:80-81"], "services.web.ports[0]", "different lengths"),
    ("ports", [{"published": 8080}], "services.web.ports[0].target", "is required"),
    ("ports", ["0"], "services.web.ports[0]", "container port 0"),
    ("ports", "80:80", "services.web.ports", "expected a list"),
    ("restart", "sometimes", "services.web.restart", "restart policy 'sometimes' is not one of"),
    ("restart", False, "services.web.restart", "quote 'no' in YAML"),
    ("restart", "on-failure:-1", "services.web.restart", "retry count must be a whole number from 0"),
    ("restart", "on-failure:x", "services.web.restart", "retry count must be a whole number from 0"),
    ("restart", "on-failure:", "services.web.restart", "retry count must be a whole number from 0"),
    ("restart", "on-failure:3000000000", "services.web.restart", "from 0 to 2147483647"),
    ("restart", "always:3", "services.web.restart", "is not one of 'no', 'always', 'on-failure[:N]'"),
    ("extra_hosts", {"db": "not-an-ip"}, "services.web.extra_hosts.db", "not a valid IP address"),
    ("mem_limit", "1.5g", "services.web.mem_limit", "invalid size '1.5g'"),
    ("mem_limit", "4m", "services.web.mem_limit", "minimum memory limit of 6m"),
    ("mem_reservation", "lots", "services.web.mem_reservation", "invalid size"),
    ("shm_size", "-1", "services.web.shm_size", "invalid size"),
    ("cpus", "two", "services.web.cpus", "expected a number of CPUs"),
    ("cpus", 3, "services.web.cpus", "out of range 0.01-2 (the device has 2 CPUs)"),
    ("cpuset", "0-3", "services.web.cpuset", "CPU 3 is not available"),
    ("cpu_quota", 500, "services.web.cpu_quota", "minimum CPU quota of 1000"),
    ("oom_score_adj", 2000, "services.web.oom_score_adj", "out of range -1000-1000"),
    ("ulimits", {"nofile": {"soft": 10, "hard": 5}}, "services.web.ulimits.nofile", "soft limit 10 is above"),
    ("ulimits", {"nofle": 5}, "services.web.ulimits.nofle", "did you mean 'nofile'"),
    ("ulimits", {"nofile": "many"}, "services.web.ulimits.nofile", "expected an integer"),
    (
        "depends_on",
        ["cache"],
        "services.web.depends_on[0]",
        "service 'cache' is not a service of this release",
    ),
    ("depends_on", {"web": {}}, "services.web.depends_on.web", "cannot depend on itself"),
    ("volumes", ["other:/x"], "services.web.volumes[0]", "volume 'other' is not declared"),
    ("volumes", ["data:rel"], "services.web.volumes[0]", "must be an absolute path"),
    ("volumes", ["data:/x:bogus"], "services.web.volumes[0]", "invalid mount mode 'bogus'"),
    (
        "volumes",
        [{"type": "volume", "source": "nope", "target": "/x"}],
        "services.web.volumes[0].source",
        "not declared",
    ),
    ("volumes", [{"type": "npipe", "target": "/x"}], "services.web.volumes[0].type", "mount type"),
    (
        "networks",
        ["back"],
        "services.web.networks[0]",
        "network 'back' is not declared in the release's networks (declared: front)",
    ),
    (
        "networks",
        {"front": {"ipv4_address": "10.9.0.5"}},
        "services.web.networks.front.ipv4_address",
        "subnet that contains it",
    ),
    (
        "networks",
        {"front": {"ipv4_address": "x"}},
        "services.web.networks.front.ipv4_address",
        "not a valid IP address",
    ),
    ("network_mode", "back", "services.web.network_mode", "network 'back' is not declared"),
    ("network_mode", "service:cache", "services.web.network_mode", "'cache' is not a service"),
    ("devices", ["dev/ttyUSB0"], "services.web.devices[0]", "must be absolute"),
    ("devices", ["/dev/ttyUSB0:/dev/ttyUSB0:rwx"], "services.web.devices[0]", "made of r, w and m"),
    ("devices", ["/a:/b:r:w"], "services.web.devices[0]", "host_path[:container_path[:rwm]]"),
    ("cap_add", ["NET_ADMN"], "services.web.cap_add[0]", "unknown capability 'NET_ADMN' (did you mean"),
    ("cap_drop", "CAP_BOGUS", "services.web.cap_drop", "unknown capability"),
    ("sysctls", {"kernel.panic": "1"}, "services.web.sysctls['kernel.panic']", "is not namespaced"),
    ("sysctls", ["net.ipv4.ip_forward"], "services.web.sysctls[0]", "is not 'name=value'"),
    ("security_opt", ["bogus=1"], "services.web.security_opt[0]", "unknown security option 'bogus'"),
    ("security_opt", ["seccomp=/x.json"], "services.web.security_opt[0]", "not a file path"),
    ("dns", ["not-an-ip"], "services.web.dns[0]", "not a valid DNS server address"),
    ("extra_hosts", ["host:not-an-ip"], "services.web.extra_hosts[0]", "not a valid IP address"),
    ("tmpfs", ["run"], "services.web.tmpfs[0]", "must be absolute"),
    ("tmpfs", ["/run:size=lots"], "services.web.tmpfs[0]", "invalid size"),
    ("tmpfs", ["/run:bogus=1"], "services.web.tmpfs[0]", "invalid tmpfs option"),
    ("working_dir", "app", "services.web.working_dir", "must be an absolute path"),
    ("stop_signal", "SIGFOO", "services.web.stop_signal", "not a signal name"),
    ("stop_grace_period", "soon", "services.web.stop_grace_period", "invalid duration 'soon'"),
    (
        "healthcheck",
        {"test": ["CMD", "true"], "interval": "-1s"},
        "services.web.healthcheck.interval",
        "must not be negative",
    ),
    (
        "healthcheck",
        {"test": ["CMD", "true"], "retries": -1},
        "services.web.healthcheck.retries",
        "must be at least 0",
    ),
    ("healthcheck", {"test": ["RUN", "true"]}, "services.web.healthcheck.test[0]", "'CMD'"),
    ("mac_address", "zz", "services.web.mac_address", "not a MAC address"),
    ("hostname", "a_b", "services.web.hostname", "not a valid hostname"),
    ("pid", "bogus", "services.web.pid", "pid mode 'bogus'"),
    ("ipc", "bogus", "services.web.ipc", "ipc mode 'bogus'"),
    ("userns_mode", "bogus", "services.web.userns_mode", "userns mode"),
    ("privileged", "false", "services.web.privileged", "any non-empty string as true"),
    ("pids_limit", "lots", "services.web.pids_limit", "expected an integer"),
    ("command", {"a": 1}, "services.web.command", "expected a string or a list"),
    ("environment", {"A": {"nested": 1}}, "services.web.environment.A", "expected string, got object"),
    ("labels", ["a=x"], "services.web.labels", "expected object, got array"),
    ("image", "Not An Image", "services.web.image", "invalid image reference"),
    ("imageId", "x", "services.web.imageId", "must be an integer"),
]


#: Valid compose values (compose spec, Docker's own parsing) that must be admitted without a warning;
#: tests/test_compose_engine.py creates each on the real engine and reads it back equal.
ACCEPTED = [
    ("restart", "on-failure:3"),
    ("restart", "On-Failure:0"),
    ("restart", "on-failure"),
    ("restart", "unless-stopped"),
    ("restart", "no"),
    ("restart", " always "),
    ("ports", [{"target": 80, "published": 8081}]),
    ("ports", [{"target": "80", "published": "8081", "protocol": "udp", "host_ip": "127.0.0.1"}]),
    ("ports", [{"target": 80, "published": 8082, "host_ip": "::1", "mode": "host"}]),
    ("ports", [{"target": 8093}]),  # host port = container port, as the reference reads it
    ("ports", ["[::1]:8087:80"]),
    ("ports", ["8085-8086:80-81", 8094, "8095/udp"]),
    ("mem_limit", "1gb"),
    ("mem_limit", "1GB"),
    ("mem_limit", "512M"),
    ("mem_limit", "100mb"),
    ("mem_limit", 1073741824),
    ("mem_reservation", "64m"),
    ("shm_size", "1gb"),
    ("cpus", 0.5),
    ("cpus", "1.5"),
    ("ulimits", {"nofile": 1024}),
    ("ulimits", {"nproc": "65535"}),
    ("ulimits", {"nofile": {"soft": 1024, "hard": 2048}}),
    ("ulimits", {"nofile": {"soft": "1024", "hard": "2048"}}),
    ("extra_hosts", {"somehost": "162.242.195.82", "v6": "::1"}),
    ("extra_hosts", ["somehost:162.242.195.82", "other=10.0.0.1"]),
    ("stop_grace_period", "1m30s"),
    ("healthcheck", {"test": "true", "interval": "1m", "retries": "3"}),
    ("sysctls", ["net.core.somaxconn=1024"]),
    ("tmpfs", ["/run:size=64m"]),
]


@pytest.mark.parametrize(("field", "value"), ACCEPTED, ids=[f"{a[0]}={a[1]!r}"[:60] for a in ACCEPTED])
def test_what_compose_and_the_engine_take_is_admitted(field: str, value: Any) -> None:
    body = v2_body(**{field: value})
    device, warnings = validate_local(body, current_name="dev", cpus=2)
    assert warnings == []
    assert device.apps["1011"].services["web"].composition[field] == value
    assert [e.message for e in local_target_schema().iter_errors(body)] == []  # and the documented shape


@pytest.mark.parametrize(
    ("field", "value", "where", "says"), REFUSED, ids=[f"{r[0]}={r[1]!r}"[:60] for r in REFUSED]
)
def test_what_the_engine_would_refuse_is_400_naming_the_field(
    field: str, value: Any, where: str, says: str
) -> None:
    err = refusal(v2_body(**{field: value}))
    assert err.path == where, err
    assert says in err.rule, err
    assert str(err) == f"Invalid target state: {where}: {err.rule}"


@pytest.mark.parametrize("commit", ["de ad", "a/b", "c0ffee\n", "ü"])
def test_a_commit_that_cannot_end_a_container_name_is_refused(commit: str) -> None:
    body = v2_body()
    body["local"]["apps"]["1011"]["commit"] = commit
    err = refusal(body)
    assert err.path == "local.apps.1011" and "is part of the names of the release's containers" in err.rule


@pytest.mark.parametrize("commit", ["1234", "0", "dead_beef", "v1.2-rc.3", "007"])
def test_a_commit_the_engine_takes_in_a_name_is_admitted(commit: str) -> None:
    body = v2_body()
    body["local"]["apps"]["1011"]["commit"] = commit
    device, _ = validate_local(body, current_name="dev", cpus=2)
    assert device.apps["1011"].release.commit == commit


def test_memory_below_its_reservation_and_cpus_with_a_quota_are_refused() -> None:
    assert refusal(v2_body(mem_limit="64m", mem_reservation="128m")).path == "services.web.mem_limit"
    assert "cannot both be set" in refusal(v2_body(cpus=1, cpu_quota=50000)).rule


@pytest.mark.parametrize(
    ("mode", "field", "value"),
    [
        ("host", "networks", ["front"]),
        ("none", "networks", {"front": None}),
        ("host", "mac_address", "02:42:ac:11:00:09"),
        ("service:db", "ports", ["8080:80"]),
        ("service:db", "hostname", "web"),
        ("service:db", "dns", ["1.1.1.1"]),
        ("service:db", "extra_hosts", ["a:1.2.3.4"]),
        ("service:db", "networks", ["front"]),
    ],
)
def test_what_conflicts_with_a_shared_network_namespace_is_refused(mode: str, field: str, value: Any) -> None:
    """The engine: `conflicting options: port publishing and the container type network mode`, or a
    connect that fails: `container sharing network namespace ... cannot be connected`."""
    body = v2_body(**{"network_mode": mode, "networks": None, "ports": None, field: value})
    err = refusal(body)
    assert err.path == f"services.web.{field}" and f"cannot be set with network_mode '{mode}'" in err.rule


def test_services_waiting_for_each_other_are_refused() -> None:
    body = v2_body()
    body["local"]["apps"]["1011"]["services"]["2"]["depends_on"] = ["web"]
    assert "would never start: web -> db -> web" in refusal(body).rule
    body = v2_body(depends_on=None, networks=None, ports=None, network_mode="service:db")
    body["local"]["apps"]["1011"]["services"]["2"]["network_mode"] = "service:web"
    assert "would never start" in refusal(body).rule


def test_overlapping_subnets_and_shared_static_addresses_are_refused() -> None:
    body = v2_body()
    body["local"]["apps"]["1011"]["networks"]["back"] = {
        "ipam": {"config": [{"subnet": "10.77.0.128/25", "gateway": "10.77.0.129"}]}
    }
    err = refusal(body)
    assert err.path == "networks.back.ipam.config[0].subnet"
    assert "10.77.0.128/25 overlaps 10.77.0.0/24 of networks.front.ipam.config[0]" in err.rule
    body = v2_body(networks={"front": {"ipv4_address": "10.77.0.9"}})
    body["local"]["apps"]["1011"]["services"]["2"]["networks"] = {"front": {"ipv4_address": "10.77.0.9"}}
    err = refusal(body)
    assert err.path == "services.db.networks.front.ipv4_address"
    assert "already the address of services.web.networks.front" in err.rule


def test_a_command_line_the_kernel_cannot_pass_is_refused() -> None:
    assert "MAX_ARG_STRLEN" in refusal(v2_body(command="x" * 200_000)).rule
    err = refusal(v2_body(entrypoint=["a" * 1000] * 100))
    assert err.path == "services.web.entrypoint" and "ARG_MAX" in err.rule
    validate_local(v2_body(command=["sh", "-c", "echo hi"]), current_name="d", cpus=2)


def test_net_sysctls_are_refused_in_the_host_network_namespace_only() -> None:
    validate_local(v2_body(sysctls={"net.core.somaxconn": "1024"}), current_name="d", cpus=2)
    err = refusal(v2_body(sysctls={"net.core.somaxconn": "1024"}, network_mode="host", networks=None))
    assert "network_mode: host" in err.rule


def test_two_services_publishing_one_host_port_are_refused() -> None:
    body = v2_body()
    body["local"]["apps"]["1011"]["services"]["2"]["ports"] = ["127.0.0.1:8080:81"]
    err = refusal(body)
    assert err.path == "services.db.ports" and "8080/tcp is already published by services.web" in err.rule
    body["local"]["apps"]["1011"]["services"]["2"]["ports"] = ["8080:81/udp", "9090:90"]
    validate_local(body, current_name="d", cpus=2)  # another protocol, another port: fine


def test_an_environment_the_kernel_cannot_pass_is_refused_with_the_limit() -> None:
    err = refusal(v2_body(environment={"BIG": "x" * 5_000_000}))
    assert err.path == "services.web.environment.BIG"
    assert "at most 131072 bytes" in err.rule and "MAX_ARG_STRLEN" in err.rule
    many = {f"V{i}": "x" * 100_000 for i in range(50)}  # each fine, 5 MB together
    err = refusal(v2_body(environment=many))
    assert err.path == "services.web.environment" and "ARG_MAX 2097152" in err.rule
    # The composition's environment counts too, as do labels.
    err = refusal(v2_body(labels={"big": "y" * 200_000}))
    assert err.path == "services.web.labels.big" and "131072" in err.rule
    validate_local(v2_body(environment={"OK": "x" * 100_000}), current_name="d", cpus=2)


def test_a_body_that_is_not_the_documented_shape_is_refused() -> None:
    for body, where in (
        ({}, "local"),
        ({"apps": {}}, "local"),
        ({"local": {}}, "local.apps"),
        ([], ""),
        ("x", ""),
        ({"local": []}, "local"),
        ({"local": {"apps": []}}, "local.apps"),
    ):
        assert refusal(body).path == where, body
    device, warnings = validate_local({"local": {"apps": {}}}, current_name="d")
    assert device.apps == {} and warnings == []


def test_required_keys_missing_are_400_with_the_misspelling_found() -> None:
    body = v2_body()
    app = body["local"]["apps"]["1011"]
    app["servics"] = app.pop("services")
    err = refusal(body)
    assert err.path == "local.apps.1011.services" and "found 'servics'" in err.rule
    body = v2_body()
    del body["local"]["apps"]["1011"]["services"]["1"]["image"]
    assert refusal(body).path == "services.web.image"


def test_unknown_keys_are_accepted_with_one_warning_each() -> None:
    body = v2_body(restrt="no", bogusField=1, build=".", expose=[80])
    body["local"]["apps"]["1011"]["volumes"]["data"] = {"drivr": "local"}
    body["local"]["nmae"] = "x"
    body["local"]["apps"]["1011"]["networks"]["front"]["internl"] = True
    _, warnings = validate_local(body, current_name="d", cpus=2)
    assert warnings == [
        "unknown key 'nmae' in local ignored (did you mean 'name'?)",
        "unknown key 'drivr' in volumes.data ignored (did you mean 'driver'?)",
        "unknown key 'internl' in networks.front ignored (did you mean 'internal'?)",
        "unknown key 'restrt' in services.web ignored (did you mean 'restart'?)",
        "unknown key 'bogusField' in services.web ignored",
        "key 'build' in services.web is not supported by the supervisor and ignored",
        "key 'expose' in services.web is not supported by the supervisor and ignored",
    ]


def test_unknown_keys_inside_compose_values_are_warned_too() -> None:
    body = v2_body(networks={"front": {"alias": ["x"]}}, healthcheck={"test": "true", "intrval": "1s"})
    _, warnings = validate_local(body, current_name="d", cpus=2)
    assert warnings == [
        "unknown key 'alias' in services.web.networks.front ignored (did you mean 'aliases'?)",
        "unknown key 'intrval' in services.web.healthcheck ignored (did you mean 'interval'?)",
    ]


def test_bind_mounts_are_accepted_but_said_to_be_ignored() -> None:
    _, warnings = validate_local(
        v2_body(volumes=["/etc:/host-etc", "data:/data:ro"]), current_name="d", cpus=2
    )
    assert warnings == ["services.web.volumes[0]: bind mounts are not supported and ignored"]


def test_several_apps_name_the_app_in_compose_paths() -> None:
    body = v2_body(ports=["99999:80"])
    body["local"]["apps"]["1012"] = {"name": "other", "commit": "beef", "releaseId": 2, "services": {}}
    assert refusal(body).path == "apps.1011.services.web.ports[0]"


# ------------------------------------------------------------------------------ v3 (cloud)
def v3_doc(**composition: Any) -> dict[str, Any]:
    return {
        DEVICE: {
            "name": "dev",
            "config": {},
            "apps": {
                APP: {
                    "id": 1,
                    "name": "app",
                    "class": "fleet",
                    "is_host": False,
                    "releases": {
                        COMMIT: {
                            "id": 5,
                            "services": {
                                "web": {
                                    "id": 7,
                                    "image_id": 9,
                                    "image": "registry2.example.com/v2/abc",
                                    "environment": {},
                                    "labels": {},
                                    "composition": {"ports": ["80:80"], **composition},
                                }
                            },
                            "volumes": {},
                        }
                    },
                }
            },
        }
    }


def test_cloud_targets_are_refused_at_the_path_of_their_document() -> None:
    with pytest.raises(TargetStateError) as info:
        validate(v3_doc(ports=["99999:80"]), DEVICE, cpus=2)
    assert info.value.path == f"{DEVICE}.apps.{APP}.releases.{COMMIT}.services.web.composition.ports[0]"
    assert "port 99999 is out of range 0-65535" in str(info.value)


def test_cloud_unknown_keys_are_ignored_with_one_warning_per_key() -> None:
    doc = v3_doc(restrt="always")
    doc[DEVICE]["apps"][APP]["bogus"] = 1
    doc[DEVICE]["apps"][APP]["releases"][COMMIT]["services"]["web"]["extra"] = {}
    device, warnings = validate(doc, DEVICE, cpus=2)
    app_path = f"{DEVICE}.apps.{APP}"
    assert warnings == [
        f"unknown key 'bogus' in {app_path} ignored",
        f"unknown key 'extra' in {app_path}.releases.{COMMIT}.services.web ignored",
        f"unknown key 'restrt' in {app_path}.releases.{COMMIT}.services.web.composition ignored "
        "(did you mean 'restart'?)",
    ]
    assert device.apps[APP].services["web"].composition["restrt"] == "always"  # kept, as the reference


def test_the_supervisor_and_host_os_services_are_not_judged() -> None:
    doc = v3_doc(ports=["99999:80"])
    app = doc[DEVICE]["apps"].pop(APP)
    app["is_host"] = True
    app["releases"][COMMIT]["services"]["web"]["labels"] = {"io.balena.image.store": "root"}
    doc[DEVICE]["apps"][APP] = app
    validate(doc, DEVICE, cpus=2)  # the host OS's images are not ours to create


def test_preloaded_apps_are_judged_by_the_same_rules() -> None:
    doc = {"apps": {APP: copy.deepcopy(v3_doc(restart="sometimes")[DEVICE]["apps"][APP])}, "config": {}}
    with pytest.raises(AppsJsonParseError) as info:
        validate_preload(doc, current_name="d", cpus=2)
    assert info.value.path == f"apps.{APP}.releases.{COMMIT}.services.web.composition.restart"
    assert str(info.value).startswith("Invalid apps.json: apps.")


def test_warnings_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    logger = logging.getLogger("test.admission")
    once = WarningLog(logger, limit=2)
    with caplog.at_level(logging.WARNING, logger="test.admission"):
        once(["a", "b"])
        once(["a", "b"])
        once(["c"])
        once(["a"])  # forgotten after two newer ones
    assert [r.getMessage() for r in caplog.records] == [
        "Target state: a",
        "Target state: b",
        "Target state: c",
        "Target state: a",
    ]


def test_every_supported_key_has_a_rule() -> None:
    from supervisor.compose.casing import SUPPORTED_KEYS

    assert set(rules.RULES) == SUPPORTED_KEYS | {"dependsOn"}


# ------------------------------------------------------------------------------ properties
def create_kwargs_pass_docker_py(body: dict[str, Any]) -> None:
    """Feed a create body's fields through docker-py's builders, which check types and formats the
    way a client of the engine would (HostConfig, ContainerConfig, port/ulimit/mount types)."""
    import docker.types
    from docker.api.container import ContainerConfig

    host = body["HostConfig"]
    if host["NetworkMode"] == "host":
        host = {**host, "PortBindings": {}}  # the engine discards them (admitted with a warning)
    docker.types.HostConfig(
        version="1.41",
        binds=host["Binds"],
        port_bindings={k: [(b["HostIp"], b["HostPort"]) for b in v] for k, v in host["PortBindings"].items()},
        cap_add=host["CapAdd"],
        cap_drop=host["CapDrop"],
        devices=[
            f"{d['PathOnHost']}:{d['PathInContainer']}:{d['CgroupPermissions']}" for d in host["Devices"]
        ],
        dns=host["Dns"],
        dns_opt=host["DnsOptions"],
        dns_search=host["DnsSearch"],
        extra_hosts=host["ExtraHosts"],
        group_add=host["GroupAdd"],
        network_mode=host["NetworkMode"],
        pid_mode=host["PidMode"] or None,
        pids_limit=host["PidsLimit"] or None,
        security_opt=host["SecurityOpt"],
        sysctls=host["Sysctls"],
        ulimits=[
            docker.types.Ulimit(name=u["Name"], soft=u["Soft"], hard=u["Hard"]) for u in host["Ulimits"]
        ],
        restart_policy=host["RestartPolicy"],
        cpu_shares=host["CpuShares"] or None,
        cpu_quota=host["CpuQuota"] or None,
        cpuset_cpus=host["CpusetCpus"] or None,
        mem_limit=host["Memory"] or None,
        mem_reservation=host["MemoryReservation"] or None,
        oom_kill_disable=host["OomKillDisable"],
        oom_score_adj=host["OomScoreAdj"] or None,
        privileged=host["Privileged"],
        read_only=host["ReadonlyRootfs"],
        shm_size=host["ShmSize"],
        tmpfs=host["Tmpfs"],
        userns_mode=host["UsernsMode"] or None,
        nano_cpus=host["NanoCpus"] or None,
        ipc_mode=host["IpcMode"],
        init=host.get("Init"),
        mounts=[
            docker.types.Mount(
                m["Target"], m.get("Source"), type=m["Type"], read_only=m.get("ReadOnly", False)
            )
            for m in host["Mounts"]
        ],
    )
    ContainerConfig(
        "1.41",
        body["Image"],
        body["Cmd"],
        hostname=body["Hostname"],
        user=body["User"],
        environment=body["Env"],
        labels=body["Labels"],
        working_dir=body["WorkingDir"],
        stop_signal=body["StopSignal"],
        healthcheck=body["Healthcheck"],
        domainname=body["Domainname"],
        mac_address=body["MacAddress"] or None,
        stop_timeout=body["StopTimeout"],
        tty=body["Tty"],
        entrypoint=body["Entrypoint"],
        ports=list(body["ExposedPorts"]),
    )


def built_bodies(device: Any) -> list[dict[str, Any]]:
    from supervisor.state.admission import placeholder_context
    from supervisor.state.planner import target_apps

    def context(app: Any, svc: Any) -> Any:
        return placeholder_context(app, "dev")

    bodies = []
    for app in target_apps(device, context).values():
        ids = {svc.service_name: "f" * 64 for svc in app.services}
        bodies += [svc.create_body(device_name="dev", container_ids=ids)[0] for svc in app.services]
    return bodies


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
# Values near the edges of what each field accepts, and junk.
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "ports": st.lists(
        st.one_of(
            st.from_regex(
                r"\A(127\.0\.0\.1:)?[0-9]{1,6}(-[0-9]{1,5})?(:[0-9]{1,6}(-[0-9]{1,5})?)?(/(tcp|udp|sctp))?\Z"
            ),
            st.integers(-1, 70000),
        ),
        max_size=2,
    ),
    "restart": st.sampled_from(
        ["no", "always", "on-failure", "on-failure:2", "on-failure:-1", "unless-stopped", "sometimes", "",
         "ALWAYS", False]
    ),
    "mem_limit": st.one_of(st.from_regex(r"\A[0-9]{1,5}[bkmgx]?\Z"), st.integers(-1, 2**34)),
    "mem_reservation": st.from_regex(r"\A[0-9]{1,4}[kmg]?\Z"),
    "cpus": st.one_of(st.floats(-1, 4), st.sampled_from(["0.5", "x", "1"])),
    "cpuset": st.from_regex(r"\A[0-3](-[0-3])?\Z"),
    "cpu_quota": st.integers(-2, 200000),
    "ulimits": st.dictionaries(
        st.sampled_from(["nofile", "nproc", "core", "bogus"]),
        st.one_of(
            st.integers(-2, 10**6),
            st.fixed_dictionaries({"soft": st.integers(-2, 100), "hard": st.integers(-2, 100)}),
        ),
        max_size=2,
    ),
    "depends_on": st.lists(st.sampled_from(["db", "web", "cache"]), max_size=2),
    "volumes": st.lists(
        st.sampled_from(
            ["data:/data", "data:/d:ro", "other:/o", "/etc:/e", "/anon", "data:rel", "data:/x:bogus"]
        ),
        max_size=2,
    ),
    "networks": st.one_of(
        st.lists(st.sampled_from(["front", "default", "back"]), max_size=2),
        st.fixed_dictionaries(
            {
                "front": st.fixed_dictionaries(
                    {"ipv4_address": st.sampled_from(["10.77.0.9", "10.9.0.1", "x"])}
                )
            }
        ),
    ),
    "network_mode": st.sampled_from(["host", "bridge", "none", "front", "back", "service:db", "service:x"]),
    "devices": st.lists(
        st.sampled_from(["/dev/null", "/dev/null:/dev/n:rw", "dev/x", "/a:/b:q"]), max_size=2
    ),
    "cap_add": st.lists(st.sampled_from(["NET_ADMIN", "cap_sys_time", "ALL", "BOGUS"]), max_size=2),
    "sysctls": st.dictionaries(
        st.sampled_from(["net.core.somaxconn", "kernel.shmmax", "kernel.panic"]),
        st.sampled_from(["1", 1]),
        max_size=2,
    ),
    "healthcheck": st.fixed_dictionaries(
        {
            "test": st.sampled_from([["CMD", "true"], "true", ["X"]]),
            "interval": st.sampled_from(["1s", "1us", "0", "bad", 5]),
        }
    ),
    "stop_signal": st.sampled_from(["SIGTERM", "KILL", "9", "SIGFOO", "99"]),
    "environment": st.dictionaries(st.from_regex(r"\A[A-Z_]{1,5}\Z"), st.text(max_size=5), max_size=3),
    "tmpfs": st.lists(st.sampled_from(["/run", "/t:size=1m", "rel", "/x:mode=1777", "/y:foo=1"]), max_size=2),
    "working_dir": st.sampled_from(["/app", "app", ""]),
    "privileged": st.sampled_from([True, False, "true", 1]),
    "oom_score_adj": st.integers(-1500, 1500),
    "security_opt": st.lists(
        st.sampled_from(["no-new-privileges", "seccomp=unconfined", "apparmor:x", "bad"]), max_size=2
    ),
}
MUTATION = st.one_of(
    st.sampled_from(sorted(FIELD_VALUES)).flatmap(lambda k: st.tuples(st.just(k), FIELD_VALUES[k])),
    st.tuples(st.sampled_from(rules.KNOWN_NAMES + ["restrt", "x-foo"]), JSON),
)


def judge(body: Any) -> list[dict[str, Any]] | None:
    """None when refused; the create bodies when admitted. Anything but a TargetStateError fails."""
    try:
        device, _ = validate_local(body, current_name="dev", cpus=2)
    except TargetStateError as err:
        assert err.path is not None and str(err).startswith("Invalid target state")
        return None
    bodies = built_bodies(device)
    for created in bodies:
        create_kwargs_pass_docker_py(created)
    return bodies


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_targets_are_admitted_and_buildable_or_refused(mutations: list[tuple[str, Any]]) -> None:
    judge(v2_body(**dict(mutations)))


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*path, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_part_of_a_target_replaced_with_junk_is_admitted_or_refused(data: st.DataObject) -> None:
    body = v2_body()
    paths = _paths(body)
    path = data.draw(st.sampled_from(paths))
    judge(_replace(body, path, data.draw(JSON)))


@settings(max_examples=100, deadline=None)
@given(JSON)
def test_random_documents_are_admitted_or_refused(doc: Any) -> None:
    judge(doc)
    judge({"local": doc})
    judge({"local": {"apps": doc}})


# --------------------------------------------------------------------- the OpenAPI LocalTarget schema
@functools.cache
def local_target_schema() -> Any:
    import jsonschema

    from supervisor.api.openapi import document

    schema = document()["components"]["schemas"]["LocalTarget"]
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_openapi_schema_accepts_the_documented_shape() -> None:
    from tests.test_local_target import TARGET

    validator = local_target_schema()
    for body in (v2_body(), TARGET, {"local": {"apps": {}}}, v2_body(restrt="no", build=".")):
        assert list(validator.iter_errors(body)) == [], body


SCHEMA_REFUSES = [
    ({}, "'local' is a required property"),
    ({"apps": {}}, "'local' is a required property"),
    ({"local": {}}, "'apps' is a required property"),
    ([], "is not of type 'object'"),
    (v2_body(restart="sometimes"), "'sometimes' is not valid"),
    (v2_body(ports=["99999:80"]), "is not valid under any of the given schemas"),
    (v2_body(mem_limit="1.5g"), "is not valid under any of the given schemas"),
    (v2_body(cap_add=["NET_ADMN"]), "['NET_ADMN'] is not valid"),
    (v2_body(imageId="x"), "is not valid under any of the given schemas"),
    (v2_body(ulimits={"nofile": {"soft": 1}}), "is not valid under any of the given schemas"),
]


@pytest.mark.parametrize(("body", "says"), SCHEMA_REFUSES, ids=[str(i) for i in range(len(SCHEMA_REFUSES))])
def test_the_openapi_schema_refuses_what_the_supervisor_refuses(body: Any, says: str) -> None:
    errors = [e.message for e in local_target_schema().iter_errors(body)]
    assert any(says in e for e in errors), errors
    refusal(body)  # and so does the supervisor


def test_missing_required_keys_fail_the_schema() -> None:
    body = v2_body()
    app = body["local"]["apps"]["1011"]
    app["servics"] = app.pop("services")
    errors = [e.message for e in local_target_schema().iter_errors(body)]
    assert any("'services' is a dependency of 'commit'" in e for e in errors), errors
    body = v2_body()
    del body["local"]["apps"]["1011"]["services"]["1"]["image"]
    errors = [e.message for e in local_target_schema().iter_errors(body)]
    assert "'image' is a required property" in errors, errors


@settings(max_examples=200, deadline=None)
@given(st.lists(MUTATION, min_size=1, max_size=4))
def test_the_openapi_schema_never_refuses_what_the_supervisor_admits(
    mutations: list[tuple[str, Any]],
) -> None:
    body = v2_body(**dict(mutations))
    if judge(copy.deepcopy(body)) is not None:
        assert [e.message for e in local_target_schema().iter_errors(body)] == []
