"""IP and MAC addresses over netlink (spec §10.7, §13.7; issue #11 ``/v1/device``), read from
addresses made in a network namespace of the test's own (veth pairs and bridges: no ``dummy`` links).

The device namespace holds what the reference reports and what it leaves out: ``eth0`` (two IPv4
addresses, a global and a link-local IPv6 address), a bridge ``br0`` with an enslaved port (reported;
the port's MAC is not), and links named as the reference excludes them (``docker0``, ``balena0``,
``supervisor0``, ``tun0``, ``resin-vpn``, ``br-<12 hex>``) with addresses of their own.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from supervisor.host.netlink import EXCLUDED_INTERFACES, NetworkFacts, Opener, open_socket, read_addresses
from tests.fixtures.device import wait_for
from tests.fixtures.netns import NetNs, in_netns, ip, veth


def opener(ns: NetNs) -> Opener:
    """Netlink sockets made in ``ns``."""
    return lambda groups: in_netns(ns, lambda: open_socket(groups))


def bridge(ns: NetNs, name: str, mac: str, *addresses: str) -> None:
    ip("-n", ns.name, "link", "add", name, "type", "bridge")
    ip("-n", ns.name, "link", "set", name, "address", mac)
    for address in addresses:
        ip("-n", ns.name, "addr", "add", address, "dev", name, *(["nodad"] if ":" in address else []))
    ip("-n", ns.name, "link", "set", name, "up")


@pytest.fixture
def device_ns(netns_factory) -> NetNs:
    dev, peer = netns_factory(), netns_factory()
    veth(dev, "eth0", "10.61.0.10/24", peer, "p0", "10.61.0.1/24")
    ip("-n", dev.name, "link", "set", "eth0", "address", "02:00:00:00:00:0a")
    ip("-n", dev.name, "addr", "add", "10.61.0.11/24", "dev", "eth0")
    ip("-n", dev.name, "addr", "add", "fd00:61::10/64", "dev", "eth0", "nodad")
    ip("-n", dev.name, "addr", "add", "fe80::61:10/64", "dev", "eth0", "nodad")  # link-local: left out
    bridge(dev, "br0", "02:00:00:00:00:0b", "192.168.61.1/24", "fd00:62::1/64")
    veth(dev, "brport", "", peer, "p1", "")
    ip("-n", dev.name, "link", "set", "brport", "address", "02:00:00:00:00:0c")
    ip("-n", dev.name, "link", "set", "brport", "master", "br0")  # a bridge port: its MAC is not reported
    for index, name in enumerate(("docker0", "balena0", "supervisor0", "br-0123456789ab", "resin-vpn")):
        bridge(dev, name, f"02:00:00:00:01:0{index}", f"172.30.{index}.1/24")
    veth(dev, "tun0", "10.62.0.1/24", peer, "p2", "10.62.0.2/24")
    return dev


EXPECTED_IPS = ["10.61.0.10", "10.61.0.11", "fd00:61::10", "192.168.61.1", "fd00:62::1"]
EXPECTED_MACS = ["02:00:00:00:00:0B", "02:00:00:00:00:0A"]  # by interface name: br0, eth0


def test_the_reference_rules_over_netlink(device_ns: NetNs) -> None:
    ips, macs = read_addresses(opener(device_ns))
    # Interfaces in getifaddrs order (IPv4 first), each interface's IPv4 before its IPv6 addresses;
    # loopback, link-local IPv6 and excluded interfaces left out.
    assert ips == EXPECTED_IPS
    assert macs == EXPECTED_MACS


@pytest.mark.parametrize("name", ["balena0", "docker12", "rce0", "tun3", "resin-vpn", "lo", "resin-dns",
                                  "supervisor0", "balena-redsocks", "resin-redsocks", "br-0123456789ab"])
def test_excluded_names(name: str) -> None:
    assert EXCLUDED_INTERFACES.match(name)


@pytest.mark.parametrize("name", ["eth0", "wlan0", "br0", "br-0123456789abc", "br-XYZ", "balena", "docker",
                                  "tun", "enp3s0"])
def test_reported_names(name: str) -> None:
    assert not EXCLUDED_INTERFACES.match(name)


def test_address_changes_are_noticed_without_waiting_for_the_poll(device_ns: NetNs) -> None:
    """The subscription sees a new address at once; the 30 s poll would not within the deadline."""
    seen: list[list[str]] = []
    facts = NetworkFacts(opener=opener(device_ns), poll_seconds=3600, on_change=seen.append)
    facts.start()
    try:
        assert facts.ip_address == " ".join(EXPECTED_IPS)
        assert facts.mac_address == " ".join(EXPECTED_MACS)
        ip("-n", device_ns.name, "addr", "add", "10.61.0.12/24", "dev", "eth0")
        wait_for(lambda: "10.61.0.12" in facts.ip_address, "the new address", timeout=10)
        assert facts.ip_address.split() == ["10.61.0.10", "10.61.0.11", "10.61.0.12", *EXPECTED_IPS[2:]]
        ip("-n", device_ns.name, "addr", "del", "10.61.0.11/24", "dev", "eth0")
        wait_for(lambda: "10.61.0.11" not in facts.ip_address, "the address gone", timeout=10)
        assert len(seen) >= 3  # the first read, then one per change
        assert facts.health() == (True, "ok")
    finally:
        assert facts.stop(timeout=5)


@pytest.mark.docker
def test_v1_device_reports_the_namespace_addresses(device_ns: NetNs, device_root: Path,
                                                   start_supervisor) -> None:
    """``/v1/device`` reads the engine (the Docker socket is a unix socket: reachable from the
    namespace); the supervisor is scoped to an app id nobody uses, so it reads and touches nothing."""
    app_id = str(random.randint(10**6, 10**9))
    sup = start_supervisor(device_root, "--apps", app_id, "--no-host-setup", engine=True, netns=device_ns)
    body = wait_for(lambda: sup.get("/v1/device").json() if sup.get("/v1/device").ok else None,
                    "/v1/device", sup, timeout=30)
    assert body["ip_address"] == " ".join(EXPECTED_IPS)
    assert body["mac_address"] == " ".join(EXPECTED_MACS)
    ip("-n", device_ns.name, "addr", "add", "10.63.0.1/24", "dev", "br0")
    wait_for(lambda: "10.63.0.1" in sup.get("/v1/device").json()["ip_address"],
             "the new address in /v1/device", sup, timeout=10)


def test_the_dumps_agree_with_iproute2(device_ns: NetNs) -> None:
    """The table-driven parser reads what ``ip -j`` reads from the same kernel (names, types, masters,
    MACs, every address with its scope)."""
    import json
    import socket

    from supervisor.host.netlink import RTM_GETADDR, _links, dump

    with opener(device_ns)(0) as sock:
        links = _links(sock)
        addresses = [(m["index"], m["address"], m["scope"])
                     for family in (socket.AF_INET, socket.AF_INET6)
                     for m in dump(sock, RTM_GETADDR, family, 7)]
    shown = json.loads(ip("-n", device_ns.name, "-j", "-d", "addr", "show"))
    names = {link["ifname"]: link for link in shown}
    assert {link["name"] for link in links.values()} == set(names)
    for index, link in links.items():
        other = names[link["name"]]
        assert other["ifindex"] == index
        assert link["address"] == other.get("address")
        assert (link["master"] is not None) == ("master" in other)
        assert bool(link["flags"] & 0x8) == ("LOOPBACK" in other["flags"])
    scopes = {"global": 0, "link": 253, "host": 254}
    expected = sorted((link["ifindex"], info["local"], scopes[info["scope"]])
                      for link in shown for info in link["addr_info"])
    assert sorted(addresses) == expected


def test_a_cut_short_datagram_is_not_read_past() -> None:
    import struct

    from supervisor.host.netlink import NLMSG_DONE, RTM_NEWADDR, parse

    attr = struct.pack("=HH", 8, 1) + bytes([10, 0, 0, 1])
    body = struct.pack("=BBBBI", 2, 24, 0, 0, 5) + attr
    whole = struct.pack("=IHHII", 16 + len(body), RTM_NEWADDR, 2, 9, 0) + body
    done = struct.pack("=IHHII", 20, NLMSG_DONE, 2, 9, 0) + bytes(4)
    assert list(parse(whole + done)) == [
        (RTM_NEWADDR, 9, {"family": 2, "prefixlen": 24, "flags": 0, "scope": 0, "index": 5,
                          "address": "10.0.0.1"}),
        (NLMSG_DONE, 9, {}),
    ]
    assert list(parse(whole[:-3])) == []  # the length says more than arrived
    bad_attr = whole[:16 + 8] + struct.pack("=HH", 2, 1)  # an attribute shorter than its own header
    assert [fields.get("address") for _, _, fields in parse(
        struct.pack("=IHHII", len(bad_attr), RTM_NEWADDR, 2, 9, 0) + bad_attr[16:])] == [None]
