"""Service normalisation, engine create bodies, read-back and comparison rules (plain data)."""

from __future__ import annotations

import copy
import dataclasses
import logging

import pytest

from supervisor.compose import ComposeError, Service, ServiceContext, parse_container_name
from supervisor.compose.devices import GPU_REQUEST

APP_UUID = "aaaabbbbccccddddeeeeffff00001111"
LOCK = "/tmp/balena-supervisor/services/1001/api"

IMAGE_INFO = {
    "Id": "sha256:" + "ab" * 32,
    "Config": {
        "Cmd": ["node", "index.js"],
        "Entrypoint": ["/usr/bin/entry.sh"],
        "Env": ["PATH=/usr/bin:/bin", "PORT=8080", "UDEV=on"],
        "Labels": {"io.resin.architecture": "armv7hf", "org.label": "image", "io.balena.app-id": "9"},
        "Volumes": {"/image-vol": {}},
        "Healthcheck": {"Test": ["CMD", "check"], "Interval": 5_000_000_000},
        "StopSignal": "SIGQUIT",
        "WorkingDir": "/usr/src/app/",
        "User": "node",
    },
}


def make_ctx(**changes) -> ServiceContext:
    ctx = ServiceContext(
        app_id=1001,
        app_uuid=APP_UUID,
        app_name="myfleet",
        release_id=50001,
        commit="c0ffee",
        device_uuid="0123456789abcdef",
        device_type="raspberrypi4-64",
        device_arch="aarch64",
        device_name="quiet-lake",
        os_version="balenaOS 6.5.44",
        api_endpoint="https://api.balena-cloud.com",
        device_api_key="devkey",
        scoped_api_key="scopedkey",
        hostname="quiet-lake-host",
    )
    return dataclasses.replace(ctx, **changes)


def make_svc(composition=None, **top) -> dict:
    svc = {
        "serviceName": "api",
        "id": 7001,
        "image_id": 9001,
        "image": "registry2.balena-cloud.com/v2/abc:latest",
        "environment": {},
        "labels": {},
        "running": True,
        "composition": composition or {},
    }
    svc.update(top)
    return svc


def target(composition=None, ctx=None, **top) -> Service:
    return Service.from_target(make_svc(composition, **top), ctx or make_ctx())


INJECTED_ENV = {
    **{
        f"{p}_{k}": v
        for p in ("BALENA", "RESIN")
        for k, v in {
            "APP_ID": "1001",
            "APP_UUID": APP_UUID,
            "APP_NAME": "myfleet",
            "SERVICE_NAME": "api",
            "DEVICE_UUID": "0123456789abcdef",
            "DEVICE_TYPE": "raspberrypi4-64",
            "DEVICE_ARCH": "aarch64",
            "HOST_OS_VERSION": "balenaOS 6.5.44",
            "APP_LOCK_PATH": "/tmp/balena/updates.lock",
        }.items()
    },
    "BALENA": "1",
    "RESIN": "1",
    "RESIN_SERVICE_KILL_ME_PATH": "/tmp/balena/handover-complete",
    "BALENA_SERVICE_HANDOVER_COMPLETE_PATH": "/tmp/balena/handover-complete",
    "USER": "root",
}
INJECTED_LABELS = {
    "io.balena.supervised": "true",
    "io.balena.app-id": "1001",
    "io.balena.service-id": "7001",
    "io.balena.service-name": "api",
    "io.balena.app-uuid": APP_UUID,
}


# --------------------------------------------------------------------------- from_target


def test_minimal_target_gets_every_default():
    svc = target()
    assert svc.config == {
        "image": "registry2.balena-cloud.com/v2/abc:latest",
        "running": True,
        "command": [],
        "entrypoint": [],
        "environment": INJECTED_ENV,
        "labels": INJECTED_LABELS,
        "networks": {f"{APP_UUID}_default": {"aliases": ["api"]}},
        "networkMode": f"{APP_UUID}_default",
        "hostname": "",
        "portMaps": [],
        "volumes": [f"{LOCK}:/tmp/resin", f"{LOCK}:/tmp/balena"],
        "tmpfs": [],
        "devices": [],
        "deviceRequests": [],
        "capAdd": [],
        "capDrop": [],
        "dns": [],
        "dnsOpt": [],
        "dnsSearch": [],
        "extraHosts": [],
        "groupAdd": [],
        "securityOpt": [],
        "sysctls": {},
        "ulimits": {},
        "healthcheck": {"test": ["NONE"]},
        "restart": "always",
        "stopSignal": "SIGTERM",
        "stopGracePeriod": 10,
        "workingDir": "",
        "user": "",
        "memLimit": 0,
        "memReservation": 0,
        "shmSize": 67108864,
        "cpuShares": 0,
        "cpuQuota": 0,
        "oomScoreAdj": 0,
        "cpus": 0,
        "cpuset": "",
        "cgroupParent": "",
        "domainname": "",
        "ipc": "shareable",
        "macAddress": "",
        "pid": "",
        "pidsLimit": 0,
        "usernsMode": "",
        "oomKillDisable": False,
        "readOnly": False,
        "privileged": False,
        "tty": True,
    }
    assert (svc.app_id, svc.app_uuid, svc.service_name, svc.service_id) == (1001, APP_UUID, "api", 7001)
    assert (svc.image_id, svc.release_id, svc.commit) == (9001, 50001, "c0ffee")
    assert svc.container_name() == "api_9001_50001_c0ffee"
    assert svc.depends_on is None and svc.container_id is None and svc.status is None


RICH = {
    "command": "node server.js --port=$PORT",
    "entrypoint": ["/bin/sh", "-c"],
    "environment": {"FROM_COMPOSITION": "c", "SHARED": "composition"},
    "labels": {"io.resin.features.dbus": "1", "shared": "composition"},
    "ports": ["80:8080", "81:8081", "127.0.0.1:53:53/udp"],
    "volumes": ["data:/data", "/host/path:/bad", "/anon", {"type": "tmpfs", "target": "/t"}],
    "networks": {"frontend": {"aliases": ["web"], "ipv4_address": "10.0.0.5"}, "backend": None},
    "depends_on": ["db"],
    "cap_add": ["NET_ADMIN", "SYS_ADMIN"],
    "cap_drop": ["MKNOD"],
    "devices": ["/dev/ttyUSB0:/dev/serial"],
    "dns": "8.8.8.8",
    "dns_search": "example.com",
    "dns_opt": ["ndots:2"],
    "extra_hosts": ["db.local=10.0.0.9"],
    "group_add": ["dialout"],
    "security_opt": ["label=disable", "seccomp=unconfined"],
    "sysctls": ["net.core.somaxconn=1024"],
    "ulimits": {"nproc": 65535, "nofile": {"soft": 20000, "hard": 40000}},
    "tmpfs": "/run",
    "healthcheck": {"test": "curl -f localhost", "interval": "30s", "retries": 3},
    "restart": "On-Failure",
    "stop_signal": "SIGINT",
    "stop_grace_period": "1m30s",
    "working_dir": "/app/",
    "user": "1000",
    "mem_limit": "512m",
    "mem_reservation": "128k",
    "shm_size": "1g",
    "cpu_shares": "512",
    "cpu_quota": 0,
    "oom_score_adj": "-500",
    "cpus": "1.5",
    "cpuset": "0-1",
    "cgroup_parent": "mygroup",
    "domainname": "example.org",
    "hostname": "apihost",
    "ipc": "private",
    "mac_address": "02:42:ac:11:00:02",
    "pid": "host",
    "pids_limit": 100,
    "userns_mode": "host",
    "oom_kill_disable": "false",
    "read_only": 1,
    "privileged": True,
    "tty": False,
    "init": True,
    "expose": [80],
    "container_name": "nope",
    "storage_opt": {"size": "1G"},
}


def test_rich_composition_is_normalised():
    svc = target(
        RICH,
        ctx=make_ctx(image_info=IMAGE_INFO),
        environment={"SHARED": "top", "TOP": "t"},
        labels={"shared": "top"},
    )
    c = svc.config
    assert c["image"] == IMAGE_INFO["Id"]
    assert svc.image_name == "registry2.balena-cloud.com/v2/abc:latest"
    assert svc.docker_image_id == IMAGE_INFO["Id"]
    assert c["command"] == ["node", "server.js", "--port=$PORT"]
    assert c["entrypoint"] == ["/bin/sh", "-c"]
    assert c["environment"] == {
        "FROM_COMPOSITION": "c",
        "SHARED": "top",
        "TOP": "t",
        **INJECTED_ENV,
        "PATH": "/usr/bin:/bin",
        "PORT": "8080",
        "UDEV": "on",
    }
    assert c["labels"] == {
        "shared": "top",
        "org.label": "image",
        "io.balena.architecture": "armv7hf",
        "io.balena.features.dbus": "1",
        **INJECTED_LABELS,
    }
    assert c["networks"] == {
        f"{APP_UUID}_frontend": {"aliases": ["web", "api"], "ipv4Address": "10.0.0.5"},
        f"{APP_UUID}_backend": {"aliases": ["api"]},
    }
    assert c["networkMode"] == f"{APP_UUID}_frontend"
    assert c["hostname"] == "apihost"
    assert c["portMaps"] == [
        {
            "internalStart": 8080,
            "internalEnd": 8081,
            "externalStart": 80,
            "externalEnd": 81,
            "protocol": "tcp",
            "host": "",
        },
        {
            "internalStart": 53,
            "internalEnd": 53,
            "externalStart": 53,
            "externalEnd": 53,
            "protocol": "udp",
            "host": "127.0.0.1",
        },
    ]
    assert c["volumes"] == [
        "/image-vol",
        "1001_data:/data",
        "/anon",
        {"type": "tmpfs", "target": "/t"},
        f"{LOCK}:/tmp/resin",
        f"{LOCK}:/tmp/balena",
        "/run/dbus:/host/run/dbus",  # io.resin.features.dbus, normalised
    ]
    assert c["devices"] == [
        {"PathOnHost": "/dev/ttyUSB0", "PathInContainer": "/dev/serial", "CgroupPermissions": "rwm"}
    ]
    assert (c["capAdd"], c["capDrop"]) == (["NET_ADMIN", "SYS_ADMIN"], ["MKNOD"])
    assert (c["dns"], c["dnsSearch"], c["dnsOpt"]) == (["8.8.8.8"], ["example.com"], ["ndots:2"])
    assert c["extraHosts"] == ["db.local:10.0.0.9"]
    assert c["groupAdd"] == ["dialout"]
    assert c["securityOpt"] == ["seccomp=unconfined"]
    assert c["sysctls"] == {"net.core.somaxconn": "1024"}
    assert c["ulimits"] == {"nproc": {"soft": 65535, "hard": 65535}, "nofile": {"soft": 20000, "hard": 40000}}
    assert c["tmpfs"] == ["/run"]
    assert c["healthcheck"] == {
        "test": ["CMD-SHELL", "curl -f localhost"],
        "interval": 30_000_000_000,
        "retries": 3,
    }
    assert c["restart"] == "on-failure"
    assert (c["stopSignal"], c["stopGracePeriod"]) == ("SIGINT", 90)
    assert (c["workingDir"], c["user"]) == ("/app", "1000")
    assert (c["memLimit"], c["memReservation"], c["shmSize"]) == (536870912, 131072, 1073741824)
    assert (c["cpuShares"], c["cpuQuota"], c["oomScoreAdj"]) == (512, 0, -500)
    assert c["cpus"] == 1_500_000_000
    assert (c["cpuset"], c["cgroupParent"], c["domainname"]) == ("0-1", "mygroup", "example.org")
    assert (c["ipc"], c["macAddress"], c["pid"], c["pidsLimit"], c["usernsMode"]) == (
        "private",
        "02:42:ac:11:00:02",
        "host",
        100,
        "host",
    )
    # JS truthiness, as the reference coerces these flags ("false" is a non-empty string)
    assert (c["oomKillDisable"], c["readOnly"], c["privileged"], c["tty"]) == (True, True, True, False)
    assert c["init"] is True
    assert "storageOpt" not in c and "expose" not in c
    assert svc.ignored_fields == ("expose", "containerName")
    assert svc.depends_on == ["db"]


def test_unsupported_fields_are_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="supervisor.compose"):
        target({"build": ".", "expose": [1]})
    assert "Ignoring unsupported or unknown compose fields: build, expose" in caplog.text


def test_image_fallbacks():
    svc = target(ctx=make_ctx(image_info=IMAGE_INFO))
    c = svc.config
    assert c["command"] == ["node", "index.js"]
    assert c["entrypoint"] == ["/usr/bin/entry.sh"]
    assert c["stopSignal"] == "SIGQUIT"
    assert c["workingDir"] == "/usr/src/app"
    assert c["user"] == "node"
    assert c["healthcheck"] == {"test": ["CMD", "check"], "interval": 5_000_000_000}
    assert c["volumes"][0] == "/image-vol"
    assert c["environment"]["PORT"] == "8080"
    # the injected labels win over the image's
    assert c["labels"]["io.balena.app-id"] == "1001"
    # compose values win over the image's, even empty ones
    c = target({"command": [], "user": "", "working_dir": "/"}, ctx=make_ctx(image_info=IMAGE_INFO)).config
    assert (c["command"], c["user"], c["workingDir"]) == ([], "", "/")


def test_image_null_cmd_and_entrypoint():
    info = {"Id": "sha256:1", "Config": {"Cmd": None, "Entrypoint": None, "Env": None, "Labels": None}}
    c = target(ctx=make_ctx(image_info=info)).config
    assert (c["command"], c["entrypoint"]) == ([], [])


@pytest.mark.parametrize(
    ("composition", "key", "expected"),
    [
        ({"cpu_shares": "abc"}, "cpuShares", 0),
        ({"cpu_shares": 1.5}, "cpuShares", 0),
        ({"cpu_quota": "50000"}, "cpuQuota", 50000),
        ({"oom_score_adj": 0}, "oomScoreAdj", 0),
        ({"cpus": 0.5}, "cpus", 500_000_000),
        ({"cpus": "lots"}, "cpus", 0),
        ({"tty": 0}, "tty", False),
        ({"tty": "yes"}, "tty", True),
        ({"restart": "no"}, "restart", "no"),
        ({"mem_limit": "bogus"}, "memLimit", 0),
        ({"shm_size": "bogus"}, "shmSize", 67108864),
        ({"stop_grace_period": "2s"}, "stopGracePeriod", 2),
        ({"working_dir": "/usr/src/app/"}, "workingDir", "/usr/src/app"),
        ({"stop_signal": 9}, "stopSignal", "9"),
    ],
)
def test_scalar_normalisation(composition, key, expected):
    assert target(composition).config[key] == expected


def test_init_only_when_given():
    assert "init" not in target().config
    assert target({"init": False}).config["init"] is False


def test_lock_dir_from_root_or_explicit():
    c = target(ctx=make_ctx(lock_root="/mnt/root")).config
    assert c["volumes"][-2:] == [
        "/mnt/root/tmp/balena-supervisor/services/1001/api:/tmp/resin",
        "/mnt/root/tmp/balena-supervisor/services/1001/api:/tmp/balena",
    ]
    c = target(ctx=make_ctx(lock_dir="/x")).config
    assert c["volumes"][-2:] == ["/x:/tmp/resin", "/x:/tmp/balena"]


def test_host_network_mode_takes_device_hostname():
    svc = target({"network_mode": "host"})
    assert svc.config["networkMode"] == "host"
    assert svc.config["networks"] == {}
    assert svc.config["hostname"] == "quiet-lake-host"
    assert target({"network_mode": "host", "hostname": "mine"}).config["hostname"] == "mine"


def test_service_network_mode_adds_dependency():
    svc = target({"network_mode": "service: db", "depends_on": ["cache"]})
    assert svc.config["networkMode"] == "service: db"
    assert svc.config["networks"] == {}
    assert svc.depends_on == ["cache", "db"]


def test_bad_ids_and_ports_raise():
    with pytest.raises(ComposeError):
        Service.from_target(make_svc(id="x"), make_ctx())
    with pytest.raises(ComposeError):
        target({"ports": ["1-2:3"]})


# --------------------------------------------------------------------------- features


@pytest.mark.parametrize(
    ("label", "binds"),
    [
        ("io.balena.features.dbus", ["/run/dbus:/host/run/dbus"]),
        ("io.balena.features.sysfs", ["/sys:/sys"]),
        ("io.balena.features.procfs", ["/proc:/proc"]),
        (
            "io.balena.features.journal-logs",
            [
                "/var/log/journal:/var/log/journal:ro",
                "/run/log/journal:/run/log/journal:ro",
                "/etc/machine-id:/etc/machine-id:ro",
            ],
        ),
    ],
)
def test_bind_features(label, binds):
    assert target(labels={label: "1"}).config["volumes"][2:] == binds
    assert target(labels={label: "0"}).config["volumes"][2:] == []


def test_host_path_features_need_the_host_path():
    labels = {"io.balena.features.kernel-modules": "true", "io.balena.features.firmware": "on"}
    assert target(labels=labels).config["volumes"][2:] == []
    ctx = make_ctx(host_paths=frozenset({"/lib/modules", "/lib/firmware"}))
    assert target(labels=labels, ctx=ctx).config["volumes"][2:] == [
        "/lib/modules:/lib/modules",
        "/lib/firmware:/lib/firmware",
    ]


def test_balena_socket_feature():
    c = target(labels={"io.balena.features.balena-socket": "1"}).config
    assert c["volumes"][2:] == [
        {"type": "bind", "source": "/var/run/docker.sock", "target": "/host/run/balena-engine.sock"},
        {"type": "bind", "source": "/var/run/docker.sock", "target": "/var/run/docker.sock"},
        {"type": "bind", "source": "/var/run/docker.sock", "target": "/var/run/balena.sock"},
    ]
    assert c["environment"]["DOCKER_HOST"] == "unix:///host/run/balena-engine.sock"
    c = target(
        labels={"io.balena.features.balena-socket": "1"},
        environment={"DOCKER_HOST": "tcp://x"},
        ctx=make_ctx(docker_socket="/var/run/balena.sock"),
    ).config
    assert len(c["volumes"][2:]) == 2
    assert c["environment"]["DOCKER_HOST"] == "tcp://x"


def test_balena_api_feature_via_legacy_label():
    env = target(labels={"io.resin.features.resin-api": "1"}).config["environment"]
    for prefix in ("BALENA", "RESIN"):
        assert env[f"{prefix}_API_KEY"] == "devkey"
        assert env[f"{prefix}_API_URL"] == "https://api.balena-cloud.com"


def test_supervisor_api_feature():
    c = target(labels={"io.balena.features.supervisor-api": "1"}).config
    assert c["networks"]["supervisor0"] == {}
    assert c["networkMode"] == f"{APP_UUID}_default"
    for prefix in ("BALENA", "RESIN"):
        assert c["environment"][f"{prefix}_SUPERVISOR_API_KEY"] == "scopedkey"
        assert c["environment"][f"{prefix}_SUPERVISOR_PORT"] == "48484"
        assert c["environment"][f"{prefix}_SUPERVISOR_HOST"] == "10.114.104.1"
        assert c["environment"][f"{prefix}_SUPERVISOR_ADDRESS"] == "http://10.114.104.1:48484"
    c = target({"network_mode": "host"}, labels={"io.balena.features.supervisor-api": "1"}).config
    assert "supervisor0" not in c["networks"]
    assert c["environment"]["BALENA_SUPERVISOR_ADDRESS"] == "http://127.0.0.1:48484"


def test_supervisor_network_removed_without_the_feature():
    # a user naming supervisor0 gets an app network, and the bare supervisor0 is never kept
    svc = target({"networks": ["default", "supervisor0"]})
    assert set(svc.config["networks"]) == {f"{APP_UUID}_default", f"{APP_UUID}_supervisor0"}
    assert "supervisor0" not in svc.config["networks"]


def test_gpu_board_rev_and_extra_firmware_features():
    labels = {
        "io.balena.features.gpu": "1",
        "io.balena.features.host-os.board-rev": "1",
        "io.balena.features.extra-firmware": "1",
    }
    c = target(labels=labels, ctx=make_ctx(board_rev="1.2")).config
    assert c["deviceRequests"] == [GPU_REQUEST]
    assert c["environment"]["BALENA_HOST_OS_BOARD_REV"] == "1.2"
    assert c["environment"]["RESIN_HOST_OS_BUILD"] == "1.2"
    assert c["volumes"][-1] == {"type": "volume", "source": "extra-firmware", "target": "/extra-firmware"}


# --------------------------------------------------------------------------- create body


def test_create_body():
    svc = target(
        {
            "networks": {"frontend": {"aliases": ["web"], "ipv4_address": "10.0.0.5"}, "backend": {}},
            "ports": ["80:8080"],
            "volumes": [
                "data:/data",
                "/anon",
                {"type": "volume", "source": "x", "target": "/x", "read_only": True},
            ],
            "tmpfs": ["/run:size=1m"],
            "ulimits": {"nofile": 10},
            "restart": "no",
            "init": False,
        },
        ctx=make_ctx(image_info=IMAGE_INFO),
    )
    body, extra = svc.create_body(device_name="quiet-lake")
    assert body["Image"] == IMAGE_INFO["Id"]
    assert body["Env"][:2] == [
        "RESIN_DEVICE_NAME_AT_INIT=quiet-lake",
        "BALENA_DEVICE_NAME_AT_INIT=quiet-lake",
    ]
    assert "USER=root" in body["Env"]
    assert body["NetworkingConfig"] == {
        "EndpointsConfig": {
            f"{APP_UUID}_frontend": {"IPAMConfig": {"IPv4Address": "10.0.0.5"}, "Aliases": ["web", "api"]}
        }
    }
    assert extra == [(f"{APP_UUID}_backend", {"IPAMConfig": {}, "Aliases": ["api"]})]
    assert body["ExposedPorts"] == {"8080/tcp": {}}
    assert body["Volumes"] == {"/image-vol": {}, "/anon": {}}
    assert body["Healthcheck"] == {"Test": ["CMD", "check"], "Interval": 5_000_000_000}
    assert body["StopSignal"] == "SIGQUIT" and body["StopTimeout"] == 10
    assert body["WorkingDir"] == "/usr/src/app" and body["User"] == "node"
    host = body["HostConfig"]
    assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "", "HostPort": "80"}]}
    assert host["Binds"] == ["1001_data:/data", f"{LOCK}:/tmp/resin", f"{LOCK}:/tmp/balena"]
    assert host["Mounts"] == [{"Type": "volume", "Target": "/x", "Source": "1001_x", "ReadOnly": True}]
    assert host["Tmpfs"] == {"/run": "size=1m"}
    assert host["Ulimits"] == [{"Name": "nofile", "Soft": 10, "Hard": 10}]
    assert host["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    assert host["NetworkMode"] == f"{APP_UUID}_frontend"
    assert host["Init"] is False
    assert host["IpcMode"] == "shareable" and host["ShmSize"] == 67108864
    # creating does not change the service
    assert svc.create_body(device_name="quiet-lake")[0] == body


def test_create_body_service_network_mode():
    svc = target({"network_mode": "service:db"})
    body, extra = svc.create_body(device_name="n", container_ids={"db": "abcdef"})
    assert body["HostConfig"]["NetworkMode"] == "container:abcdef"
    assert body["NetworkingConfig"] == {"EndpointsConfig": {}}
    assert extra == []
    assert svc.config["networkMode"] == "service:db"
    with pytest.raises(ComposeError, match="No container for network_mode"):
        svc.create_body(device_name="n")


def test_create_body_refuses_multiline_device_name():
    with pytest.raises(ComposeError):
        target().create_body(device_name="a\nb")


# --------------------------------------------------------------------------- from_container

CONTAINER_ID = "5bff0c9e6ef8ae4fdc02b7ba05050078c8599775e8773ce039982e987107a4a4"


def make_inspect(**changes) -> dict:
    """A container the way a supervisor creates it (values written for these tests)."""
    inspect = {
        "Id": CONTAINER_ID,
        "Created": "2024-05-01T10:00:00.123456789Z",
        "Name": "/api_9001_50001_c0ffee",
        "Image": IMAGE_INFO["Id"],
        "State": {"Status": "running", "Running": True, "Error": ""},
        "HostConfig": {
            "Binds": [f"{LOCK}:/tmp/resin", f"{LOCK}:/tmp/balena"],
            "NetworkMode": f"{APP_UUID}_default",
            "PortBindings": {},
            "RestartPolicy": {"Name": "always", "MaximumRetryCount": 0},
            "CapAdd": None,
            "CapDrop": None,
            "Dns": [],
            "DnsOptions": [],
            "DnsSearch": [],
            "ExtraHosts": None,
            "GroupAdd": None,
            "IpcMode": "shareable",
            "OomScoreAdj": 0,
            "PidMode": "",
            "Privileged": False,
            "ReadonlyRootfs": False,
            "SecurityOpt": None,
            "UsernsMode": "",
            "ShmSize": 67108864,
            "CpuShares": 0,
            "Memory": 0,
            "NanoCpus": 0,
            "CgroupParent": "",
            "CpuQuota": 0,
            "CpusetCpus": "",
            "Devices": [],
            "DeviceRequests": None,
            "MemoryReservation": 0,
            "OomKillDisable": False,
            "PidsLimit": None,
            "Ulimits": None,
            "Mounts": None,
            "Tmpfs": None,
            "Sysctls": None,
        },
        "Config": {
            "Hostname": CONTAINER_ID[:12],
            "Domainname": "",
            "User": "",
            "Tty": True,
            "Env": [
                *[f"{k}={v}" for k, v in INJECTED_ENV.items()],
                "RESIN_DEVICE_NAME_AT_INIT=old-name",
                "BALENA_DEVICE_NAME_AT_INIT=old-name",
            ],
            "Cmd": [],
            "Image": IMAGE_INFO["Id"],
            "Volumes": None,
            "WorkingDir": "",
            "Entrypoint": None,
            "Labels": {**INJECTED_LABELS, "io.resin.features.x": "1"},
            "StopSignal": "SIGTERM",
            "StopTimeout": 10,
            "Healthcheck": {"Test": ["NONE"]},
        },
        "NetworkSettings": {
            "Networks": {
                f"{APP_UUID}_default": {"Aliases": ["api", CONTAINER_ID[:12]], "IPAMConfig": None},
            }
        },
    }
    for key, value in changes.items():
        inspect[key] = value
    return inspect


def test_from_container_reads_everything_back():
    current = Service.from_container(make_inspect())
    assert (current.app_id, current.app_uuid, current.service_name, current.service_id) == (
        1001,
        APP_UUID,
        "api",
        7001,
    )
    assert (current.image_id, current.release_id, current.commit) == (9001, 50001, "c0ffee")
    assert current.container_id == CONTAINER_ID
    assert current.status == "Running"
    assert current.created_at == "2024-05-01T10:00:00.123456789Z"
    assert current.docker_image_id == IMAGE_INFO["Id"]
    c = current.config
    assert c["hostname"] == ""
    assert c["environment"] == INJECTED_ENV
    assert c["labels"]["io.balena.features.x"] == "1"
    assert c["networks"] == {f"{APP_UUID}_default": {"aliases": ["api"]}}
    assert c["pidsLimit"] == 0 and c["ipc"] == "shareable" and c["running"] is True
    # and it is what a target with the same image compares equal to
    tgt = target(ctx=make_ctx(image_info={"Id": IMAGE_INFO["Id"], "Config": {}}))
    tgt.config["labels"]["io.balena.features.x"] = "1"
    assert current.is_equal(tgt)


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ({"Status": "running", "Running": True}, "Running"),
        ({"Status": "restarting", "Running": True}, "Running"),
        ({"Status": "created", "Running": False}, "Installed"),
        ({"Status": "dead", "Running": False}, "Dead"),
        ({"Status": "exited", "Running": False}, "exited"),
        ({"Status": "paused", "Running": False}, "paused"),
        ({"Status": "removing", "Running": False}, "removing"),
    ],
)
def test_status_mapping(state, status):
    assert Service.from_container(make_inspect(State=state)).status == status


def test_from_container_hostname_rule():
    inspect = make_inspect()
    inspect["Config"]["Hostname"] = "myhost"
    assert Service.from_container(inspect).config["hostname"] == "myhost"
    inspect["Config"]["Hostname"] = "123456789012"  # 12 chars but not the id's prefix
    assert Service.from_container(inspect).config["hostname"] == "123456789012"


def test_from_container_volumes_union():
    inspect = make_inspect()
    inspect["HostConfig"]["Binds"] = ["1001_data:/data", "/x:/tmp/balena"]
    inspect["Config"]["Volumes"] = {"/anon": {}, "/data": {}}
    inspect["HostConfig"]["Mounts"] = [{"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {}}]
    assert Service.from_container(inspect).config["volumes"] == [
        "1001_data:/data",
        "/x:/tmp/balena",
        "/anon",
        "/data",
        {"type": "tmpfs", "target": "/t"},
    ]


def test_from_container_legacy_names_and_labels():
    inspect = make_inspect(Name="/main_431889_572579")
    inspect["Config"]["Labels"] = {
        "io.resin.app-id": "1011165",
        "io.resin.service-id": "43697",
        "io.resin.service-name": "main",
        "io.resin.supervised": "true",
    }
    current = Service.from_container(inspect)
    assert (current.app_id, current.service_id, current.service_name) == (1011165, 43697, "main")
    assert (current.image_id, current.release_id, current.commit) == (431889, 572579, None)
    assert current.app_uuid is None


@pytest.mark.parametrize(
    ("labels", "name"),
    [
        ({"io.balena.service-id": "1"}, "/a_1_2_c"),
        ({"io.balena.app-id": "1", "io.balena.service-id": "x"}, "/a_1_2_c"),
        ({"io.balena.app-id": "1", "io.balena.service-id": "1"}, "/no-ids-here"),
        # Foreign names wearing an app's labels (issue #10 §3): the name must be the service's own.
        ({"io.balena.app-id": "1", "io.balena.service-id": "1", "io.balena.service-name": "a"}, "/xa_1_2_c"),
        ({"io.balena.app-id": "1", "io.balena.service-id": "1", "io.balena.service-name": "a"}, "/b_1_2_c"),
        ({"io.balena.app-id": "1", "io.balena.service-id": "1"}, "/a_1_2_c"),
    ],
)
def test_from_container_rejects_unsupervised(labels, name):
    inspect = make_inspect(Name=name)
    inspect["Config"]["Labels"] = labels
    with pytest.raises(ComposeError):
        Service.from_container(inspect)


def test_parse_container_name_is_exported():
    assert parse_container_name("/api_9001_50001_c0ffee", "api") == (9001, 50001, "c0ffee")


# --------------------------------------------------------------------------- comparison


def with_config(svc: Service, **changes) -> Service:
    clone = copy.deepcopy(svc)
    clone.config.update(changes)
    return clone


def test_identical_targets_are_equal():
    assert target(RICH).is_equal(target(RICH))


@pytest.mark.parametrize(
    "field",
    ["volumes", "devices", "capAdd", "capDrop", "dnsOpt", "tmpfs", "extraHosts", "groupAdd", "securityOpt"],
)
def test_unordered_array_fields(field):
    base = target(RICH)
    values = list(base.config[field]) or []
    values = [*values, *values[:1]] if len(values) < 2 else values
    forward = with_config(base, **{field: values})
    backward = with_config(base, **{field: list(reversed(values))})
    assert forward.is_equal_config(backward)
    assert not forward.is_equal_config(with_config(base, **{field: values[:-1]}))


@pytest.mark.parametrize("field", ["dns", "dnsSearch"])
def test_ordered_array_fields(field):
    base = with_config(target(), **{field: ["a", "b"]})
    assert base.is_equal_config(with_config(base, **{field: ["a", "b"]}))
    assert not base.is_equal_config(with_config(base, **{field: ["b", "a"]}))


def test_target_aliases_need_only_be_a_subset():
    base = target({"networks": {"test": {"aliases": ["hello", "world"]}}})
    more = target({"networks": {"test": {"aliases": ["hello", "sweet", "world"]}}})
    assert more.is_equal_config(base)  # current has more aliases than the target asks for
    assert not base.is_equal_config(more)


def test_target_networks_must_be_joined_but_extra_current_ones_are_fine():
    one = target({"networks": ["a"]})
    two = target({"networks": ["a", "b"]})
    assert two.is_equal_config(one)
    assert not one.is_equal_config(two)


def test_static_addresses_are_deep_equal():
    net = {"networks": {"n": {"ipv4_address": "10.0.0.2"}}}
    current = target(net)
    assert current.is_equal_config(target(net))
    assert not current.is_equal_config(target({"networks": {"n": {"ipv4_address": "10.0.0.3"}}}))
    # the target says nothing about addresses: whatever the engine gave is fine
    assert current.is_equal_config(target({"networks": ["n"]}))


def test_service_and_container_network_modes_are_equivalent():
    tgt = target({"network_mode": "service:db", "hostname": "ignored-in-service-mode"})
    current = with_config(tgt, networkMode="container:abc123", hostname="")
    assert current.is_equal_config(tgt, {"db": "abc123"})
    assert tgt.is_equal_config(current, {"db": "abc123"})
    assert not current.is_equal_config(tgt, {"db": "other"})
    assert not current.is_equal_config(tgt, {})


def test_hostname_compared_outside_service_mode():
    tgt = target({"hostname": "a"})
    assert not with_config(tgt, hostname="b").is_equal_config(tgt)
    assert not with_config(tgt, networkMode="host").is_equal_config(tgt)


def test_ignored_fields():
    tgt = target({"cpus": 2})
    current = with_config(tgt, cpus=0, running=False)
    assert current.is_equal_config(tgt)
    assert current.is_equal_except_running(tgt)
    assert not current.is_equal(tgt)


def test_commit_only_difference_is_a_rename():
    tgt = target(RICH)
    current = copy.deepcopy(tgt)
    current.commit = "old"
    current.release_id = 1
    assert current.is_equal_config(tgt)
    assert not current.is_equal_except_running(tgt)
    assert not current.is_equal(tgt)


@pytest.mark.parametrize(
    ("change", "value"),
    [
        ("image", "sha256:other"),
        ("environment", {"A": "1"}),
        ("labels", {}),
        ("portMaps", []),
        ("healthcheck", {"test": ["CMD", "x"]}),
        ("restart", "no"),
        ("memLimit", 1),
        ("privileged", False),
        ("sysctls", {"a": "1"}),
        ("ulimits", {"nofile": {"soft": 1, "hard": 1}}),
        ("deviceRequests", [GPU_REQUEST]),
        ("networkMode", "bridge"),
    ],
)
def test_any_plain_change_makes_it_unequal(change, value):
    tgt = target(RICH)
    assert not with_config(tgt, **{change: value}).is_equal_config(tgt)


def test_config_diff_redacts_environment(caplog):
    current = target(environment={"SECRET_KEY": "super-secret-value", "API_TOKEN": "sensitive-token"})
    tgt = target(
        environment={"SECRET_KEY": "different-secret", "API_TOKEN": "sensitive-token", "NEW": "new-value"}
    )
    diff = current.config_diff(tgt)
    assert diff == {
        "environment": {
            "current": {"SECRET_KEY": "hidden"},
            "target": {"NEW": "hidden", "SECRET_KEY": "hidden"},
        }
    }
    with caplog.at_level(logging.DEBUG, logger="supervisor.compose"):
        assert not current.is_equal_config(tgt)
    assert "hidden" in caplog.text
    for secret in ("super-secret-value", "different-secret", "new-value"):
        assert secret not in caplog.text


def test_config_diff_lists_fields():
    current = target({"dns": ["1.1.1.1"], "privileged": True})
    tgt = target({"dns": ["8.8.8.8"], "networks": ["other"]})
    diff = current.config_diff(tgt)
    assert diff["dns"] == {"current": ["1.1.1.1"], "target": ["8.8.8.8"]}
    assert diff["privileged"] == {"current": True, "target": False}
    assert set(diff) == {"dns", "privileged", "networks", "networkMode"}
    assert target().config_diff(target()) == {}


def test_queries_used_by_the_planner():
    svc = target(
        {
            "networks": ["front"],
            "volumes": ["data:/data", {"type": "volume", "source": "more", "target": "/m"}],
        }
    )
    assert svc.has_network("front") and not svc.has_network("back")
    assert svc.has_network_mode("front")
    assert svc.has_volume("data") and svc.has_volume("more") and not svc.has_volume("other")
    old = Service.from_container(make_inspect())
    old.config["networks"] = {"1001_legacy": {}}
    assert old.has_network("legacy")
