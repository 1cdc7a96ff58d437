"""Table-driven tests of the per-field modules of supervisor/compose (plain data, no engine)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.compose import (
    casing,
    command,
    devices,
    endpoints,
    environment,
    fields,
    healthcheck,
    labels,
    mounts,
    naming,
    ports,
    ulimits,
    units,
    validation,
)
from supervisor.compose.errors import ComposeError, InvalidNameError, InvalidPortDefinition

# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, 5),
        ("5", 5),
        ("-3", -3),
        ("5.", 5),
        ("5.00", 5),
        (5.0, 5),
        ("5.5", None),
        (5.5, None),
        ("abc", None),
        ("", None),
        (None, None),
        (True, None),
        ([], None),
    ],
)
def test_check_int(value, expected):
    assert validation.check_int(value) == expected


def test_check_int_positive():
    assert validation.check_int("0", positive=True) is None
    assert validation.check_int("-1", positive=True) is None
    assert validation.check_int("2", positive=True) == 2


@pytest.mark.parametrize(
    ("value", "truthy", "falsey"),
    [
        (True, True, False),
        (1, True, False),
        ("1", True, False),
        ("true", True, False),
        ("TRUE", True, False),
        ("On", True, False),
        (False, False, True),
        (0, False, True),
        ("0", False, True),
        ("off", False, True),
        ("yes", False, False),
        (None, False, False),
        (2, False, False),
    ],
)
def test_truthy_and_falsey(value, truthy, falsey):
    assert validation.check_truthy(value) is truthy
    assert validation.check_falsey(value) is falsey


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, False), ("", False), (0, False), ("false", True), ("0", True), ([], True), (1, True)],
)
def test_js_truthy(value, expected):
    assert validation.js_truthy(value) is expected


# --------------------------------------------------------------------------- casing


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("network_mode", "networkMode"),
        ("cap_add", "capAdd"),
        ("mem_limit", "memLimit"),
        ("oom_kill_disable", "oomKillDisable"),
        ("stop_grace_period", "stopGracePeriod"),
        ("dns_opt", "dnsOpt"),
        ("ipv4_address", "ipv4Address"),
        ("link_local_ips", "linkLocalIps"),
        ("depends_on", "dependsOn"),
        ("networkMode", "networkMode"),
        ("cpuset", "cpuset"),
        ("MEM_LIMIT", "memLimit"),
        ("userns-mode", "usernsMode"),
        ("__read_only__", "readOnly"),
    ],
)
def test_camel_case(key, expected):
    assert casing.camel_case(key) == expected


def test_camel_case_composition_handles_network_entries():
    out = casing.camel_case_composition(
        {"network_mode": "host", "networks": {"front": {"ipv4_address": "1.2.3.4"}, "back": None}}
    )
    assert out == {
        "networkMode": "host",
        "networks": {"front": {"ipv4Address": "1.2.3.4"}, "back": {}},
    }
    # the list form is left alone
    assert casing.camel_case_composition({"networks": ["a"]}) == {"networks": ["a"]}


def test_split_supported_reports_dropped_keys():
    kept, dropped = casing.split_supported({"image": "x", "expose": [1], "build": ".", "tty": True})
    assert kept == {"image": "x", "tty": True}
    assert dropped == ["expose", "build"]


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [
        ("64", "0", 64),
        (64, "0", 64),
        ("64b", "0", 64),
        ("64B", "0", 64),
        ("64k", "0", 65536),
        ("64Kb", "0", 65536),
        ("64m", "0", 67108864),
        ("64MB", "0", 67108864),
        ("64g", "0", 68719476736),
        ("64Gb", "0", 68719476736),
        (None, "0", 0),
        (None, "64m", 67108864),
        ("lots", "64m", 67108864),
        ("1.5g", "0", 0),
        ("64t", "0", 0),
    ],
)
def test_parse_size(value, default, expected):
    assert units.parse_size(value, default) == expected


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("0", 0),
        ("10s", 10_000),
        ("1m30s", 90_000),
        ("1h", 3_600_000),
        ("1.5s", 1_500),
        ("250ms", 250),
        ("1500us", 1),
        ("2d", 172_800_000),
        ("1w", 604_800_000),
        ("-5s", -5_000),
        (30, 30),
    ],
)
def test_duration_ms(value, ms):
    assert units.duration_ms(value) == ms


@pytest.mark.parametrize("bad", ["", "10", "10x", "s", None, True])
def test_duration_rejects_garbage(bad):
    with pytest.raises(ComposeError):
        units.duration_ms(bad)


def test_duration_conversions():
    assert units.duration_seconds("1m30s") == 90
    assert units.duration_seconds("1500ms") == 1
    assert units.duration_ns("30s") == 30_000_000_000
    assert units.duration_ns("1ms") == 1_000_000


# --------------------------------------------------------------------------- ports


def _pm(i0, i1, e0, e1, proto="tcp", host=""):
    return {
        "internalStart": i0,
        "internalEnd": i1,
        "externalStart": e0,
        "externalEnd": e1,
        "protocol": proto,
        "host": host,
    }


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("80", _pm(80, 80, 80, 80)),
        (80, _pm(80, 80, 80, 80)),
        ("8080:80", _pm(80, 80, 8080, 8080)),
        ("53/udp", _pm(53, 53, 53, 53, "udp")),
        ("127.0.0.1:8080:80/tcp", _pm(80, 80, 8080, 8080, "tcp", "127.0.0.1")),
        ("80-90", _pm(80, 90, 80, 90)),
        ("1000-1003:2000-2003", _pm(2000, 2003, 1000, 1003)),
        ("127.0.0.1::80", _pm(80, 80, 80, 80, "tcp", "127.0.0.1")),
        ({"target": 80, "published": 8080, "protocol": "udp"}, _pm(80, 80, 8080, 8080, "udp")),
    ],
)
def test_parse_port(entry, expected):
    assert ports.parse_port(entry) == expected


@pytest.mark.parametrize("bad", ["abc", "80:90-91", "1-3:5-9", "80/sctp", "90-80", ""])
def test_parse_port_rejects(bad):
    with pytest.raises(InvalidPortDefinition):
        ports.parse_port(bad)


def test_ports_not_ascending_fold_and_bind():
    maps = ports.from_compose(["80-90", "10:1000", "300/udp", "20/udp"])
    # grouped by host and protocol, ascending within a group
    assert maps == [
        _pm(80, 90, 80, 90),
        _pm(1000, 1000, 10, 10),
        _pm(20, 20, 20, 20, "udp"),
        _pm(300, 300, 300, 300, "udp"),
    ]
    exposed, bindings = ports.to_docker(maps)
    assert bindings["1000/tcp"] == [{"HostIp": "", "HostPort": "10"}]
    assert bindings["20/udp"] == [{"HostIp": "", "HostPort": "20"}]
    assert len([k for k in bindings if k.endswith("/tcp")]) == 12
    assert set(exposed) == set(bindings)


def test_ports_fold_consecutive_singles():
    assert ports.from_compose(["81", "80", "82/udp", "83", "84"]) == [
        _pm(80, 81, 80, 81),
        _pm(83, 84, 83, 84),
        _pm(82, 82, 82, 82, "udp"),
    ]
    # the same range on both protocols folds on each (the engine reports one binding per port)
    both = ports.from_compose(["5-9000:5-9000/tcp", "5-9000:5-9000/udp"])
    assert both == [_pm(5, 9000, 5, 9000), _pm(5, 9000, 5, 9000, "udp")]
    assert ports.from_docker(ports.to_docker(both)[1]) == both
    # different host ips never fold
    assert len(ports.from_compose(["1.2.3.4:80:80", "81:81"])) == 2


def test_ports_same_internal_port_twice_accumulates():
    _, bindings = ports.to_docker(ports.from_compose(["8080:80", "8081:80"]))
    assert bindings == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}, {"HostIp": "", "HostPort": "8081"}]}


@given(
    st.lists(
        st.tuples(
            st.integers(1, 60000),
            st.integers(0, 5),
            st.integers(1, 60000),
            st.sampled_from(["tcp", "udp"]),
            st.sampled_from(["", "127.0.0.1"]),
        ),
        max_size=6,
    )
)
def test_ports_round_trip_through_bindings(entries):
    specs = []
    for internal, span, external, proto, host in entries:
        prefix = f"{host}:" if host else ""
        specs.append(f"{prefix}{external}-{external + span}:{internal}-{internal + span}/{proto}")
    maps = ports.from_compose(specs)
    _, bindings = ports.to_docker(maps)
    assert ports.from_docker(bindings) == maps


def test_ports_from_docker():
    assert ports.from_docker(None) == []
    assert ports.from_docker({"80/tcp": [{"HostIp": "", "HostPort": "8080"}], "81": None}) == [
        _pm(80, 80, 8080, 8080)
    ]


# --------------------------------------------------------------------------- command


@pytest.mark.parametrize(
    ("text", "argv"),
    [
        ("node index.js", ["node", "index.js"]),
        ("  spaced    out  ", ["spaced", "out"]),
        ('python -c "print(1)"', ["python", "-c", "print(1)"]),
        ("sh -c 'a b'", ["sh", "-c", "a b"]),
        ('echo "$HOME" $PATH', ["echo", "$HOME", "$PATH"]),
        ("echo ${HOME}", ["echo", "${HOME}"]),
        ("ls *.txt ?.log", ["ls", "*.txt", "?.log"]),
        ("a && b || c; d | e", ["a", "&&", "b", "||", "c", ";", "d", "|", "e"]),
        ("echo a>b", ["echo", "a", ">", "b"]),
        ("echo a\\ b", ["echo", "a b"]),
        ('echo "say \\"hi\\""', ["echo", 'say "hi"']),
        ('echo "a\\nb"', ["echo", "a\\nb"]),
        ('foo"bar baz"qux', ["foobar bazqux"]),
        ("run # the rest is a comment", ["run"]),
        ("", []),
        # the reference's quirk: a `$` inside single quotes keeps its escaping backslash
        ("sh -c 'echo $HOME'", ["sh", "-c", "echo \\$HOME"]),
    ],
)
def test_split_command(text, argv):
    assert command.split_command(text) == argv


def test_as_argv():
    assert command.as_argv(None) is None
    assert command.as_argv(["a", 1]) == ["a", "1"]
    assert command.as_argv("a b") == ["a", "b"]


# --------------------------------------------------------------------------- devices and ulimits


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("/dev/ttyUSB0", ("/dev/ttyUSB0", "/dev/ttyUSB0", "rwm")),
        ("/dev/ttyUSB0:/dev/serial", ("/dev/ttyUSB0", "/dev/serial", "rwm")),
        ("/dev/ttyUSB0:/dev/serial:r", ("/dev/ttyUSB0", "/dev/serial", "r")),
    ],
)
def test_parse_device(entry, expected):
    keys = ("PathOnHost", "PathInContainer", "CgroupPermissions")
    assert devices.parse_device(entry) == dict(zip(keys, expected, strict=True))


def test_device_request_from_docker_fills_nulls():
    assert (
        devices.request_from_docker(
            {"Driver": "", "Count": 1, "DeviceIDs": None, "Capabilities": [["gpu"]], "Options": None}
        )
        == devices.GPU_REQUEST
    )


def test_ulimits_both_ways():
    limits = ulimits.from_compose({"nproc": 65535, "nofile": {"soft": 20000, "hard": "40000"}})
    assert limits == {"nproc": {"soft": 65535, "hard": 65535}, "nofile": {"soft": 20000, "hard": 40000}}
    assert ulimits.from_docker(ulimits.to_docker(limits)) == limits
    with pytest.raises(ComposeError):
        ulimits.from_compose({"nofile": {"soft": 1}})


# --------------------------------------------------------------------------- healthcheck


IMAGE_HC = {"Config": {"Healthcheck": {"Test": ["CMD", "check"], "Interval": 5, "Retries": 2}}}


@pytest.mark.parametrize(
    ("compose", "image", "expected"),
    [
        (None, None, {"test": ["NONE"]}),
        ({"test": "curl x"}, None, {"test": ["CMD-SHELL", "curl x"]}),
        (
            {"test": ["CMD", "true"], "interval": "30s", "timeout": "1s", "start_period": "1m", "retries": 3},
            None,
            {
                "test": ["CMD", "true"],
                "interval": 30_000_000_000,
                "timeout": 1_000_000_000,
                "startPeriod": 60_000_000_000,
                "retries": 3,
            },
        ),
        (None, IMAGE_HC, {"test": ["CMD", "check"], "interval": 5, "retries": 2}),
        ({"interval": "1s"}, IMAGE_HC, {"test": ["CMD", "check"], "interval": 1_000_000_000, "retries": 2}),
        ({"disable": True}, IMAGE_HC, {"test": ["NONE"], "interval": 5, "retries": 2}),
    ],
)
def test_healthcheck_resolve(compose, image, expected):
    assert healthcheck.resolve(compose, image) == expected


def test_healthcheck_engine_round_trip():
    hc = {"test": ["CMD-SHELL", "true"], "interval": 10, "retries": 1}
    assert healthcheck.to_docker(hc) == {"Test": ["CMD-SHELL", "true"], "Interval": 10, "Retries": 1}
    assert healthcheck.from_docker(healthcheck.to_docker(hc)) == hc
    assert healthcheck.from_docker(None) == {"test": ["NONE"]}
    assert healthcheck.from_docker({}) == {"test": ["NONE"]}


# --------------------------------------------------------------------------- mounts


def test_mounts_sanitise():
    entries = [
        "myvolume:/myvolume",
        "readonly:/readonly:ro",
        "vol3 :/usr/src/app",
        "/home/mybind:/mybind",
        "/anonymous",
        {"type": "volume", "source": "another", "target": "/another", "read_only": True},
        {"type": "volume", "target": "/yet/another"},
        {"type": "bind", "source": "/mnt/data", "target": "/data"},
        {"type": "tmpfs", "target": "/home/tmp", "tmpfs": {"size": 1000}},
        {"type": "tmpfs", "source": "/x", "target": "/bad"},
        {"type": "bind", "source": "relative", "target": "/bad"},
        {"type": "nfs", "target": "/bad"},
        {"type": "volume", "source": "opts", "target": "/o", "bind": {"propagation": "shared"}},
        42,
    ]
    assert mounts.sanitise(entries, 5) == [
        "5_myvolume:/myvolume",
        "5_readonly:/readonly:ro",
        "5_vol3:/usr/src/app",
        "/anonymous",
        {"type": "volume", "target": "/another", "source": "5_another", "readOnly": True},
        {"type": "volume", "target": "/yet/another"},
        {"type": "tmpfs", "target": "/home/tmp", "tmpfs": {"size": 1000}},
        {"type": "volume", "target": "/o", "source": "5_opts"},
    ]


def test_mounts_to_docker_and_back():
    config = [
        "5_data:/data",
        "/lock:/tmp/balena",
        "/anon",
        {"type": "volume", "source": "5_x", "target": "/x", "readOnly": True},
        {"type": "bind", "source": "/var/run/docker.sock", "target": "/host.sock"},
        {"type": "tmpfs", "target": "/t", "tmpfs": {"size": 10}},
    ]
    binds, long_mounts, anonymous = mounts.to_docker(config)
    assert binds == ["5_data:/data", "/lock:/tmp/balena"]
    assert anonymous == {"/anon": {}}
    assert long_mounts == [
        {"Type": "volume", "Target": "/x", "Source": "5_x", "ReadOnly": True},
        {"Type": "bind", "Target": "/host.sock", "Source": "/var/run/docker.sock"},
        {"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 10}},
    ]
    inspect = {
        "HostConfig": {"Binds": binds, "Mounts": long_mounts},
        "Config": {"Volumes": {**anonymous, "/image-volume": {}}},
    }
    assert mounts.from_docker(inspect) == [*config[:3], "/image-volume", *config[3:]]


def test_mounts_named_source_and_union():
    assert mounts.named_source("5_data:/data") == "5_data"
    assert mounts.named_source("/host:/x") is None
    assert mounts.named_source("/anon") is None
    assert mounts.named_source({"type": "volume", "source": "5_x", "target": "/x"}) == "5_x"
    assert mounts.named_source({"type": "tmpfs", "target": "/x"}) is None
    assert mounts.union(["/a", "b:/b"], ["/a", {"type": "tmpfs", "target": "/t"}]) == [
        "/a",
        "b:/b",
        {"type": "tmpfs", "target": "/t"},
    ]
    assert mounts.lock_binds("/x") == ["/x:/tmp/resin", "/x:/tmp/balena"]


# --------------------------------------------------------------------------- networks of a service

UUID = "deadbeef"


@pytest.mark.parametrize(
    ("networks", "mode", "expected_networks", "expected_mode", "dependency"),
    [
        (None, None, {"deadbeef_default": {"aliases": ["svc"]}}, "deadbeef_default", None),
        (["front"], None, {"deadbeef_front": {"aliases": ["svc"]}}, "deadbeef_front", None),
        (
            {"front": {"aliases": ["a"], "ipv4Address": "10.0.0.2", "priority": 3}, "back": None},
            None,
            {
                "deadbeef_front": {"aliases": ["a", "svc"], "ipv4Address": "10.0.0.2"},
                "deadbeef_back": {"aliases": ["svc"]},
            },
            "deadbeef_front",
            None,
        ),
        (None, "host", {}, "host", None),
        (None, "bridge", {}, "bridge", None),
        (None, "none", {}, "none", None),
        (None, "service: db", {}, "service: db", "db"),
        (None, "container:abc", {"deadbeef_default": {"aliases": ["svc"]}}, "deadbeef_default", None),
        (None, "mynet", {"deadbeef_mynet": {"aliases": ["svc"]}}, "deadbeef_mynet", None),
        # an explicit mode naming a listed network replaces its entry (the reference's behaviour)
        (
            {"mynet": {"ipv4Address": "1.2.3.4"}},
            "mynet",
            {"deadbeef_mynet": {"aliases": ["svc"]}},
            "deadbeef_mynet",
            None,
        ),
    ],
)
def test_service_networks_from_compose(networks, mode, expected_networks, expected_mode, dependency):
    assert endpoints.from_compose(networks, mode, UUID, "svc") == (
        expected_networks,
        expected_mode,
        dependency,
    )


def test_endpoint_config_and_connect_kwargs():
    entry = {
        "aliases": ["a"],
        "ipv4Address": "1.2.3.4",
        "ipv6Address": "::5",
        "linkLocalIps": ["169.254.0.1"],
    }
    endpoint = endpoints.to_endpoint_config(entry)
    assert endpoint == {
        "IPAMConfig": {"IPv4Address": "1.2.3.4", "IPv6Address": "::5", "LinkLocalIPs": ["169.254.0.1"]},
        "Aliases": ["a"],
    }
    assert endpoints.connect_kwargs(endpoint) == {
        "aliases": ["a"],
        "ipv4_address": "1.2.3.4",
        "ipv6_address": "::5",
        "link_local_ips": ["169.254.0.1"],
    }
    assert endpoints.to_endpoint_config({}) == {"IPAMConfig": {}, "Aliases": []}


def test_endpoints_from_docker_drop_container_id_aliases():
    networks = {
        "x_default": {"Aliases": ["main", "5bff0c9e6ef8"], "IPAMConfig": None},
        "supervisor0": {"Aliases": ["5bff0c9e6ef8"], "IPAMConfig": {"IPv4Address": "10.1.1.1"}},
        "bridge": {"Aliases": None},
    }
    assert endpoints.from_docker(networks, "5bff0c9e6ef8aaaa") == {
        "x_default": {"aliases": ["main"]},
        "supervisor0": {"aliases": [], "ipv4Address": "10.1.1.1"},
        "bridge": {},
    }


@pytest.mark.parametrize(
    ("current", "target", "equal"),
    [
        ({"aliases": ["a", "b", "c"]}, {"aliases": ["a", "c"]}, True),
        ({"aliases": ["a"]}, {"aliases": ["a", "b"]}, False),
        ({}, {"aliases": ["a"]}, False),
        ({"aliases": ["a"]}, {}, True),
        ({"ipv4Address": "1.1.1.1"}, {"ipv4Address": "1.1.1.1"}, True),
        ({"ipv4Address": "1.1.1.2"}, {"ipv4Address": "1.1.1.1"}, False),
        ({}, {"ipv6Address": "::1"}, False),
        ({"linkLocalIps": ["a", "b"]}, {"linkLocalIps": ["b", "a"]}, False),
    ],
)
def test_same_endpoint(current, target, equal):
    assert endpoints.same_endpoint(current, target) is equal


@pytest.mark.parametrize(
    ("current", "target", "hosts", "ids", "equal"),
    [
        ("x_default", "x_default", ("", ""), {}, True),
        ("x_default", "x_default", ("a", "b"), {}, False),
        ("host", "x_default", ("", ""), {}, False),
        ("container:abc", "service:db", ("a", "b"), {"db": "abc"}, True),
        ("service:db", "container:abc", ("", ""), {"db": "abc"}, True),
        ("container:abc", "service: db", ("", ""), {"db": "abc"}, True),
        ("container:abc", "service:db", ("", ""), {"db": "other"}, False),
        ("container:abc", "service:db", ("", ""), {}, False),
        ("service:db", "service:db", ("a", "b"), {}, True),
    ],
)
def test_same_network_mode(current, target, hosts, ids, equal):
    assert endpoints.same_network_mode(current, target, hosts[0], hosts[1], ids) is equal


# --------------------------------------------------------------------------- small fields


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "always"),
        ("no", "no"),
        ("", "no"),
        ("ALWAYS", "always"),
        (" on-failure ", "on-failure"),
        ("unless-stopped", "unless-stopped"),
        ("sometimes", "always"),
        (3, "always"),
        ("on-failure:3", "on-failure:3"),
        ("On-Failure:03", "on-failure:3"),
        ("on-failure:0", "on-failure"),
        ("on-failure:-1", "always"),
        ("on-failure:x", "always"),
        ("on-failure:99999999999", "always"),
        ("always:3", "always"),
    ],
)
def test_restart_policy(value, expected):
    assert fields.restart_policy(value) == expected


def test_restart_from_docker():
    assert fields.restart_from_docker(None) == "always"
    assert fields.restart_from_docker({"Name": ""}) == "no"
    assert fields.restart_from_docker({"Name": "no"}) == "no"
    assert fields.restart_from_docker({"Name": "on-failure"}) == "on-failure"
    assert fields.restart_from_docker({"Name": "on-failure", "MaximumRetryCount": 0}) == "on-failure"
    assert fields.restart_from_docker({"Name": "on-failure", "MaximumRetryCount": 5}) == "on-failure:5"
    assert fields.restart_from_docker({"Name": "always", "MaximumRetryCount": 0}) == "always"


@pytest.mark.parametrize("policy", ["no", "always", "unless-stopped", "on-failure", "on-failure:7"])
def test_restart_to_docker_reads_back_the_same(policy):
    body = fields.restart_to_docker(policy)
    assert body["MaximumRetryCount"] == (7 if policy == "on-failure:7" else 0)
    assert fields.restart_from_docker(body) == policy


def test_small_fields():
    assert fields.string_list("8.8.8.8") == ["8.8.8.8"]
    assert fields.string_list(None) == []
    assert fields.string_list(["a", 1]) == ["a", "1"]
    assert fields.extra_hosts(["a=1.2.3.4", "b:5.6.7.8", "c=d=e"]) == ["a:1.2.3.4", "b:5.6.7.8", "c:d=e"]
    assert fields.sysctls(["net.core.somaxconn=1024", "a=b=c"]) == {"net.core.somaxconn": "1024", "a": "b=c"}
    assert fields.sysctls({"kernel.x": 1}) == {"kernel.x": "1"}
    assert fields.security_opt(["label=user:USER", "label:disable", "seccomp=unconfined"]) == [
        "label:disable",
        "seccomp=unconfined",
    ]
    assert fields.tmpfs_to_docker(["/run", "/tmp:size=64m"]) == {"/run": "", "/tmp": "size=64m"}
    assert fields.tmpfs_from_docker({"/run": "", "/tmp": "size=64m"}) == ["/run", "/tmp:size=64m"]


# --------------------------------------------------------------------------- labels and env


def test_normalise_labels():
    assert labels.normalise(
        {
            "io.resin.features.resin-api": "1",
            "io.resin.x": "legacy",
            "io.balena.x": "new",
            "com.example": True,
        }
    ) == {
        "com.example": "true",
        "io.balena.features.balena-api": "1",
        "io.balena.x": "new",
    }


def test_extend_labels_injected_win_image_fills():
    out = labels.extend(
        {"io.balena.app-id": "999", "mine": "1"},
        app_id=1,
        app_uuid="u",
        service_id=2,
        service_name="s",
        image_labels={"mine": "image", "from.image": "y", "io.resin.old": "z"},
    )
    assert out == {
        "mine": "1",
        "from.image": "y",
        "io.balena.old": "z",
        "io.balena.app-id": "1",
        "io.balena.supervised": "true",
        "io.balena.service-id": "2",
        "io.balena.service-name": "s",
        "io.balena.app-uuid": "u",
    }


def test_env_array_conversions():
    assert environment.from_array(["A=1", "B=x=y", "C=", "NOEQUALS", "=v", "M=line1\nline2"]) == {
        "A": "1",
        "B": "x=y",
        "C": "",
        "M": "line1\nline2",
    }
    assert environment.to_array({"A": "1", "B": ""}) == ["A=1", "B="]
    assert environment.as_dict(["X=1"]) == {"X": "1"}
    assert environment.as_dict({"N": 5, "T": True, "E": None}) == {"N": "5", "T": "true", "E": ""}


def test_env_extend_precedence():
    out = environment.extend(
        {"USER": "me", "RESIN_DEVICE_NAME_AT_INIT": "x"},
        {"USER": "root", "BALENA": "1"},
        ["PATH=/bin", "BALENA=image", "USER=image"],
    )
    assert out == {"USER": "me", "BALENA": "1", "PATH": "/bin"}


# --------------------------------------------------------------------------- naming


def test_names():
    assert naming.volume_name(12, "data") == "12_data"
    assert naming.network_name("abc", "default") == "abc_default"
    assert naming.container_name("main", 1, 2, "c0ffee") == "main_1_2_c0ffee"
    assert naming.lock_dir_for(7, "svc") == "/tmp/balena-supervisor/services/7/svc"
    assert naming.lock_dir_for(7, "svc", "/root/") == "/root/tmp/balena-supervisor/services/7/svc"


@pytest.mark.parametrize(
    ("name", "label", "expected"),
    [
        ("1234_default", None, naming.ParsedNetworkName("default", app_id=1234)),
        ("1234_default", 1234, naming.ParsedNetworkName("default", app_id=1234, app_uuid="1234")),
        ("deadbeef_my_net", None, naming.ParsedNetworkName("my_net", app_uuid="deadbeef")),
        ("deadbeef_x", 5, naming.ParsedNetworkName("x", app_id=5, app_uuid="deadbeef")),
        ("0_default", 0, naming.ParsedNetworkName("default", app_id=0, app_uuid="0")),
    ],
)
def test_parse_network_name(name, label, expected):
    assert naming.parse_network_name(name, label) == expected


# Foreign names: not a form the supervisor writes, so never read as an app's network.
@pytest.mark.parametrize(
    ("bad", "label"),
    [
        ("abcd", None),
        ("nothex_x", None),
        ("1234", None),
        ("zz_x", None),
        ("x7119_default", 7119),  # the prefix
        ("1234_default", 99),  # app 1234's name, app 99's label
        ("07119_default", 7119),  # a leading zero: not str(int)
        ("07119_default", None),
        ("7119_default ", 7119),  # trailing text
        ("7119_default\nx", 7119),
        ("7119_-default", 7119),  # not a compose name
        ("7119__default", 7119),
        ("7119_", 7119),
    ],
)
def test_parse_network_name_rejects(bad, label):
    with pytest.raises(InvalidNameError):
        naming.parse_network_name(bad, label)


def test_parse_volume_name():
    assert naming.parse_volume_name("12_data_dir") == (12, "data_dir")
    assert naming.parse_volume_name("12_data.v2-x") == (12, "data.v2-x")
    assert naming.parse_volume_name("0_data") == (0, "data")


@pytest.mark.parametrize(
    "bad",
    ["data", "x7119_data", "my7119_data", "a_7119_data", "07119_data", "-7119_data", "7119_", "7119__data",
     "7119_data ", "7119_data\n", "7119_da ta", "extra-firmware", "12a_data", "\u0667119_data"],
)
def test_parse_volume_name_rejects_foreign_names(bad):
    """The reference's unanchored search took ``x7119_data`` for app 7119's volume ``data``."""
    with pytest.raises(InvalidNameError):
        naming.parse_volume_name(bad)


@pytest.mark.parametrize(
    ("name", "service", "expected"),
    [
        ("/main_11_1_deadbeef", "main", (11, 1, "deadbeef")),
        ("my_service_431889_572579", "my_service", (431889, 572579, None)),  # before commits were named
        ("one_11_1_deadbeef", "one", (11, 1, "deadbeef")),
        ("/old_main_11_1_deadbeef", "main", (11, 1, "deadbeef")),  # a hand-over under way
        ("/old_main_11_1_deadbeef", "old_main", (11, 1, "deadbeef")),
        ("/main_11_1_dead_beef", "main", (11, 1, "dead_beef")),
        ("/main_0_0_None", "main", (0, 0, "None")),
        # An all-digit commit: the old unanchored `.*_(\d+)_(\d+)` read this as service `main_11`.
        ("/main_11_1_22", "main", (11, 1, "22")),
        ("/main_11_1_22", "main_11", (1, 22, None)),  # the label decides: service main_11, no commit
        ("/main_11_1_22_33", "main", (11, 1, "22_33")),
        ("/old_main_11_1_007", "main", (11, 1, "007")),
    ],
)
def test_parse_container_name(name, service, expected):
    assert naming.parse_container_name(name, service) == expected


@pytest.mark.parametrize(
    ("name", "service"),
    [
        ("nonsense", "main"),
        ("/xmain_11_1_deadbeef", "main"),  # another service's (or nobody's) name
        ("/main_11_1_deadbeef", "mai"),
        ("/main_11_1_deadbeef", "ain"),
        ("/main_11_1_deadbeef", "other"),
        ("/main_11_1_deadbeef", ""),
        ("/backup-main_11_1_deadbeef", "main"),
        ("/main_011_1_deadbeef", "main"),
        ("/main_11_-1_deadbeef", "main"),
        ("/main_11_1_", "main"),
        ("/main_11_1_dead beef", "main"),
        ("/main_11", "main"),
        ("/main_x_1_deadbeef", "main"),
        ("/new_main_11_1_deadbeef", "main"),
    ],
)
def test_parse_container_name_rejects_foreign_names(name, service):
    assert naming.parse_container_name(name, service) is None


@given(
    st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.one_of(
        st.from_regex(r"[0-9a-f]{1,40}", fullmatch=True),
        st.from_regex(r"[0-9]{1,12}", fullmatch=True),  # an all-digit commit is a commit, not an id
        st.from_regex(r"[a-zA-Z0-9_.-]{1,20}", fullmatch=True),  # any commit admission lets through
    ),
)
def test_container_name_round_trip(service, image_id, release_id, commit):
    name = naming.container_name(service, image_id, release_id, commit)
    assert naming.parse_container_name("/" + name, service) == (image_id, release_id, commit)


@given(st.integers(0, 10**12), st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,40}", fullmatch=True))
def test_volume_and_network_names_round_trip(app_id, name):
    """Every name the supervisor writes reads back (else it would create it again every round)."""
    assert naming.parse_volume_name(naming.volume_name(app_id, name)) == (app_id, name)
    legacy = naming.network_name(str(app_id), name)
    assert naming.parse_network_name(legacy, app_id) == naming.ParsedNetworkName(name, app_id, str(app_id))
    uuid = "0123456789abcdef" * 2
    parsed = naming.parse_network_name(naming.network_name(uuid, name), app_id)
    assert parsed == naming.ParsedNetworkName(name, app_id, uuid)
