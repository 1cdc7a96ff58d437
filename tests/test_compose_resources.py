"""Network and Volume configs: compose normalisation, create bodies, read-back, comparison."""

from __future__ import annotations

import logging

import pytest

from supervisor.compose import ComposeError, InvalidNameError, Network, Volume

UUID = "deadbeefdeadbeefdeadbeefdeadbeef"

# --------------------------------------------------------------------------- networks


def test_network_defaults():
    net = Network.from_compose(12345, UUID, "default", {})
    assert (net.name, net.app_id, net.app_uuid, net.docker_name) == (
        "default",
        12345,
        UUID,
        f"{UUID}_default",
    )
    assert net.config == {
        "driver": "bridge",
        "ipam": {"driver": "default", "config": [], "options": {}},
        "enableIPv6": False,
        "internal": False,
        "labels": {"io.balena.app-id": "12345"},
        "options": {},
        "configOnly": False,
    }
    assert Network.from_compose(1, UUID, "x", None).config == Network.from_compose(1, UUID, "x", {}).config


def test_network_full_config_and_create_body():
    net = Network.from_compose(
        12345,
        UUID,
        "default",
        {
            "driver": "bridge",
            "enable_ipv6": True,
            "internal": False,
            "ipam": {
                "driver": "default",
                "options": {"com.docker.ipam-option": "abcd"},
                "config": [
                    {
                        "subnet": "172.20.0.0/16",
                        "ip_range": "172.20.10.0/24",
                        "gateway": "172.20.0.1",
                        "aux_addresses": {"host0": "172.20.10.15"},
                    }
                ],
            },
            "driver_opts": {"com.docker.network-option": "abcd"},
            "labels": {"com.docker.some-label": "yes", "io.resin.features.x": "1"},
            "config_only": True,
        },
    )
    assert net.config["ipam"]["config"] == [
        {
            "subnet": "172.20.0.0/16",
            "gateway": "172.20.0.1",
            "ipRange": "172.20.10.0/24",
            "auxAddress": {"host0": "172.20.10.15"},
        }
    ]
    assert net.create_body() == {
        "Name": f"{UUID}_default",
        "Driver": "bridge",
        "CheckDuplicate": True,
        "Options": {"com.docker.network-option": "abcd"},
        "IPAM": {
            "Driver": "default",
            "Config": [
                {
                    "Subnet": "172.20.0.0/16",
                    "Gateway": "172.20.0.1",
                    "IPRange": "172.20.10.0/24",
                    "AuxiliaryAddresses": {"host0": "172.20.10.15"},
                }
            ],
            "Options": {"com.docker.ipam-option": "abcd"},
        },
        "EnableIPv6": True,
        "Internal": False,
        "Labels": {
            "io.balena.supervised": "true",
            "io.balena.app-id": "12345",
            "com.docker.some-label": "yes",
            "io.balena.features.x": "1",
            "io.balena.private.ipam.config": "true",
        },
        "ConfigOnly": True,
    }


def test_network_ipam_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="supervisor.compose"):
        Network.from_compose(1, UUID, "n", {"ipam": {"config": [{"subnet": "10.0.0.0/24"}]}})
    assert "must have both a subnet and gateway" in caplog.text


def inspect_network(**changes) -> dict:
    base = {
        "Name": f"{UUID}_default",
        "Id": "0" * 64,
        "Driver": "bridge",
        "EnableIPv6": False,
        "IPAM": {
            "Driver": "default",
            "Options": None,
            "Config": [{"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}],
        },
        "Internal": False,
        "ConfigOnly": False,
        "Options": {},
        "Labels": {"io.balena.supervised": "true", "io.balena.app-id": "12345"},
    }
    base.update(changes)
    return base


def test_network_from_docker_and_compare():
    current = Network.from_docker(inspect_network())
    assert (current.name, current.app_id, current.app_uuid) == ("default", 12345, UUID)
    assert current.config["labels"] == {"io.balena.app-id": "12345"}
    assert current.config["ipam"] == {
        "driver": "default",
        "config": [{"subnet": "172.18.0.0/16", "gateway": "172.18.0.1"}],
        "options": {},
    }
    # the engine's own pool is ignored when the target sets none
    assert current.is_equal_config(Network.from_compose(12345, UUID, "default", {}))
    # but a target with pools compares them, and carries the private ipam label
    custom = Network.from_compose(
        12345, UUID, "default", {"ipam": {"config": [{"subnet": "172.18.0.0/16", "gateway": "172.18.0.1"}]}}
    )
    assert not current.is_equal_config(custom)
    labelled = Network.from_docker(
        inspect_network(Labels={"io.balena.app-id": "12345", "io.balena.private.ipam.config": "true"})
    )
    assert labelled.is_equal_config(custom)
    assert not custom.is_equal_config(Network.from_compose(12345, UUID, "default", {}))


@pytest.mark.parametrize(
    "compose",
    [
        {"driver": "overlay"},
        {"enable_ipv6": True},
        {"internal": True},
        {"labels": {"a": "b"}},
        {"driver_opts": {"a": "b"}},
    ],
)
def test_network_differences(compose):
    current = Network.from_docker(inspect_network())
    assert not current.is_equal_config(Network.from_compose(12345, UUID, "default", compose))


def test_config_only_network_ignores_driver():
    current = Network.from_docker(
        inspect_network(Driver="null", ConfigOnly=True, IPAM={"Driver": "default", "Config": []})
    )
    assert current.is_equal_config(Network.from_compose(12345, UUID, "default", {"config_only": True}))
    assert not current.is_equal_config(Network.from_compose(12345, UUID, "default", {}))


def test_network_legacy_names():
    legacy = Network.from_docker(inspect_network(Name="1234_default", Labels={"io.resin.features.y": "1"}))
    assert (legacy.name, legacy.app_id, legacy.app_uuid) == ("default", 1234, None)
    assert legacy.config["labels"] == {"io.balena.features.y": "1"}
    assert legacy.docker_name == "1234_default"
    # a decimal prefix is the app id: named for app 1234 but labelled 12345 is not ours to read
    with pytest.raises(InvalidNameError):
        Network.from_docker(inspect_network(Name="1234_default"))
    same = Network.from_docker(inspect_network(Name="12345_default"))
    assert (same.app_id, same.app_uuid) == (12345, "12345")
    # a network keyed by uuid with no app-id label cannot be attributed
    with pytest.raises(ComposeError):
        Network.from_docker(inspect_network(Labels={}))
    with pytest.raises(InvalidNameError):
        Network.from_docker(inspect_network(Name="abcd"))


# --------------------------------------------------------------------------- volumes


def test_volume_defaults_and_body():
    vol = Volume.from_compose(12, UUID, "data", {})
    assert (vol.name, vol.app_id, vol.docker_name) == ("data", 12, "12_data")
    assert vol.config == {
        "driver": "local",
        "driverOpts": {},
        "labels": {"io.balena.supervised": "true", "io.balena.app-uuid": UUID},
    }
    assert vol.create_body() == {
        "Name": "12_data",
        "Labels": {"io.balena.supervised": "true", "io.balena.app-uuid": UUID},
        "Driver": "local",
        "DriverOpts": {},
    }


def test_volume_compare():
    target = Volume.from_compose(
        12, UUID, "data", {"driver_opts": {"type": "tmpfs"}, "labels": {"io.resin.x": "1"}}
    )
    current = Volume.from_docker(
        {
            "Name": "12_data",
            "Driver": "local",
            "Options": {"type": "tmpfs"},
            "Labels": {"io.balena.x": "1", "io.resin.supervised": "true"},
        }
    )
    assert (current.name, current.app_id, current.app_uuid) == ("data", 12, None)
    # supervisor labels (including the app uuid) do not count
    assert current.is_equal_config(target)
    assert not current.is_equal_config(Volume.from_compose(12, UUID, "data", {}))
    assert not current.is_equal_config(
        Volume.from_compose(
            12,
            UUID,
            "data",
            {"driver": "other", "driver_opts": {"type": "tmpfs"}, "labels": {"io.balena.x": "1"}},
        )
    )
    with pytest.raises(InvalidNameError):
        Volume.from_docker({"Name": "nodigits", "Driver": "local"})
